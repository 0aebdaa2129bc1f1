"""HTTP endpoints: POST /trigger (PROTOCOL §5), /healthz, /metrics."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from rooms import InvalidRoom

from . import metrics
from .conf import conf
from .errors import INVALID_TRIGGER_ID, BrokerUnavailable, InvalidTriggerId
from .httpguard import UNAUTHORIZED, too_big, trigger_token_ok
from .publish import check_trigger_id, parse_rooms, publish_rooms
from .jsontext import JsonTooDeep, load_json
from .shutdown import serving_hub

log = logging.getLogger("broker.trigger")


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@csrf_exempt
async def trigger(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        response = _error(405, "method not allowed: use POST")
        response["Allow"] = "POST"
        return response
    # broker.httpguard has judged the head already where it runs in front (the sidecar, and
    # daphne): these checks hold where a project serves the view without it.
    if not trigger_token_ok(request.headers.get("Authorization", "")):
        return _error(401, UNAUTHORIZED)
    limit = conf().BROKER_MAX_TRIGGER_BYTES
    try:
        declared = int(request.headers.get("Content-Length") or 0)
    except ValueError:
        declared = 0
    # read(), not .body: Django's DATA_UPLOAD_MAX_MEMORY_SIZE caps the other routes (64 KiB in
    # the sidecar); this route's cap is BROKER_MAX_TRIGGER_BYTES.
    raw = b"" if declared > limit else request.read(limit + 1)
    if declared > limit or len(raw) > limit:
        return _error(413, too_big(limit, "BROKER_MAX_TRIGGER_BYTES"))
    try:
        # RFC 8259 only: UTF-8, no NaN, nesting within MAX_JSON_DEPTH. A NUL byte is in no
        # JSON text: it is the mark of UTF-16 or UTF-32, which json.loads would read.
        if b"\x00" in raw:
            raise UnicodeError
        body = load_json(raw)
    except UnicodeError:
        return _error(400, "body is not UTF-8: JSON between systems is UTF-8 (RFC 8259)")
    except JsonTooDeep as exc:
        return _error(400, f"body is not JSON the broker reads: {exc}")
    except ValueError:
        return _error(400, "body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "body must be a JSON object")
    if "rooms" not in body:
        return _error(400, "rooms missing")
    if "data" not in body:
        return _error(400, "data missing")
    try:
        rooms = parse_rooms(body["rooms"])
    except InvalidRoom as exc:
        return _error(400, f"invalid room: {exc}")
    history = body.get("history", False)  # issue 8: record it in its rooms' history
    if not isinstance(history, bool):
        return _error(400, "history must be a boolean")
    try:
        own_id = check_trigger_id(body.get("id"))  # a retry with it is idempotent
    except InvalidTriggerId as exc:
        return _error(400, str(exc))
    if "id" in body and own_id is None:
        return _error(400, f"{INVALID_TRIGGER_ID}: id must be a string")
    try:
        trigger_id = await publish_rooms(rooms, body["data"], history=history,
                                         trigger_id=own_id)
    except BrokerUnavailable as exc:
        log.error("trigger not delivered: %s", exc)
        return _error(503, "channel layer unavailable: the trigger was not delivered")
    return JsonResponse({"id": trigger_id}, status=202)


async def healthz(request: HttpRequest) -> HttpResponse:
    try:
        hub = await serving_hub()
        redis_ok = await hub.stores.ping()
    except BrokerUnavailable:
        redis_ok = False
    return JsonResponse({"status": "ok" if redis_ok else "degraded", "redis": redis_ok},
                        status=200 if redis_ok else 503)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(metrics.render(), content_type="text/plain; version=0.0.4")
