"""Settings of the host project. Only what mounting the broker takes, plus the project's own."""

from broker.conf import channel_layers_setting

SECRET_KEY = "mountproject-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "channels",
    "broker",
]
MIDDLEWARE: list[str] = []

ROOT_URLCONF = "tests.mountproject.urls"
ASGI_APPLICATION = "tests.mountproject.asgi.application"
DATABASES: dict = {}
USE_TZ = True

CHANNEL_LAYERS = channel_layers_setting()

# Broker settings may live in the project's settings (an env var of the same name wins).
BROKER_TRIGGER_TOKEN = "mounted-token"
