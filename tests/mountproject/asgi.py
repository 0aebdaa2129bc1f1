"""The host project's ASGI app: its own HTTP app next to the broker's WebSocket and SSE routes."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.mountproject.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

http_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from django.urls import re_path  # noqa: E402

from broker.routing import websocket_urlpatterns  # noqa: E402
from broker.sse import SseStream  # noqa: E402

application = ProtocolTypeRouter({
    # the broker's SSE stream where the project puts it, its own HTTP app for the rest
    "http": URLRouter([re_path(r"^rt/sse/?$", SseStream.as_asgi()),
                       re_path(r"", http_application)]),
    "websocket": URLRouter(websocket_urlpatterns),
})
