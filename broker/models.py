"""The broker app's one model: ``OutboxTrigger``, a row of the transactional outbox.

A backend writes a trigger as a row of its own database in the transaction that makes the
change (``broker.publish.publish_on_commit``, or model events with ``outbox=True``); the relay
(``broker.relay``, ``manage.py runoutboxrelay``) publishes the committed rows in ``id`` order,
each with the trigger id ``outbox-<id>-<stamp>``, and deletes them. A row the trigger rules
refuse is parked (``state`` failed, ``reason`` naming why) instead of blocking the rows after
it. docs/guarantees.md "The transactional outbox".
"""

from __future__ import annotations

from django.db import models

PENDING, FAILED = "pending", "failed"
# The PostgreSQL channel a writing transaction notifies (delivered at its commit), which wakes
# the relay before its next poll.
NOTIFY_CHANNEL = "combroker_outbox"


class OutboxTrigger(models.Model):
    id: models.BigAutoField[int, int] = models.BigAutoField(primary_key=True)
    # The trigger as a POST /trigger body (JSON text, kept byte for byte): rooms, data,
    # history and tags; never an "id" (the relay gives it).
    trigger: models.TextField[str, str] = models.TextField()
    # Microseconds since the epoch when written: with the id, the trigger id, which stays
    # unique when ids start again (a database restored or recreated).
    stamp: models.BigIntegerField[int, int] = models.BigIntegerField()
    state: models.CharField[str, str] = models.CharField(
        max_length=10, default=PENDING, choices=[(PENDING, PENDING), (FAILED, FAILED)])
    # why a failed row was parked (broker.errors OUTBOX_*, then the details)
    reason: models.TextField[str, str] = models.TextField(blank=True, default="")

    class Meta:
        db_table = "combroker_outbox"
        indexes = [models.Index(fields=["state", "id"], name="combroker_outbox_state_id")]

    def __str__(self) -> str:
        return f"outbox trigger {self.id} ({self.state})"

    @property
    def trigger_id(self) -> str:
        return trigger_id(self.id, self.stamp)


def trigger_id(row_id: int, stamp: int) -> str:
    """The trigger id a row is published with: its idempotency key (docs/guarantees.md)."""
    return f"outbox-{row_id}-{stamp}"
