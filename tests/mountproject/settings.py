"""Settings of the host project. Only what mounting the broker takes, plus the project's own."""

import os
import tempfile

from broker.conf import channel_layers_setting

SECRET_KEY = "mountproject-test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "channels",
    "broker",
    # The project's own app, whose model changes reach the broker (broker.model_events).
    "tests.mountproject.notes.apps.NotesConfig",
]
# tests/integration/test_event_classes.py: an app whose event classes are declared wrong
# (MOUNTPROJECT_BAD_EVENTS names how), which must stop the process at start.
if os.environ.get("MOUNTPROJECT_BAD_EVENTS"):
    INSTALLED_APPS.append("tests.mountproject.badevents")
MIDDLEWARE: list[str] = []

ROOT_URLCONF = "tests.mountproject.urls"
ASGI_APPLICATION = "tests.mountproject.asgi.application"
DATABASES = {"default": {
    "ENGINE": "django.db.backends.sqlite3",
    "NAME": os.environ.get("MOUNTPROJECT_DB")
    or os.path.join(tempfile.gettempdir(), "combroker-mountproject.sqlite3"),
}}
# tests/integration/test_outbox_relay.py: the project's database on the test's own PostgreSQL
# (the transactional outbox's rows live there).
if os.environ.get("MOUNTPROJECT_PG_PORT"):
    DATABASES = {"default": {
        "ENGINE": "django.db.backends.postgresql", "HOST": "127.0.0.1",
        "PORT": os.environ["MOUNTPROJECT_PG_PORT"], "USER": "postgres",
        "NAME": os.environ["MOUNTPROJECT_PG_NAME"],
    }}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True

CHANNEL_LAYERS = channel_layers_setting()

# Broker settings may live in the project's settings (an env var of the same name wins).
BROKER_TRIGGER_TOKEN = "mounted-token"

# Connection tickets: {% combroker_ticket %} in the project's templates, for the identity its
# auth API view would answer (BROKER_TICKET_SECRET comes from the environment).
TEMPLATES = [{"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}]
BROKER_TICKET_IDENTITY = "tests.mountproject.views.identity"
