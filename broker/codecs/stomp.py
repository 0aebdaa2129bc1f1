"""The STOMP codec: STOMP 1.2 frames <-> session requests and replies (PROTOCOL §4).

It owns the meaning of STOMP frames, for every transport that carries them: the WebSocket
subprotocols ``v12.stomp``/``v11.stomp``/``stomp`` and the TCP gate's standard and
Communication Broker (CB) framings. The byte-level syntax is ``stompframe``'s; the rules are
the session's. Like ``JsonCodec`` it has no I/O: ``decode`` turns a frame into a session
request, and ``welcome``/``refused``/``answer``/``publish``/``watched``/``message`` turn the
session's answers and the hub's deliveries into frames (``broker.codec.Codec``).

Two dialects, chosen per connection:

- standard (``cb=False``): headers escaped, and every ERROR ends the connection (the spec).
- Communication Broker (``cb=True``: CB framing, or the ``stomp`` WebSocket subprotocol of its
  JS client): unescaped, tolerant headers; a SUBSCRIBE/UNSUBSCRIBE/SEND carrying
  ``transaction`` is answered with ``ACK`` ``transaction``/``error-desc``; a request error keeps
  the connection open, only a malformed frame ends it; direct messages name the sender's login
  in ``origin`` and carry ``transaction``.

Per-request headers (``receipt``, ``transaction``) travel in the request's ``meta``, a
``StompContext``, and come back with its reply, so the codec keeps no table of requests in
flight. A reply after which the protocol closes the connection (DISCONNECT, an ERROR) says so
in its ``Answer.ending`` (broker.codec); the driver (``broker.connection``) then closes the
connection once the reply is written. The heart-beats a CONNECT negotiates are a value handed
to the serve loop (``connect``: ``Connecting.heartbeats``), not attributes read afterwards.

What the codec keeps is the dialect's framing state, as h11 keeps its own: what a later frame
of this connection is written or read with, never a rule of the session.

- the negotiated heart-beats, which CONNECTED echoes (``connect`` -> ``welcome``);
- the client's own destination and the id of a SUBSCRIBE to it (``_inbox``): direct messages
  to the client are named by that id (``subscription``), and its UNSUBSCRIBE ends only that;
- STOMP acknowledgement (standard dialect): the ack mode of each subscription that is not
  ``auto``, and the last ``ack`` id handed out, which an ACK/NACK must name.

The one rule it still holds of the session's is which profile a regex watch without a
``/<profile>/`` prefix watches (``_subscribe_pattern``, from the identity's rule): it belongs
in ``broker.session``.

Output is bytes on TCP (``framer`` given: CB length-prefixed, else NUL-terminated) and text
on WebSocket (``text=True``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any

import re2

from .. import disconnect, errors
from ..credentials import Credentials
from ..codec import (
    NO_HEARTBEATS, Answer, BadConnect, Capabilities, Connecting, Heartbeats, ParsedFrame, Wire,
)
from ..identity import (
    Identity, Profile, parse_address, parse_destination, public_destination, public_room,
)
from ..messages import Confirmed, DirectMessage, PresenceEvent
from ..presence import member_view
from ..jsontext import dump_json, load_json
from ..replies import AdminResult, Error, Pong, Reply, StatusInfo, Success
from ..requests import (
    CodecContext,
    Goodbye,
    Invalid,
    Ping,
    Publish,
    Request,
    Send,
    Subscribe,
    Unsubscribe,
    UnsubscribeAll,
)
from ..subscription import Subscription
from .stompframe import CBFramer, Frame, StompFrameError, encode_frame, is_heartbeat, parse_frame

SERVER = "combroker/0.1"
STOMP_SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "stomp")  # in order of preference
CB_SUBPROTOCOL = "stomp"  # the Communication Broker's JS client
ROOM_PREFIX = "/room/"
BROADCAST_DESTINATION = "/broadcast"  # the server API's broadcast (``broadcast``)
MAX_PATTERN = 512  # characters of a destination-type:1 regular expression
ACK_MODES = frozenset({"auto", "client", "client-individual"})

# CONNECT headers that are credentials, never forwarded to the auth API as headers.
_SECRET_HEADERS = frozenset({"passcode", "secret-key", "login", "ticket"})
_PROFILE_PREFIX = re.compile(r"\^?/(\w+)/")
_PROFILES = frozenset(p.value for p in Profile)

# Regex watches (destination-type:1) are matched by RE2, which never backtracks: a match costs
# time linear in the destination, bounded by the size of the compiled program. RE2 refuses
# what it cannot do in linear time (backreferences, look-around) and Python's verbose mode.
# PATTERN_MAX_MEM is RE2's memory budget for one pattern (its program and its DFA cache): a
# pattern that compiles to more is refused ("pattern too large"), and it bounds the cost of a
# match. No client destination is longer than MAX_MATCHED (logins are at most 256 characters):
# a longer one is never matched. docs/protocol.md §4.3 gives the measured worst case.
PATTERN_MAX_MEM = 64 << 10
MAX_MATCHED = 512
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a refused pattern is the client's error, told to it
_RE2_OPTIONS.max_mem = PATTERN_MAX_MEM


class PatternRefused(ValueError):
    """A destination-type:1 pattern that is not accepted; ``str()`` says why."""


class WatchPattern:
    """A regex watch's pattern (subscription.DestinationPattern), matched by RE2 in linear time."""

    __slots__ = ("_regexp", "pattern")

    def __init__(self, source: str) -> None:
        if len(source) > MAX_PATTERN:
            raise PatternRefused(f"longer than {MAX_PATTERN} characters")
        try:
            self._regexp = re2.compile(source, _RE2_OPTIONS)
        except re2.error as exc:
            text = exc.args[0] if exc.args else "invalid"
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            raise PatternRefused(f"not an RE2 regular expression: {text}") from None
        self.pattern = source

    def fullmatch(self, destination: str) -> bool:
        return len(destination) <= MAX_MATCHED and self._regexp.fullmatch(destination) is not None


