"""The driver between one transport and the session core, shared by WebSocket and TCP.

A transport (broker.consumers for WebSocket, tcpgate for TCP) does three things only: it hands
in credentials once, hands in each inbound frame as text, and writes and closes when asked
through the small ``Transport`` interface. Everything else is here or below:

  transport -> codec.decode -> Session.handle -> effect on Hub/Cluster -> codec -> outbox
  hub -> deliver* (the Receiver seam) -> broker.delivery -> codec -> outbox

Outbound frames (replies and deliveries alike) go through one bounded ``broker.outbox.Outbox``,
so a reply and the deliveries around it keep their order, and a client that does not read is
closed with 4008 ``slow`` once BROKER_MAX_OUTBOX_BYTES of frames wait for it; its other state
is freed. The outbox writes synchronously while the transport takes frames (no task per
delivery); the transport's ``write_now``/``writable`` say when it is full.

What the codec allows is read from ``codec.caps`` (broker.codec), and whether a reply ends the
connection from its ``Answer``. Every call to the hub, the router and the stores is
in ``_open``, ``_resume``, ``_carry_out``/``_join``/``_admin`` (the effect executor),
``resync``, ``closed`` and the acknowledgement helpers below them.

Issue 8 (docs/guarantees.md) lives here where it needs I/O and ordering; the rules without
I/O (the seam, positions, held frames) are broker.delivery's:

- **The welcome comes first.** From ``open`` until the transport calls ``welcome()``, frames
  (deliveries while attaching, pending acknowledged messages, replays) are held; ``welcome()``
  queues the welcome, then them.
- **The seam.** A subscription to a history room joins its groups first, with its live frames
  held (``Delivery.start_seam``); then the room's history after ``since`` is read; then, after
  the reply, the replay is queued and the held frames merged into it (``Delivery.joined``).
  Triggers are recorded before they are published, so nothing falls between the read and the
  join.
- **Positions.** A frame that carries an offset of its subscription's own room is queued with
  a mark; once the transport has written it (the outbox says so), the subscription's
  ``offset`` moves up to it (``Delivery.written``).
- **Resume.** ``welcome()`` hands out a fresh token (rich dialect); ``closed()`` saves the
  subscriptions and their offsets under it for BROKER_RESUME_TTL; ``open(resume=...)`` takes
  them back (any process) for the same identity, restoring each subscription with ``since``.
- **Acknowledged messages.** Delivered ones are owed (``_owed``) until confirmed; their store
  updates run in order on one chain of tasks. A connection that closes owing some releases
  them (they are redelivered to the login's next connection); a confirmation that completes a
  message tells its sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from . import disconnect, errors, logctx, metrics, resume
from .auth import Credentials, Refused, authenticate
from .codec import Codec
from .conf import conf
from .delivery import Delivery
from .disconnect import Disconnect
from .errors import AckRefused, BrokerUnavailable
from .fanout.hub import Hub
from .history import recovered
from .identity import Identity, client_room, parse_address
from .limits import Verdict, make_bucket
from .messages import Close, Confirmed, DirectMessage, Trigger
from .outbox import Outbox, Writer
from .effects import (
    AdminAction,
    ConfirmMessage,
    Effect,
    JoinRoom,
    LeaveRooms,
    PublishRooms,
    QueryStatus,
    ReadHistory,
    SendDirect,
)
from .replies import AdminResult, Error, HistoryResult, Reply, StatusInfo, Success
from .requests import Request, Subscribe
from .session import Session
from .subscription import Subscription
from .shutdown import serving_hub

log = logging.getLogger("broker.connection")

# Seconds a closing connection may take to write out its outbox, and then to close, before it
# is given up (its transport may still hold what it buffered): a client that stopped reading
# must not keep a kick, a replace or a shutdown waiting.
CLOSE_TIMEOUT = 5.0


class Transport(Writer, Protocol):
    """A transport as the driver sees it: the outbox writes through ``write_now`` and
    ``writable`` (broker.outbox.Writer), and the driver closes it."""

    name: str  # "websocket" or "tcp"
    remote_addr: str | None

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    def __init__(self, transport: Transport, codec: Codec, *,
                 auth_deadline: float | None = None) -> None:
        """``auth_deadline``: seconds from now (the accept) to authenticated, by default
        BROKER_AUTH_DEADLINE (0 = none). A connection not authenticated by then is closed
        with 4408 ``auth-timeout`` (``_auth_expired``), whatever its transport."""
        self.transport = transport
        self._codec = codec
        self.id = secrets.token_hex(8)
        self.identity: Identity = Identity()
        self.session: Session | None = None
        self.hub: Hub | None = None
        self.connected_at = time.time()
        self._max_outbox = conf().BROKER_MAX_OUTBOX_BYTES
        self._outbox: Outbox[tuple[Subscription, int]] = Outbox(
            transport, self._max_outbox, on_overflow=self._overflowed,
            on_written=Delivery.written, name=self.id)
        self._bucket = make_bucket(conf().BROKER_RATE_LIMIT, conf().BROKER_RATE_BURST)
        self._closing = False
        self._lock = asyncio.Lock()
        # Issue 8. The token handed out in the welcome (rich dialect), and whether a presented
        # one was honoured (None: none was presented).
        self.resume_token: str | None = None
        self.resumed: bool | None = None
        self._restored: list[dict[str, Any]] = []
        # Frames queued while opening, released by welcome() after the welcome.
        self._held: list[tuple[str | bytes, tuple[Subscription, int] | None]] | None = None
        self._held_bytes = 0
        # Run after the current reply (or the welcome) is queued: history replays.
        self._follow_ups: list[Callable[[], None]] = []
        # Acknowledged messages: delivered here (for dedupe while opening), and still owed.
        self._acked_ids: OrderedDict[str, None] = OrderedDict()
        self._owed: set[str] = set()
        self._ack_io: asyncio.Future[None] | None = None
        # What becomes of each delivery, the seam and the positions (broker.delivery).
        self._delivery = Delivery(codec, self._max_outbox, push=self.push,
                                  queued_bytes=lambda: self._outbox.queued_bytes,
                                  on_slow=lambda: self.close_soon(disconnect.SLOW), name=self.id)
        # Issue 11, item 5: one total deadline from accept to authenticated.
        limit = conf().BROKER_AUTH_DEADLINE if auth_deadline is None else auth_deadline
        self._auth_by = time.monotonic() + limit if limit > 0 else None
        self._auth_timer: asyncio.TimerHandle | None = (
            asyncio.get_running_loop().call_later(limit, self._auth_expired) if limit > 0
            else None)
        self._opening = False

    @property
    def codec(self) -> Codec:
        return self._codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        """A transport that learns its protocol from the first bytes (the TCP gate) sets
        the codec after constructing the connection."""
        self._codec = codec
        self._delivery.codec = codec

    # ------------------------------------------------------------ opening

    async def open(self, creds: Credentials, resume_token: str | None = None) -> Identity:
        """Authenticate and join the hub. Raises Refused, AuthUnavailable or BrokerUnavailable.

        ``resume_token``: a token of an earlier connection (rich dialect) whose subscriptions
        to take back. The transport then calls ``welcome()``.
        """
        logctx.conn_id.set(self.id)  # the transport's task logs as this connection from now on
        self._opening = True  # the deadline's timer leaves an opening connection to this
        try:
            return await self._open(creds, resume_token)
        except BaseException:
            self._stop_auth_timer()  # refused: the transport closes it
            raise
        finally:
            self._opening = False

    async def _open(self, creds: Credentials, resume_token: str | None) -> Identity:
        c = conf()
        identity = await self._authenticate(creds)
        hub = await serving_hub()
        dest = identity.destination
        if (dest and c.BROKER_DUPLICATE_LOGIN == "reject"
                and await hub.stores.registry.destination_exists(dest)):
            raise Refused(errors.DUPLICATE_LOGIN)
        self.identity = identity
        self.session = Session(identity, max_subscriptions=c.BROKER_MAX_SUBSCRIPTIONS,
                               public_status=c.BROKER_PUBLIC_STATUS, history=c.history_policy)
        self._held = []  # from the moment the hub may deliver, until the welcome
        await hub.attach(self)
        self.hub = hub
        if dest and c.BROKER_DUPLICATE_LOGIN == "replace":
            await hub.router.close(Close(disconnect.REPLACED, destination=dest,
                                         except_id=self.id))
        if resume_token is not None and self._resumable:
            await self._resume(resume_token)
        if dest:
            try:
                pending = await hub.stores.acks.pending(dest)
            except BrokerUnavailable as exc:
                log.warning("conn %s: pending acknowledged messages not read: %s", self.id, exc)
                pending = []
            for message in pending:
                self._deliver_acked(message)
        return identity

    async def _authenticate(self, creds: Credentials) -> Identity:
        """The auth API's answer within what is left of the deadline, else ``Refused`` with
        ``auth-timeout``."""
        if self._closing:
            raise Refused(errors.AUTH_TIMEOUT)
        if self._auth_by is None:
            return await authenticate(creds)
        return await authenticate(creds, max(self._auth_by - time.monotonic(), 0.0))

    def _auth_expired(self) -> None:
        """BROKER_AUTH_DEADLINE passed: close a connection that has not authenticated."""
        self._auth_timer = None
        if self.session is not None or self._opening or self._closing:
            return
        metrics.refused(errors.AUTH_TIMEOUT)
        log.info("conn %s: not authenticated within BROKER_AUTH_DEADLINE, closing", self.id)
        self.close_soon(disconnect.AUTH_TIMEOUT)

    def _stop_auth_timer(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    @property
    def _resumable(self) -> bool:
        """Only a protocol that carries resume tokens (the rich JSON dialect)."""
        return self.codec.caps.resumable

    def welcome(self) -> None:
        """Queue the welcome, then every frame that waited for it, then the replays."""
        self._stop_auth_timer()
        if self._resumable:
            self.resume_token = resume.new_token()
        if self.resumed is None:
            frame = self.codec.welcome(self.identity, self.id, self.resume_token)
        else:
            frame = self.codec.welcome(self.identity, self.id, self.resume_token,
                                       resumed=self.resumed, restored=self._restored)
        held, self._held, self._held_bytes = self._held or [], None, 0
        self.push(frame)
        for held_frame, mark in held:
            self.push(held_frame, mark)
        self._run_follow_ups()

    def _run_follow_ups(self) -> None:
        follow_ups, self._follow_ups = self._follow_ups, []
        for follow_up in follow_ups:
            follow_up()

    async def _resume(self, token: str) -> None:
        """Take back a closed connection's subscriptions (issue 8, broker.resume)."""
        hub = self.hub
        assert hub is not None and self.session is not None
        self.resumed = False
        if not resume.plausible(token):
            return
        try:
            state = await hub.stores.resume.take(resume.token_key(token),
                                                  resume.fingerprint(self.identity))
        except BrokerUnavailable as exc:
            log.warning("conn %s: resume state not read: %s", self.id, exc)
            return
        if state is None:
            return
        self.resumed = True
        for saved in resume.decode_state(state):
            step = self.session.handle(Subscribe(saved.request_id, saved.room.original,
                                                 since=saved.offset))
            if not isinstance(step.effect, JoinRoom):
                continue  # no longer allowed (the identity's rooms changed), or invalid
            try:
                reply = await self._join(step.effect, saved.request_id)
            except Exception as exc:  # noqa: BLE001 - one subscription must not fail the rest
                self.session.undo(step.effect)
                log.warning("conn %s: subscription %r not restored: %s", self.id,
                            saved.request_id, exc)
                continue
            entry: dict[str, Any] = {"requestId": saved.request_id}
            extra = (reply.extra if isinstance(reply, Success) else None) or (
                step.reply.extra if isinstance(step.reply, Success) else None)
            if extra:
                entry.update(extra)
            self._restored.append(entry)

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "login_id": self.identity.login_id,
                "profile": str(self.identity.profile), "realm": str(self.identity.realm),
                "transport": self.transport.name,
                "remote_addr": self.transport.remote_addr,
                "connected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                              time.gmtime(self.connected_at)),
                "subscriptions": len(self.session.subscriptions) if self.session else 0}

    # ------------------------------------------------------------ inbound

    async def receive(self, request: Request) -> None:
        """Handle one decoded request. Requests of one connection run one at a time.

        A closing connection reads nothing more: its transport may still hand in what the
        client sent while a kick, a replace or a slow close flushed the outbox, and ``closed()``
        may already have let go of the hub (issue 11, item 14: each such frame was an
        AssertionError traceback).
        """
        if self._closing:
            return
        assert self.session is not None and self.hub is not None
        if self._bucket is not None:
            verdict = self._bucket.take()
            if verdict is not Verdict.ALLOWED:
                self._rate_limited(request, verdict)
                return
        async with self._lock:
            if self._closing:  # closed while this request waited for the one before it
                return
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
            ending = None
            if reply is not None:
                # A codec may answer nothing (a STOMP SUBSCRIBE without receipt), and needs the
                # request's own context (``meta``: receipt, transaction) to answer.
                answer = self.codec.answer(reply, request.meta)
                if answer.frame is not None:
                    self.push(answer.frame)
                ending = answer.ending
            if self._follow_ups:  # a history replay comes after the subscribe's reply
                self._run_follow_ups()
            # A protocol that ends the connection after this reply (STOMP: DISCONNECT, or any
            # ERROR on standard framing) says so in its answer.
            if ending is not None:
                self.close_soon(ending)

    def _rate_limited(self, request: Request, verdict: Verdict) -> None:
        """Over BROKER_RATE_LIMIT: answer ``rate-limited`` without carrying the request out;
        a client that kept on regardless (EXCEEDED), or whose protocol ends the connection
        on any error (standard STOMP), is closed with 4029."""
        metrics.counters["rate_limited"] += 1
        if verdict is Verdict.EXCEEDED:
            log.warning("conn %s: over BROKER_RATE_LIMIT, closing", self.id)
            self.close_soon(disconnect.RATE_LIMITED)
            return
        answer = self.codec.answer(Error(errors.RATE_LIMITED, request.request_id), request.meta)
        if answer.frame is not None:
            self.push(answer.frame)
        if answer.ending is not None:
            self.close_soon(disconnect.RATE_LIMITED)

    async def _carry_out(self, effect: Effect, rid: Any) -> Reply | None:
        hub = self.hub
        assert hub is not None
        match effect:
            case JoinRoom():
                return await self._join(effect, rid)
            case LeaveRooms():
                for sub in effect.subscriptions:
                    self._delivery.forget(sub)
                await hub.unsubscribe(effect.subscriptions)
            case PublishRooms():
                trigger_id = await hub.router.publish(effect.rooms, effect.data_json,
                                                      history=effect.history)
                return Success(rid, {"id": trigger_id})
            case SendDirect():
                target = parse_address(effect.destination)
                assert target is not None
                # An acknowledged message waits for a recipient that is not connected yet.
                if not effect.ack and not await hub.stores.registry.destination_exists(
                        effect.destination):
                    return Error(errors.DESTINATION_NOT_FOUND, rid)
                try:
                    message_id = await hub.router.direct(
                        self.identity.destination, effect.destination, client_room(*target),
                        effect.data_json, effect.text, ack=effect.ack,
                        content_type=effect.content_type)
                except AckRefused as exc:
                    metrics.drop(exc.code)
                    log.info("conn %s: acknowledged message to %s refused: %s", self.id,
                             effect.destination, exc.detail)
                    return Error(exc.code, rid, exc.detail)
                return Success(rid, {"id": message_id})
            case ReadHistory():
                page = await hub.stores.history.read(effect.room.key, since=effect.since,
                                                      limit=effect.limit)
                return HistoryResult(rid, effect.room, page.top, list(page.entries),
                                     None if effect.since is None
                                     else recovered(effect.since, page))
            case ConfirmMessage():
                await self._confirm(effect.message_id)
            case QueryStatus():
                conns, num_rooms = await hub.stores.registry.status()
                return StatusInfo(rid, conns, num_rooms, hub.started_at)
            case AdminAction():
                return await self._admin(effect, rid)
        return None

    async def _join(self, effect: JoinRoom, rid: Any) -> Reply | None:
        """Join the hub; for a history room also read its offset (and the replay after
        ``since``), and leave the replay and the buffered live frames to a follow-up."""
        hub = self.hub
        assert hub is not None
        sub = effect.subscription
        sub.owner = self
        rule = effect.history
        if rule is None:
            await hub.subscribe(sub)
            return None
        since = effect.since
        self._delivery.start_seam(sub)
        try:
            await hub.subscribe(sub)
        except BaseException:
            self._delivery.abort_seam(sub)
            raise
        try:
            # The whole replay: the stream is bounded by its size (MAXLEN ~, so a little more).
            page = await hub.stores.history.read(sub.room.key, since=since,
                                                  limit=0 if since is None else None)
        except BaseException:
            self._delivery.abort_seam(sub)
            await hub.unsubscribe([sub])
            raise
        extra, follow_up = self._delivery.joined(sub, since, page)
        self._follow_ups.append(follow_up)
        return Success(rid, extra)

    # ------------------------------------------------------------ deliveries (the Receiver seam)

    def deliver(self, sub: Subscription, trigger: Trigger, room_key: str,
                offset: int | None) -> None:
        """One trigger for one of this connection's subscriptions (broker.delivery decides)."""
        self._delivery.deliver(sub, trigger, room_key, offset)

    def deliver_message(self, message: DirectMessage) -> None:
        """A direct message to this connection's own destination."""
        if message.ack:
            self._deliver_acked(message)
        else:
            self.push(self.codec.message(message))

    def deliver_watched(self, sub: Subscription, message: DirectMessage) -> None:
        """A watcher's copy of a direct message (broker.delivery decides)."""
        self._delivery.deliver_watched(sub, message)

    def deliver_confirmed(self, event: Confirmed) -> None:
        """To a sender: its acknowledged message was confirmed (dialects that show it)."""
        frame = self.codec.confirmed(event)
        if frame is not None:
            self.push(frame)

    # ------------------------------------------------------------ lost live frames

    def hold_live(self) -> None:
        """The hub's subscription to Redis broke: each history subscription holds its live
        frames until ``resync`` (broker.delivery)."""
        if self.session is None or self._closing:
            return
        self._delivery.hold_live(list(self.session.subscriptions.values()))

    async def resync(self) -> None:
        """The hub has rejoined: read each held history subscription's gap from the history,
        and let broker.delivery replay it through the seam and tell the client."""
        hub, recovering = self.hub, self._delivery.recovering()
        if hub is None or self._closing:
            return
        subs = list(recovering)
        pages = await asyncio.gather(*(hub.stores.history.read(
            s.room.key, since=recovering[s], limit=None) for s in subs), return_exceptions=True)
        session = self.session
        self._delivery.resynced(
            [(sub, recovering[sub], page) for sub, page in zip(subs, pages)],
            lambda sub: (session is not None
                         and session.subscriptions.get(sub.request_id_json) is sub))

    async def _admin(self, effect: AdminAction, rid: Any) -> Reply:
        hub = self.hub
        assert hub is not None
        if effect.action == "connections":
            return AdminResult(rid, {"action": "connections",
                                     "connections": await hub.stores.registry.connections()})
        if effect.action == "stats":
            procs = await hub.stores.registry.stats()
            totals = {k: sum(p.get(k, 0) for p in procs) for k in (
                "connections", "triggers_per_s", "deliveries_per_s", "drops_per_s",
                "triggers", "deliveries", "drops")}
            conns, num_rooms = await hub.stores.registry.status()
            totals.update(connections=conns, rooms=num_rooms)
            return AdminResult(rid, {"action": "stats", "stats": totals, "processes": procs})
        # kick
        conn_id, login_id = effect.args.get("connection_id"), effect.args.get("login_id")
        if not isinstance(conn_id, str) and not isinstance(login_id, str):
            return Error(errors.INVALID_MESSAGE, rid, "kick needs connection_id or login_id")
        targets = [c for c in await hub.stores.registry.connections()
                   if c.get("id") == conn_id or (login_id is not None
                                                 and c.get("login_id") == login_id)]
        if not targets:
            return Error(errors.CONNECTION_NOT_FOUND, rid)
        await hub.router.close(Close(disconnect.KICKED, conn_id=conn_id, login_id=login_id))
        return AdminResult(rid, {"action": "kick", "kicked": [c["id"] for c in targets]})

    # ------------------------------------------------------------ outbound

    def push(self, frame: str | bytes, mark: tuple[Subscription, int] | None = None) -> None:
        """Queue a frame for writing; never blocks. Overflow closes the connection as slow.

        ``mark``: (subscription, offset) of a delivery; the subscription's resume position
        becomes that offset once the frame has been written.
        """
        if self._closing:
            return
        if self._held is not None:  # opening: the welcome is not queued yet
            self._held.append((frame, mark))
            self._held_bytes += len(frame)
            if self._held_bytes > self._max_outbox:
                metrics.drop("slow", len(self._held))
                self._held, self._held_bytes = [], 0
                self.close_soon(disconnect.SLOW)
            return
        if mark is not None:
            self._delivery.queued(mark)
        self._outbox.push(frame, mark)

    def _overflowed(self, dropped: int) -> None:
        metrics.drop("slow", dropped)
        log.warning("conn %s: outbox over %d bytes, closing as slow", self.id, self._max_outbox)
        self.close_soon(disconnect.SLOW)

    async def flush(self) -> None:
        await self._outbox.flush()

    @property
    def closing(self) -> bool:
        """True once the connection is being closed: nothing more is read or queued."""
        return self._closing

    def close_soon(self, why: Disconnect) -> None:
        if self._closing:
            return
        self._closing = True
        asyncio.ensure_future(self._close(why.code, why.reason))

    async def _close(self, code: int, reason: str) -> None:
        logctx.conn_id.set(self.id)
        if code == errors.CLOSE_SLOW:
            # The outbox waits for a reader that stopped reading: flushing would wait forever.
            self._outbox.close()
        try:
            await asyncio.wait_for(self.flush(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._outbox.close()
            log.info("conn %s: outbox not written out within %.0f s, closing anyway", self.id,
                     CLOSE_TIMEOUT)
        try:
            await asyncio.wait_for(self.transport.close(code, reason), CLOSE_TIMEOUT)
        except TimeoutError:
            log.info("conn %s: close not sent within %.0f s", self.id, CLOSE_TIMEOUT)
        finally:
            await self.closed()

    async def closed(self) -> None:
        """The transport is gone: leave the hub and forget every subscription."""
        self._closing = True
        self._stop_auth_timer()
        hub, self.hub = self.hub, None
        if hub is not None and self.session is not None:
            subs = list(self.session.subscriptions.values())
            self.session.subscriptions.clear()
            # Saved first: a client that reconnects at once finds its state.
            await self._save_resume(hub, subs)
            await hub.detach(self, subs)
            await self._release_acks(hub)

    # ------------------------------------------------------------ resume, acknowledgements

    async def _save_resume(self, hub: Hub, subs: list[Subscription]) -> None:
        if self.resume_token is None or not subs:
            return  # nothing to take back: a resume then simply says "resumed": false
        state = resume.encode_state([resume.SavedSubscription(s.request_id, s.room, s.offset)
                                     for s in subs if s.pattern is None])
        try:
            await hub.stores.resume.save(resume.token_key(self.resume_token),
                                          resume.fingerprint(self.identity), state,
                                          conf().BROKER_RESUME_TTL)
        except Exception as exc:  # noqa: BLE001 - closing goes on; the client re-subscribes
            log.warning("conn %s: resume state not saved: %s", self.id, exc)

    def _deliver_acked(self, message: DirectMessage) -> None:
        """An acknowledged message for this connection's login (live, or pending at open)."""
        message_id = message.id
        if message_id in self._acked_ids or self._closing:
            return  # the live copy and the stored one of a message sent while opening
        self._acked_ids[message_id] = None
        if len(self._acked_ids) > 4096:
            self._acked_ids.popitem(last=False)
        self.push(self.codec.message(message))
        hub = self.hub
        acks = hub.stores.acks if hub is not None else None
        if acks is None:
            return
        if self.codec.caps.confirms:
            self._owed.add(message_id)
            self._ack_chain(lambda: acks.hold(message_id, self.id))
        else:
            # A codec without ``confirm`` (STOMP): queued for writing counts as confirmed.
            self._ack_chain(lambda: self._complete(message_id))

    def _ack_chain(self, make: Callable[[], Awaitable[Any]]) -> None:
        """Run store updates of acknowledged messages one after the other, in call order."""
        previous = self._ack_io

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(Exception):
                    await previous
            try:
                await make()
            except Exception as exc:  # noqa: BLE001 - the message is then redelivered
                log.warning("conn %s: acknowledged message update failed: %s", self.id, exc)

        self._ack_io = asyncio.ensure_future(run())

    async def _confirm(self, message_id: str) -> None:
        if self._ack_io is not None:  # the hold of that message is recorded first
            with contextlib.suppress(Exception):
                await self._ack_io
        await self._complete(message_id)

    async def _complete(self, message_id: str) -> None:
        hub, dest = self.hub, self.identity.destination
        if hub is None or dest is None:
            return
        done, sender = await hub.stores.acks.confirm(message_id, dest, self.id)
        self._owed.discard(message_id)
        if done and sender:
            await hub.router.confirmed(sender, message_id, dest)

    async def _release_acks(self, hub: Hub) -> None:
        dest = self.identity.destination
        if self._ack_io is not None:
            with contextlib.suppress(Exception):
                await self._ack_io
        if not self._owed or dest is None:
            return
        owed, self._owed = list(self._owed), set()
        try:
            for message_id, sender in await hub.stores.acks.release(self.id, dest, owed):
                if sender:
                    await hub.router.confirmed(sender, message_id, dest)
        except Exception as exc:  # noqa: BLE001 - holds expire with their messages
            log.warning("conn %s: acknowledged messages not released: %s", self.id, exc)

