"""What the cluster stores, one noun per module, gathered in one ``Stores`` value.

- ``registry``: which process holds which connections, rooms and destinations; wildcard masks;
  each process's stats (``broker.stores.registry``).
- ``history``: each recorded room's triggers and offsets (``broker.stores.history``).
- ``resume``: closed connections' subscriptions, kept for their resume tokens
  (``broker.stores.resume``).
- ``acks``: acknowledged direct messages until confirmed (``broker.stores.acks``).
- ``presence``: each room's members and connection counts; joins and leaves
  (``broker.stores.presence``).
- ``persistent``: each login's persistent subscriptions (``broker.stores.persistent``).
- ``tickets``: the connection tickets already used, until they expire
  (``broker.stores.tickets``).
- ``webhooks``: lifecycle events waiting to be POSTed to the backend, and the sender's lease
  (``broker.stores.webhooks``).

Each is a small ``Protocol`` with a memory implementation (the in-memory channel layer: one
process) and a Redis one. The Redis ones share one ``RedisClient`` (``broker.stores.redis``:
one connection pool, the mapping of its errors to ``BrokerUnavailable``, the Lua scripts), on
the first URL of BROKER_REDIS_URL. Which one a process uses is decided once, where the hub is
built from the settings (``broker.fanout.running``); nothing below reads settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .acks import AckQuota, AckStore, MemoryAcks, RedisAcks
from .history import HistoryStore, MemoryHistory, RedisHistory
from .persistent import MemoryPersistent, PersistentStore, RedisPersistent
from .presence import MemoryPresence, PresenceStore, RedisPresence
from .redis import RedisClient
from .registry import MemoryRegistry, RedisRegistry, Registry
from .resume import MemoryResume, RedisResume, ResumeStore
from .tickets import MemoryTickets, RedisTickets, TicketStore
from .webhooks import MemoryWebhookQueue, RedisWebhookQueue, WebhookQueue

__all__ = ["AckQuota", "AckStore", "HistoryStore", "PersistentStore", "PresenceStore",
           "Registry", "ResumeStore", "Stores", "TicketStore", "WebhookQueue"]

# A process whose heartbeat (every BROKER_REGISTRY_TTL/3) is older than this part of the TTL
# is dead to presence: swept within the TTL of its last heartbeat by the next upkeep tick.
PRESENCE_DEAD_AFTER = 0.8


@dataclass(frozen=True, slots=True)
class Stores:
    registry: Registry
    history: HistoryStore
    resume: ResumeStore
    acks: AckStore
    presence: PresenceStore
    client: RedisClient | None = None  # the Redis they share; None in memory
    webhooks: WebhookQueue = field(default_factory=MemoryWebhookQueue)
    persistent: PersistentStore = field(default_factory=MemoryPersistent)
    tickets: TicketStore = field(default_factory=MemoryTickets)

    @classmethod
    def memory(cls, proc_id: str, webhook_max_pending: int = 100_000) -> Stores:
        return cls(MemoryRegistry(proc_id), MemoryHistory(), MemoryResume(), MemoryAcks(),
                   MemoryPresence(), webhooks=MemoryWebhookQueue(webhook_max_pending))

    @classmethod
    def redis(cls, proc_id: str, url: str, prefix: str, registry_ttl: float,
              webhook_max_pending: int = 100_000) -> Stores:
        """Every store on one client: ``url``'s Redis, keys under ``prefix``; ``registry_ttl``
        (BROKER_REGISTRY_TTL): how long a silent process's entries and holds count;
        ``webhook_max_pending`` (BROKER_WEBHOOK_MAX_PENDING): the webhook queue's bound."""
        client = RedisClient(url, prefix)
        return cls(RedisRegistry(client, proc_id, registry_ttl), RedisHistory(client),
                   RedisResume(client), RedisAcks(client, proc_id, registry_ttl),
                   RedisPresence(client, proc_id, registry_ttl * PRESENCE_DEAD_AFTER), client,
                   webhooks=RedisWebhookQueue(client, webhook_max_pending),
                   persistent=RedisPersistent(client), tickets=RedisTickets(client))

    async def ping(self) -> bool:
        """Redis answers (always True in memory): /healthz."""
        return True if self.client is None else await self.client.ping()

    async def close(self) -> None:
        """Leave the registry now (not after its TTL), then close the client."""
        await self.registry.leave()
        if self.client is not None:
            await self.client.close()
