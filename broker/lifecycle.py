"""Lifecycle events for the backend: who came online or went offline, joined or left a room.

``broker.presence.lifecycle_events`` makes them from presence transitions (each transition is
told to one process, once); ``emit`` hands them to the backend in the ways it listens:

- the Django signal ``lifecycle`` (``broker.signals``), when the broker runs inside the
  backend's project: each event is sent with ``event=<the event dict>``; receivers run in a
  thread (``Signal.asend_robust``), and one that raises is logged, never stops the others;
- webhooks (``BROKER_WEBHOOK_URL``), for the sidecar: the events are queued in the store the
  webhook dispatcher delivers from (docs/webhooks.md).

An event: ``{"id", "type": "online"|"offline"|"joined"|"left", "at", "login", "profile"}``, with
``"realm"`` for static-key logins and ``"room"`` for joined/left (README "Presence and
lifecycle").
"""

from __future__ import annotations

import logging
from typing import Any

from . import metrics, signals
from .errors import BrokerUnavailable
from .stores import Stores

log = logging.getLogger("broker.lifecycle")


def wanted(webhooks: bool) -> bool:
    """Does anyone listen: webhooks configured, or a receiver of the Django signal?"""
    return webhooks or signals.lifecycle.has_listeners()


async def emit(events: list[dict[str, Any]], stores: Stores, webhooks: bool) -> None:
    """Hand ``events`` to the backend: queued for the webhook dispatcher (``webhooks``:
    BROKER_WEBHOOK_URL is set), and sent to the Django signal's receivers. Events the queue
    cannot take (Redis down) are counted (``webhook_dropped{cause="unavailable"}``) and logged;
    the queue counts and logs those over its bound itself."""
    if webhooks:
        try:
            await stores.webhooks.push(events)
        except BrokerUnavailable as exc:
            metrics.webhook_dropped("unavailable", len(events))
            log.error("%d lifecycle events not queued for the webhook (%s): %s", len(events),
                      exc, ", ".join(f"{e['type']} {e['login']}" for e in events[:10]))
    if signals.lifecycle.has_listeners():
        for event in events:
            for receiver, outcome in await signals.lifecycle.asend_robust(sender=None,
                                                                           event=event):
                if isinstance(outcome, Exception):
                    log.error("lifecycle receiver %r failed on %s: %r", receiver,
                              event["type"], outcome)
