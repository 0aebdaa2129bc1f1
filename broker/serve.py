"""The serve loop: the life of one connection, whatever carries it.

A transport adapter (``broker.consumers`` for WebSocket, ``tcpgate.transport`` for TCP) only
does its framing: it says who is at the other end, hands in the next frame, writes, closes, and
decides at its start which codec speaks (a subprotocol, a first byte). Everything that makes a
client connected, and every way it is refused, is decided once, here:

- **Admission.** A place among BROKER_MAX_CONNECTIONS (``limits.admission``) is taken before
  anything else and given back exactly once, as soon as the connection reads nothing more. A
  transport that can answer before it accepts (``over_capacity_grace`` None: the WebSocket
  handshake, HTTP 503) is denied at once; one that cannot (TCP) is served with that short auth
  deadline and asks again for a place when its credentials arrive, so a place freed meanwhile
  (a port probe's) is taken, else it is refused in its framing.
- **Credentials.** From the handshake (``Framing.credentials``), or read from the first frame
  by the codec (``Framing.connect_frame``: ``Codec.connect`` reads a STOMP CONNECT, a JSON-lines
  ``connect`` line, and says which heart-beats it negotiated). The auth deadline of the
  ``Connection`` runs from here (``Connection(auth_deadline=)``).
- **Opening or refusing**, with the one refusal table (``refusal``): which frame is sent
  (none, the codec's refusal, a STOMP ERROR), which metric counts it, and which close code ends
  it. A transport without close codes (``close_codes`` False) closes quietly after a refusal
  frame (the frame said why), and says why in its framing otherwise.
- **The welcome, the shutdown check** (a client authenticated while ``graceful_shutdown`` was
  closing is closed with 1001 at once), and **heart-beats** (``broker.heartbeat``, with the
  periods the connect negotiated: ``Connecting.heartbeats``).
- **The receive loop**: each frame through the codec into ``Connection.receive``, frames over
  ``Framing.max_bytes`` closed with 1009 (where the framing does not bound them itself), until
  the input ends or the connection closes; then the close.

Nothing here asks which codec it holds: it calls the ``broker.codec.Codec`` protocol, and the
adapter's ``Framing`` says what differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol, TypeAlias

from . import connection, disconnect, errors, heartbeat, logctx, metrics
from .auth import AuthUnavailable, Refused
from .credentials import Credentials
from .codec import NO_HEARTBEATS, BadConnect, Codec, Connecting, Heartbeats
from .codecs.stompframe import Frame
from .connection import Connection
from .delivery import Mark
from .disconnect import Disconnect
from .errors import BrokerUnavailable
from .limits import admission

log = logging.getLogger("broker.serve")

# Seconds a refusal frame may take to be written before the connection is closed anyway.
REFUSAL_WRITE_TIMEOUT: Final = 2.0


# ------------------------------------------------------------------ what an adapter hands in

@dataclass(frozen=True, slots=True)
class Malformed:
    """The byte stream broke (a STOMP syntax error on TCP): no frame follows. Before the
    credentials it is refused with an ERROR ``malformed-frame``; after, the codec answers it
    (``codec.malformed``) and the connection closes."""

    detail: str


class _TooBig:
    def __repr__(self) -> str:
        return "TOO_BIG"


# A frame over the bound its framing enforces itself (a JSON line past the reader's limit):
# closed with 1009 ``message too big``, whether the connection is open yet or not.
TOO_BIG: Final = _TooBig()

# What ``Transport.receive`` returns: a whole frame (text, bytes, or a parsed STOMP frame),
# ``Malformed``, ``TOO_BIG``, or None at the end of the input (EOF, the socket is gone).
Inbound: TypeAlias = "str | bytes | Frame | Malformed | _TooBig | None"


@dataclass(slots=True)
class Framing:
    """What the adapter decided at its start (the one place a codec is chosen).

    ``explicit_refusal``: every refusal is said with a frame (the rich JSON dialect, STOMP);
    the plain JSON dialect says only ``{"is_authorized": false}`` to a refused login and
    nothing when the auth API is unavailable. ``binary``: binary messages are frames of the
    codec (STOMP); otherwise they are not text (the codec is handed None).
    ``max_bytes``: the bound on one frame the serve loop enforces (None: the framing's parser
    enforces it). ``credentials`` (and ``resume_token``) from the handshake, else
    ``connect_frame``: the first frame is a connect frame, read by ``codec.connect``.
    ``origin_allowed`` False: refused with 1008, nothing else said.
    ``heartbeats``: where the handshake carries the credentials, the heart-beats the transport
    writes (a connect frame negotiates its own); ``heartbeat``: the transport's own heart-beat
    frame, for a codec that has none (SSE: the empty frame, written as a comment).
    ``positions``: told each history subscription's position just before the frame that
    moves it is written (``Connection.tell_positions``; SSE writes them as event ids).
    """

    codec: Codec
    explicit_refusal: bool
    binary: bool = False
    max_bytes: int | None = None
    credentials: Credentials | None = None
    resume_token: str | None = None
    connect_frame: bool = False
    origin_allowed: bool = True
    heartbeats: Heartbeats = NO_HEARTBEATS
    heartbeat: str | bytes | None = None
    positions: Callable[[Mark], None] | None = None


class Transport(connection.Transport, Protocol):
    """What an adapter provides: ``broker.connection.Transport`` (``name``, ``remote_addr``,
    ``write_now``/``writable`` for the outbox, ``close``), ``heartbeat.Link`` (``last_read``,
    ``last_write``: it records both), an awaited ``write`` for refusals, and its framing."""

    last_read: float
    last_write: float

    @property
    def close_codes(self) -> bool:
        """True when closes carry a code (WebSocket); False: why is said in the framing."""

    @property
    def over_capacity_grace(self) -> float | None:
        """None: refused before it is accepted (``deny``); else the seconds an over-capacity
        connection has to send its credentials, in case a place is freed meanwhile."""

    async def write(self, frame: str | bytes) -> None: ...
    async def close(self, code: int, reason: str) -> None: ...
    async def deny(self, reason: str) -> None: ...
    async def start(self) -> Framing | None: ...
    async def receive(self) -> Inbound: ...
    async def wait_closed(self) -> None: ...


# ------------------------------------------------------------------ the refusal table

@dataclass(frozen=True, slots=True)
class Refusal:
    """How one refusal goes on the wire: ``frame`` (None: nothing is said), ``cause`` counted
    in ``combroker_connections_refused_by_cause_total`` (None: not counted), then ``close``."""

    frame: str | bytes | None
    cause: str | None
    close: Disconnect


def refusal(why: BaseException | Malformed | str, codec: Codec, explicit: bool) -> Refusal:
    """The one refusal table (PROTOCOL §3 "Close codes"):

    ============================  ===================  ==================  ==================
    why                           frame                counted as          WebSocket close
    ============================  ===================  ==================  ==================
    ``Refused`` (auth-timeout)    codec.refused        auth-timeout        4408 auth-timeout
    ``Refused`` (other)           codec.refused        its cause           4003, plain: 1000
    auth API / Redis unavailable  codec.refused, not   auth-unavailable,   1011 with reason
                                  in the plain dialect service-unavailable
    ``BadConnect`` (1st frame)    codec.refused        refused             4003
    ``Malformed`` (1st frame)     codec.refused with   not counted         (TCP only)
                                  the detail (ERROR)
    over capacity, shutting down  codec.refused        the reason          (TCP only: the
                                                                           WebSocket is
                                                                           denied with 503)
    origin not allowed            none                 origin-not-allowed  1008 with reason
    ============================  ===================  ==================  ==================
    """
    if isinstance(why, Refused):
        # 4408 for the auth deadline in every dialect, as when it passes before any credentials
        # (Connection._auth_expired); otherwise 4003 after a refusal frame, 1000 in the
        # High-templar dialect, with no reason (§3)
        close = (disconnect.AUTH_TIMEOUT if why.reason == errors.AUTH_TIMEOUT else
                 Disconnect(errors.CLOSE_REFUSED if explicit else errors.CLOSE_NORMAL, ""))
        return Refusal(codec.refused(why.reason), why.cause, close)
    if isinstance(why, (AuthUnavailable, BrokerUnavailable)):
        reason = (errors.AUTH_UNAVAILABLE if isinstance(why, AuthUnavailable)
                  else errors.SERVICE_UNAVAILABLE)
        return Refusal(codec.refused(reason) if explicit else None, reason,
                       Disconnect(errors.CLOSE_AUTH_UNAVAILABLE, reason))
    if isinstance(why, BadConnect):
        return Refusal(codec.refused(str(why)), errors.REFUSED,
                       Disconnect(errors.CLOSE_REFUSED, ""))
    if isinstance(why, Malformed):  # only a byte stream breaks
        return Refusal(codec.refused(errors.MALFORMED_FRAME, why.detail), None,
                       Disconnect(errors.CLOSE_REFUSED, errors.MALFORMED_FRAME))
    if why == errors.ORIGIN_NOT_ALLOWED:
        return Refusal(None, why, disconnect.ORIGIN_NOT_ALLOWED)
    if isinstance(why, str):  # over capacity or shutting down, asked again at the credentials
        return Refusal(codec.refused(why), why, Disconnect(errors.CLOSE_REFUSED, why))
    raise TypeError(f"no refusal for {why!r}")


async def _refuse(transport: Transport, r: Refusal) -> None:
    if r.cause is not None:
        metrics.refused(r.cause)
    why = r.close
    if r.frame is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(transport.write(r.frame), REFUSAL_WRITE_TIMEOUT)
        if not transport.close_codes:  # the frame said why: nothing more to say
            why = Disconnect(errors.CLOSE_NORMAL, why.reason)
    await transport.close(why.code, why.reason)


# ------------------------------------------------------------------ the loop

async def serve(transport: Transport, *, max_connections: int) -> None:
    """Serve one connection until it is closed (see the module's docstring)."""
    refused = admission.admit(max_connections)
    grace = transport.over_capacity_grace
    if refused is not None and grace is None:
        metrics.refused(refused)
        log.warning("handshake refused: %s", refused)
        await transport.deny(refused)
        return
    serving = _Serving(transport, max_connections, admitted=refused is None)
    await serving.run(None if serving.admitted else grace)


class _Serving:
    """One connection being served: whether it holds a place, its driver, its heart-beats."""

    __slots__ = ("transport", "max_connections", "admitted")

    def __init__(self, transport: Transport, max_connections: int, *, admitted: bool) -> None:
        self.transport = transport
        self.max_connections = max_connections
        self.admitted = admitted

    async def run(self, auth_deadline: float | None) -> None:
        transport = self.transport
        # Made at the accept, before its codec is known (a TCP connection's first byte chooses
        # it): the auth deadline covers the wait for that byte too.
        try:
            conn = Connection(transport, None,
                              auth_deadline=auth_deadline)
        except BaseException:
            self._release()  # it will never read: its place is free
            raise
        logctx.conn_id.set(conn.id)
        beats: asyncio.Task[None] | None = None
        cancelled = False
        why = disconnect.EOF
        try:
            framing = await transport.start()
            if framing is not None:
                conn.codec = framing.codec
                if framing.positions is not None:
                    conn.tell_positions(framing.positions)
                heartbeats = await self._connect(conn, framing)
                if heartbeats is not None:
                    # The auth API had the credentials: nothing holds them while connected.
                    framing.credentials = framing.resume_token = None
                    beat = (framing.heartbeat if framing.heartbeat is not None
                            else framing.codec.heartbeat())
                    if beat is not None:
                        beats = heartbeat.start(conn, heartbeats, beat, transport)
                    await _receive(conn, transport, framing)
        except asyncio.CancelledError:
            cancelled = True  # the server gave up on the application: no more waiting
            raise
        except Exception:  # noqa: BLE001 - a bug: this connection ends, told why; no other
            log.exception("connection failed")
            why = disconnect.INTERNAL
        finally:
            self._release()  # it reads nothing more: its place is free
            if beats is not None:
                beats.cancel()
            if not conn.closing:  # write out what is queued, then close
                conn.close_soon(why)
            if not cancelled:
                await transport.wait_closed()
                await conn.closed()

    def _release(self) -> None:
        if self.admitted:
            self.admitted = False
            admission.release()

    async def _connect(self, conn: Connection, framing: Framing) -> Heartbeats | None:
        """Credentials, then open (and welcome) or refuse. Once the connection is open, the
        heart-beats its connect negotiated; None when it was not opened."""
        transport, codec = self.transport, framing.codec
        explicit = framing.explicit_refusal
        if not framing.origin_allowed:  # PROTOCOL §3: 1008, the auth API is not asked
            await _refuse(transport, refusal(errors.ORIGIN_NOT_ALLOWED, codec, explicit))
            return None
        if framing.credentials is not None:
            connecting = Connecting(framing.credentials, framing.resume_token,
                                    framing.heartbeats)
        else:
            assert framing.connect_frame
            first = await transport.receive()
            if first is None or conn.closing:  # gone, or the auth deadline passed
                return None
            if isinstance(first, _TooBig):
                conn.close_soon(disconnect.TOO_BIG)
                return None
            if isinstance(first, Malformed):
                await _refuse(transport, refusal(first, codec, explicit))
                return None
            try:
                connecting = codec.connect(first, transport.remote_addr)
            except BadConnect as exc:
                await _refuse(transport, refusal(exc, codec, explicit))
                return None
        if not self.admitted:  # over capacity at the accept: a place may have been freed
            reason = admission.admit(self.max_connections)
            self.admitted = reason is None
            if reason is not None:
                await _refuse(transport, refusal(reason, codec, explicit))
                return None
        try:
            await conn.open(connecting.credentials, connecting.resume_token)
        except (Refused, AuthUnavailable, BrokerUnavailable) as exc:
            await _refuse(transport, refusal(exc, codec, explicit))
            return None
        conn.welcome()  # the welcome, then what waited for it (broker.connection)
        if admission.shutting_down:  # authenticated while graceful_shutdown was closing
            conn.close_soon(disconnect.GOING_AWAY)
        return connecting.heartbeats


async def _receive(conn: Connection, transport: Transport, framing: Framing) -> None:
    """Each frame through the codec into the driver, until the input ends or it closes.

    The per-frame path: one await on the adapter, a length test, the codec, the driver; no
    task, no lock. A text frame is only encoded to count its bytes when its length could
    exceed the bound (a character is at most 4 bytes of UTF-8).
    """
    codec = framing.codec
    decode = codec.decode
    receive = transport.receive
    limit = framing.max_bytes
    short = limit // 4 if limit is not None else 0
    binary = framing.binary
    while not conn.closing:
        data = await receive()
        if data is None or conn.closing:
            return
        if isinstance(data, str):
            if limit is not None and len(data) > short and len(data.encode()) > limit:
                conn.close_soon(disconnect.TOO_BIG)
                return
        elif isinstance(data, bytes):
            if limit is not None and len(data) > limit:
                conn.close_soon(disconnect.TOO_BIG)
                return
            if not binary:
                await conn.receive(decode(None))  # not text, to a text codec
                continue
        elif isinstance(data, Malformed):
            await conn.receive(codec.malformed(data.detail))
            return
        elif isinstance(data, _TooBig):  # TOO_BIG
            conn.close_soon(disconnect.TOO_BIG)
            return
        await conn.receive(decode(data))
