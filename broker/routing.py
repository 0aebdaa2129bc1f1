"""WebSocket routes of the broker app: add them to a project's ProtocolTypeRouter."""

from typing import Any, cast

from django.urls import re_path

from .consumers import BrokerConsumer

websocket_urlpatterns = [
    # Channels' URLRouter routes ASGI applications through Django's re_path, which
    # django-stubs types for views only.
    re_path(r"^ws/?$", cast(Any, BrokerConsumer.as_asgi())),
]
