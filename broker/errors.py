"""Every error code of the contract (PROTOCOL.md §3, §5, §6), one constant each.

Codes are what clients compare against; never spell them inline elsewhere.
"""

from __future__ import annotations

# Request errors, sent as {"code": "error", "message": <code>}.
ROOM_NOT_FOUND = "room-not-found"
INVALID_ROOM = "invalid-room"
NO_REQUEST_ID = "no-request-id"
REQUEST_ID_IN_USE = "request-id-in-use"
TOO_MANY_SUBSCRIPTIONS = "too-many-subscriptions"
PROFILE_CANNOT_SUBSCRIBE = "profile-cannot-subscribe"
NOT_SUBSCRIBED = "not-subscribed"
NON_JSON_MESSAGE = "non-json-message"
MESSAGE_TYPE_NOT_ALLOWED = "message-type-not-allowed"
INVALID_MESSAGE = "invalid-message"
DESTINATION_NOT_FOUND = "destination-not-found"
ROOM_NOT_ALLOWED = "room-not-allowed"
# Issue 8: a history request for a room no BROKER_HISTORY rule covers (or a wildcard room).
HISTORY_NOT_ENABLED = "history-not-enabled"
PRESENCE_NOT_ENABLED = "presence-not-enabled"
# Not in the contract's list: the channel layer (Redis) is unreachable, so the request could
# not be carried out. Sent for subscribe/send/publish during an outage (documented).
SERVICE_UNAVAILABLE = "service-unavailable"
UNKNOWN_ACTION = "unknown-action"
# A request id longer than broker.requests.MAX_REQUEST_ID_CHARS (not echoed in the reply).
REQUEST_ID_TOO_LONG = "request-id-too-long"
# A bug in the broker while carrying out a request; logged with its traceback.
INTERNAL_ERROR = "internal-error"
# STOMP (PROTOCOL §4): a frame the STOMP syntax rejects (the detail says why), and a frame
# that arrived before CONNECT. Answered with ERROR; the connection then closes.
MALFORMED_FRAME = "malformed-frame"
NOT_CONNECTED = "not-connected"
CONNECTION_NOT_FOUND = "connection-not-found"
# STOMP destination-type:1: a regular expression that is too long, not RE2 syntax
# (backreferences, look-around, verbose mode), or compiles past RE2's memory budget.
INVALID_PATTERN = "invalid-pattern"
# STOMP: a client that promised heart-beats sent nothing for 2 periods + 1 s (closed, 1001).
HEARTBEAT_TIMEOUT = "heart-beat-timeout"
# A client-supplied trigger id (/trigger "id", publish(trigger_id=...)) that is not 1 to 64
# characters of A-Z a-z 0-9 . _ : - (HTTP 400 on /trigger, InvalidTriggerId from publish()).
INVALID_TRIGGER_ID = "invalid-trigger-id"
# Acknowledged messages ("ack": true) not stored, so not sent: the recipient's pending
# messages (BROKER_ACK_MAX_PENDING_PER_RECIPIENT / _BYTES_PER_RECIPIENT), the sender's
# unconfirmed ones (..._PER_SENDER), or all of them (BROKER_ACK_MAX_TOTAL_BYTES) are at the limit.
ACK_RECIPIENT_QUOTA = "ack-recipient-quota"
ACK_SENDER_QUOTA = "ack-sender-quota"
ACK_STORE_FULL = "ack-store-full"
# Event filters and tags (broker.filters, docs/protocol.md "Event filters"): a subscription's
# ``filter`` that is not the grammar, one over a bound (operators, nesting, an ``in`` list, a
# literal's length), and a trigger's ``tags`` that are not an object of bounded scalars.
INVALID_FILTER = "invalid-filter"
FILTER_TOO_LARGE = "filter-too-large"
INVALID_TAGS = "invalid-tags"
# Over BROKER_RATE_LIMIT: the request was not carried out (repeated, the close reason of 4029).
RATE_LIMITED = "rate-limited"
# Persistent subscriptions ("persistent": true on subscribe, broker.persistent): only a client
# with a login may make one; one login keeps at most BROKER_MAX_PERSISTENT_SUBSCRIPTIONS; a
# kept entry is at most broker.persistent.MAX_ENTRY_CHARS; a regular-expression watch cannot
# be one (its pattern is the STOMP codec's, compiled per connection).
PERSISTENT_NEEDS_LOGIN = "persistent-needs-login"
TOO_MANY_PERSISTENT = "too-many-persistent-subscriptions"
PERSISTENT_TOO_LARGE = "persistent-too-large"
PERSISTENT_NOT_ALLOWED = "persistent-not-allowed"

