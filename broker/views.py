"""HTTP endpoints: POST /trigger (PROTOCOL §5), POST /api/<operation> (the server API),
/healthz, /metrics."""

from __future__ import annotations

import functools

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from . import amqpsource, ingest, metrics, serverapi
from .backendroute import Answerer
from .errors import BrokerUnavailable
from .httpguard import trigger_head
from .shutdown import serving_hub


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=status)


@csrf_exempt
async def trigger(request: HttpRequest) -> HttpResponse:
    """POST /trigger where a project serves it through Django (``broker.urls``); the sidecar
    answers it in front of Django (``broker.backendroute``). Both are ``broker.ingest``."""
    return await _backend_post(request, ingest.answer)


@csrf_exempt
async def server_api(request: HttpRequest, operation: str) -> HttpResponse:
    """POST /api/<operation> where a project serves it through Django (``broker.urls``); the
    sidecar answers it in front of Django (``broker.backendroute``). Both are
    ``broker.serverapi``, judged by the trigger token and BROKER_MAX_TRIGGER_BYTES as /trigger
    is."""
    return await _backend_post(request, functools.partial(serverapi.answer, operation))


async def _backend_post(request: HttpRequest, answer_body: Answerer) -> HttpResponse:
    if request.method != "POST":
        response = _error(405, "method not allowed: use POST")
        response["Allow"] = "POST"
        return response
    # broker.httpguard has judged the head already where it runs in front (the sidecar, and
    # daphne): the same judgement holds where a project serves the view without it.
    verdict = trigger_head("POST", request.headers.get("Authorization", ""),
                           request.headers.get("Content-Length"))
    if isinstance(verdict, tuple):
        return _error(*verdict)
    # read(), not .body: Django's DATA_UPLOAD_MAX_MEMORY_SIZE caps the other routes (64 KiB in
    # the sidecar); this route's cap is BROKER_MAX_TRIGGER_BYTES.
    raw = request.read(verdict.size + 1)
    if len(raw) > verdict.size:
        return _error(413, verdict.refusal())
    answer = await answer_body(raw)
    return JsonResponse(answer.body, status=answer.status)


async def healthz(request: HttpRequest) -> HttpResponse:
    try:
        hub = await serving_hub()
        redis_ok = await hub.stores.ping()
    except BrokerUnavailable:
        redis_ok = False
    body: dict[str, object] = {"status": "ok" if redis_ok else "degraded", "redis": redis_ok}
    source = amqpsource.running_source()
    if source is not None:
        # RabbitMQ down degrades the process but it still serves its clients: 200 (a load
        # balancer must not take every process out for it), "status": "degraded".
        body["amqp"] = source.connected
        if not source.connected:
            body["status"] = "degraded"
    return JsonResponse(body, status=200 if redis_ok else 503)


async def metrics_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse(metrics.render(), content_type="text/plain; version=0.0.4")
