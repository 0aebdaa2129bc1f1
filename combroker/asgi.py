"""ASGI entry point: ``uvicorn combroker.asgi:application`` (or daphne, or any ASGI server)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "combroker.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter

from broker.backendroute import BackendRoute
from broker.httpguard import BodyGuard
from broker.routing import websocket_urlpatterns
from broker.sse import SseRoute

application = ProtocolTypeRouter({
    # POST /trigger and the server API's POST /api/<operation> are answered without Django's
    # request cycle (broker.backendroute); every other request body is judged by its head
    # before it is read (broker.httpguard). /sse/ is the SSE transport (broker.sse).
    "http": SseRoute(BackendRoute(BodyGuard(django_application))),
    "websocket": URLRouter(websocket_urlpatterns),
})