@dataclass(frozen=True, slots=True)
class StompContext:
    """A STOMP request's codec context (``Request.meta``), handed back with its reply.

    ``command``: the frame's (DISCONNECT ends the connection once answered); ``receipt`` and
    ``transaction``: its headers, which the reply names; ``ack_added``: the subscription id
    whose ack mode this SUBSCRIBE recorded, forgotten if it is refused; ``fatal``: the input
    was malformed, and its ERROR ends the connection in either dialect."""

    command: str | None = None
    receipt: str | None = None
    transaction: str | None = None
    ack_added: str | None = None
    fatal: bool = False


_NO_CONTEXT = StompContext()
_MALFORMED = StompContext(fatal=True)


def _heartbeat_pair(value: str | None) -> tuple[int, int]:
    try:
        cx, cy = (int(v.strip()) for v in (value or "0,0").split(",", 1))
    except ValueError:
        return 0, 0
    return max(cx, 0), max(cy, 0)


def negotiate(offer_ms: int, header: str | None) -> Heartbeats:
    """STOMP 1.2 heart-beating: the server's ``offer_ms`` (both ways; 0 = none) against the
    client's ``heart-beat: cx,cy``. Each way, beats only when both sides want them, at the
    slower of the two periods: we send every max(offer, cy), the client every max(offer, cx)."""
    cx, cy = _heartbeat_pair(header)
    return Heartbeats(out_ms=max(offer_ms, cy) if offer_ms and cy else 0,
                      in_ms=max(offer_ms, cx) if offer_ms and cx else 0)


def _data_of(text: str, content_type: str | None) -> Any:
    """A STOMP body as the data JSON clients see: parsed JSON when it is JSON, else the text."""
    if content_type is None or "json" in content_type.lower():
        try:
            return load_json(text)
        except ValueError:
            pass
    return text


def _rooms_of(destination: str) -> Any:
    """``/room/<room>`` or ``/room/[<room>, ...]`` -> the JSON value; ValueError if not JSON."""
    return load_json(destination[len(ROOM_PREFIX):])


