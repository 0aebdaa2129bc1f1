"""ASGI entry point: ``daphne combroker.asgi:application`` (or any ASGI server)."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "combroker.settings")

from django.core.asgi import get_asgi_application

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter

from broker.routing import websocket_urlpatterns

application = ProtocolTypeRouter({
    "http": django_application,
    "websocket": URLRouter(websocket_urlpatterns),
})
