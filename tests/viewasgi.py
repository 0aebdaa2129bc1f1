"""The sidecar served the way a project that mounts the broker serves ``/trigger``: through
Django's request cycle and ``broker.views.trigger`` (behind ``BodyGuard``), without
``broker.backendroute``. tests/integration/test_trigger*.py run the trigger contract against
both: ``uvicorn tests.viewasgi:application``."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "combroker.settings")

from django.core.asgi import get_asgi_application  # noqa: E402

django_application = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from broker.httpguard import BodyGuard  # noqa: E402
from broker.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter({
    "http": BodyGuard(django_application),
    "websocket": URLRouter(websocket_urlpatterns),
})
