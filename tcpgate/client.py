"""combroker's Python client library: asyncio, plus a thread-backed synchronous facade.

It imports nothing from Django or from the broker, so any Python program can use it.

``Client`` speaks JSON lines to the TCP gate (PROTOCOL §4.1): the rich JSON dialect of §3.2, one
object per line, after a ``{"type":"connect", ...}`` line with the §2 credentials. Every
request carries a ``requestId`` and its reply echoes it, so each call awaits its own answer::

    async with Client("broker.internal", 61613, token="...") as client:
        await client.subscribe({"target": "chat", "customer": "1"})
        await client.send("/agent/bob", {"text": "hi"})
        async for message in client:
            print(message.kind, message.data)

Subscriptions: ``subscribe(room, filter={"eq": ["status", "paid"]})`` gets only the triggers
whose tags match (docs/protocol.md "Event filters"; ``publish(..., tags={...})`` tags one);
``persistent=True`` keeps the subscription for the login: every later connection of it, this
client's reconnects included, gets it back from the broker (the welcome's ``persistent``).
A connection ticket (``ticket=``: a string, or a callable returning a fresh one, called at each
connect since a ticket opens one connection only) logs in without the auth API.

Presence: ``subscribe(room, presence=True)`` also delivers ``join`` and ``leave`` Messages
(``member``: ``{"login", "profile"}``, plus ``realm`` for static-key logins), this client's own
join included; ``presence(room)`` and ``presence_stats(room)`` ask who is there. Joins and
leaves while disconnected are not replayed: after a reconnect (``on_connected``), ask again.

Reconnection: when the connection drops (not when the client disconnects, nor after a
refusal, ``kicked`` or ``replaced``), the client reconnects with full-jitter exponential
backoff and subscribes again to everything it was subscribed to, under the same ids.
It presents the last welcome's ``resume_token``: the broker then restores the subscriptions
itself (on any process) and replays what history rooms missed. Subscriptions it did not
restore are made again with ``since`` = the last offset received, so history rooms recover
either way (docs/guarantees.md). A trigger received twice (same subscription, same id) is
delivered once.

Memory: incoming deliveries wait in a queue of at most ``max_queue`` messages; past that
the oldest are dropped (counted in ``dropped``), so a program that stops iterating cannot grow
without bound.

``broker_client`` is the Communication Broker's Python client interface (``com_broker.py``)
on top of ``Client``: ``connect``, ``link_call_back_functions``, ``subscribe``, ``send``,
``unsubscribe``, ``disconnect``, ``set_ssl_options``. Its callbacks run on the client's own
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import re
import ssl as ssl_module
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any
from collections.abc import AsyncIterator, Callable

__all__ = ["BrokerError", "Client", "Message", "Refused", "broker_client"]

log = logging.getLogger("combroker.client")

DEFAULT_PORT = 61613
_NO_RECONNECT = frozenset({"kicked", "replaced"})  # reconnecting would fight the server


class BrokerError(Exception):
    """An error reply: ``code`` is the contract's error code (``room-not-found``, ...)."""

    def __init__(self, code: str, detail: str | None = None) -> None:
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


class Refused(BrokerError):
    """The broker refused the credentials (or could not check them: ``auth-unavailable``)."""


@dataclass
class Message:
    """One delivery: ``kind`` is ``publish`` (a trigger, or a watched client's message),
    ``message`` (a direct message to this client; ``ack``: confirm it with ``confirm(id)``),
    ``confirmed`` (every recipient connection confirmed the acknowledged message ``id``
    this client sent to ``to``), or ``join`` / ``leave`` (a subscription made with
    ``presence=True``: ``member``'s first connection in ``room``, or its last one gone)."""

    kind: str
    data: Any
    subscription: Any = None  # publish: the subscription's request id
    room: dict[str, Any] | None = None  # publish: the trigger room that matched
    id: str | None = None  # the trigger's or message's id
    sender: str | None = None  # message: the sender's destination, e.g. /service/billing
    to: str | None = None  # message: the recipient's destination
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    offset: int | None = None  # publish: a recorded trigger's offset in ``room``'s history
    ack: bool = False  # message: the sender waits for ``confirm(id)``
    member: dict[str, Any] | None = None  # join/leave: {"login", "profile"[, "realm"]}


