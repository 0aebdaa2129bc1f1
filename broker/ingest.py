"""Trigger ingestion: the body of a ``POST /trigger`` in, its answer out (PROTOCOL §5,
docs/protocol.md "POST /trigger").

The one implementation behind both ways the route is served: ``broker.backendroute`` (the
sidecar's ASGI application answers it without Django's request cycle) and ``broker.views``
(a project that mounts ``broker.urls``). The request's head (405, 401, a declared length over
BROKER_MAX_TRIGGER_BYTES) was judged before the body was read (``broker.httpguard``); here
the body is read as JSON and each trigger checked by ``broker.triggers`` and published:

- a JSON object is one trigger: 202 ``{"id": ...}``, 400 naming the broken rule, or 503;
- a JSON array is a batch of 1 to BROKER_MAX_TRIGGER_BATCH triggers, each checked and
  published on its own, all sent in one round trip per Redis shard: 202 ``{"results":
  [{"id": ...}, ...]}`` when every entry was accepted, 207 when some were not (a refused entry
  is ``{"error": <what a single trigger would be answered>, "status": 400 or 503}``), 503 when
  the layer is down for every entry; 400 for an empty array, one too long, or an entry that is
  not a JSON object.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from .conf import conf
from .errors import BrokerUnavailable
from .jsontext import JsonTooDeep, load_json
from .publish import publish_many
from .triggers import refusal

log = logging.getLogger("broker.trigger")

UNAVAILABLE = "channel layer unavailable: the trigger was not delivered"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]

    def content(self) -> bytes:
        """The body as Django's ``JsonResponse`` writes it."""
        return json.dumps(self.body).encode()


def _error(status: int, message: str) -> Answer:
    return Answer(status, {"error": message})


def read_body(raw: bytes) -> Any:
    """The body as JSON (RFC 8259 only: UTF-8, no NaN, nesting within MAX_JSON_DEPTH), or
    the 400 answer saying why not."""
    try:
        # A NUL byte is in no JSON text: it is the mark of UTF-16 or UTF-32, which
        # json.loads would read.
        if b"\x00" in raw:
            raise UnicodeError
        return load_json(raw)
    except UnicodeError:
        return _error(400, "body is not UTF-8: JSON between systems is UTF-8 (RFC 8259)")
    except JsonTooDeep as exc:
        return _error(400, f"body is not JSON the broker reads: {exc}")
    except ValueError:
        return _error(400, "body is not JSON")


async def answer(raw: bytes) -> Answer:
    """The answer to a ``POST /trigger`` whose head was accepted and whose body is ``raw``."""
    body = read_body(raw)
    if isinstance(body, Answer):
        return body
    if isinstance(body, list):
        return await _batch(body)
    outcome = (await publish_many([body]))[0]
    if isinstance(outcome, Exception):
        return _error(*_refused(outcome))
    return Answer(202, {"id": outcome})


async def _batch(entries: list[Any]) -> Answer:
    most = conf().BROKER_MAX_TRIGGER_BATCH
    if not entries:
        return _error(400, f"batch is empty: a batch holds 1 to {most} triggers "
                           "(BROKER_MAX_TRIGGER_BATCH)")
    if len(entries) > most:
        return _error(400, f"batch over BROKER_MAX_TRIGGER_BATCH ({most} triggers)")
    if not all(isinstance(e, dict) for e in entries):
        return _error(400, "batch entries must be JSON objects")
    results: list[dict[str, Any]] = []
    accepted = unavailable = 0
    for outcome in await publish_many(entries):
        if isinstance(outcome, Exception):
            status, message = _refused(outcome, logged=unavailable > 0)
            unavailable += status == 503
            results.append({"error": message, "status": status})
        else:
            accepted += 1
            results.append({"id": outcome})
    if accepted == len(entries):
        return Answer(202, {"results": results})
    if unavailable == len(entries):
        return _error(503, UNAVAILABLE)
    return Answer(207, {"results": results})


def _refused(exc: Exception, logged: bool = False) -> tuple[int, str]:
    """The status and text of a trigger refused with ``exc``."""
    if isinstance(exc, BrokerUnavailable):
        if not logged:
            log.error("trigger not delivered: %s", exc)
        return 503, UNAVAILABLE
    return 400, refusal(exc)
