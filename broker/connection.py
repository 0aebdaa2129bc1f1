"""The driver between one transport and the session core, shared by WebSocket and TCP.

A transport (broker.consumers for WebSocket, tcpgate for TCP) does three things only: it hands
in credentials once, hands in each inbound frame as text, and writes and closes when asked
through the small ``Transport`` interface. Everything else is here or below:

  transport -> codec.decode -> Session.handle -> effect on Hub/Cluster -> codec -> outbox

Outbound frames (replies and deliveries alike) go through one bounded outbox, so a reply and
the deliveries around it keep their order, and a client that does not read is closed with
4008 ``slow`` once BROKER_MAX_OUTBOX_BYTES of frames wait for it; its other state is freed.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from typing import Any, Protocol

from . import errors, metrics
from .auth import Credentials, Refused, authenticate
from .conf import conf
from .errors import BrokerUnavailable
from .hub import Hub, get_hub
from .identity import Identity, client_room, parse_destination
from .session import (
    AdminAction,
    AdminResult,
    Effect,
    Error,
    JoinRoom,
    LeaveRooms,
    PublishRooms,
    QueryStatus,
    Reply,
    Request,
    SendDirect,
    Session,
    StatusInfo,
    Success,
)

log = logging.getLogger("broker.connection")


class Transport(Protocol):
    name: str  # "websocket" or "tcp"
    remote_addr: str | None

    async def write(self, frame: str | bytes) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    def __init__(self, transport: Transport, codec: Any) -> None:
        self.transport = transport
        self.codec = codec
        self.id = secrets.token_hex(8)
        self.identity: Identity = Identity()
        self.session: Session | None = None
        self.hub: Hub | None = None
        self.connected_at = time.time()
        self._outbox: deque[str | bytes] = deque()
        self._outbox_bytes = 0
        self._max_outbox = conf().BROKER_MAX_OUTBOX_BYTES
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------ opening

    async def open(self, creds: Credentials) -> Identity:
        """Authenticate and join the hub. Raises Refused, AuthUnavailable or BrokerUnavailable."""
        c = conf()
        identity = await authenticate(creds)
        hub = await get_hub()
        dest = identity.destination
        if dest and c.BROKER_DUPLICATE_LOGIN == "reject" and await hub.cluster.destination_exists(dest):
            raise Refused(errors.DUPLICATE_LOGIN)
        self.identity = identity
        self.session = Session(identity, max_subscriptions=c.BROKER_MAX_SUBSCRIPTIONS,
                               public_status=c.BROKER_PUBLIC_STATUS)
        await hub.attach(self)
        self.hub = hub
        if dest and c.BROKER_DUPLICATE_LOGIN == "replace":
            await hub.router.control(action="close", destination=dest, code=errors.CLOSE_REPLACED,
                                     reason=errors.REPLACED, **{"except": self.id})
        return identity

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "login_id": self.identity.login_id,
                "profile": str(self.identity.profile), "transport": self.transport.name,
                "remote_addr": self.transport.remote_addr,
                "connected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                              time.gmtime(self.connected_at)),
                "subscriptions": len(self.session.subscriptions) if self.session else 0}

    # ------------------------------------------------------------ inbound

    async def receive(self, request: Request) -> None:
        """Handle one decoded request. Requests of one connection run one at a time."""
        assert self.session is not None and self.hub is not None
        async with self._lock:
            step = self.session.handle(request)
            reply = step.reply
            rid = request.request_id
            if step.effect is not None:
                try:
                    reply = await self._carry_out(step.effect, rid) or reply
                except BrokerUnavailable as exc:
                    self.session.undo(step.effect)
                    log.warning("conn %s: %s", self.id, exc)
                    reply = Error(errors.SERVICE_UNAVAILABLE, rid, str(exc))
                except Exception:  # noqa: BLE001 - a bug must not end the connection
                    self.session.undo(step.effect)
                    log.exception("conn %s: request failed", self.id)
                    reply = Error(errors.INTERNAL_ERROR, rid)
            if reply is not None:
                # A codec may answer nothing (a STOMP SUBSCRIBE without receipt), and may need
                # the request's own headers (``meta``: receipt, transaction) to answer.
                meta = request.meta
                frame = self.codec.reply(reply) if meta is None else self.codec.reply(reply, meta)
                if frame is not None:
                    self.push(frame)
            # A protocol that ends the connection after this reply (STOMP: DISCONNECT, or any
            # ERROR on standard framing) says so through its codec's ``ending``.
            ending = getattr(self.codec, "ending", None)
            if ending is not None:
                self.close_soon(*ending)

    async def _carry_out(self, effect: Effect, rid: Any) -> Reply | None:
        hub = self.hub
        assert hub is not None
        match effect:
            case JoinRoom():
                effect.subscription.owner = self
                await hub.subscribe(effect.subscription)
            case LeaveRooms():
                await hub.unsubscribe(effect.subscriptions)
            case PublishRooms():
                trigger_id = await hub.router.publish(effect.rooms, effect.data_json)
                return Success(rid, {"id": trigger_id})
            case SendDirect():
                target = parse_destination(effect.destination)
                assert target is not None
                if not await hub.cluster.destination_exists(effect.destination):
                    return Error(errors.DESTINATION_NOT_FOUND, rid)
                message_id = await hub.router.direct(
                    self.identity.destination, effect.destination, client_room(*target),
                    effect.data_json, effect.text)
                return Success(rid, {"id": message_id})
            case QueryStatus():
                conns, num_rooms = await hub.cluster.status()
                return StatusInfo(rid, conns, num_rooms, hub.started_at)
            case AdminAction():
                return await self._admin(effect, rid)
        return None

    async def _admin(self, effect: AdminAction, rid: Any) -> Reply:
        hub = self.hub
        assert hub is not None
        if effect.action == "connections":
            return AdminResult(rid, {"action": "connections",
                                     "connections": await hub.cluster.connections()})
        if effect.action == "stats":
            procs = await hub.cluster.stats()
            totals = {k: sum(p.get(k, 0) for p in procs) for k in (
                "connections", "triggers_per_s", "deliveries_per_s", "drops_per_s",
                "triggers", "deliveries", "drops")}
            conns, num_rooms = await hub.cluster.status()
            totals.update(connections=conns, rooms=num_rooms)
            return AdminResult(rid, {"action": "stats", "stats": totals, "processes": procs})
        # kick
        conn_id, login_id = effect.args.get("connection_id"), effect.args.get("login_id")
        if not isinstance(conn_id, str) and not isinstance(login_id, str):
            return Error(errors.INVALID_MESSAGE, rid, "kick needs connection_id or login_id")
        targets = [c for c in await hub.cluster.connections()
                   if c.get("id") == conn_id or (login_id is not None
                                                 and c.get("login_id") == login_id)]
        if not targets:
            return Error(errors.CONNECTION_NOT_FOUND, rid)
        await hub.router.control(action="close", conn_id=conn_id, login_id=login_id,
                                 code=errors.CLOSE_KICKED, reason=errors.KICKED)
        return AdminResult(rid, {"action": "kick", "kicked": [c["id"] for c in targets]})

    # ------------------------------------------------------------ outbound

    def push(self, frame: str | bytes) -> None:
        """Queue a frame for writing; never blocks. Overflow closes the connection as slow."""
        if self._closing:
            return
        self._outbox.append(frame)
        self._outbox_bytes += len(frame)
        if self._outbox_bytes > self._max_outbox:
            metrics.drop("slow", len(self._outbox))
            log.warning("conn %s: outbox over %d bytes, closing as slow", self.id,
                        self._max_outbox)
            self._outbox.clear()
            self._outbox_bytes = 0
            self.close_soon(errors.CLOSE_SLOW, errors.SLOW)
            return
        if self._writer is None:
            self._writer = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        try:
            while self._outbox:
                frame = self._outbox.popleft()
                self._outbox_bytes -= len(frame)
                await self.transport.write(frame)
        except Exception as exc:
            log.info("conn %s: write failed: %s", self.id, type(exc).__name__)
        finally:
            self._writer = None

    async def flush(self) -> None:
        while self._writer is not None:
            await asyncio.sleep(0)
            if self._writer is not None:
                await asyncio.wait([self._writer])

    @property
    def closing(self) -> bool:
        """True once the connection is being closed: nothing more is read or queued."""
        return self._closing

    def close_soon(self, code: int, reason: str) -> None:
        if self._closing:
            return
        self._closing = True
        asyncio.ensure_future(self._close(code, reason))

    async def _close(self, code: int, reason: str) -> None:
        if code == errors.CLOSE_SLOW and self._writer is not None:
            # The writer waits for a reader that stopped reading (a transport whose write
            # awaits drain, like the TCP gate's): flushing would wait forever.
            self._writer.cancel()
        await self.flush()
        try:
            await self.transport.close(code, reason)
        finally:
            await self.closed()

    async def closed(self) -> None:
        """The transport is gone: leave the hub and forget every subscription."""
        self._closing = True
        hub, self.hub = self.hub, None
        if hub is not None and self.session is not None:
            subs = list(self.session.subscriptions.values())
            self.session.subscriptions.clear()
            await hub.detach(self, subs)

