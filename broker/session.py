"""One connection's session: the sans-I/O state machine every transport and codec drives.

The session decides everything about one connection that needs no I/O; its driver
(broker.connection) only carries out what it asks and feeds the results back. It never awaits
and never touches a socket, the channel layer or Redis: its clock is passed in, its frames go
to a ``Queue`` (the driver's outbox) and its end to an ``end`` callback, so every rule below is
tested with plain function calls (tests/unit/test_session*.py, test_seam.py).

States (``State``), each transition made by one method::

    CONNECTING --authenticating()--> AUTHENTICATING --open(identity)--> OPENING
    OPENING --welcome()--> OPEN;  any --end(why)--> CLOSING --close()--> CLOSED

- **Connecting.** The auth deadline runs from the accept: ``authenticating()`` gives the auth
  API what is left of it, and ``auth_expired()`` (the driver's timer) ends a connection that
  never handed in credentials with 4408. ``refuses_duplicate``/``replaces_duplicate`` say what
  BROKER_DUPLICATE_LOGIN asks of the driver before and after it joins the hub.
- **The welcome comes first.** From ``open`` until ``welcome()``, frames (deliveries while
  joining, pending acknowledged messages, replays) are held, within the outbox's byte bound;
  ``welcome()`` queues the welcome (with a fresh resume token on a resumable protocol, or the
  one minted at the handshake for the resume cookie, and the seconds its state is kept after
  the close), then them, then the replays.
- **Requests.** ``receive(request)`` applies the rate limit (a token bucket on the passed
  clock), then the request's rule (broker.rules: identity, profile, subscription table): it
  answers at once, or returns the one ``Effect`` the driver must carry out.
  ``effect_done(result)`` or ``effect_failed(code)`` then builds and queues the reply, the
  follow-ups (a replay after its subscribe's reply) and, when the protocol ends the connection
  after that reply, the end.
- **Deliveries, the seam and positions** are ``self.delivery``'s (broker.delivery): the hub's
  deliveries reach it through the driver, and it queues frames through ``push`` (held before
  the welcome, dropped once closing).
- **Resume.** ``resume_lookup(token)`` says which saved state to take, ``restore(state)``
  re-subscribes it (each join carried out by the driver, then ``restored``), and
  ``saved_state(subs)`` what to save at the close.
- **Acknowledged messages.** ``deliver_message`` dedupes them and says which store update the
  driver runs (``HoldAck``: owed until confirmed, shown by ``hold_recorded`` once the hold is
  recorded; ``CompleteAck`` on protocols without confirmations); ``completed`` and
  ``release_owed`` keep the owed set.

Invariant: ``self.subscriptions`` maps a request id's canonical JSON text to its Subscription;
an id is in the table exactly while the hub holds that subscription (the driver adds it to the
hub before replying success, and removes it when the session drops it).
"""

from __future__ import annotations

import enum
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from . import conf, disconnect, errors, metrics, persistent, resume, rules
from .codec import Codec
from .delivery import Delivery, Frame, Mark
from .disconnect import Disconnect
from .effects import (
    AckUpdate,
    CompleteAck,
    Effect,
    ForgetPersistent,
    HoldAck,
    JoinRoom,
    LeaveRooms,
    LoadPersistent,
    SaveResume,
    TakeResume,
)
from .history import HistoryPage, HistoryPolicy
from .identity import Identity, public_room
from .limits import TokenBucket, Verdict
from .messages import Confirmed, DirectMessage, PresenceEvent
from .presence import PresencePolicy
from .replies import Error, Reply, Success
from .requests import Request, Subscribe
from .rules import Step
from .subscription import Subscription

# One logger for everything about one connection, whichever layer decided it.
log = logging.getLogger("broker.connection")

# Acknowledged message ids remembered per connection, to drop the second copy of one (the live
# copy and the stored one of a message sent while the connection was opening).
ACKED_REMEMBERED = 4096


class State(enum.Enum):
    CONNECTING = "connecting"  # accepted; no credentials handed in yet
    AUTHENTICATING = "authenticating"  # the auth API is being asked
    OPENING = "opening"  # authenticated, joining the hub: frames held until the welcome
    OPEN = "open"  # welcomed: requests are read and answered
    CLOSING = "closing"  # being closed: nothing more is read or queued
    CLOSED = "closed"  # the transport is gone and the subscriptions forgotten