def _message(frame: dict[str, Any]) -> Message:
    if frame.get("type") == "message":
        return Message("message", frame.get("data"), id=frame.get("id"),
                       sender=frame.get("from"), to=frame.get("to"), raw=frame,
                       ack=frame.get("ack") is True)
    if frame.get("type") == "confirmed":
        return Message("confirmed", None, id=frame.get("id"), to=frame.get("to"), raw=frame)
    if frame.get("type") in ("join", "leave"):
        member = frame.get("member")
        return Message(str(frame["type"]), None, subscription=frame.get("requestId"),
                       room=frame.get("room"), raw=frame,
                       member=member if isinstance(member, dict) else None)
    return Message("publish", frame.get("data"), subscription=frame.get("requestId"),
                   room=frame.get("room"), id=frame.get("id"), raw=frame,
                   offset=frame.get("offset"))


class Client:
    """An asyncio client of the TCP gate (JSON lines). One instance = one logical session."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *,
                 token: str | None = None, cookie: str | None = None,
                 authorization: str | None = None, app_key: str | None = None,
                 login_id: str | None = None, profile_key: str | None = None,
                 ticket: str | Callable[[], str] | None = None,
                 headers: dict[str, str] | None = None,
                 ssl: ssl_module.SSLContext | bool | None = None,
                 server_hostname: str | None = None, reconnect: bool = True,
                 backoff: tuple[float, float] = (0.2, 30.0), request_timeout: float = 10.0,
                 connect_timeout: float = 10.0, max_queue: int = 10_000,
                 on_connected: Callable[[dict[str, Any]], Any] | None = None,
                 on_disconnected: Callable[[str], Any] | None = None) -> None:
        self.host, self.port = host, port
        credentials = {"token": token, "cookie": cookie, "authorization": authorization,
                       "app_key": app_key, "login_id": login_id, "profile_key": profile_key}
        self._connect_line: dict[str, Any] = {"type": "connect", **{
            k: v for k, v in credentials.items() if v is not None}}
        if headers:
            self._connect_line["headers"] = dict(headers)
        self._ticket = ticket
        if ssl is True:
            ssl = ssl_module.create_default_context()
        self.ssl = ssl or None
        self.server_hostname = server_hostname
        self.reconnect = reconnect
        self.backoff = backoff
        self.request_timeout = request_timeout
        self.connect_timeout = connect_timeout
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.welcome: dict[str, Any] | None = None
        self.dropped = 0
        self.subscriptions: dict[Any, dict[str, Any]] = {}  # request id -> room
        # request id -> the last offset received in its (history) room: the ``since`` of a
        # re-subscription
        self.offsets: dict[Any, int] = {}
        self.presence_subscriptions: set[Any] = set()  # request ids made with presence=True
        # request id -> the other fields its subscribe carried (filter, persistent), sent again
        # when it is made again
        self.subscribe_fields: dict[Any, dict[str, Any]] = {}
        self._seen: OrderedDict[tuple[str, str], None] = OrderedDict()  # (rid, trigger id)
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._queue: deque[Message | BaseException | None] = deque()
        self._max_queue = max_queue
        self._ready = asyncio.Event()  # a delivery or the end is in the queue
        self._connected = asyncio.Event()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False  # disconnect() was called, or the session cannot go on

    # ------------------------------------------------------------ connection

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.disconnect()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def connect(self) -> dict[str, Any]:
        """Connect and authenticate; returns the welcome. Raises Refused or OSError."""
        self._closed = False
        welcome = await self._open()
        self._reader_task = asyncio.ensure_future(self._run())
        return welcome

    async def _open(self) -> dict[str, Any]:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(
            self.host, self.port, ssl=self.ssl,
            server_hostname=(self.server_hostname or self.host) if self.ssl else None,
            limit=16 * 1024 * 1024), self.connect_timeout)
        line = dict(self._connect_line)
        if self._ticket is not None:
            line["ticket"] = self._ticket() if callable(self._ticket) else self._ticket
        token = (self.welcome or {}).get("resume_token")
        if token:  # the previous connection's: take its subscriptions back
            line["resume"] = token
        try:
            writer.write(json.dumps(line).encode() + b"\n")
            line = await asyncio.wait_for(reader.readline(), self.connect_timeout)
            frame = json.loads(line) if line else {"type": "refused", "reason": "closed"}
            if frame.get("type") != "welcome":
                raise Refused(str(frame.get("reason", "refused")))
        except BaseException:
            writer.close()
            raise
        self._reader, self._writer = reader, writer
        self.welcome = frame
        self._connected.set()
        if self.on_connected is not None:
            self.on_connected(frame)
        return frame

    async def _run(self) -> None:
        try:
            await self._serve()
        except Exception as exc:  # a bug or an unexpected failure: end the iteration with it
            log.exception("client failed")
            self._fail_pending(ConnectionError(str(exc)))
            self._end(exc)

    async def _serve(self) -> None:
        """Read until the connection ends; then reconnect (and re-subscribe), or finish."""
        attempt = 0
        while True:
            reason = await self._read_loop()
            self._connected.clear()
            self._fail_pending(ConnectionError(f"connection lost: {reason}"))
            if self._writer is not None:
                self._writer.close()
            if self.on_disconnected is not None:
                self.on_disconnected(reason)
            if self._closed or not self.reconnect or reason in _NO_RECONNECT:
                self._end(None)
                return
            while not self._closed:
                base, cap = self.backoff
                await asyncio.sleep(random.uniform(0, min(cap, base * 2 ** attempt)))
                attempt += 1
                try:
                    await self._open()
                except Refused as exc:
                    if exc.code != "auth-unavailable":
                        self._end(exc)
                        return
                except (TimeoutError, OSError, ValueError) as exc:
                    log.info("reconnect failed: %s", exc)
                    continue
                attempt = 0
                # not awaited here: this task must go back to reading the replies
                self._spawn_resubscribe()
                break
            if self._closed:
                self._end(None)
                return

    def _spawn_resubscribe(self) -> None:
        task = asyncio.ensure_future(self._resubscribe())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resubscribe(self) -> None:
        welcome = self.welcome or {}
        restored = [s.get("requestId") for s in welcome.get("subscriptions") or []
                    if isinstance(s, dict)] if welcome.get("resumed") is True else []
        restored += [s.get("requestId") for s in welcome.get("persistent") or []
                     if isinstance(s, dict) and "refused" not in s]
        for rid, room in list(self.subscriptions.items()):
            if rid in restored:
                continue  # the broker restored it (and replays what it missed)
            body: dict[str, Any] = {"type": "subscribe", "room": room}
            if rid in self.offsets:
                body["since"] = self.offsets[rid]
            if rid in self.presence_subscriptions:
                body["presence"] = True
            body.update(self.subscribe_fields.get(rid, {}))
            try:
                await self._request(body, rid)
            except BrokerError as exc:  # no longer allowed: forget it
                log.warning("re-subscribe %r failed: %s", rid, exc)
                self._forget(rid)
            except (TimeoutError, ConnectionError):
                return  # the connection went again; the next reconnect re-subscribes

    async def _read_loop(self) -> str:
        reader = self._reader
        while True:
            try:
                line = await reader.readline()
            except (OSError, ValueError) as exc:
                return type(exc).__name__
            if not line:
                return "closed"
            try:
                frame = json.loads(line)
            except ValueError:
                continue
            if not isinstance(frame, dict):
                continue
            kind = frame.get("type")
            if kind == "publish" and "code" not in frame:
                message = _message(frame)
                if self._duplicate(message):
                    continue
                self._deliver(message)
            elif kind in ("message", "confirmed") or (
                    kind in ("join", "leave") and "code" not in frame):
                # join/leave carry the subscription's requestId: never a reply
                self._deliver(_message(frame))
            elif kind == "close":
                return str(frame.get("reason", "closed"))
            elif kind == "resync":
                self._spawn_resubscribe()
            else:
                future = self._pending.pop(str(frame.get("requestId")), None)
                if future is not None and not future.done():
                    future.set_result(frame)

    def _duplicate(self, message: Message) -> bool:
        """Track the subscription's offset; True for a trigger it already received."""
        rid = message.subscription
        if message.id is not None:
            key = (json.dumps(rid), message.id)
            if key in self._seen:
                return True
            self._seen[key] = None
            if len(self._seen) > 10_000:
                self._seen.popitem(last=False)
        if (isinstance(message.offset, int) and rid in self.subscriptions
                and message.room == self.subscriptions[rid]):
            self.offsets[rid] = max(message.offset, self.offsets.get(rid, 0))
        return False

    def _deliver(self, message: Message) -> None:
        if len(self._queue) >= self._max_queue:
            self._queue.popleft()
            self.dropped += 1
        self._queue.append(message)
        self._ready.set()

    def _end(self, error: BaseException | None) -> None:
        self._closed = True
        self._queue.append(error)
        self._ready.set()

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    async def disconnect(self) -> None:
        """Close the session; iteration over messages then ends."""
        self._closed = True
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 2)
        if self._reader_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader_task, 5)
        self._connected.clear()

    # ------------------------------------------------------------ requests

    async def _request(self, body: dict[str, Any], rid: Any = None) -> dict[str, Any]:
        if rid is None:
            rid = f"r{next(self._ids)}"
        if not self._connected.is_set():
            await asyncio.wait_for(self._connected.wait(), self.request_timeout)
        key = str(rid)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        assert self._writer is not None
        self._writer.write(json.dumps({**body, "requestId": rid}).encode() + b"\n")
        try:
            reply = await asyncio.wait_for(future, self.request_timeout)
        finally:
            self._pending.pop(key, None)
        if reply.get("code") == "error":
            raise BrokerError(str(reply.get("message")), reply.get("detail"))
        return reply

    async def subscribe(self, target: dict[str, Any] | str, request_id: Any = None, *,
                        presence: bool = False, filter: Any = None,  # noqa: A002
                        persistent: bool = False) -> Any:
        """Subscribe to a room, or watch a client destination (``/agent/bob``, ``/agent/*``).

        ``presence=True``: ``join`` and ``leave`` Messages for the room's members follow
        (``presence-not-enabled`` where presence is off for the room). ``filter``: only the
        triggers whose tags it matches (``invalid-filter``, ``filter-too-large``).
        ``persistent=True``: kept for the login, restored at each of its connections until
        unsubscribed (``persistent-needs-login``, ``too-many-persistent-subscriptions``).
        Returns the subscription's request id; raises BrokerError (``room-not-found``, ...).
        """
        room = destination_room(target) if isinstance(target, str) else target
        rid = request_id if request_id is not None else f"s{next(self._ids)}"
        body: dict[str, Any] = {"type": "subscribe", "room": room}
        if presence:
            body["presence"] = True
        fields: dict[str, Any] = {}
        if filter is not None:
            fields["filter"] = filter
        if persistent:
            fields["persistent"] = True
        reply = await self._request({**body, **fields}, rid)
        self.subscriptions[rid] = room
        if presence:
            self.presence_subscriptions.add(rid)
        if fields:
            self.subscribe_fields[rid] = fields
        if isinstance(reply.get("offset"), int):  # a history room: where this one starts
            self.offsets.setdefault(rid, reply["offset"])
        return rid

    async def unsubscribe(self, request_id: Any = None) -> None:
        """Drop one subscription, or all of them when ``request_id`` is None."""
        rids = list(self.subscriptions) if request_id is None else [request_id]
        for rid in rids:
            self._forget(rid)
            self.offsets.pop(rid, None)
            await self._request({"type": "unsubscribe"}, rid)

    def _forget(self, rid: Any) -> None:
        self.subscriptions.pop(rid, None)
        self.presence_subscriptions.discard(rid)
        self.subscribe_fields.pop(rid, None)

    async def send(self, to: str, data: Any, *, ack: bool = False) -> str | None:
        """Send ``data`` to a connected client (``/agent/bob``); returns the message id.

        ``ack=True``: the broker keeps the message until the recipient confirms it (it may be
        offline); a ``confirmed`` Message with this id arrives once it did."""
        body: dict[str, Any] = {"type": "send", "to": to, "data": data}
        if ack:
            body["ack"] = True
        return (await self._request(body)).get("id")

    async def confirm(self, message_id: str) -> None:
        """Confirm an acknowledged message (``Message.ack``) once it is processed."""
        await self._request({"type": "confirm", "id": message_id})

    async def publish(self, rooms: list[dict[str, Any]] | dict[str, Any], data: Any, *,
                      history: bool = False, tags: dict[str, Any] | None = None) -> str | None:
        """Publish to rooms (a service, or within ``publish_rooms``); returns the trigger id.

        ``history=True`` records it in the rooms' history (BROKER_HISTORY); ``tags``: what
        subscriptions' filters match (``invalid-tags``)."""
        if isinstance(rooms, dict):
            rooms = [rooms]
        body: dict[str, Any] = {"type": "publish", "rooms": rooms, "data": data}
        if history:
            body["history"] = True
        if tags is not None:
            body["tags"] = tags
        return (await self._request(body)).get("id")

    async def history(self, room: dict[str, Any], limit: int | None = None,
                      since: int | None = None) -> dict[str, Any]:
        """A history room's recorded triggers: the ``history`` frame (``messages``,
        ``offset``, and with ``since`` ``recovered``)."""
        body: dict[str, Any] = {"type": "history", "room": room}
        if limit is not None:
            body["limit"] = limit
        if since is not None:
            body["since"] = since
        return await self._request(body)

    async def presence(self, room: dict[str, Any]) -> dict[str, Any]:
        """Who holds a subscription to ``room``: the ``presence`` frame, ``members`` (sorted
        ``{"login", "profile", "connections"}``, plus ``realm`` for static-key logins) and
        ``anonymous`` (connections without a login). Raises BrokerError ``room-not-found``
        (one may not subscribe to it) or ``presence-not-enabled``."""
        return await self._request({"type": "presence", "room": room})

    async def presence_stats(self, room: dict[str, Any]) -> dict[str, Any]:
        """The counts only: the ``presence_stats`` frame, ``members`` (logins) and
        ``connections`` (anonymous ones included)."""
        return await self._request({"type": "presence_stats", "room": room})

    async def ping(self) -> None:
        await self._request({"type": "ping"})

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        """Any other request (``status``, ``admin``): the reply frame."""
        return await self._request(body)

    # ------------------------------------------------------------ deliveries

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        while not self._queue:
            self._ready.clear()
            await self._ready.wait()
        item = self._queue.popleft()
        if item is None:
            self._queue.appendleft(None)  # the end stays the end
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.appendleft(None)
            raise item
        return item

    async def receive(self, timeout: float | None = None) -> Message:
        """The next delivery (``asyncio.TimeoutError`` after ``timeout``)."""
        return await asyncio.wait_for(self.__anext__(), timeout)


