"""The transactional outbox's relay: publishes committed outbox rows in order, then deletes them.

``manage.py runoutboxrelay`` runs one ``Relay`` on a database of the backend (the rows are
written by ``broker.publish.publish_on_commit`` and by model events with ``outbox=True``;
``broker.models``). Each round it reads up to BROKER_OUTBOX_BATCH pending rows in ``id``
order, publishes them in one ``publish_many``, each with its row's trigger id
(``outbox-<id>-<stamp>``), and only then deletes the published ones:

- **At least once, in order.** A relay that dies after publishing and before deleting
  publishes the same rows again, with the same trigger ids: a subscription with history gets
  each once (history appends are idempotent by trigger id within BROKER_TRIGGER_ID_TTL, and
  receivers drop a copy by id), a live subscriber once while its process remembers the id
  (the hub's bounded id memory), at most a duplicate otherwise. When the broker is
  unavailable, the rows from the first one that failed on are kept and retried in the next
  round (those after it that went out are published again, in order, deduped by id).
- **One active relay.** On PostgreSQL a relay works only while it holds a session advisory
  lock (``pg_try_advisory_lock``); the others stand by and try to take it every poll
  interval, so any number may run and the rows still go out in one order. A relay that dies
  loses the lock with its connection. On other databases there is no such lock: run one relay.
- **Woken by NOTIFY.** On PostgreSQL the relay LISTENs on ``combroker_outbox``, which each
  writing transaction notifies (delivered at its commit); it also looks every
  BROKER_OUTBOX_POLL_INTERVAL seconds (the only way elsewhere).
- **A bad row never blocks the queue.** A row whose text is not a JSON object
  (``outbox-unreadable``) or whose trigger the rules refuse (``outbox-refused``: the
  ``/trigger`` refusal text) is parked: ``state`` failed, ``reason`` naming why, logged and
  counted; the rows after it go on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any

from django.db import DEFAULT_DB_ALIAS, DatabaseError, connections

from .conf import conf
from .errors import OUTBOX_REFUSED, OUTBOX_UNREADABLE
from .jsontext import load_json
from .models import FAILED, NOTIFY_CHANNEL, PENDING, OutboxTrigger, trigger_id
from .publish import publish_many_sync
from .triggers import refusal

log = logging.getLogger("broker.relay")

# The advisory lock the active relay holds (any constant: "combroker" in ASCII, 8 bytes).
LOCK_KEY = 0x636F6D62726F6B65
# Seconds publish_many_sync may take before the round is given up (and retried).
PUBLISH_TIMEOUT = 30.0

@dataclass
class Counts:
    published: int = 0  # rows published and deleted
    parked: int = 0  # rows parked as failed


class Relay:
    """One relay on database ``using``; ``run(stop)`` until ``stop`` is set."""

    def __init__(self, using: str = DEFAULT_DB_ALIAS, *, batch: int | None = None,
                 poll_interval: float | None = None) -> None:
        settings = conf()
        self.using = using
        self.batch = batch if batch is not None else settings.BROKER_OUTBOX_BATCH
        self.poll_interval = (poll_interval if poll_interval is not None
                              else settings.BROKER_OUTBOX_POLL_INTERVAL)
        if self.batch < 1:
            raise ValueError("BROKER_OUTBOX_BATCH must be at least 1")
        if self.poll_interval <= 0:
            raise ValueError("BROKER_OUTBOX_POLL_INTERVAL must be more than 0 seconds")
        self.hold = settings.BROKER_OUTBOX_TEST_HOLD
        self.counts = Counts()
        self.leading = False
        self._listening: Any = None  # the DB-API connection LISTEN was sent on
        self._standing_by = False

    @property
    def postgres(self) -> bool:
        return connections[self.using].vendor == "postgresql"

    # ------------------------------------------------------------ the loop

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.lead():
                    stop.wait(self.poll_interval)
                    continue
                if self.relay_batch() < self.batch:
                    self.wait(self.poll_interval, stop)
            except DatabaseError:
                log.exception("outbox relay: database error; reconnecting")
                self.drop_connection()
                stop.wait(self.poll_interval)
        self.drop_connection()

    def drop_connection(self) -> None:
        """Close the connection, which gives up the lock (another relay takes over)."""
        self.leading = False
        self._listening = None
        with contextlib.suppress(DatabaseError):  # a broken connection is closed all the same
            connections[self.using].close()

    def lead(self) -> bool:
        """Whether this relay is the active one (always, off PostgreSQL)."""
        if not self.postgres:
            return True
        connection = connections[self.using]
        connection.ensure_connection()
        if self._listening is not connection.connection:
            # a new connection (first, or after an error): LISTEN on it, lock not held yet
            self.leading = False
            with connection.cursor() as cursor:
                cursor.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._listening = connection.connection
        if not self.leading:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
                self.leading = bool(cursor.fetchone()[0])
            if self.leading:
                log.info("outbox relay: active (pid %d)", os.getpid())
            elif not self._standing_by:
                log.info("outbox relay: standing by (pid %d); another relay is active",
                         os.getpid())
            self._standing_by = not self.leading
        return self.leading

    def wait(self, timeout: float, stop: threading.Event) -> None:
        """Until a NOTIFY (PostgreSQL) or ``timeout`` seconds."""
        if not self.postgres or self._listening is None:
            stop.wait(timeout)
            return
        # A NOTIFY heard while the last round ran its queries waits in psycopg's backlog
        # (3.3: kept while no notify handler is set), which notifies() hands out first.
        try:
            for _ in self._listening.notifies(timeout=timeout, stop_after=1):
                pass
        except Exception as exc:  # psycopg's own error: the connection broke while waiting
            raise DatabaseError(f"waiting for a notify: {exc}") from exc

    # ------------------------------------------------------------ one round

    def relay_batch(self) -> int:
        """Publish up to ``batch`` pending rows in id order; returns how many were handled
        (published or parked). Rows the broker did not take stay pending."""
        rows = list(OutboxTrigger.objects.using(self.using).filter(state=PENDING)
                    .order_by("id").values_list("id", "stamp", "trigger")[:self.batch])
        if not rows:
            return 0
        sending: list[int] = []
        entries: list[dict[str, Any]] = []
        parked: list[tuple[int, str]] = []
        for row_id, stamp, text in rows:
            try:
                body = load_json(text)
            except ValueError as exc:
                parked.append((row_id, f"{OUTBOX_UNREADABLE}: {exc}"))
                continue
            if not isinstance(body, dict):
                parked.append((row_id, f"{OUTBOX_UNREADABLE}: not a JSON object"))
                continue
            sending.append(row_id)
            entries.append({**body, "id": trigger_id(row_id, stamp)})
        try:
            outcomes: list[str | Exception] = (publish_many_sync(entries, PUBLISH_TIMEOUT)
                                               if entries else [])
        except Exception as exc:  # noqa: BLE001 - TimeoutError: not known to be published
            outcomes = [exc] * len(entries)
        done: list[int] = []
        for row_id, outcome in zip(sending, outcomes, strict=True):
            if isinstance(outcome, str):
                done.append(row_id)
            elif isinstance(outcome, ValueError):  # the trigger rules refused it
                parked.append((row_id, f"{OUTBOX_REFUSED}: {refusal(outcome)}"))
            else:  # BrokerUnavailable: this row and the ones after it go again, in order
                log.warning("outbox relay: row %d not published (%r); retrying", row_id,
                            outcome)
                break
        self._hold(done)
        self._mark(done, parked)
        return len(done) + len(parked)

    def _mark(self, done: list[int], parked: list[tuple[int, str]]) -> None:
        rows = OutboxTrigger.objects.using(self.using)
        if done:
            rows.filter(id__in=done).delete()
            self.counts.published += len(done)
        for row_id, reason in parked:
            rows.filter(id=row_id).update(state=FAILED, reason=reason)
            self.counts.parked += 1
            log.error("outbox relay: row %d parked (%s); %d parked so far", row_id, reason,
                      self.counts.parked)

    def _hold(self, done: list[int]) -> None:
        """BROKER_OUTBOX_TEST_HOLD (tests only): published, not yet marked; wait here."""
        if not self.hold or not done:
            return
        with open(self.hold, "w") as marker:
            marker.write(" ".join(map(str, done)))
        gone = threading.Event()
        while os.path.exists(self.hold):
            gone.wait(0.05)
