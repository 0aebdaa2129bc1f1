"""Authenticators: the auth API proxy (PROTOCOL §2.1) and static keys (§2.2).

``authenticate(credentials)`` is the one entry point for every transport. It returns an
Identity or raises ``Refused`` (the client is not allowed in) or ``AuthUnavailable`` (the API is
down or slower than BROKER_AUTH_TIMEOUT; never an authorization).

Credentials with a connection ticket (``broker.tickets``) are verified here instead of asking
the API (``redeem``): its signature, its expiry, then its single use in the ticket store
(``broker.stores.tickets``), each refusal by name (``ticket-invalid``, ``ticket-expired``,
``ticket-replayed``).

One pool of kept-alive connections serves the whole process (per event loop: broker.httppool),
and a semaphore bounds the auth requests in flight; time spent waiting for the semaphore counts
against the timeout, so a connect storm beyond capacity degrades into ``auth-unavailable``
instead of an unbounded queue. A request whose turn comes with less time left than the API
has recently taken to answer is not sent at all (``ApiProxy._ask``): it would be cut before its
answer, and the API, already the bottleneck, would spend a slot on a client that is gone.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import zlib
from dataclasses import dataclass

from django.http.cookie import parse_cookie

from . import errors, metrics
from .conf import conf
from .credentials import Credentials
from .httppool import HttpError, HttpPool
from .identity import (
    Identity, InvalidIdentity, InvalidLogin, identity_from_api, identity_from_static_keys,
)
from .stores.tickets import TicketStore
from .tickets import TicketRefused, verify

log = logging.getLogger("broker.auth")


class Refused(Exception):
    # Refusals counted under their own name (combroker_connections_refused_by_cause_total);
    # every other reason (the static keys' texts) is counted as "refused".
    NAMED = frozenset({errors.DUPLICATE_LOGIN, errors.INVALID_LOGIN, errors.INVALID_CREDENTIALS,
                       errors.AUTH_TIMEOUT, errors.TICKET_INVALID, errors.TICKET_EXPIRED,
                       errors.TICKET_REPLAYED})

    def __init__(self, reason: str = errors.REFUSED) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def cause(self) -> str:
        return self.reason if self.reason in self.NAMED else errors.REFUSED


class AuthUnavailable(Exception):
    pass


class InvalidHeaderValue(ValueError):
    """A credential the client sent cannot be an HTTP header value (the client's fault)."""


# Control characters (HTAB aside) are not allowed in a header value (RFC 9110 §5.5).
_NOT_IN_A_HEADER = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


def wire_value(value: str) -> bytes:
    """A credential as header bytes: the bytes the client sent. Header values read from a
    WebSocket handshake are decoded as UTF-8 with ``surrogateescape`` (so any byte comes back
    as it was); values from a STOMP frame or a JSON line are text, sent as UTF-8. Raises
    InvalidHeaderValue for what cannot be a header value (CR, LF, NUL, other controls)."""
    try:
        raw = value.encode("utf-8", "surrogateescape").strip(b" \t")
    except UnicodeEncodeError:  # a lone surrogate from JSON text: not a byte anyone sent
        raise InvalidHeaderValue("not encodable") from None
    if _NOT_IN_A_HEADER.search(raw):
        raise InvalidHeaderValue("control character")
    return raw


def forwarded_headers(creds: Credentials, forward: tuple[str, ...]) -> dict[bytes, bytes]:
    """The headers the auth API receives: only ones the client sent, or derived from them,
    each as the bytes the client sent (``wire_value``; it raises InvalidHeaderValue). Names
    are ASCII bytes."""
    out: dict[str, str] = {}
    for name, wire in (("cookie", "Cookie"), ("user-agent", "User-Agent"),
                       ("authorization", "Authorization")):
        if creds.headers.get(name):
            out[wire] = creds.headers[name]
    for name in forward:
        value = creds.headers.get(name.lower())
        if value:
            out[name] = value
    cookie = creds.headers.get("cookie")
    if cookie:
        # Django's own lenient parser (the backend reads the cookie the same way): one cookie
        # the strict SimpleCookie rejects (another app's "pref=café") hides no other.
        csrf = parse_cookie(cookie).get("csrftoken")
        if csrf:
            out["X-CSRFToken"] = csrf
    if creds.remote_addr:
        out["X-Real-IP"] = creds.remote_addr
    if creds.token and "Authorization" not in out:
        out["Authorization"] = f"Token {creds.token}"
    return {name.encode("ascii"): wire_value(value) for name, value in out.items()}


def request_lines(headers: dict[bytes, bytes]) -> bytes:
    """``forwarded_headers`` as their request lines (``Name: value\\r\\n`` each)."""
    return b"".join(b"%s: %s\r\n" % (name, value) for name, value in headers.items())


class UnreadableAnswer(Exception):
    """The auth API's answer is larger than BROKER_AUTH_MAX_RESPONSE_BYTES once decompressed,
    or in an encoding the broker does not decode: the backend's fault (auth-unavailable)."""


# What the broker asks for, and decodes itself (``BoundedBody``).
ACCEPT_ENCODING = b"gzip, deflate"
# What every request to the auth API says besides the forwarded headers (and Host).
REQUEST_DEFAULTS = ((b"Accept", b"*/*"), (b"Accept-Encoding", ACCEPT_ENCODING))


class BoundedBody:
    """The body of a 200 answer, decompressed, and never more than ``limit`` bytes of it: the
    compressed bytes are inflated here a bounded step at a time, as they arrive (a few KB of
    gzip can be hundreds of MB). ``feed`` and ``finish`` raise UnreadableAnswer beyond
    ``limit``; the constructor raises it for an encoding the broker did not ask for."""

    def __init__(self, encoding: bytes, limit: int) -> None:
        encoding = encoding.strip().lower()
        if encoding in (b"", b"identity"):
            self._inflate = None
        elif encoding in (b"gzip", b"x-gzip", b"deflate"):
            self._inflate = zlib.decompressobj(zlib.MAX_WBITS | 32)  # a gzip or a zlib header
        else:
            raise UnreadableAnswer(
                f"Content-Encoding {encoding[:40].decode('latin-1')!r} was not asked for")
        self._limit = limit
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        if self._inflate is not None:
            chunk = self._inflate.decompress(chunk, self._limit + 1 - len(self._body))
        self._body += chunk
        if len(self._body) > self._limit:
            raise self._too_large()

    def finish(self) -> bytes:
        if self._inflate is not None:
            self._body += self._inflate.flush(self._limit + 1 - len(self._body))
            if len(self._body) > self._limit or self._inflate.unconsumed_tail:
                raise self._too_large()
        return bytes(self._body)

    def _too_large(self) -> UnreadableAnswer:
        return UnreadableAnswer(
            f"answer larger than BROKER_AUTH_MAX_RESPONSE_BYTES ({self._limit})")


# One request's answer, as every connect that waited for it reads it: the status, and for a
# 200 the identity, or why its body is not one.
Answer = tuple[int, Identity | None, Exception | None]


@dataclass(slots=True)
class _Flight:
    """One request to the auth API (``head``: its bytes) and the connects waiting for its
    answer. ``deadline`` (monotonic) and ``allowed``: the latest of theirs, since the request is
    worth sending while any of them can still use its answer."""

    head: bytes
    deadline: float
    allowed: float
    task: asyncio.Future[Answer] | None = None
    waiters: int = 0

    def join(self, deadline: float, allowed: float) -> None:
        if deadline > self.deadline:
            self.deadline, self.allowed = deadline, allowed


class ApiProxy:
    """Asks the backend's HTTP API who a client is. One instance per event loop.

    ``share``: connects whose requests would be the same bytes (the same forwarded headers,
    the client's address included) while one of them is in flight wait for that one request
    instead of sending their own (BROKER_AUTH_SHARE_REQUESTS); each still reads the answer
    within its own time and counts its own outcome."""

    def __init__(self, url: str, timeout: float, max_in_flight: int,
                 max_answer_bytes: int, *, forward: tuple[str, ...] = (),
                 share: bool = True) -> None:
        self.url = url
        self.timeout = timeout
        self.max_answer_bytes = max_answer_bytes
        self.forward = forward
        self.share = share
        self._limit = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        # Seconds the API has recently taken to answer (a moving average of answered requests).
        self.answer_time = 0.0
        # One pool of kept-alive connections per process (broker.httppool): a request is one
        # write of the forwarded headers' bytes, its answer parsed in C; nothing of a client
        # library's own is added (PROTOCOL §2.1). Raises ValueError for a URL it cannot ask.
        self._pool = HttpPool(url, REQUEST_DEFAULTS)
        # The requests in flight that a connect may share, by their bytes.
        self._flights: dict[bytes, _Flight] = {}

    async def authenticate(self, creds: Credentials, budget: float | None = None) -> Identity:
        """The API's answer as an identity. ``budget``: what is left of the connection's
        BROKER_AUTH_DEADLINE; an answer later than that is ``Refused(auth-timeout)``, counted
        as the outcome ``timeout`` (the API was slow for this client), not ``unavailable``."""
        return await self.ask(self.request(self.forwarded(creds)), budget)

    def request(self, forwarded: bytes) -> bytes:
        """The request the API is asked with: the forwarded headers' lines (``forwarded``),
        with the request line, the Host and the defaults."""
        pairs = []
        for line in forwarded.split(b"\r\n"):
            if line:
                name, _, value = line.partition(b": ")
                pairs.append((name, value))
        return self._pool.head(pairs)

    def forwarded(self, creds: Credentials) -> bytes:
        """The headers the API is asked with for ``creds``, as their request lines
        (``Name: value\\r\\n`` each): all a later re-check needs, and the least of it a
        connection can keep. Raises Refused(invalid-credentials) for a header value no
        request can carry."""
        try:
            headers = forwarded_headers(creds, self.forward)
        except InvalidHeaderValue as exc:
            # The client's input, not the API's state: refused by name, the API not asked.
            metrics.auth_outcome("invalid-credentials", 0.0)
            log.warning("credentials refused: %s in a header value", exc)
            raise Refused(errors.INVALID_CREDENTIALS) from None
        return request_lines(headers)

    async def ask(self, head: bytes, budget: float | None = None, *,
                  fresh: bool = False) -> Identity:
        """The API's answer to the request ``head`` (``request``) as an identity. ``fresh``:
        never share a request already in flight (a re-check wants an answer asked after it)."""
        started = time.monotonic()
        by_deadline = budget is not None and budget < self.timeout
        allowed = budget if by_deadline and budget is not None else self.timeout
        flight = self._board(head, started + allowed, allowed, fresh)
        assert flight.task is not None
        flight.waiters += 1
        try:
            async with asyncio.timeout(allowed):
                status, identity, malformed = await asyncio.shield(flight.task)
        except (TimeoutError, HttpError, OSError, zlib.error, UnreadableAnswer) as exc:
            if by_deadline and isinstance(exc, TimeoutError):
                metrics.auth_outcome("timeout", time.monotonic() - started)
                log.warning("auth API did not answer within the connection's "
                            "BROKER_AUTH_DEADLINE")
                raise Refused(errors.AUTH_TIMEOUT) from None
            metrics.auth_outcome("unavailable", time.monotonic() - started)
            detail = f": {exc}" if isinstance(exc, UnreadableAnswer) else ""
            log.warning("auth API unavailable: %s%s", type(exc).__name__, detail)
            raise AuthUnavailable(errors.AUTH_UNAVAILABLE) from None
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                flight.task.cancel()  # nobody waits for its answer any more
                self._landed(flight)
        elapsed = time.monotonic() - started
        if status != 200:
            metrics.auth_outcome("refused", elapsed)
            raise Refused()
        if malformed is not None:
            metrics.auth_outcome("malformed", elapsed)
            log.warning("auth API answered a malformed body: %s", malformed)
            raise Refused(errors.INVALID_LOGIN if isinstance(malformed, InvalidLogin)
                          else errors.REFUSED)
        assert identity is not None
        metrics.auth_outcome("authorized", elapsed)
        return identity

    def _board(self, head: bytes, deadline: float, allowed: float,
               fresh: bool = False) -> _Flight:
        """The flight of the request ``head``: one in flight with the same bytes, shared, or a
        new one (always a new one when ``fresh``, and not shared)."""
        flight = None if fresh else self._flights.get(head)
        if flight is not None:
            metrics.counters["auth_shared"] += 1
            flight.join(deadline, allowed)
            return flight
        flight = _Flight(head, deadline, allowed)
        flight.task = asyncio.ensure_future(self._fly(flight))
        if self.share and not fresh:
            self._flights[head] = flight
            flight.task.add_done_callback(lambda _: self._landed(flight))
        return flight

    def _landed(self, flight: _Flight) -> None:
        """``flight`` is over (answered, failed or given up): no connect joins it any more."""
        if self._flights.get(flight.head) is flight:
            del self._flights[flight.head]

    async def _fly(self, flight: _Flight) -> Answer:
        """Ask, and read a 200's body as an identity once for every connect waiting."""
        status, body = await self._ask(flight)
        if status != 200:
            return status, None, None
        try:
            return 200, identity_from_api(json.loads(body)), None
        except (ValueError, RecursionError, InvalidIdentity) as exc:
            return 200, None, exc

    def _body_for(self, status: int, encoding: bytes) -> BoundedBody | None:
        """Only a 200's body is read; any other status is a refusal, whatever its body."""
        return BoundedBody(encoding, self.max_answer_bytes) if status == 200 else None

    async def _ask(self, flight: _Flight) -> tuple[int, bytes]:
        """The API's status and, for a 200, its body (bounded: ``BoundedBody``).

        Raises TimeoutError without asking when the turn comes too late: less time left before
        the flight's ``deadline`` than the API's recent ``answer_time``. Only a request whose
        turn comes in the second half of the ``allowed`` seconds is judged so: requests that
        get their turn early always reach the API, whatever the estimate, and the estimate
        follows the API when it speeds up again."""
        async with self._limit:
            sent = time.monotonic()
            left = flight.deadline - sent
            if left < self.answer_time and left < flight.allowed / 2:
                raise TimeoutError("no time left for the auth API's usual answer time")
            self.in_flight += 1
            metrics.auth_in_flight(self.in_flight)
            try:
                answer = await self._pool.get(flight.head, self._body_for)
                self.answer_time += (time.monotonic() - sent - self.answer_time) * 0.2
                return answer
            finally:
                self.in_flight -= 1
                metrics.auth_in_flight(self.in_flight)


_proxies: dict[asyncio.AbstractEventLoop, ApiProxy] = {}


def api_proxy() -> ApiProxy:
    loop = asyncio.get_running_loop()
    proxy = _proxies.get(loop)
    if proxy is None:
        c = conf()
        try:
            proxy = ApiProxy(
                c.BROKER_AUTH_URL, c.BROKER_AUTH_TIMEOUT, c.BROKER_AUTH_MAX_IN_FLIGHT,
                c.BROKER_AUTH_MAX_RESPONSE_BYTES, forward=c.BROKER_AUTH_FORWARD_HEADERS,
                share=c.BROKER_AUTH_SHARE_REQUESTS)
        except ValueError as exc:  # a URL the client cannot ask: every connect is refused
            log.error("BROKER_AUTH_URL: %s; refusing connection", exc)
            raise AuthUnavailable(errors.AUTH_UNAVAILABLE) from None
        _proxies[loop] = proxy
    return proxy


async def redeem(ticket: str, tickets: TicketStore) -> Identity:
    """The identity of a connection ticket, verified here (``broker.tickets.verify``) with
    BROKER_TICKET_SECRET, and used up in ``tickets`` (once in the cluster). The auth API is not
    asked. Raises Refused (``ticket-invalid``, ``ticket-expired``, ``ticket-replayed``,
    ``invalid-login``) or BrokerUnavailable (the ticket store could not say: never admitted
    unchecked)."""
    now = time.time()
    try:
        found = verify(ticket, conf().BROKER_TICKET_SECRET, now)
    except TicketRefused as exc:  # its detail never holds the ticket itself
        log.warning("ticket refused: %s", exc)
        raise Refused(exc.reason) from None
    if not await tickets.use(found.id, found.remaining(now)):
        log.warning("ticket refused: %s: id %s was used before", errors.TICKET_REPLAYED,
                    found.id[:8])
        raise Refused(errors.TICKET_REPLAYED)
    return found.identity


async def authenticate(creds: Credentials, budget: float | None = None,
                       tickets: TicketStore | None = None) -> Identity:
    """Who ``creds`` are: a connection ticket (``redeem``, with the ticket store ``tickets``)
    or static keys checked here, anything else asked of the auth API within ``budget`` seconds
    (what is left of the connection's auth deadline) if given."""
    c = conf()
    if creds.ticket is not None:
        if tickets is None:
            raise TypeError("a ticket is checked against the ticket store: none was given")
        return await redeem(creds.ticket, tickets)
    if creds.is_static:
        if not c.BROKER_APP_KEY:
            raise Refused()
        try:
            return identity_from_static_keys(
                creds.app_key or "", creds.login_id or "", creds.profile_key or "",
                expected_app_key=c.BROKER_APP_KEY, profile_keys=c.BROKER_PROFILE_KEYS or {},
            )
        except InvalidIdentity as exc:
            metrics.auth_outcome("refused", 0.0)
            raise Refused(str(exc)) from None
    if not c.BROKER_AUTH_URL:
        log.error("BROKER_AUTH_URL is not set; refusing connection")
        raise AuthUnavailable(errors.AUTH_UNAVAILABLE)
    return await api_proxy().authenticate(creds, budget)


async def authenticate_keeping(creds: Credentials, budget: float | None = None,
                               tickets: TicketStore | None = None
                               ) -> tuple[Identity, bytes | None]:
    """``authenticate``, and what a later ``reauthenticate`` needs: the headers the auth API
    was asked with, as their request lines (None for static keys, which are not asked again).
    One bytes object per connection is all it keeps of its credentials (docs/performance.md
    "Memory"). A ticket connection keeps the headers the API would have been asked with (its
    handshake's cookie and the rest), so a re-check asks the API as for any other."""
    if creds.ticket is not None:
        identity = await authenticate(creds, budget, tickets)
        if not conf().BROKER_AUTH_URL:
            return identity, None
        try:
            forwarded = request_lines(forwarded_headers(creds,
                                                        conf().BROKER_AUTH_FORWARD_HEADERS))
        except InvalidHeaderValue:  # nothing a re-check could send
            return identity, None
        return identity, forwarded
    if creds.is_static or not conf().BROKER_AUTH_URL:
        return await authenticate(creds, budget), None
    proxy = api_proxy()
    forwarded = proxy.forwarded(creds)
    return await proxy.ask(proxy.request(forwarded), budget), forwarded


async def reauthenticate(forwarded: bytes) -> Identity:
    """Ask the auth API again with a connection's headers (``authenticate_keeping``), within
    BROKER_AUTH_TIMEOUT. Raises Refused or AuthUnavailable as at the connect."""
    proxy = api_proxy()
    return await proxy.ask(proxy.request(forwarded), fresh=True)