def destination_room(destination: str) -> dict[str, Any]:
    """``/agent/bob`` -> ``{"client": "bob", "profile": "agent"}`` (``*`` is a wildcard)."""
    parts = destination.split("/", 2)
    if len(parts) != 3 or parts[0] or not parts[1] or not parts[2]:
        raise ValueError(f"not a client destination: {destination!r}")
    return {"client": parts[2], "profile": parts[1]}


# ---------------------------------------------------------------- the synchronous facade


class broker_client:  # noqa: N801 - the Communication Broker's name
    """The Communication Broker's Python client interface, over ``Client`` on its own thread.

    Callbacks (``link_call_back_functions``), all optional, run on the client's thread:

    - ``on_connected()``; ``on_disconnected()``; ``on_error(text)``;
    - ``on_message(origin, message, destination)``: ``origin`` is the sender's login (for a
      trigger, the room as JSON), ``message`` the text sent (JSON text when the data is not
      a string), ``destination`` the recipient's destination;
    - ``on_ack(transaction, error_desc)``: the answer to ``subscribe``/``unsubscribe``/``send``,
      ``"OK"`` or the error code; those calls return their transaction id at once.
    """

    def __init__(self, id: str = "", app_key: str = "") -> None:  # noqa: A002
        self.id = id
        self.app_key = app_key
        self._ssl: ssl_module.SSLContext | None = None
        self._callbacks: dict[str, Callable[..., Any] | None] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: Client | None = None
        self._transactions = itertools.count(1)
        self._patterns: dict[Any, re.Pattern[str]] = {}
        self._pump: Any = None

    def set_ssl_options(self, cert_path: str) -> None:
        """Use TLS, trusting the CA (or self-signed) certificate in ``cert_path``.

        The server certificate is verified, and so is its name (``server_hostname``).
        """
        self._ssl = ssl_module.create_default_context(cafile=cert_path)

    def link_call_back_functions(self, on_connected: Callable[..., Any] | None = None,
                                 on_disconnected: Callable[..., Any] | None = None,
                                 on_error: Callable[..., Any] | None = None,
                                 on_message: Callable[..., Any] | None = None,
                                 on_ack: Callable[..., Any] | None = None) -> None:
        self._callbacks = {"on_connected": on_connected, "on_disconnected": on_disconnected,
                           "on_error": on_error, "on_message": on_message, "on_ack": on_ack}

    def _call(self, name: str, *args: Any) -> None:
        callback = self._callbacks.get(name)
        if callback is not None:
            try:
                callback(*args)
            except Exception:
                log.exception("%s callback failed", name)

    def connect(self, server_hostname: str | None, host: str, port: int, login_id: str,
                secret_key: str, timeout: float = 15.0) -> bool:
        """Log in with the application key, ``login_id`` and the profile key ``secret_key``.

        Blocks until connected or refused; returns True when connected.
        """
        if self._thread is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever,
                                            name=f"broker_client-{self.id}", daemon=True)
            self._thread.start()
        client = Client(host, port, app_key=self.app_key, login_id=login_id,
                        profile_key=secret_key, ssl=self._ssl, server_hostname=server_hostname,
                        headers={"user-agent": f"combroker-py broker_client {self.id}"},
                        on_connected=lambda _w: self._call("on_connected"),
                        on_disconnected=lambda _r: self._call("on_disconnected"))
        try:
            self._run(client.connect(), timeout)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            self._call("on_error", str(exc) or type(exc).__name__)
            return False
        self._client = client
        assert self._loop is not None
        self._pump = asyncio.run_coroutine_threadsafe(self._deliveries(client), self._loop)
        return True

    def _run(self, coro: Any, timeout: float | None = None) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _spawn(self, transaction: str, coro: Any) -> str:
        async def answer() -> None:
            try:
                await coro
            except BrokerError as exc:
                self._call("on_ack", transaction, exc.code)
            except Exception as exc:  # noqa: BLE001 - reported to the caller
                self._call("on_ack", transaction, str(exc) or type(exc).__name__)
            else:
                self._call("on_ack", transaction, "OK")

        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(answer(), self._loop)
        return transaction

    async def _deliveries(self, client: Client) -> None:
        try:
            async for m in client:
                if m.kind in ("join", "leave"):
                    continue  # this interface never asks for presence
                if m.kind == "message":
                    sender, text, dest = m.sender, _text(m.data), m.to
                elif isinstance(m.data, dict) and m.data.get("type") == "message":
                    # a watched client's message: shown as the message itself
                    dest = m.data.get("to")
                    pattern = self._patterns.get(m.subscription)
                    if pattern is not None and not pattern.fullmatch(str(dest)):
                        continue
                    sender, text = m.data.get("from"), _text(m.data.get("data"))
                else:
                    sender, text, dest = json.dumps(m.room), _text(m.data), None
                login = sender.rsplit("/", 1)[-1] if sender and sender.startswith("/") else sender
                self._call("on_message", login, text, dest)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            self._call("on_error", str(exc) or type(exc).__name__)

    def _require(self) -> Client:
        if self._client is None:
            raise ConnectionError("not connected")
        return self._client

    def subscribe(self, destination: str, use_regex: bool = False) -> str:
        """Watch a destination (``/agent/bob``, ``/agent/*``), a room (``/room/<json>``), or
        with ``use_regex`` every client whose destination fully matches the expression."""
        client = self._require()
        transaction = f"sub-{next(self._transactions)}"
        if use_regex:
            pattern = re.compile(destination)
            prefix = re.match(r"\^?/(\w+)/", destination)
            profile = prefix.group(1) if prefix else "agent"
            self._patterns[transaction] = pattern
            return self._spawn(transaction, client.subscribe(
                {"client": "*", "profile": profile}, transaction))
        if destination.startswith("/room/"):
            target: Any = json.loads(destination[len("/room/"):])
        else:
            target = destination
        return self._spawn(transaction, client.subscribe(target, transaction))

    def unsubscribe(self) -> str:
        """Drop every subscription (the Communication Broker's UNSUBSCRIBE)."""
        client = self._require()
        self._patterns.clear()
        return self._spawn(f"unsub-{next(self._transactions)}", client.unsubscribe())

    def send(self, destination: str, message: str, content_type: str = "text/plain") -> str:
        """Send ``message`` to a client; JSON content types send the parsed value."""
        client = self._require()
        data: Any = message
        if "json" in (content_type or "").lower():
            with contextlib.suppress(ValueError):
                data = json.loads(message)
        return self._spawn(f"send-{next(self._transactions)}", client.send(destination, data))

    def disconnect(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._run(client.disconnect(), 10)
            if self._pump is not None:
                with contextlib.suppress(Exception):
                    self._pump.result(5)
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            if self._thread is not None:
                self._thread.join(5)
            self._loop.close()
        self._loop = self._thread = None


def _text(data: Any) -> str:
    return data if isinstance(data, str) else json.dumps(data, separators=(",", ":"),
                                                         ensure_ascii=False)