# SSE (``GET /sse/``, docs/protocol.md "SSE"): the request is answered 400 (413 when too big)
# before any stream: ``subscribe`` is not a JSON array of objects (nor the POST body
# ``{"subscribe": [...]}``), it is over BROKER_MAX_MESSAGE_BYTES, or the ``Last-Event-ID``
# (or ``?lastEventId=``) is not the stream's own ``<requestId JSON>=<offset>&...``.
INVALID_SUBSCRIBE_LIST = "invalid-subscribe-list"
SUBSCRIBE_LIST_TOO_BIG = "subscribe-list-too-big"
INVALID_LAST_EVENT_ID = "invalid-last-event-id"

# Refusal reasons and close reasons.
AUTH_UNAVAILABLE = "auth-unavailable"
REFUSED = "refused"
SLOW = "slow"
REPLACED = "replaced"
KICKED = "kicked"
DUPLICATE_LOGIN = "duplicate-login"
INVALID_APP_KEY = "Invalid Application Secret Key."
INVALID_PROFILE_KEY = "Invalid Profile/Passcode."
GOING_AWAY = "going-away"  # 1001: the process is shutting down
ORIGIN_NOT_ALLOWED = "origin-not-allowed"  # 1008: Origin not in BROKER_ALLOWED_ORIGINS
# 4408: not authenticated within BROKER_AUTH_DEADLINE of the accept (credentials never came,
# came too slowly, or the auth API did not answer in what was left of it).
AUTH_TIMEOUT = "auth-timeout"
# Handshakes refused with HTTP 503 before the WebSocket opens.
OVER_CAPACITY = "over-capacity"  # BROKER_MAX_CONNECTIONS reached in this process
SHUTTING_DOWN = "shutting-down"  # the process got SIGTERM
# A login (static keys, or the auth API's answer) that is not a concrete printable name:
# control characters, line separators, '*', '/', empty, too long (broker.identity).
INVALID_LOGIN = "invalid-login"
# A credential (cookie, token, authorization, a forwarded header) that cannot be an HTTP header
# value: CR, LF, NUL or another control character (broker.auth.wire_value). The client's fault:
# 4003, the auth API is not asked, and it is not counted as an auth API failure.
INVALID_CREDENTIALS = "invalid-credentials"
# 4003: a re-check (the server API's ``recheck``) asked the auth API again and it no longer
# admits this connection's credentials, or answers another login or profile for them.
REVOKED = "revoked"
# Connection tickets (broker.tickets, docs/protocol.md "Connection tickets"), refused 4003:
# oversize, malformed, tampered, signed by no secret of BROKER_TICKET_SECRET, or unreadable;
# past its expiry (and the clock-skew allowance); already used once, on any process.
TICKET_INVALID = "ticket-invalid"
TICKET_EXPIRED = "ticket-expired"
TICKET_REPLAYED = "ticket-replayed"
# Why the outbox relay parked a row (broker.relay): its text is not a JSON object, or the
# trigger rules (broker.triggers) refused it; the row's ``reason`` adds the details.
OUTBOX_UNREADABLE = "outbox-unreadable"
OUTBOX_REFUSED = "outbox-refused"
# The rich dialect's ``unsubscribed`` frame: why the broker ended a subscription.
UNSUBSCRIBED_BY_SERVER = "server"  # the server API's ``unsubscribe``
UNSUBSCRIBED_BY_RECHECK = "recheck"  # no longer allowed by the auth API's answer

# WebSocket close codes (PROTOCOL §3 "Close codes").
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_ORIGIN = 1008
CLOSE_TOO_BIG = 1009
CLOSE_AUTH_UNAVAILABLE = 1011
CLOSE_INTERNAL = 1011  # a bug in the broker ended the connection (RFC 6455: internal error)
CLOSE_REFUSED = 4003
CLOSE_SLOW = 4008
CLOSE_REPLACED = 4009
CLOSE_KICKED = 4010
CLOSE_RATE_LIMITED = 4029
CLOSE_AUTH_TIMEOUT = 4408


class BrokerUnavailable(Exception):
    """The channel layer or the cluster registry (Redis) could not be reached."""


class InvalidTriggerId(ValueError):
    """A client-supplied trigger id is not acceptable (INVALID_TRIGGER_ID)."""


class AckRefused(Exception):
    """An acknowledged message was not stored (so not sent): ``code`` is one of the ACK_* names
    above, ``detail`` says which bound."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class PersistentRefused(Exception):
    """A persistent subscription was not kept (so not made): ``code`` is TOO_MANY_PERSISTENT,
    ``detail`` says which bound."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
