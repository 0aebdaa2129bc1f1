"""Broker settings: every ``BROKER_*`` name, its default, and how it is read.

A value comes from, in order: the environment variable of the same name, the Django setting of
the same name, the default below. Environment values are parsed by the type of the default, so
``BROKER_MAX_SUBSCRIPTIONS=10`` is an int and ``BROKER_PUBLIC_STATUS=true`` a bool.

Settings are read once per process (``conf()`` is cached); tests that change them call
``conf.cache_clear()``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from functools import cache, cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .history import HistoryPolicy
    from .presence import PresencePolicy


@dataclass(frozen=True)
class Settings:
    # Channel layer / cluster. Comma-separated URLs shard the layer; "" = in-memory layer.
    BROKER_REDIS_URL: str = ""
    # Prefix of every Redis key and pub/sub channel the broker uses.
    BROKER_KEY_PREFIX: str = "combroker"
    # Auth API proxy (PROTOCOL §2.1). "" with BROKER_DEMO on = built-in demo auth API.
    BROKER_AUTH_URL: str = ""
    BROKER_AUTH_TIMEOUT: float = 5.0
    BROKER_AUTH_MAX_IN_FLIGHT: int = 64
    # Seconds from accept to authenticated, on every transport (the wait for credentials, a
    # STOMP CONNECT or a JSON-lines connect line, and the auth API's answer together): a
    # connection not authenticated by then is closed with 4408 "auth-timeout". 0 = none.
    BROKER_AUTH_DEADLINE: float = 10.0
    BROKER_AUTH_FORWARD_HEADERS: tuple[str, ...] = ()
    # Bytes of the auth API's 200 answer the broker reads, counted after decompression; a
    # larger answer is the backend's fault: auth-unavailable (docs/operations.md "Security").
    BROKER_AUTH_MAX_RESPONSE_BYTES: int = 1_048_576
    # Connects whose auth requests would be identical (the same forwarded header bytes, the
    # client's address included) while one of them is in flight share that one request and
    # its answer (docs/operations.md "The auth API"). Off: one request per connect, for an
    # auth API whose answer to the same request may differ (single-use tickets).
    BROKER_AUTH_SHARE_REQUESTS: bool = True
    # A serving process runs a full garbage collection (generation 2) at most once every this
    # many generation-1 collections (CPython's default: 10). Each full one walks every object
    # of the process, and a connect storm grows the heap fast: at 10 they were half of the
    # broker's CPU per connect (docs/performance.md). 0 = the interpreter's own setting.
    BROKER_GC_FULL_EVERY: int = 100
    # Connection tickets (broker.tickets, docs/protocol.md "Connection tickets"): the HMAC
    # secret(s) shared with the backend, comma-separated to rotate (tickets are minted with the
    # first and accepted with any; empty = tickets off); the seconds a minted ticket lives; and
    # the dotted path of the callable ``mint(request)`` asks for the identity (the auth API's
    # answer for that request) when none is given.
    BROKER_TICKET_SECRET: tuple[str, ...] = ()
    BROKER_TICKET_TTL: float = 60.0
    BROKER_TICKET_IDENTITY: str = ""
    # Static-key login (PROTOCOL §2.2).
    BROKER_APP_KEY: str = ""
    BROKER_PROFILE_KEYS: dict[str, str] | None = None
    BROKER_DUPLICATE_LOGIN: str = "allow"
    # /trigger (PROTOCOL §5).
    BROKER_TRIGGER_TOKEN: str = ""
    BROKER_MAX_TRIGGER_BYTES: int = 1_048_576
    # Triggers in one batch (POST /trigger with a JSON array); more is 400.
    BROKER_MAX_TRIGGER_BATCH: int = 1000
    # Per-connection limits (PROTOCOL §3).
    BROKER_MAX_MESSAGE_BYTES: int = 65_536
    # STOMP (PROTOCOL §4): bytes of one frame's command and headers; the heart-beat period in
    # ms the TCP gate offers both ways in CONNECTED (0 = none).
    BROKER_MAX_HEADER_BYTES: int = 16_384
    BROKER_STOMP_HEARTBEAT_MS: int = 10_000
    BROKER_MAX_SUBSCRIPTIONS: int = 2048
    # Seconds between SSE heart-beats (a comment line on a stream with nothing else to write,
    # docs/protocol.md "SSE"): keeps proxies from closing an idle stream. 0 = none.
    BROKER_SSE_HEARTBEAT: float = 15.0
    # Bytes of encoded frames waiting to be written to one connection before it is closed
    # with 4008 "slow". This bounds the memory one slow client can hold.
    BROKER_MAX_OUTBOX_BYTES: int = 1_048_576
    # Requests one connection may make: a token bucket refilled at BROKER_RATE_LIMIT per
    # second holding at most BROKER_RATE_BURST (0 = no limit). Over it a request is answered
    # ``rate-limited`` and not carried out; a client that sends BROKER_RATE_BURST more while
    # limited is closed with 4029. The burst covers subscribing a full set at connect.
    BROKER_RATE_LIMIT: float = 100.0
    BROKER_RATE_BURST: int = 2048
    # Connections one process serves (WebSocket, authenticating ones included); beyond it the
    # handshake is refused with HTTP 503. 0 = no limit.
    BROKER_MAX_CONNECTIONS: int = 20_000
    # WebSocket Origin allow-list, comma-separated ("https://app.example.com,https://*.ex.com");
    # empty = any origin. A handshake without Origin (not a browser) is always let through.
    BROKER_ALLOWED_ORIGINS: tuple[str, ...] = ()
    # Seconds SIGTERM waits for clients to be closed with 1001 and their queues to drain.
    BROKER_SHUTDOWN_GRACE: float = 10.0
    BROKER_PUBLIC_STATUS: bool = False
    # Cluster registry: entries of a process that stops heartbeating vanish after this.
    BROKER_REGISTRY_TTL: float = 15.0
    # Set by runbroker: serves the demo auth API and demo page, prints a trigger token.
    BROKER_DEMO: bool = False
    # Root log level (read by combroker.settings' LOGGING).
    BROKER_LOG_LEVEL: str = "INFO"
    # Room history (docs/guarantees.md): a JSON list of {"room": <pattern, "*" allowed>,
    # "size": <triggers kept per concrete room>, "ttl": <seconds after the last one>}. A trigger
    # asking "history": true is recorded in each of its concrete rooms the first matching
    # pattern covers. None/[] = no history.
    BROKER_HISTORY: Any = None
    # Seconds a room's offset sequence outlives its last trigger (at least the room's ttl).
    # Within it, "recovered" is exact; after it the sequence restarts above the old offsets.
    BROKER_HISTORY_META_TTL: float = 86_400.0
    # Seconds a client-supplied trigger id ("id" in /trigger, publish(trigger_id=...)) keeps a
    # retry from being recorded in history again (docs/guarantees.md "Retrying a trigger").
    BROKER_TRIGGER_ID_TTL: float = 3600.0
    # Seconds a closed connection's resume token keeps its subscriptions and positions.
    BROKER_RESUME_TTL: float = 300.0
    # Persistent subscriptions ("persistent": true on subscribe): how many one login keeps
    # (more are refused: too-many-persistent-subscriptions), and the seconds a login's kept
    # subscriptions outlive their last use (a save, or a connection of that login restoring them).
    BROKER_MAX_PERSISTENT_SUBSCRIPTIONS: int = 32
    BROKER_PERSISTENT_TTL: float = 2_592_000.0
    # Opt-in: the broker also sets a rich WebSocket connection's resume token in an HttpOnly
    # cookie (``combroker_resume``, broker.resumecookie) on the accept, and reads it back when
    # a handshake gives no ``?resume=`` (docs/protocol.md "Resume across page reloads").
    BROKER_RESUME_COOKIE: bool = False
    # The resume cookie's SameSite: lax, strict or none (none is only kept by browsers with
    # Secure, i.e. under TLS or a trusted X-Forwarded-Proto: https).
    BROKER_RESUME_COOKIE_SAMESITE: str = "lax"
    # The resume cookie's Path; "" = the path of the handshake that sets it (the broker's).
    BROKER_RESUME_COOKIE_PATH: str = ""
    # Seconds an acknowledged direct message ("ack": true) waits for its confirmations.
    BROKER_ACK_TTL: float = 86_400.0
    # Bounds on stored acknowledged messages (0 = no limit). Each message counts its stored
    # JSON plus 256 bytes. Pending for one recipient destination; unconfirmed from one sender
    # login (senders without a login share one quota); and all of them together. Over a bound
    # the send is refused (ack-recipient-quota, ack-sender-quota, ack-store-full).
    BROKER_ACK_MAX_PENDING_PER_RECIPIENT: int = 1000
    BROKER_ACK_MAX_BYTES_PER_RECIPIENT: int = 8_388_608
    BROKER_ACK_MAX_PENDING_PER_SENDER: int = 1000
    BROKER_ACK_MAX_BYTES_PER_SENDER: int = 8_388_608
    BROKER_ACK_MAX_TOTAL_BYTES: int = 268_435_456
    # Presence (README "Presence and lifecycle"): who holds a subscription to each room, its
    # join/leave frames and queries. Off entirely, or (a JSON list of room patterns, "*"
    # allowed) for the rooms those patterns permit.
    BROKER_PRESENCE: bool = True
    BROKER_PRESENCE_OFF: Any = None
    # Rooms (a JSON list of patterns) whose first and last member connection the backend hears
    # of as "joined"/"left" lifecycle events; "online"/"offline" are sent for every login.
    BROKER_LIFECYCLE_ROOMS: Any = None
    # webhooks (issue 14): lifecycle events POSTed to the backend, signed (docs/webhooks.md).
    # The URL ("" = none: no dispatcher runs) and the HMAC secret (required with a URL).
    BROKER_WEBHOOK_URL: str = ""
    BROKER_WEBHOOK_SECRET: str = ""
    # Events per POST at most; seconds one POST may take (connect included).
    BROKER_WEBHOOK_BATCH: int = 100
    BROKER_WEBHOOK_TIMEOUT: float = 5.0
    # Events waiting at most (cluster-wide with Redis); more are refused and counted.
    BROKER_WEBHOOK_MAX_PENDING: int = 100_000
    # Seconds an event is retried for (from its "at"); older ones are dropped and counted.
    BROKER_WEBHOOK_MAX_AGE: float = 86_400.0
    # The longest wait between two attempts (the backoff doubles from 0.5 s up to it).
    BROKER_WEBHOOK_RETRY_MAX: float = 30.0
    # Seconds the sending process's lease lasts unless renewed: a process that dies is
    # replaced by another after it. At least twice BROKER_WEBHOOK_TIMEOUT.
    BROKER_WEBHOOK_LEASE_TTL: float = 15.0
    # The AMQP trigger source (issue 17, broker.amqpsource): High-templar's RabbitMQ triggers.
    # The URL ("" = off), the exchange the backend publishes to (declared as High-templar
    # does), the one durable queue every broker process consumes (its dead letters go to
    # "<queue>.dead"), and the messages one process holds unacknowledged at most.
    BROKER_AMQP_URL: str = ""
    BROKER_AMQP_EXCHANGE: str = "hightemplar"
    BROKER_AMQP_QUEUE: str = "combroker.triggers"
    BROKER_AMQP_PREFETCH: int = 100
    # Whether serving processes run the source themselves (false: run `manage.py
    # runamqpsource` instead).
    BROKER_AMQP_IN_BROKER: bool = True
    # The longest wait between two connection attempts (the backoff doubles from 0.5 s).
    BROKER_AMQP_RETRY_MAX: float = 30.0
    # The transactional outbox's relay (broker.relay, manage.py runoutboxrelay): rows it reads
    # and publishes at once (one publish_many), and the seconds it waits for a NOTIFY (or, off
    # PostgreSQL, sleeps) before it looks again; a standby relay tries to take over as often.
    BROKER_OUTBOX_BATCH: int = 100
    BROKER_OUTBOX_POLL_INTERVAL: float = 1.0
    # Tests only: a file path; the relay creates it after publishing a batch and before marking
    # it done, and waits there until the file is removed (the window a crash test kills in).
    BROKER_OUTBOX_TEST_HOLD: str = ""

    @cached_property
    def history_policy(self) -> HistoryPolicy:
        from .history import HistoryPolicy

        return HistoryPolicy.from_setting(self.BROKER_HISTORY)

    @cached_property
    def presence_policy(self) -> PresencePolicy:
        from .presence import PresencePolicy

        return PresencePolicy.from_settings(self.BROKER_PRESENCE, self.BROKER_PRESENCE_OFF,
                                            self.BROKER_LIFECYCLE_ROOMS)


class SettingError(ValueError):
    """A malformed setting. The message names the setting and the formats it accepts."""

    def __init__(self, name: str, problem: str, accepted: str) -> None:
        super().__init__(f"{name}: {problem}; accepted: {accepted}")
        self.setting = name


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
# Settings whose value is one of a few words (checked, with the words in the error).
_CHOICES: dict[str, tuple[str, ...]] = {
    "BROKER_DUPLICATE_LOGIN": ("allow", "reject", "replace"),
    "BROKER_LOG_LEVEL": _LOG_LEVELS,
    "BROKER_RESUME_COOKIE_SAMESITE": ("lax", "strict", "none"),
}
_PROFILE_KEYS_FORMATS = ('a JSON object {"agent": "KEY", ...} or agent:KEY,super_agent:KEY '
                         "(profiles: agent, super_agent, service, admin)")
_HISTORY_FORMATS = 'a JSON list of {"room": <pattern>, "size": <int>, "ttl": <seconds>}'


def _profile_keys(name: str, raw: Any) -> dict[str, str] | None:
    from .identity import Profile

    if raw is None:
        return None
    if isinstance(raw, str):
        text = raw.strip()
        if not text:
            return None
        if text.startswith("{"):
            try:
                raw = json.loads(text)
            except ValueError as exc:
                raise SettingError(name, f"not JSON ({exc})", _PROFILE_KEYS_FORMATS) from None
        else:
            pairs = {}
            for part in (p.strip() for p in text.split(",")):
                profile, sep, key = part.partition(":")
                if not sep or not profile.strip() or not key:
                    raise SettingError(name, f"{part[:40]!r} is not profile:key",
                                       _PROFILE_KEYS_FORMATS)
                pairs[profile.strip()] = key
            raw = pairs
    if not isinstance(raw, dict):
        raise SettingError(name, f"a {type(raw).__name__}", _PROFILE_KEYS_FORMATS)
    for profile, key in raw.items():
        if profile not in set(Profile):
            raise SettingError(name, f"unknown profile {str(profile)[:40]!r}",
                               _PROFILE_KEYS_FORMATS)
        if not isinstance(key, str) or not key:
            raise SettingError(name, f"the key of {profile} is not a non-empty string",
                               _PROFILE_KEYS_FORMATS)
    return dict(raw)


def _history(name: str, raw: Any) -> Any:
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise SettingError(name, f"not JSON ({exc})", _HISTORY_FORMATS) from None
    return raw


def _parse(name: str, raw: Any, default: Any) -> Any:
    """One setting's value (from the environment: a string) in the type of its default.
    Raises SettingError naming the setting and what it accepts."""
    if name == "BROKER_PROFILE_KEYS":
        return _profile_keys(name, raw)
    if name in ("BROKER_HISTORY", "BROKER_PRESENCE_OFF", "BROKER_LIFECYCLE_ROOMS"):
        return _history(name, raw)
    if isinstance(default, bool):
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word not in _TRUE | _FALSE:
            raise SettingError(name, f"{str(raw)[:40]!r} is not a boolean",
                               "true/false, 1/0, yes/no, on/off")
        return word in _TRUE
    if isinstance(default, (int, float)):
        kind = "integer" if isinstance(default, int) else "number"
        accepted = f"a non-negative {kind}" + ("" if kind == "integer" else " (e.g. 2.5)")
        try:
            value = int(raw) if kind == "integer" else float(raw)
        except (TypeError, ValueError):
            raise SettingError(name, f"{str(raw)[:40]!r} is not a {kind}", accepted) from None
        if not (0 <= value < float("inf")):  # NaN fails too
            raise SettingError(name, f"{value} is out of range", accepted)
        return value
    if isinstance(default, tuple):
        if isinstance(raw, str):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
        if isinstance(raw, (list, tuple)) and all(isinstance(v, str) for v in raw):
            return tuple(raw)
        raise SettingError(name, f"a {type(raw).__name__}",
                           "comma-separated text, or a list of strings")
    if not isinstance(raw, str):
        raise SettingError(name, f"a {type(raw).__name__}", "text")
    choices = _CHOICES.get(name)
    if choices is not None:
        word = raw.strip()
        word = word.upper() if choices is _LOG_LEVELS else word.lower()
        if word not in choices:
            raise SettingError(name, f"{raw[:40]!r} is not one of them", ", ".join(choices))
        return word
    return raw


def log_level(environ: dict[str, str] | None = None) -> str:
    """BROKER_LOG_LEVEL, checked, for LOGGING (read before Django is set up)."""
    env = os.environ if environ is None else environ
    raw = env.get("BROKER_LOG_LEVEL")
    return "INFO" if raw is None else str(_parse("BROKER_LOG_LEVEL", raw, "INFO"))


@cache
def conf() -> Settings:
    """The settings of this process. Raises SettingError for a malformed one; a malformed
    BROKER_HISTORY is reported here too (its rules are checked), not at the first trigger."""
    from django.conf import settings as django_settings

    values: dict[str, Any] = {}
    for f in fields(Settings):
        if f.name in os.environ:
            values[f.name] = _parse(f.name, os.environ[f.name], f.default)
        elif hasattr(django_settings, f.name):
            values[f.name] = _parse(f.name, getattr(django_settings, f.name), f.default)
    settings = Settings(**values)
    try:
        _ = settings.history_policy
    except (ValueError, TypeError) as exc:
        problem = str(exc).removeprefix("BROKER_HISTORY")
        raise SettingError("BROKER_HISTORY", problem.lstrip(": ") or "malformed",
                           _HISTORY_FORMATS) from None
    try:
        _ = settings.presence_policy
    except ValueError as exc:
        name, _sep, problem = str(exc).partition(": ")
        raise SettingError(name, problem or "malformed",
                           'a JSON list of rooms, e.g. [{"target": "chat", "id": "*"}]') from None
    _check_webhooks(settings)
    return settings


def _check_webhooks(s: Settings) -> None:
    """With BROKER_WEBHOOK_URL set, what the webhook dispatcher needs (broker.webhooks)."""
    url = s.BROKER_WEBHOOK_URL.strip()
    if not url:
        return
    if not url.lower().startswith(("http://", "https://")) or "@" in url:
        raise SettingError("BROKER_WEBHOOK_URL", "not an http(s) URL without user:password@",
                           "http://host[:port]/path or https://...")
    if not s.BROKER_WEBHOOK_SECRET:
        raise SettingError("BROKER_WEBHOOK_SECRET", "empty while BROKER_WEBHOOK_URL is set "
                           "(webhooks are signed)", "the secret shared with the backend")
    if s.BROKER_WEBHOOK_BATCH < 1:
        raise SettingError("BROKER_WEBHOOK_BATCH", f"{s.BROKER_WEBHOOK_BATCH}",
                           "an integer of at least 1")
    if s.BROKER_WEBHOOK_LEASE_TTL < 2 * s.BROKER_WEBHOOK_TIMEOUT:
        raise SettingError("BROKER_WEBHOOK_LEASE_TTL", "shorter than twice "
                           "BROKER_WEBHOOK_TIMEOUT (the lease must outlast a POST)",
                           "a number of seconds of at least 2 x BROKER_WEBHOOK_TIMEOUT")


def redis_urls() -> list[str]:
    return [u.strip() for u in conf().BROKER_REDIS_URL.split(",") if u.strip()]


def channel_layers_setting(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """CHANNEL_LAYERS for a deployment, from BROKER_REDIS_URL (read before Django is set up).

    Redis: channels_redis's pub/sub layer. A group send is one PUBLISH, and a process receives
    only the groups it joined, so a trigger wakes only processes with a matching subscription
    (docs/architecture.md, docs/performance.md). No Redis: the in-memory layer, one process.
    """
    env = os.environ if environ is None else environ
    urls = [u.strip() for u in env.get("BROKER_REDIS_URL", "").split(",") if u.strip()]
    if urls:
        return {"default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": urls, "prefix": env.get("BROKER_KEY_PREFIX", "combroker")},
        }}
    # The in-memory layer drops messages beyond ``capacity`` per channel; the hub's channel
    # carries every trigger of the process, so it must not be the default 100.
    return {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer",
                        "CONFIG": {"capacity": 100_000, "expiry": 60}}}
