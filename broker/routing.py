"""WebSocket routes of the broker app: add them to a project's ProtocolTypeRouter."""

from django.urls import re_path

from .consumers import BrokerConsumer

websocket_urlpatterns = [
    re_path(r"^ws/?$", BrokerConsumer.as_asgi()),
]
