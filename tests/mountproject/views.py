from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template import engines

from broker.tickets import MintRefused

# A page of the project with a connection ticket for its user (docs/protocol.md "Connection
# tickets"); a real page would hand it to combroker.js.
_TICKET_PAGE = engines["django"].from_string("{% load combroker %}{% combroker_ticket %}")


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("the host project's own view", content_type="text/plain")


def identity(request: HttpRequest) -> dict[str, Any] | None:
    """What the project's auth API view answers for ``request`` (BROKER_TICKET_IDENTITY). This
    project has no users: the ``X-Login`` header stands for its session's logged-in user."""
    login = request.headers.get("X-Login")
    if not login:
        return None
    return {"login_id": login, "allowed_rooms": [{"target": "news"}]}


def ticket(request: HttpRequest) -> HttpResponse:
    try:
        return HttpResponse(_TICKET_PAGE.render({}, request), content_type="text/plain")
    except MintRefused as exc:
        return HttpResponse(str(exc), status=403, content_type="text/plain")