class StompCodec:
    def __init__(self, *, cb: bool = False, framer: CBFramer | None = None, text: bool = False,
                 heartbeat_ms: int = 0, max_header_bytes: int = 65_536) -> None:
        self.cb = cb
        self.framer = framer
        self.text = text
        self.heartbeat_ms = heartbeat_ms  # what the server offers both ways; 0 = none
        self.max_header_bytes = max_header_bytes
        # Standard STOMP ends the connection on any ERROR; nothing resumes or confirms
        # (broker.codec.Capabilities).
        self.caps = Capabilities(ends_on_error=not cb)
        # The dialect's framing state (see the module's docstring).
        self._heartbeats = NO_HEARTBEATS  # negotiated by ``connect``, echoed by CONNECTED
        self._own_destination: str | None = None  # the client's, known from ``welcome``
        self._inbox: str | None = None  # id of a SUBSCRIBE to the client's own destination
        # STOMP acknowledgement (standard dialect): the ack mode of each subscription that is
        # not ``auto``, by id; and the last ``ack`` id handed out (ids are 1, 2, 3, ...).
        self._ack_modes: dict[str, str] = {}
        self._ack_issued = 0

    # ------------------------------------------------------------ framing

    def encode(self, frame: Frame) -> str | bytes:
        if self.framer is not None:
            return self.framer.encode(frame)
        data = encode_frame(frame, escape=False if self.cb else None)
        return data.decode("utf-8", "replace") if self.text else data

    def parse(self, data: str | bytes | ParsedFrame) -> ParsedFrame:
        """One frame from a whole message (WebSocket); raises StompFrameError."""
        if not isinstance(data, (str, bytes)):
            return data
        raw = data.encode("utf-8") if isinstance(data, str) else data
        return parse_frame(raw, max_header_bytes=self.max_header_bytes, cb_compat=self.cb)

    def heartbeat(self) -> str | bytes:
        return "\n" if self.text else b"\n"

    # ------------------------------------------------------------ connecting

    def connect(self, data: Wire, remote_addr: str | None) -> Connecting:
        """The first frame, which must be CONNECT or STOMP (§4.2): its credentials and the
        heart-beats it negotiates. Raises BadConnect (its text is the ERROR's ``message``)
        for anything else."""
        try:
            frame = self.parse(data or b"")
        except StompFrameError as exc:
            raise BadConnect(str(exc)) from exc
        if frame.command not in ("CONNECT", "STOMP"):
            raise BadConnect(errors.NOT_CONNECTED)
        h = {k.lower(): v for k, v in frame.headers.items()}
        self._heartbeats = negotiate(self.heartbeat_ms, h.get("heart-beat"))
        credentials = Credentials(
            headers={k: v for k, v in h.items() if k not in _SECRET_HEADERS},
            token=h.get("token") or None, remote_addr=remote_addr,
            app_key=h.get("secret-key"), login_id=h.get("login"),
            profile_key=h.get("passcode"), ticket=h.get("ticket") or None,
        )
        return Connecting(credentials, heartbeats=self._heartbeats)

    def welcome(self, identity: Identity, connection_id: str, resume_token: str | None,
                resumed: bool | None = None, restored: list[dict[str, Any]] | None = None,
                persistent: list[dict[str, Any]] | None = None,
                *, resume_ttl: float | None = None) -> str | bytes:
        # STOMP sessions are not resumable: resume_token, resumed, restored and resume_ttl are
        # the rich JSON dialect's. ``persistent``: the subscription ids restored, as a JSON list
        # in the ``persistent`` header (their MESSAGEs carry them as ``subscription``).
        self._own_destination = identity.public_destination
        offer, negotiated = self.heartbeat_ms, self._heartbeats
        # The offer, in each direction the client wants beats (0 where it wants none, or
        # where the server offers none: then nothing was negotiated that way).
        beats = (f"{offer if negotiated.out_ms else 0},"
                 f"{offer if negotiated.in_ms else 0}")
        headers = {
            "version": "1.2", "heart-beat": beats, "session": connection_id,
            "server": SERVER, "session-id": connection_id, "login": identity.login_id or "",
            "connection-id": connection_id, "destination": identity.public_destination or "",
            "profile-code": str(identity.profile.code), "profile-desc": str(identity.profile),
        }
        restored_ids = [p["requestId"] for p in persistent or () if "refused" not in p]
        if restored_ids:
            headers["persistent"] = dump_json(restored_ids)
        return self.encode(Frame("CONNECTED", headers))

    def refused(self, reason: str, detail: str | None = None) -> str | bytes:
        return self.error_frame(reason, detail)

    def error_frame(self, message: str, detail: str | None = None,
                    receipt: str | None = None) -> str | bytes:
        headers = {"message": message, "content-type": "text/plain"}
        if self.cb:  # the CB JS client reads only error-desc of an ERROR, as the original sets it
            headers["error-desc"] = message
        if receipt is not None:
            headers["receipt-id"] = receipt
        return self.encode(Frame("ERROR", headers, (detail or message).encode("utf-8")))

    def closing_frame(self, code: int, reason: str) -> str | bytes | None:
        """What a transport without close codes (TCP) sends before closing for ``reason``."""
        return None if code == errors.CLOSE_NORMAL else self.error_frame(reason)

    # ------------------------------------------------------------ inbound

    def decode(self, data: Wire) -> Request:
        if data is None or isinstance(data, (str, bytes)):
            raw = data.encode("utf-8") if isinstance(data, str) else (data or b"")
            if is_heartbeat(raw):
                return Ping()
            try:
                data = self.parse(raw)
            except StompFrameError as exc:
                return self.malformed(str(exc))
        return self._request(data)

    def malformed(self, detail: str) -> Request:
        """Input the STOMP syntax rejects: answered with ERROR, then the connection closes."""
        return Invalid(errors.MALFORMED_FRAME, None, detail, meta=_MALFORMED)

    def _request(self, frame: ParsedFrame) -> Request:
        h, command = frame.headers, frame.command
        receipt = h.get("receipt")
        if receipt is None and command == "DISCONNECT":
            receipt = h.get("receipt-id")  # the Communication Broker's spelling
        meta = StompContext(command, receipt, h.get("transaction"))
        if command == "SUBSCRIBE":
            return self._subscribe(frame, meta)
        if command == "UNSUBSCRIBE":
            sid = h.get("id")
            if sid is None:
                self._ack_modes.clear()
                return UnsubscribeAll(meta=meta)
            self._ack_modes.pop(sid, None)
            if sid == self._inbox:
                self._inbox = None
                return Ping(meta=meta)
            return Unsubscribe(sid, meta=meta)
        if command == "SEND":
            return self._send(frame, meta)
        if command == "DISCONNECT":
            return Goodbye(meta=meta)
        if command in ("ACK", "NACK"):
            return self._acknowledge(frame, meta)
        if command in ("CONNECT", "STOMP"):
            return Invalid(errors.MESSAGE_TYPE_NOT_ALLOWED, None, "already connected", meta)
        if command in ("BEGIN", "COMMIT", "ABORT"):
            return Invalid(errors.MESSAGE_TYPE_NOT_ALLOWED, None,
                           "transactions are not supported", meta)
        return Invalid(errors.MESSAGE_TYPE_NOT_ALLOWED, None, f"{command} is a server frame",
                       meta)

    def _subscribe(self, frame: ParsedFrame, meta: StompContext) -> Request:
        h = frame.headers
        dest = h.get("destination")
        sid = h.get("id")
        if sid is None and self.cb:
            sid = dest  # its clients name subscriptions by destination
        if dest is None:
            return Invalid(errors.INVALID_MESSAGE, sid, "SUBSCRIBE needs a destination", meta)
        mode = h.get("ack", "auto")
        if mode not in ACK_MODES:
            return Invalid(errors.INVALID_MESSAGE, sid,
                           "ack must be auto, client or client-individual", meta)
        if mode != "auto" and not self.cb and sid is not None and sid not in self._ack_modes:
            # From now on, so that no MESSAGE of this subscription goes out without ``ack``;
            # forgotten again if the SUBSCRIBE is refused (see reply).
            self._ack_modes[sid] = mode
            meta = replace(meta, ack_added=sid)
        if h.get("destination-type", "").strip() == "1":
            return self._subscribe_pattern(sid, dest, meta, _flag_header(h, "persistent"))
        event_filter = _filter_header(h)
        if event_filter is _NOT_JSON:
            return Invalid(errors.INVALID_FILTER, sid, "the filter header is not JSON", meta)
        if dest.startswith(ROOM_PREFIX):
            try:
                room = _rooms_of(dest)
            except ValueError:
                return Invalid(errors.INVALID_ROOM, sid, "/room/ must be followed by a JSON room",
                               meta)
            return Subscribe(sid, room, meta=meta, presence=_flag_header(h, "presence"),
                             filter=event_filter, persistent=_flag_header(h, "persistent"))
        target = parse_destination(dest, wildcard=True)
        if target is None:
            return Invalid(errors.INVALID_ROOM, sid,
                           "destination must be /room/<json>, /<profile>/<login> or /<profile>/*",
                           meta)
        if self._own_destination is not None and dest == self._own_destination:
            # Its own destination: direct messages arrive anyway; name them by this id.
            if sid is None:
                return Invalid(errors.NO_REQUEST_ID, None, None, meta)
            self._inbox = sid
            return Ping(meta=meta)
        profile, login = target
        return Subscribe(sid, {"client": login, "profile": str(profile)}, meta=meta,
                         presence=_flag_header(h, "presence"), filter=event_filter,
                         persistent=_flag_header(h, "persistent"))

    def _subscribe_pattern(self, sid: Any, source: str, meta: StompContext,
                           persistent: Any = False) -> Request:
        """destination-type:1: watch the connected clients whose destination fully matches.

        It is a wildcard watch of one profile's client rooms, filtered by the regex in the hub.
        The profile is the regex's literal ``/<profile>/`` prefix; without one the room is None
        and the session picks the only profile the identity may watch.
        """
        try:
            pattern = WatchPattern(source)
        except PatternRefused as exc:
            return Invalid(errors.INVALID_PATTERN, sid, f"regular expression refused: {exc}",
                           meta)
        prefix = _PROFILE_PREFIX.match(source)
        if prefix and prefix.group(1) in _PROFILES:
            room: Any = {"client": "*", "profile": prefix.group(1)}
        else:
            room = None  # which profile it watches is the session's decision
        return Subscribe(sid, room, pattern=pattern, meta=meta, persistent=persistent)

    def _acknowledge(self, frame: ParsedFrame, meta: StompContext) -> Request:
        """ACK/NACK (STOMP 1.2: ``id`` is a MESSAGE's ``ack`` header). Deliveries are
        at-most-once fan-out: an ACK confirms nothing further and a NACK drops the message
        (docs/protocol.md §4). An id this connection never handed out is an error, as the spec
        asks; one acknowledged before is accepted again."""
        if self.cb:
            return Ping(meta=meta)  # its clients' ACK frames carry no meaning for the broker
        ack_id = frame.headers.get("id")
        if ack_id is None:
            return Invalid(errors.INVALID_MESSAGE, None, f"{frame.command} needs an id", meta)
        # the length first: int() of a digit string past 4,300 characters raises ValueError
        if not (len(ack_id) <= len(str(self._ack_issued)) and ack_id.isascii()
                and ack_id.isdigit() and 0 < int(ack_id) <= self._ack_issued):
            return Invalid(errors.INVALID_MESSAGE, None,
                           f"{frame.command} id {ack_id[:64]!r} was not given to a MESSAGE on "
                           "this connection", meta)
        return Ping(meta=meta)

    def _ack_header(self, headers: dict[str, str], subscription: str | None) -> None:
        """A MESSAGE of a client or client-individual subscription carries ``ack``."""
        if subscription is not None and subscription in self._ack_modes:
            self._ack_issued += 1
            headers["ack"] = str(self._ack_issued)

    def _send(self, frame: ParsedFrame, meta: StompContext) -> Request:
        dest = frame.headers.get("destination")
        if dest is None:
            return Invalid(errors.INVALID_MESSAGE, None, "SEND needs a destination", meta)
        try:
            text = frame.body.decode("utf-8")
        except UnicodeDecodeError:
            return Invalid(errors.INVALID_MESSAGE, None, "the body must be UTF-8 text", meta)
        content_type = frame.headers.get("content-type")
        data = _data_of(text, content_type)
        if dest.startswith(ROOM_PREFIX):
            try:
                rooms = _rooms_of(dest)
            except ValueError:
                return Invalid(errors.INVALID_ROOM, None, "/room/ must be followed by a JSON room",
                               meta)
            return Publish(None, rooms if isinstance(rooms, list) else [rooms], data, meta=meta)
        return Send(None, dest, data, text=text, content_type=content_type, meta=meta)

    # ------------------------------------------------------------ replies

    def answer(self, reply: Reply, context: CodecContext = None) -> Answer:
        """broker.codec.Codec: the reply's frame, and whether the connection ends after it.
        ``context``: the request's ``StompContext`` (None: a reply to no frame)."""
        meta = context if isinstance(context, StompContext) else _NO_CONTEXT
        receipt, transaction = meta.receipt, meta.transaction
        if isinstance(reply, Error):
            if meta.ack_added is not None:
                self._ack_modes.pop(meta.ack_added, None)
            fatal = meta.fatal
            if self.cb and transaction is not None and not fatal:
                return Answer(self._ack(transaction, reply.code, receipt))
            ending = (disconnect.Disconnect(errors.CLOSE_NORMAL, reply.code)
                      if fatal or self.caps.ends_on_error else None)
            return Answer(self.error_frame(reply.code, reply.detail, receipt), ending)
        if isinstance(reply, (Success, Pong)):
            ending = (disconnect.Disconnect(errors.CLOSE_NORMAL, "disconnect")
                      if meta.command == "DISCONNECT" else None)
            if transaction is not None:
                return Answer(self._ack(transaction, "OK", receipt), ending)
            if receipt is not None:
                return Answer(self.encode(Frame("RECEIPT", {"receipt-id": receipt})), ending)
            return Answer(None, ending)
        if isinstance(reply, StatusInfo):
            body: dict[str, Any] = {"open_connections": reply.open_connections,
                                    "num_rooms": reply.num_rooms,
                                    "online_since": reply.online_since}
        elif isinstance(reply, AdminResult):
            body = dict(reply.result)
        else:  # pragma: no cover - every Reply type is handled above
            return Answer(None)
        return Answer(self.encode(Frame("MESSAGE", {"content-type": "application/json"},
                                        dump_json(body).encode("utf-8"))))

    def _ack(self, transaction: str, desc: str, receipt: str | None) -> str | bytes:
        headers = {"transaction": transaction, "error-desc": desc}
        if receipt is not None:
            headers["receipt-id"] = receipt
        return self.encode(Frame("ACK", headers))

    # ------------------------------------------------------------ deliveries

    def publish(self, sub: Subscription, data_json: str, room_key: str, trigger_id: str,
                offset: int | None = None) -> str | bytes:
        # ``offset`` (a recorded trigger's, issue 8) is not shown: STOMP frames stay as they are.
        subscription = str(sub.request_id)
        headers = {"subscription": subscription, "message-id": trigger_id,
                   "destination": self._destination_of(sub), "content-type": "application/json"}
        self._ack_header(headers, subscription)
        return self.encode(Frame("MESSAGE", headers, data_json.encode("utf-8")))

    def watched(self, sub: Subscription, message: DirectMessage) -> str | bytes:
        """A watcher's copy of a direct message: shown as the message itself (§4.3)."""
        return self._message(message, str(sub.request_id))

    def message(self, message: DirectMessage) -> str | bytes:
        """A direct message to this client (its own destination)."""
        return self._message(message, self._inbox)

    def _message(self, message: DirectMessage, subscription: str | None) -> str | bytes:
        text = message.text
        if text is not None:  # a STOMP sender's body, with its content-type
            body, content_type = text, message.content_type or "text/plain"
        else:
            data_json = message.data_json
            if data_json.startswith('"'):
                body, content_type = json.loads(data_json), "text/plain"
            else:
                body, content_type = data_json, "application/json"
        headers: dict[str, str] = {}
        if subscription is not None:
            headers["subscription"] = subscription
        headers["message-id"] = message.id
        headers["destination"] = public_destination(message.to)
        sender = message.sender
        if sender:
            # Communication Broker clients know senders by login; STOMP ones by destination.
            target = parse_address(sender) if self.cb else None
            headers["origin"] = target[2] if target else public_destination(sender)
        headers["content-type"] = content_type
        self._ack_header(headers, subscription)
        if self.cb:
            headers["transaction"] = message.id
        # "replace": a JSON string may hold an unpaired surrogate, which UTF-8 cannot carry
        return self.encode(Frame("MESSAGE", headers, body.encode("utf-8", "replace")))

    def _destination_of(self, sub: Subscription) -> str:
        if sub.pattern is not None:
            return str(sub.pattern.pattern)
        room = public_room(sub.room).original  # a static-key client's, as it names it
        if set(room) == {"client", "profile"} and isinstance(room["client"], str):
            return f"/{room['profile']}/{room['client']}"
        return ROOM_PREFIX + dump_json(room)

    def presence(self, sub: Subscription, event: PresenceEvent) -> str | bytes:
        """A MESSAGE on the subscription, with ``presence: join|leave``, ``login`` and
        ``profile`` headers and the JSON body ``{"type": .., "member": {..}}``."""
        subscription = str(sub.request_id)
        view = member_view(event.member) or {}
        headers = {"subscription": subscription, "message-id": event.id,
                   "destination": self._destination_of(sub), "presence": event.kind,
                   **{k: v for k, v in view.items() if k in ("login", "profile")},
                   "content-type": "application/json"}
        self._ack_header(headers, subscription)
        body = dump_json({"type": event.kind, "member": view})
        return self.encode(Frame("MESSAGE", headers, body.encode("utf-8")))

    def confirmed(self, event: Confirmed) -> None:
        """STOMP senders are not told of confirmations (``caps.confirms`` is False)."""
        return None

    def resync(self, recovered: list[dict[str, Any]] | None = None) -> None:
        return None

    # ------------------------------------------------------------ the server API's frames

    def server_message(self, identity: Identity, message_id: str, data_json: str
                       ) -> str | bytes:
        """Data from the backend to this login: a MESSAGE to the client's own destination,
        as a direct message without a sender (no ``origin``)."""
        to = identity.destination or ""
        return self._message(DirectMessage(message_id, "", to, None, "", data_json),
                             self._inbox)

    def broadcast(self, message_id: str, data_json: str) -> str | bytes:
        """Data from the backend to every connection: a MESSAGE with destination
        ``/broadcast`` and no ``subscription`` (as a direct message to a client that did not
        subscribe to its own destination)."""
        headers = {"message-id": message_id, "destination": BROADCAST_DESTINATION,
                   "content-type": "application/json"}
        return self.encode(Frame("MESSAGE", headers, data_json.encode("utf-8", "replace")))

    def unsubscribed(self, sub: Subscription, reason: str) -> None:
        """STOMP has no frame for a subscription the server ends (an ERROR would close a
        standard connection): nothing; the subscription's MESSAGEs stop."""
        return None


def _flag_header(headers: Any, name: str) -> Any:
    """A SUBSCRIBE's boolean header: ``presence:true`` (told who joins and leaves),
    ``persistent:true`` (kept for the login); other text is refused by the rule as not a
    boolean."""
    value = headers.get(name)
    if value is None:
        return False
    return {"true": True, "false": False}.get(value.strip().lower(), value)


_NOT_JSON = object()


def _filter_header(headers: Any) -> Any:
    """A SUBSCRIBE's ``filter:<json>`` header (docs/protocol.md "Event filters"): its JSON
    value (None: no header), or _NOT_JSON. The session compiles and bounds it."""
    raw = headers.get("filter")
    if raw is None:
        return None
    try:
        return load_json(raw)
    except ValueError:
        return _NOT_JSON
