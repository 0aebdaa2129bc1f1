"""Authenticators: the auth API proxy (PROTOCOL §2.1) and static keys (§2.2).

``authenticate(credentials)`` is the one entry point for every transport. It returns an
Identity or raises ``Refused`` (the client is not allowed in) or ``AuthUnavailable`` (the API is
down or slower than BROKER_AUTH_TIMEOUT; never an authorization).

One connection pool serves the whole process (per event loop; split into a few httpx clients),
and a semaphore bounds the auth requests in flight; time spent waiting for the semaphore counts
against the timeout, so a connect storm beyond capacity degrades into ``auth-unavailable``
instead of an unbounded queue.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from http.cookies import CookieError, SimpleCookie

import httpx

from . import errors, metrics
from .conf import conf
from .identity import (
    Identity, InvalidIdentity, InvalidLogin, identity_from_api, identity_from_static_keys,
)

log = logging.getLogger("broker.auth")


AUTH_POOL_SHARDS = 8


class Refused(Exception):
    def __init__(self, reason: str = errors.REFUSED) -> None:
        super().__init__(reason)
        self.reason = reason


class AuthUnavailable(Exception):
    pass


@dataclass
class Credentials:
    """What a client presented, whatever its transport. Header names are lower-case."""

    headers: dict[str, str] = field(default_factory=dict)
    token: str | None = None
    remote_addr: str | None = None
    # Static-key login (Communication Broker): all three or none.
    app_key: str | None = None
    login_id: str | None = None
    profile_key: str | None = None

    @property
    def is_static(self) -> bool:
        return self.app_key is not None or self.profile_key is not None


def forwarded_headers(creds: Credentials, forward: tuple[str, ...]) -> dict[str, str]:
    """The headers the auth API receives: only ones the client sent, or derived from them."""
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
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(cookie)
        except CookieError:
            pass
        if "csrftoken" in jar:
            out["X-CSRFToken"] = jar["csrftoken"].value
    if creds.remote_addr:
        out["X-Real-IP"] = creds.remote_addr
    if creds.token and "Authorization" not in out:
        out["Authorization"] = f"Token {creds.token}"
    return out


class ApiProxy:
    """Asks the backend's HTTP API who a client is. One instance per event loop."""

    def __init__(self, url: str, timeout: float, max_in_flight: int) -> None:
        self.url = url
        self.timeout = timeout
        self._limit = asyncio.Semaphore(max_in_flight)
        self.in_flight = 0
        # One pool per process, split into a few small httpx clients used in turn: httpcore
        # scans every connection against every queued request on each pool event, which made
        # one 64-connection pool half of the broker's CPU in a connect storm (bench B3). The
        # semaphore above still bounds the requests in flight across all of them.
        shards = max(1, min(AUTH_POOL_SHARDS, max_in_flight))
        per_shard = -(-max_in_flight // shards)  # ceil: shards * per_shard >= max_in_flight
        self._clients = [httpx.AsyncClient(
            timeout=httpx.Timeout(timeout),
            limits=httpx.Limits(max_connections=per_shard, max_keepalive_connections=per_shard),
            follow_redirects=False,
        ) for _ in range(shards)]
        for client in self._clients:
            # Only the client's User-Agent is forwarded, never httpx's own (PROTOCOL §2.1).
            del client.headers["User-Agent"]
        self._turn = itertools.cycle(self._clients)

    async def authenticate(self, creds: Credentials) -> Identity:
        started = time.monotonic()
        try:
            response = await asyncio.wait_for(self._ask(creds), self.timeout)
        except (TimeoutError, httpx.HTTPError, OSError) as exc:
            metrics.auth_outcome("unavailable", time.monotonic() - started)
            log.warning("auth API unavailable: %s", type(exc).__name__)
            raise AuthUnavailable(errors.AUTH_UNAVAILABLE) from None
        elapsed = time.monotonic() - started
        if response.status_code != 200:
            metrics.auth_outcome("refused", elapsed)
            raise Refused()
        try:
            identity = identity_from_api(json.loads(response.content))
        except (ValueError, InvalidIdentity) as exc:
            metrics.auth_outcome("malformed", elapsed)
            log.warning("auth API answered a malformed body: %s", exc)
            raise Refused(errors.INVALID_LOGIN if isinstance(exc, InvalidLogin)
                          else errors.REFUSED) from None
        metrics.auth_outcome("authorized", elapsed)
        return identity

    async def _ask(self, creds: Credentials) -> httpx.Response:
        async with self._limit:
            self.in_flight += 1
            metrics.auth_in_flight(self.in_flight)
            try:
                return await next(self._turn).get(
                    self.url, headers=forwarded_headers(creds, conf().BROKER_AUTH_FORWARD_HEADERS)
                )
            finally:
                self.in_flight -= 1
                metrics.auth_in_flight(self.in_flight)


_proxies: dict[asyncio.AbstractEventLoop, ApiProxy] = {}


def api_proxy() -> ApiProxy:
    loop = asyncio.get_running_loop()
    proxy = _proxies.get(loop)
    if proxy is None:
        c = conf()
        proxy = _proxies[loop] = ApiProxy(
            c.BROKER_AUTH_URL, c.BROKER_AUTH_TIMEOUT, c.BROKER_AUTH_MAX_IN_FLIGHT
        )
    return proxy


async def authenticate(creds: Credentials) -> Identity:
    c = conf()
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
    return await api_proxy().authenticate(creds)
