"""The settings fan-out obeys, read once where the hub (or a standalone router) is built.

``FanoutSettings.of(conf())`` is the only place fan-out reads ``broker.conf``; everything in
``broker.fanout`` gets this value passed in, so a test builds a hub with the settings it means.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..conf import Settings
from ..history import HistoryPolicy
from ..presence import PresencePolicy
from ..stores import AckQuota


@dataclass(frozen=True, slots=True)
class FanoutSettings:
    history_policy: HistoryPolicy  # BROKER_HISTORY: which rooms record triggers
    history_meta_ttl: float  # BROKER_HISTORY_META_TTL
    trigger_id_ttl: float  # BROKER_TRIGGER_ID_TTL: a client's trigger id is recorded once
    ack_ttl: float  # BROKER_ACK_TTL
    ack_quota: AckQuota  # BROKER_ACK_MAX_*
    registry_ttl: float  # BROKER_REGISTRY_TTL: the heartbeat runs every third of it
    # BROKER_PRESENCE, BROKER_PRESENCE_OFF, BROKER_LIFECYCLE_ROOMS
    presence_policy: PresencePolicy = field(default_factory=PresencePolicy)
    webhooks: bool = False  # BROKER_WEBHOOK_URL is set: lifecycle events go to its queue

    @classmethod
    def of(cls, c: Settings) -> FanoutSettings:
        return cls(c.history_policy, c.BROKER_HISTORY_META_TTL, c.BROKER_TRIGGER_ID_TTL,
                   c.BROKER_ACK_TTL,
                   AckQuota(c.BROKER_ACK_MAX_PENDING_PER_RECIPIENT,
                            c.BROKER_ACK_MAX_BYTES_PER_RECIPIENT,
                            c.BROKER_ACK_MAX_PENDING_PER_SENDER,
                            c.BROKER_ACK_MAX_BYTES_PER_SENDER, c.BROKER_ACK_MAX_TOTAL_BYTES),
                   c.BROKER_REGISTRY_TTL, c.presence_policy, bool(c.BROKER_WEBHOOK_URL))
