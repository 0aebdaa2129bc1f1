"""Settings of the sidecar project. Every BROKER_* setting is read from the environment by
broker.conf (see its list and defaults); this module only wires Django and Channels."""

import os
import secrets

from broker.conf import channel_layers_setting, log_level

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32)
DEBUG = os.environ.get("DJANGO_DEBUG", "").lower() in {"1", "true", "yes"}
ALLOWED_HOSTS = [h for h in os.environ.get("DJANGO_ALLOWED_HOSTS", "*").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.staticfiles",
    "channels",
    "broker",
    "tcpgate",  # runtcpgate
    "combroker",  # runbroker: the composition root, above broker and tcpgate
]

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "combroker.urls"
ASGI_APPLICATION = "combroker.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [{
    "BACKEND": "django.template.backends.django.DjangoTemplates",
    "DIRS": [],
    "APP_DIRS": True,
    "OPTIONS": {},
}]

# The broker keeps no state in a database; the sidecar has none.
DATABASES: dict[str, dict[str, str]] = {}

CHANNEL_LAYERS = channel_layers_setting()

# The body of every route but /trigger (which takes up to BROKER_MAX_TRIGGER_BYTES): none of
# them takes one. broker.httpguard answers 413 past it before reading on (issue 11, item 6).
DATA_UPLOAD_MAX_MEMORY_SIZE = 65_536

STATIC_URL = "/static/"

USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # conn=<connection id> on every line (``-`` outside a connection): broker.logctx.
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s conn=%(conn)s "
                                       "%(message)s"}},
    "filters": {"conn": {"()": "broker.logctx.ConnFilter"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain",
                             "filters": ["conn"]}},
    "root": {"handlers": ["console"], "level": log_level()},
    "loggers": {"daphne": {"level": "WARNING"}, "django.channels.server": {"level": "WARNING"}},
}
