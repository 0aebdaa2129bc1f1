"""The driver between one transport and its session, shared by every transport.

The session (broker.session) decides; this file obeys. It owns what needs I/O or the event
loop: the transport and its bounded ``Outbox``, the auth deadline's timer and the hub it
joined; the acknowledgement store updates run in order in broker.acknowledgements. Its parts,
in the life of a connection:

  open:     auth API -> duplicate-login check -> hub.attach -> resume -> pending acked messages
  requests: transport -> codec.decode -> Session.receive -> broker.execute.carry_out
            -> Session.effect_done/effect_failed -> codec -> outbox
  delivery: hub -> Receiver methods below -> Session (broker.delivery) -> codec -> outbox
  close:    Session.end -> flush the outbox -> transport.close -> closed(): save the resume
            state, leave the hub, release owed acknowledged messages

Outbound frames (replies and deliveries alike) go through the one ``broker.outbox.Outbox``, so
a reply and the deliveries around it keep their order, and a client that does not read is closed
with 4008 ``slow`` once BROKER_MAX_OUTBOX_BYTES of frames wait for it. The outbox writes
synchronously while the transport takes frames; ``write_now``/``writable`` say when it is full.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Protocol

from . import disconnect, errors, logctx, metrics
from .acknowledgements import Acknowledgements
from .auth import AuthUnavailable, Refused, authenticate_keeping, reauthenticate
from .credentials import Credentials
from .codec import Codec
from .conf import conf
from .delivery import Delivery, Mark
from .disconnect import Disconnect
from .effects import ConfirmMessage
from .errors import AckRefused, BrokerUnavailable
from .execute import carry_out
from .fanout.hub import Hub
from .identity import Identity
from .messages import Close, Confirmed, DirectMessage, Notify, PresenceEvent, Trigger
from .outbox import Outbox, Writer
from .requests import Request
from .session import Session, SessionSettings
from .shutdown import serving_hub
from .subscription import Subscription

log = logging.getLogger("broker.connection")

# Seconds a closing connection may take to write out its outbox, and then to close, before it
# is given up (its transport may still hold what it buffered): a client that stopped reading
# must not keep a kick, a replace or a shutdown waiting.
CLOSE_TIMEOUT = 5.0


# Tasks the server API's messages start on a connection (a re-check, leaving the hub), held
# until done (the event loop keeps only weak references to tasks).
_tasks: set[asyncio.Task[None]] = set()


def _background(work: Any) -> None:
    task = asyncio.ensure_future(work)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


class Transport(Writer, Protocol):
    """A transport as the driver sees it: the outbox writes through ``write_now`` and
    ``writable`` (broker.outbox.Writer), and the driver closes it."""

    name: str  # "websocket" or "tcp"
    remote_addr: str | None

    async def close(self, code: int, reason: str) -> None: ...


class Connection:
    __slots__ = (
        "transport", "id", "hub", "connected_at", "_outbox", "session", "_acks", "_closer",
        "_auth_timer", "_auth_request",
    )

    def __init__(self, transport: Transport, codec: Codec | None = None, *,
                 auth_deadline: float | None = None) -> None:
        """``codec``: None until the transport knows it (set ``codec`` then);
        ``auth_deadline``: seconds from now (the accept) to authenticated, by default
        BROKER_AUTH_DEADLINE (0 = none)."""
        self.transport = transport
        self.id = secrets.token_hex(8)
        self.hub: Hub | None = None
        self.connected_at = time.time()
        settings = SessionSettings.from_conf(conf(), auth_deadline=auth_deadline)
        self._outbox: Outbox[tuple[Subscription, int]] = Outbox(
            transport, settings.max_outbox_bytes, on_overflow=self._overflowed,
            on_written=Delivery.written, name=self.id)
        self.session = Session(settings, codec, self._outbox, end=self._ending, name=self.id)
        self._acks = Acknowledgements(self.session, self.id)
        self._closer: asyncio.Future[None] | None = None
        # The headers the auth API was asked with, as their request lines (None: static
        # keys), for a re-check: all a connection keeps of its credentials
        # (docs/performance.md "Memory").
        self._auth_request: bytes | None = None
        self._auth_timer: asyncio.TimerHandle | None = (
            asyncio.get_running_loop().call_later(settings.auth_deadline,
                                                  self.session.auth_expired)
            if settings.auth_deadline > 0 else None)

    @property
    def codec(self) -> Codec:
        return self.session.codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        self.session.codec = codec

    @property
    def identity(self) -> Identity:
        return self.session.identity

    @property
    def closing(self) -> bool:
        """True once the connection is being closed: nothing more is read or queued."""
        return self.session.closing

    def tell_positions(self, writing: Callable[[Mark], None]) -> None:
        """A transport that writes each history subscription's position with the frame that
        moves it (SSE event ids): ``writing(mark)`` just before that frame is handed to it."""
        self._outbox.on_writing = writing

    # ------------------------------------------------------------ opening

    async def open(self, creds: Credentials, resume_token: str | None = None) -> Identity:
        """Authenticate and join the hub. Raises Refused, AuthUnavailable or BrokerUnavailable.

        ``resume_token``: a token of an earlier connection whose subscriptions to take back.
        The transport then calls ``welcome()``.
        """
        logctx.conn_id.set(self.id)  # the transport's task logs as this connection from now on
        try:
            return await self._open(creds, resume_token)
        except BaseException:
            self._stop_auth_timer()  # refused: the transport closes it
            raise

    async def _open(self, creds: Credentials, resume_token: str | None) -> Identity:
        session = self.session
        if session.closing:  # the auth deadline passed before the credentials came
            raise Refused(errors.AUTH_TIMEOUT)
        budget = session.authenticating()
        identity, self._auth_request = await (authenticate_keeping(creds) if budget is None
                                              else authenticate_keeping(creds, budget))
        hub = await serving_hub()
        dest = identity.destination
        if (dest is not None and session.refuses_duplicate(identity)
                and await hub.stores.registry.destination_exists(dest)):
            raise Refused(errors.DUPLICATE_LOGIN)
        session.open(identity)
        self._acks.hub = hub  # first: what the hub delivers while joining is held in its store
        await hub.attach(self)
        self.hub = hub
        if dest is not None and session.replaces_duplicate:
            await hub.router.close(Close(disconnect.REPLACED, destination=dest,
                                         except_id=self.id, opened_before=self.connected_at))
        if resume_token is not None:
            await self._resume(hub, resume_token)
        if dest is not None:
            try:
                pending = await hub.stores.acks.pending(dest)
            except BrokerUnavailable as exc:
                log.warning("conn %s: pending acknowledged messages not read: %s", self.id, exc)
                pending = []
            for message in pending:
                self._acks.update(session.deliver_acked(message))
        return identity

    async def _resume(self, hub: Hub, token: str) -> None:
        """Take back a closed connection's subscriptions (broker.resume)."""
        lookup = self.session.resume_lookup(token)
        if lookup is None:
            return
        try:
            state = await hub.stores.resume.take(lookup.key, lookup.fingerprint)
        except BrokerUnavailable as exc:
            log.warning("conn %s: resume state not read: %s", self.id, exc)
            return
        for step in self.session.restore(state):
            assert step.effect is not None
            try:
                result = await carry_out(step.effect, hub, self)
            except Exception as exc:  # noqa: BLE001 - one subscription must not fail the rest
                result = exc
            self.session.restored(step, result)

    def welcome(self) -> None:
        """Queue the welcome, then every frame that waited for it, then the replays."""
        self._stop_auth_timer()
        self.session.welcome(self.id)

    def _stop_auth_timer(self) -> None:
        if self._auth_timer is not None:
            self._auth_timer.cancel()
            self._auth_timer = None

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "login_id": self.identity.login_id,
                "profile": str(self.identity.profile), "realm": str(self.identity.realm),
                "transport": self.transport.name,
                "remote_addr": self.transport.remote_addr,
                "connected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                              time.gmtime(self.connected_at)),
                "subscriptions": len(self.session.subscriptions)}

    # ------------------------------------------------------------ inbound

    async def receive(self, request: Request) -> None:
        """Handle one decoded request; the transport awaits each before the next."""
        session = self.session
        effect = session.receive(request)
        if effect is None:
            return
        hub = self.hub
        assert hub is not None
        try:
            if isinstance(effect, ConfirmMessage):
                await self._acks.confirm(effect.message_id)
                result = None
            else:
                result = await carry_out(effect, hub, self)
        except BrokerUnavailable as exc:
            log.warning("conn %s: %s", self.id, exc)
            session.effect_failed(errors.SERVICE_UNAVAILABLE, str(exc))
        except AckRefused as exc:
            metrics.drop(exc.code)
            log.info("conn %s: acknowledged message refused: %s", self.id, exc.detail)
            session.effect_failed(exc.code, exc.detail)
        except Exception:  # noqa: BLE001 - a bug must not end the connection
            log.exception("conn %s: request failed", self.id)
            session.effect_failed(errors.INTERNAL_ERROR)
        else:
            session.effect_done(result)

    # ------------------------------------------------------------ the Receiver seam

    def deliver(self, sub: Subscription, trigger: Trigger, room_key: str,
                offset: int | None) -> None:
        self.session.delivery.deliver(sub, trigger, room_key, offset)

    def deliver_message(self, message: DirectMessage) -> None:
        self._acks.update(self.session.deliver_message(message))

    def deliver_watched(self, sub: Subscription, message: DirectMessage) -> None:
        self.session.delivery.deliver_watched(sub, message)

    def deliver_confirmed(self, event: Confirmed) -> None:
        self.session.deliver_confirmed(event)

    def deliver_presence(self, sub: Subscription, event: PresenceEvent) -> None:
        self.session.deliver_presence(sub, event)

    def hold_live(self) -> None:
        self.session.hold_live()

    async def resync(self) -> None:
        """The hub has rejoined: read each held history subscription's gap, and let the
        session replay it and tell the client."""
        hub, recovering = self.hub, self.session.recovering()
        if hub is None or self.closing:
            return  # (with nothing to recover the client is still told: a plain resync)
        subs = list(recovering)
        pages = await asyncio.gather(*(hub.stores.history.read(
            s.room.key, since=recovering[s], limit=None) for s in subs), return_exceptions=True)
        self.session.resynced([(sub, recovering[sub], page) for sub, page in zip(subs, pages)])

    # ------------------------------------------------------------ the server API (broker.api)

    def deliver_notice(self, notice: Notify) -> None:
        self.session.notify(notice.id, notice.data_json, broadcast=notice.logins is None)

    def drop_rooms(self, room_keys: list[str]) -> None:
        subs = self.session.drop_rooms(room_keys)
        if subs:
            _background(self._left(subs, errors.UNSUBSCRIBED_BY_SERVER))

    def recheck(self) -> None:
        if self._auth_request is not None and not self.closing:
            _background(self._recheck(self._auth_request))

    async def _recheck(self, request: bytes) -> None:
        """Ask the auth API again; drop what it no longer allows, or close with ``revoked``
        when it no longer admits the credentials. An API that does not answer changes
        nothing (logged): only an answer revokes."""
        logctx.conn_id.set(self.id)
        try:
            identity = await reauthenticate(request)
        except Refused as exc:
            log.info("conn %s: re-check refused (%s), closing", self.id, exc.reason)
            self.session.end(disconnect.REVOKED)
            return
        except AuthUnavailable:
            log.warning("conn %s: re-check not done: the auth API is unavailable", self.id)
            return
        subs = self.session.rechecked(identity)
        if subs:
            await self._left(subs, errors.UNSUBSCRIBED_BY_RECHECK)

    async def _left(self, subs: list[Subscription], reason: str) -> None:
        """``subs`` were dropped by the session: leave the hub, then tell the client."""
        hub = self.hub
        if hub is not None:
            try:
                await hub.unsubscribe(subs)
            except Exception:  # noqa: BLE001 - the upkeep heals the registry and the groups
                log.exception("conn %s: leaving the hub for an unsubscribe failed", self.id)
        self.session.unsubscribed(subs, reason)

    # ------------------------------------------------------------ outbound and the close

    def push(self, frame: str | bytes) -> None:
        """Queue a frame of the transport's own (a heart-beat); never blocks."""
        self.session.push(frame)

    def _overflowed(self, dropped: int) -> None:
        metrics.drop("slow", dropped)
        log.warning("conn %s: outbox over %d bytes, closing as slow", self.id,
                    self.session.settings.max_outbox_bytes)
        self.session.end(disconnect.SLOW)

    async def flush(self) -> None:
        await self._outbox.flush()

    def close_soon(self, why: Disconnect) -> None:
        self.session.end(why)

    def _ending(self, why: Disconnect) -> None:
        """The session ended: write out what is queued, then close the transport."""
        self._closer = asyncio.ensure_future(self._close(why))

    async def _close(self, why: Disconnect) -> None:
        logctx.conn_id.set(self.id)
        if why.code == errors.CLOSE_SLOW:
            # The outbox waits for a reader that stopped reading: flushing would wait forever.
            self._outbox.close()
        try:
            await asyncio.wait_for(self.flush(), CLOSE_TIMEOUT)
        except TimeoutError:
            self._outbox.close()
            log.info("conn %s: outbox not written out within %.0f s, closing anyway", self.id,
                     CLOSE_TIMEOUT)
        try:
            await asyncio.wait_for(self.transport.close(why.code, why.reason), CLOSE_TIMEOUT)
        except TimeoutError:
            log.info("conn %s: close not sent within %.0f s", self.id, CLOSE_TIMEOUT)
        finally:
            await self.closed()

    async def closed(self) -> None:
        """The transport is gone: save the resume state, leave the hub, release the owed."""
        self._stop_auth_timer()
        subs = self.session.close()
        hub, self.hub = self.hub, None
        if hub is None:
            return
        saved = self.session.saved_state(subs)  # first: a client that reconnects at once
        if saved is not None:                   # finds its state
            try:
                await hub.stores.resume.save(saved.key, saved.fingerprint, saved.state,
                                             saved.ttl)
            except Exception as exc:  # noqa: BLE001 - closing goes on; the client re-subscribes
                log.warning("conn %s: resume state not saved: %s", self.id, exc)
        await hub.detach(self, subs)
        await self._acks.release()
