"""The built-in demo: an auth API with a few users, a trigger endpoint for the demo page, and the
page itself. Active only under ``runbroker`` (BROKER_DEMO); otherwise these views are a 404.
The monitor console (``admin_console``) and the static files are served in every mode.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.static import serve

import broker
from broker.conf import conf
from broker.errors import BrokerUnavailable
from broker.publish import parse_rooms, publish_rooms
from rooms import InvalidRoom

# The pages and the JS client are the broker app's static files (package data of the wheel).
STATIC_DIR = Path(broker.__file__).resolve().parent / "static"

CHAT_ANY = {"target": "chat", "customer": "*"}
NEWS = {"target": "news"}

# token -> what the demo auth API answers for it (PROTOCOL §2.1)
DEMO_USERS: dict[str, dict[str, Any]] = {
    "alice": {"login_id": "alice", "profile": "agent",
              "allowed_rooms": [{"target": "chat", "customer": "1"}, NEWS]},
    "bob": {"login_id": "bob", "profile": "agent",
            "allowed_rooms": [{"target": "chat", "customer": "2"}, NEWS]},
    "carol": {"login_id": "carol", "profile": "super_agent", "allowed_rooms": [CHAT_ANY, NEWS]},
    "billing": {"login_id": "billing", "profile": "service", "allowed_rooms": [CHAT_ANY, NEWS]},
    "root": {"login_id": "root", "profile": "admin", "allowed_rooms": []},
    "guest": {"allowed_rooms": [NEWS]},
}


def _demo_only() -> None:
    if not conf().BROKER_DEMO:
        raise Http404("demo disabled")


def demo_auth_api(request: HttpRequest) -> HttpResponse:
    _demo_only()
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    user = DEMO_USERS.get(token.strip()) if scheme == "Token" else None
    if user is None:
        return JsonResponse({"detail": "unknown demo token"}, status=403)
    return JsonResponse(user)


@csrf_exempt
async def demo_trigger(request: HttpRequest) -> HttpResponse:
    """/trigger for the demo page, so the real trigger token never reaches the browser."""
    _demo_only()
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    try:
        body = json.loads(request.body)
        rooms = parse_rooms(body.get("rooms"))
        trigger_id = await publish_rooms(rooms, body.get("data"))
    except (ValueError, AttributeError, InvalidRoom) as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except BrokerUnavailable:
        return JsonResponse({"error": "channel layer unavailable"}, status=503)
    return JsonResponse({"id": trigger_id}, status=202)


def demo_page(request: HttpRequest) -> FileResponse:
    _demo_only()
    return FileResponse(open(STATIC_DIR / "combroker" / "demo.html", "rb"),
                        content_type="text/html; charset=utf-8")


def com_broker_page(request: HttpRequest) -> FileResponse:
    """The Communication Broker JS API page (broker/static/combroker/com-broker.html): its
    client API over the ``stomp`` subprotocol with a static-key login (needs BROKER_APP_KEY)."""
    _demo_only()
    return FileResponse(open(STATIC_DIR / "combroker" / "com-broker.html", "rb"),
                        content_type="text/html; charset=utf-8")


def admin_console(request: HttpRequest) -> FileResponse:
    """The monitor console (broker/static/combroker/admin.html). Not demo-only: it is a static page
    that talks to /ws/ with the admin's own token, so it needs no server-side state."""
    return FileResponse(open(STATIC_DIR / "combroker" / "admin.html", "rb"),
                        content_type="text/html; charset=utf-8")


def static_file(request: HttpRequest, path: str) -> FileResponse:
    return serve(request, path, document_root=str(STATIC_DIR))