@dataclass(frozen=True, slots=True)
class SessionSettings:
    """The settings one session decides with (``from_conf``: the project's)."""

    max_subscriptions: int = 64
    public_status: bool = False
    history: HistoryPolicy = field(default_factory=HistoryPolicy)
    max_outbox_bytes: int = 1_048_576
    rate: float = 0.0  # requests per second (0: no limit), and the burst above it
    burst: int = 1
    auth_deadline: float = 0.0  # seconds from the accept to authenticated (0: none)
    duplicate_login: str = "allow"  # "allow", "reject" or "replace"
    resume_ttl: float = 300.0
    presence: PresencePolicy = field(default_factory=PresencePolicy)
    max_persistent: int = 32  # persistent subscriptions one login keeps
    persistent_ttl: float = 2_592_000.0

    @classmethod
    def from_conf(cls, c: conf.Settings, *, auth_deadline: float | None = None
                  ) -> SessionSettings:
        return cls(max_subscriptions=c.BROKER_MAX_SUBSCRIPTIONS,
                   public_status=c.BROKER_PUBLIC_STATUS, history=c.history_policy,
                   max_outbox_bytes=c.BROKER_MAX_OUTBOX_BYTES, rate=c.BROKER_RATE_LIMIT,
                   burst=c.BROKER_RATE_BURST,
                   auth_deadline=(c.BROKER_AUTH_DEADLINE if auth_deadline is None
                                  else auth_deadline),
                   duplicate_login=c.BROKER_DUPLICATE_LOGIN, resume_ttl=c.BROKER_RESUME_TTL,
                   presence=c.presence_policy,
                   max_persistent=c.BROKER_MAX_PERSISTENT_SUBSCRIPTIONS,
                   persistent_ttl=c.BROKER_PERSISTENT_TTL)


def _position(effect: Effect) -> Mark | None:
    """The reply to a history room's subscribe says where the subscription resumes from (its
    ``offset`` as ``Delivery.joined`` set it), so it is marked with that position as the
    frames that move it are: a stream that gets no delivery still resumes without a gap where
    the transport writes positions (SSE event ids, ``Outbox.on_writing``)."""
    if isinstance(effect, JoinRoom) and effect.history is not None:
        sub = effect.subscription
        if sub.offset is not None:
            return (sub, sub.offset)
    return None


class Queue(Protocol):
    """Where the session's frames go (broker.outbox.Outbox): ``mark`` is a position, handed
    back to ``Delivery.written`` once the frame is written."""

    def push(self, frame: Frame, mark: Mark | None = None) -> bool: ...

    @property
    def queued_bytes(self) -> int: ...


