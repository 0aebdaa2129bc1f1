"""The host project's ASGI app: its own HTTP app next to the broker's WebSocket route."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.mountproject.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

http_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from broker.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": http_application,
    "websocket": URLRouter(websocket_urlpatterns),
})