class Session:
    __slots__ = (
        "settings", "state", "identity", "subscriptions", "_queue", "_end", "_clock", "_name",
        "_bucket", "_auth_by", "_held", "_held_bytes", "_follow_ups", "_pending", "resume_token",
        "resumed", "_restored", "_acked_ids", "_owed", "_codec", "delivery", "_persistent",
    )

    delivery: Delivery  # made once the codec is known

    def __init__(self, settings: SessionSettings, codec: Codec | None, queue: Queue, *,
                 end: Callable[[Disconnect], None],
                 clock: Callable[[], float] = time.monotonic, name: str = "") -> None:
        """``codec``: None until the transport knows it (the TCP gate's first byte); ``end``:
        close the connection soon, for this reason; ``name``: the connection, for the log."""
        self.settings = settings
        self.state = State.CONNECTING
        self.identity = Identity()
        self.subscriptions: dict[str, Subscription] = {}
        self._queue = queue
        self._end = end
        self._clock = clock
        self._name = name
        self._bucket = (TokenBucket(settings.rate, settings.burst, clock) if settings.rate > 0
                        else None)
        self._auth_by = (clock() + settings.auth_deadline if settings.auth_deadline > 0
                        else None)
        # Frames queued while opening, released by welcome() after the welcome.
        self._held: list[tuple[Frame, Mark | None]] | None = None
        self._held_bytes = 0
        # Run after the current reply (or the welcome) is queued: history replays.
        self._follow_ups: list[Callable[[], None]] = []
        # The request whose effect the driver is carrying out.
        self._pending: tuple[Request, Step] | None = None
        # The token handed out in the welcome (resumable protocols), whether a presented one
        # was honoured (None: none was presented), and the subscriptions it brought back.
        self.resume_token: str | None = None
        self.resumed: bool | None = None
        self._restored: list[dict[str, Any]] = []
        # The login's persistent subscriptions restored at the open (and those refused), as
        # the welcome announces them (None: none was kept).
        self._persistent: list[dict[str, Any]] | None = None
        # Acknowledged messages delivered here (to drop a second copy), and those still owed;
        # made with the first one (most connections never get one).
        self._acked_ids: OrderedDict[str, None] | None = None
        self._owed: set[str] | None = None
        self._codec: Codec | None = None
        if codec is not None:
            self.codec = codec

    @property
    def codec(self) -> Codec:
        assert self._codec is not None, "no codec yet"
        return self._codec

    @codec.setter
    def codec(self, codec: Codec) -> None:
        self._codec = codec
        self.delivery = Delivery(codec, self.settings.max_outbox_bytes, push=self.push,
                                 queued_bytes=lambda: self._queue.queued_bytes,
                                 on_slow=lambda: self.end(disconnect.SLOW), name=self._name)

    @property
    def closing(self) -> bool:
        """Nothing more is read or queued (being closed, or closed)."""
        return self.state is State.CLOSING or self.state is State.CLOSED

    # ------------------------------------------------------------ connecting

    def authenticating(self) -> float | None:
        """Credentials are in: the seconds the auth API may take (None: no deadline)."""
        self.state = State.AUTHENTICATING
        return None if self._auth_by is None else max(self._auth_by - self._clock(), 0.0)

    def auth_expired(self) -> None:
        """The auth deadline passed: a connection that handed in no credentials is closed
        with 4408 (one being authenticated is left to the auth API's own budget)."""
        if self.state is State.CONNECTING:
            metrics.refused(errors.AUTH_TIMEOUT)
            log.info("conn %s: not authenticated within BROKER_AUTH_DEADLINE, closing",
                     self._name)
            self.end(disconnect.AUTH_TIMEOUT)

    def refuses_duplicate(self, identity: Identity) -> bool:
        """Refuse ``identity`` if its destination is connected already (the driver asks)."""
        return (identity.destination is not None
                and self.settings.duplicate_login == "reject")

    @property
    def replaces_duplicate(self) -> bool:
        """Once joined, close the other connections of this destination."""
        return (self.identity.destination is not None
                and self.settings.duplicate_login == "replace")

    def open(self, identity: Identity) -> None:
        """Authenticated: the hub may deliver from now on; frames wait for the welcome."""
        self.identity = identity
        if self.state is State.AUTHENTICATING:
            self.state = State.OPENING
            self._held = []

    def welcome(self, connection_id: str, resume_token: str | None = None) -> None:
        """Queue the welcome, then every frame that waited for it, then the replays.
        ``resume_token``: minted at the handshake (the resume cookie); None: minted here."""
        if self.state is not State.OPENING:
            return  # ended while opening
        self.state = State.OPEN
        codec = self.codec
        if codec.caps.resumable:
            self.resume_token = resume_token or resume.new_token()
        announced: dict[str, Any] = {}
        if self.resume_token is not None:
            announced.update(resume_ttl=self.settings.resume_ttl)
        if self.resumed is not None:
            announced.update(resumed=self.resumed, restored=self._restored)
        if self._persistent:
            announced.update(persistent=self._persistent)
        frame = codec.welcome(self.identity, connection_id, self.resume_token, **announced)
        held, self._held, self._held_bytes = self._held or [], None, 0
        self.push(frame)
        for held_frame, mark in held:
            self.push(held_frame, mark)
        self._run_follow_ups()

    # ------------------------------------------------------------ resume

    def resume_lookup(self, token: str) -> TakeResume | None:
        """A presented resume token: which saved state to take, if any may be."""
        if not self.codec.caps.resumable:
            return None
        self.resumed = False
        if not resume.plausible(token):
            return None
        return TakeResume(resume.token_key(token), resume.fingerprint(self.identity))

    def restore(self, state: str | bytes | None) -> list[Step]:
        """The state taken (None: nothing saved, or not this identity's): re-subscribe what
        is still allowed. The driver carries out each step's JoinRoom, then ``restored``."""
        if state is None:
            return []
        self.resumed = True
        steps = []
        for saved in resume.decode_state(state):
            step = self.handle(Subscribe(saved.request_id, saved.room.original,
                                         since=saved.offset, presence=saved.presence,
                                         filter=saved.filter))
            if isinstance(step.effect, JoinRoom):  # else no longer allowed, or invalid
                self._begin(step.effect)
                steps.append(step)
        return steps

    def restored(self, step: Step, result: HistoryPage | None | BaseException) -> None:
        """One restored subscription's join was carried out (or failed: it is dropped)."""
        entry = self._rejoined(step, result)
        if entry is not None:
            self._restored.append(entry)

    def _rejoined(self, step: Step, result: HistoryPage | None | BaseException
                  ) -> dict[str, Any] | None:
        """A restored subscription's join was carried out: what the welcome says of it
        (None: it failed, and is dropped)."""
        join = step.effect
        assert isinstance(join, JoinRoom)
        rid = join.subscription.request_id
        if isinstance(result, BaseException):
            self._undo(join)
            log.warning("conn %s: subscription %r not restored: %s", self._name, rid, result)
            return None
        # The room (as the client names it), presence and the filter: a reloaded page adopts
        # the subscription when it subscribes to that room again (docs/protocol.md).
        sub = join.subscription
        entry: dict[str, Any] = {"requestId": rid, "room": public_room(sub.room).original}
        if sub.presence:
            entry["presence"] = True
        if sub.filter is not None:
            entry["filter"] = sub.filter.source
        reply = self._joined(join, result, rid) if result is not None else None
        extra = (reply.extra if reply is not None else None) or (
            step.reply.extra if isinstance(step.reply, Success) else None)
        if extra:
            entry.update(extra)
        return entry

    # ------------------------------------------------------------ persistent subscriptions

    def persistent_lookup(self) -> LoadPersistent | None:
        """Which login's persistent subscriptions to read at the open (None: no login)."""
        owner = self.identity.destination
        if owner is None:
            return None
        return LoadPersistent(owner, self.settings.persistent_ttl)

    def restore_persistent(self, entries: dict[str, str]
                           ) -> tuple[list[Step], ForgetPersistent | None]:
        """The login's kept entries (request id's JSON -> entry): each goes through the
        subscribe rule against this identity. The driver carries out each step's JoinRoom,
        then ``restored_persistent``; and forgets what is returned: the entries refused for
        good (the identity may no longer subscribe to the room, or it no longer reads as a
        subscribe). A refusal that may pass later (this connection's own bounds, presence
        settings, a request id a resumed subscription holds for another room) keeps it.
        A resumed subscription of the same request id and room is the one restored."""
        steps: list[Step] = []
        forget: list[str] = []
        announced = self._persistent = []
        for rid_json, entry in entries.items():
            req = persistent.request_of(rid_json, entry)
            if req is None:
                forget.append(rid_json)
                continue
            step = self.handle(req)
            join = step.effect
            if isinstance(join, JoinRoom):
                join.persist = None  # kept already: the lookup refreshed its ttl
                self._begin(join)
                steps.append(step)
                continue
            shown = {"requestId": req.request_id, "room": req.room}
            if isinstance(step.reply, Error):
                announced.append({**shown, "refused": step.reply.code})
                if step.reply.code in persistent.REFUSED_FOR_GOOD:
                    forget.append(rid_json)
                continue
            resumed = self.subscriptions.get(rid_json)  # already there: resumed, same room
            if resumed is not None:
                resumed.persistent = True
                announced.append(shown)
        if not announced:
            self._persistent = None
        owner = self.identity.destination
        return steps, (ForgetPersistent(owner, tuple(forget)) if forget and owner else None)

    def restored_persistent(self, step: Step, result: HistoryPage | None | BaseException
                            ) -> None:
        """One persistent subscription's join was carried out (or failed: it is dropped for
        this connection, and stays kept)."""
        join = step.effect
        assert isinstance(join, JoinRoom)
        entry = self._rejoined(step, result)
        shown = {"requestId": join.subscription.request_id,
                 "room": public_room(join.subscription.room).original}
        if self._persistent is None:
            self._persistent = []
        self._persistent.append({**shown, **entry} if entry is not None
                                else {**shown, "refused": errors.SERVICE_UNAVAILABLE})

    def saved_state(self, subs: list[Subscription]) -> SaveResume | None:
        """What to save at the close for a later resume (None: nothing to take back)."""
        if self.resume_token is None or not subs:
            return None
        state = resume.encode_state([
            resume.SavedSubscription(s.request_id, s.room, s.offset, s.presence,
                                     s.filter.source if s.filter is not None else None)
            for s in subs if s.pattern is None])
        return SaveResume(resume.token_key(self.resume_token),
                          resume.fingerprint(self.identity), state, self.settings.resume_ttl)

    # ------------------------------------------------------------ requests

    def receive(self, request: Request) -> Effect | None:
        """One decoded request of an open connection. None: it was answered (or the
        connection is closing); else the driver carries out the effect, then calls
        ``effect_done`` or ``effect_failed``. Requests of one connection run one at a time."""
        if self.state is not State.OPEN:
            return None
        assert self._pending is None, "one request at a time"
        if self._bucket is not None:
            verdict = self._bucket.take()
            if verdict is not Verdict.ALLOWED:
                self._rate_limited(request, verdict)
                return None
        step = self.handle(request)
        if step.effect is None:
            self._answer(request, step.reply)
            return None
        self._begin(step.effect)
        self._pending = (request, step)
        return step.effect

    def effect_done(self, result: Any = None) -> None:
        """The effect of the pending request was carried out with ``result`` (see
        broker.effects for each effect's): queue the reply."""
        assert self._pending is not None
        (request, step), self._pending = self._pending, None
        effect, rid = step.effect, request.request_id
        assert effect is not None
        self._answer(request, self._reply(effect, rid, result) or step.reply,
                     _position(effect))

    def effect_failed(self, code: str, detail: str | None = None) -> None:
        """The effect of the pending request failed: forget it, answer ``code``."""
        assert self._pending is not None
        (request, step), self._pending = self._pending, None
        assert step.effect is not None
        self._undo(step.effect)
        self._answer(request, Error(code, request.request_id, detail))

    def _begin(self, effect: Effect) -> None:
        if isinstance(effect, JoinRoom) and effect.history is not None:
            self.delivery.start_seam(effect.subscription)  # live frames wait for the replay
        elif isinstance(effect, LeaveRooms):
            for sub in effect.subscriptions:
                self.delivery.forget(sub)

    def _undo(self, effect: Effect) -> None:
        """``effect`` was not carried out: forget what ``handle`` recorded for it."""
        if isinstance(effect, JoinRoom):
            sub = effect.subscription
            if effect.history is not None:
                self.delivery.abort_seam(sub)
            if self.subscriptions.get(sub.request_id_json) is sub:
                del self.subscriptions[sub.request_id_json]

    def _reply(self, effect: Effect, rid: Any, result: Any) -> Reply | None:
        """The reply an effect's result makes (None: the step's own reply)."""
        if isinstance(effect, JoinRoom) and effect.history is not None:
            return self._joined(effect, result, rid)
        return rules.result_reply(effect, rid, result)

    def _joined(self, join: JoinRoom, page: HistoryPage, rid: Any) -> Success:
        """A history room's join read ``page``: the reply says its offset; its replay, then
        the live frames held meanwhile, follow the reply."""
        extra, follow_up = self.delivery.joined(join.subscription, join.since, page)
        self._follow_ups.append(follow_up)
        return Success(rid, extra)

    def _answer(self, request: Request, reply: Reply | None, mark: Mark | None = None) -> None:
        """Queue the reply as the codec shows it (maybe nothing: a STOMP SUBSCRIBE without
        receipt), then the follow-ups; end the connection if the protocol ends it after this
        reply (STOMP: DISCONNECT, or any ERROR on standard framing). ``mark``: the position
        the reply carries (``_position``)."""
        ending = self._queue_answer(request, reply, mark) if reply is not None else None
        self._run_follow_ups()
        if ending is not None:
            self.end(ending)

    def _queue_answer(self, request: Request, reply: Reply, mark: Mark | None = None
                      ) -> Disconnect | None:
        """Queue ``reply`` as the codec shows it; the end the protocol asks after it."""
        answer = self.codec.answer(reply, request.meta)
        if answer.frame is not None:
            self.push(answer.frame, mark)
        return answer.ending

    def _run_follow_ups(self) -> None:
        follow_ups, self._follow_ups = self._follow_ups, []
        for follow_up in follow_ups:
            follow_up()

    def _rate_limited(self, request: Request, verdict: Verdict) -> None:
        """Over the rate limit: answer ``rate-limited`` without carrying the request out; a
        client that kept on regardless (EXCEEDED), or whose protocol ends the connection on
        any error (standard STOMP), is closed with 4029."""
        metrics.counters["rate_limited"] += 1
        if verdict is Verdict.EXCEEDED:
            log.warning("conn %s: over BROKER_RATE_LIMIT, closing", self._name)
            self.end(disconnect.RATE_LIMITED)
            return
        if self._queue_answer(request, Error(errors.RATE_LIMITED, request.request_id)) is not None:
            self.end(disconnect.RATE_LIMITED)

    # ------------------------------------------------------------ deliveries

    def deliver_message(self, message: DirectMessage) -> AckUpdate | None:
        """A direct message to this connection's destination (for an acknowledged one, the
        store update the driver runs: see ``deliver_acked``)."""
        if message.ack:
            return self.deliver_acked(message)
        self.push(self.codec.message(message))
        return None

    def deliver_acked(self, message: DirectMessage) -> AckUpdate | None:
        """An acknowledged message for this connection's login (live, or pending at the
        open): shown once per connection; returns the store update the driver runs. On a
        protocol that confirms, it is shown by ``hold_recorded``, once the driver recorded the hold:
        a client cannot see (and no one else complete) a message this connection does not
        hold yet."""
        message_id = message.id
        acked = self._acked_ids
        if acked is None:
            acked = self._acked_ids = OrderedDict()
        if message_id in acked or self.closing:
            return None  # the live copy and the stored one of a message sent while opening
        acked[message_id] = None
        if len(acked) > ACKED_REMEMBERED:
            acked.popitem(last=False)
        frame = self.codec.message(message)
        if self.codec.caps.confirms:
            if self._owed is None:
                self._owed = set()
            self._owed.add(message_id)
            return HoldAck(message_id, frame)
        self.push(frame)
        return CompleteAck(message_id)  # queued for writing counts as confirmed (STOMP)

    def hold_recorded(self, hold: HoldAck) -> None:
        """The driver recorded ``hold`` (or could not: shown all the same, logged): show the
        message (dropped once closing: it is still owed, and released at the close)."""
        self.push(hold.frame)

    def deliver_presence(self, sub: Subscription, event: PresenceEvent) -> None:
        """Someone joined or left the room of ``sub``, which asked to be told."""
        frame = self.codec.presence(sub, event)
        if frame is not None:
            self.push(frame)

    def deliver_confirmed(self, event: Confirmed) -> None:
        """To a sender: its acknowledged message was confirmed (protocols that show it)."""
        frame = self.codec.confirmed(event)
        if frame is not None:
            self.push(frame)

    def completed(self, message_id: str) -> None:
        """The store has recorded this connection's confirmation of ``message_id``."""
        if self._owed is not None:
            self._owed.discard(message_id)

    def release_owed(self) -> list[str]:
        """At the close: the acknowledged messages still owed (redelivered elsewhere)."""
        owed, self._owed = list(self._owed or ()), None
        return owed

    def hold_live(self) -> None:
        """The hub's Redis subscription broke: hold history subscriptions' live frames."""
        if self.state is State.OPENING or self.state is State.OPEN:
            self.delivery.hold_live(list(self.subscriptions.values()))

    def recovering(self) -> dict[Subscription, int]:
        """The held history subscriptions to read again, with the offset to read after; the
        driver reads them and calls ``resynced`` (even with none: the client is told)."""
        return self.delivery.recovering()

    # ------------------------------------------------------------ the server API

    def notify(self, message_id: str, data_json: str, broadcast: bool) -> None:
        """Data from the backend (broker.api): to this login, or to every connection."""
        codec = self.codec
        self.push(codec.broadcast(message_id, data_json) if broadcast
                  else codec.server_message(self.identity, message_id, data_json))

    def drop(self, subs: list[Subscription]) -> list[Subscription]:
        """End ``subs`` (the server API's ``unsubscribe``, a re-check): out of the table at
        once, so no request names them any more; the driver leaves the hub with what this
        returns, then ``unsubscribed`` tells the client. A subscription whose join the driver
        is carrying out is kept (the request's own reply is still to come)."""
        pending = self._pending[1].effect if self._pending is not None else None
        joining = pending.subscription if isinstance(pending, JoinRoom) else None
        dropped = []
        for sub in subs:
            if sub is joining or self.subscriptions.get(sub.request_id_json) is not sub:
                continue
            del self.subscriptions[sub.request_id_json]
            self.delivery.forget(sub)
            dropped.append(sub)
        return dropped

    def drop_rooms(self, room_keys: list[str]) -> list[Subscription]:
        """The server API's ``unsubscribe``: the subscriptions to exactly these rooms."""
        if self.state is not State.OPEN:
            return []
        return self.drop(rules.in_rooms(list(self.subscriptions.values()), room_keys))

    def rechecked(self, identity: Identity) -> list[Subscription]:
        """The auth API's new answer for this connection's credentials: the identity is
        replaced (later requests are checked against it), and the subscriptions it no longer
        allows are dropped (returned). An answer naming another client ends the connection."""
        if self.state is not State.OPEN:
            return []
        if not rules.same_client(self.identity, identity):
            self.end(disconnect.REVOKED)
            return []
        self.identity = identity
        return self.drop(rules.no_longer_allowed(list(self.subscriptions.values()), identity))

    def unsubscribed(self, subs: list[Subscription], reason: str) -> None:
        """Tell the client each of ``subs`` ended (the hub no longer delivers to them)."""
        for sub in subs:
            frame = self.codec.unsubscribed(sub, reason)
            if frame is not None:
                self.push(frame)

    def resynced(self, pages: list[tuple[Subscription, int, HistoryPage | BaseException]]
                 ) -> None:
        self.delivery.resynced(
            pages, lambda sub: self.subscriptions.get(sub.request_id_json) is sub)

    # ------------------------------------------------------------ frames and the end

    def push(self, frame: Frame, mark: Mark | None = None) -> None:
        """Queue a frame (the driver's heart-beats use it too); held until the welcome, and
        nothing once closing. Too many held frames end the connection as slow."""
        if self._held is not None:  # opening: the welcome is not queued yet
            self._held.append((frame, mark))
            self._held_bytes += len(frame)
            if self._held_bytes > self.settings.max_outbox_bytes:
                metrics.drop("slow", len(self._held))
                self._held, self._held_bytes = [], 0
                self.end(disconnect.SLOW)
            return
        if self.state is not State.OPEN:
            return
        if mark is not None:
            self.delivery.queued(mark)
        self._queue.push(frame, mark)

    def end(self, why: Disconnect) -> None:
        """Close the connection soon (once): nothing more is read or queued."""
        if self.closing:
            return
        self.state = State.CLOSING
        self._held = None
        self._end(why)

    def close(self) -> list[Subscription]:
        """The transport is gone: every subscription is forgotten (and returned, for the
        driver to leave the hub with and ``saved_state``)."""
        self.state = State.CLOSED
        self._held = None
        subs = list(self.subscriptions.values())
        self.subscriptions.clear()
        return subs

    def handle(self, req: Request) -> Step:
        """The rule of ``req`` (broker.rules), without the rate limit or the answer."""
        return rules.decide(req, self)
