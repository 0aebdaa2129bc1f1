"""The JSON codec: text frames <-> session requests and replies, in two dialects.

- High-templar dialect (no subprotocol, PROTOCOL §3.1): frames are exactly High-templar 3.x's.
- Rich dialect (``combroker.v1``, §3.2): the same frames plus ``type``, the echoed
  ``requestId``, and extra fields.

Delivery frames are built by string concatenation around the trigger's ``data`` already encoded
once per trigger, so fanning one trigger out to N connections encodes the data once, not N times.

Issue 8 adds, in the rich dialect only, ``offset`` to deliveries of recorded triggers and
``resumed`` to a welcome that answers a resume; and in both dialects the new requests
``history`` and ``confirm`` with their frames (``history``, ``confirmed``), ``since`` on
subscribe, ``ack`` on send, ``history`` on publish. No High-templar frame changes.

Where no handshake carries the credentials (JSON lines over TCP), the first line is a
``{"type":"connect", ...}`` (``connect``). JSON has no heart-beats, and no per-request context:
a request's ``meta`` stays None.
"""

from __future__ import annotations

from typing import Any

from .. import errors
from ..credentials import Credentials
from ..codec import Answer, BadConnect, Capabilities, Connecting, Wire
from ..identity import Identity, public_destination, public_room, public_room_key
from ..messages import Confirmed, DirectMessage, PresenceEvent
from ..jsontext import JsonTooDeep, dump_json, load_json
from ..presence import member_view, presence_counts
from ..replies import (
    AdminResult,
    Error,
    HistoryResult,
    Pong,
    PresenceResult,
    Reply,
    StatusInfo,
    Success,
)
from ..requests import (
    Admin,
    CodecContext,
    Confirm,
    History,
    Invalid,
    Ping,
    PresenceQuery,
    Publish,
    Request,
    Send,
    Status,
    Subscribe,
    Unsubscribe,
)
from ..subscription import Subscription

RICH_SUBPROTOCOL = "combroker.v1"


def _decode_request(msg: dict[str, Any]) -> Request:
    kind = msg.get("type")
    rid = msg.get("requestId")
    if kind == "subscribe":
        return Subscribe(rid, msg.get("room"), since=msg.get("since"),
                         presence=msg.get("presence", False), filter=msg.get("filter"),
                         persistent=msg.get("persistent", False))
    if kind == "unsubscribe":
        return Unsubscribe(rid)
    if kind == "ping":
        return Ping(rid)
    if kind == "status":
        return Status(rid)
    if kind == "send":
        if "to" not in msg or "data" not in msg:
            return Invalid(errors.INVALID_MESSAGE, rid, "send needs 'to' and 'data'")
        return Send(rid, msg["to"], msg["data"], ack=msg.get("ack", False))
    if kind == "publish":
        if "data" not in msg:
            return Invalid(errors.INVALID_MESSAGE, rid, "publish needs 'rooms' and 'data'")
        return Publish(rid, msg.get("rooms"), msg["data"], history=msg.get("history", False),
                       tags=msg.get("tags"))
    if kind == "history":
        return History(rid, msg.get("room"), msg.get("limit"), msg.get("since"))
    if kind == "confirm":
        return Confirm(rid, msg.get("id"))
    if kind in ("presence", "presence_stats"):
        return PresenceQuery(rid, msg.get("room"), stats=kind == "presence_stats")
    if kind == "admin":
        args = {k: v for k, v in msg.items() if k not in ("type", "requestId", "action")}
        return Admin(rid, msg.get("action"), args)
    return Invalid(errors.MESSAGE_TYPE_NOT_ALLOWED, rid)


def credentials_from_connect(msg: dict[str, Any], remote_addr: str | None) -> Credentials:
    """The §2 credentials of a JSON-lines ``{"type":"connect", ...}`` line."""

    def text(name: str) -> str | None:
        value = msg.get(name)
        return value if isinstance(value, str) else None

    headers = {name: value for name in ("cookie", "authorization", "user-agent")
               if (value := text(name))}
    extra = msg.get("headers")
    if isinstance(extra, dict):  # for BROKER_AUTH_FORWARD_HEADERS
        headers.update({str(k).lower(): v for k, v in extra.items() if isinstance(v, str)})
    return Credentials(headers=headers, token=text("token"), remote_addr=remote_addr,
                       app_key=text("app_key"), login_id=text("login_id"),
                       profile_key=text("profile_key"), ticket=text("ticket"))


class JsonCodec:
    def __init__(self, rich: bool, caps: Capabilities | None = None) -> None:
        self.rich = rich
        # Both dialects confirm acknowledged messages; only the rich one resumes (and is told
        # to resync: ``resync``). ``caps``: a transport's own (SSE cannot send requests).
        self.caps = caps or Capabilities(resumable=rich, confirms=True)

    # ---- connecting

    def connect(self, data: Wire, remote_addr: str | None) -> Connecting:
        """The credentials of a JSON-lines ``{"type":"connect", ...}`` line, and its ``resume``
        (an earlier connection's resume token); raises BadConnect for anything else."""
        try:
            msg = load_json(data) if isinstance(data, str) else None
        except ValueError:
            msg = None
        if not isinstance(msg, dict) or msg.get("type") != "connect":
            raise BadConnect(errors.NOT_CONNECTED)
        resume = msg.get("resume")
        return Connecting(credentials_from_connect(msg, remote_addr),
                          resume if isinstance(resume, str) else None)

    def heartbeat(self) -> None:
        """JSON has no heart-beats (``connect`` negotiates none)."""
        return None

    # ---- inbound

    def decode(self, text: Wire) -> Request:
        if not isinstance(text, str):  # a binary frame
            return Invalid(errors.NON_JSON_MESSAGE)
        if text == "ping":
            return Ping(text=True)
        try:
            msg = load_json(text)  # RFC 8259 only: no NaN, no RecursionError
        except JsonTooDeep as exc:  # JSON, but more than the broker reads or writes
            return Invalid(errors.INVALID_MESSAGE, detail=str(exc))
        except ValueError:
            return Invalid(errors.NON_JSON_MESSAGE)
        if not isinstance(msg, dict):
            return Invalid(errors.INVALID_MESSAGE)
        return _decode_request(msg)

    def malformed(self, detail: str) -> Request:
        """Input no JSON framing could cut (never on a JSON framing today: a line over its
        bound is too big, not malformed)."""
        return Invalid(errors.NON_JSON_MESSAGE, detail=detail)

    # ---- outbound

    def welcome(self, identity: Identity, connection_id: str, resume_token: str | None,
                resumed: bool | None = None, restored: list[dict[str, Any]] | None = None,
                persistent: list[dict[str, Any]] | None = None,
                *, resume_ttl: float | None = None) -> str:
        rooms = identity.shown_rooms
        if not self.rich:
            return dump_json({"is_authorized": True, "allowed_rooms": rooms})
        frame = {
            "type": "welcome", "is_authorized": True, "is_authenticated": True,
            "allowed_rooms": rooms, "connection_id": connection_id,
            "login_id": identity.login_id, "profile": str(identity.profile),
            "destination": identity.public_destination, "resume_token": resume_token,
        }
        if resume_token is not None and resume_ttl is not None:  # seconds kept after the close
            frame["resume_ttl"] = int(resume_ttl) if resume_ttl == int(resume_ttl) else resume_ttl
        if resumed is not None:  # only when the client presented a resume token
            frame["resumed"] = resumed
            if resumed:  # what came back: requestId, room, presence, history rooms' offset
                frame["subscriptions"] = restored or []
        if persistent:  # the login's persistent subscriptions (High-templar: not shown)
            frame["persistent"] = persistent
        return dump_json(frame)

    def refused(self, reason: str, detail: str | None = None) -> str:
        """``detail`` is not shown: a refusal frame carries only its reason."""
        if not self.rich:
            return dump_json({"is_authorized": False})
        return dump_json({"type": "refused", "is_authorized": False, "reason": reason})

    def answer(self, reply: Reply, context: CodecContext = None) -> Answer:
        """broker.codec.Codec: a JSON reply never ends the connection; no per-request context."""
        return Answer(self._reply(reply))

    def _reply(self, reply: Reply) -> str:
        frame: dict[str, Any]
        if isinstance(reply, HistoryResult):
            return self._history(reply)
        if isinstance(reply, PresenceResult):
            return _presence(reply)
        match reply:
            case Pong(text=True):
                return "pong"
            case Pong():
                frame = {"type": "pong"}
            case Success():
                frame = {"code": "success"}
                if self.rich and reply.extra:
                    frame.update(reply.extra)
            case Error():
                frame = {"code": "error", "message": reply.code}
                if self.rich:
                    frame["type"] = "error"
                    if reply.detail:
                        frame["detail"] = reply.detail
            case StatusInfo():
                frame = {"open_connections": reply.open_connections,
                         "num_rooms": reply.num_rooms, "online_since": reply.online_since}
                if self.rich:
                    frame["type"] = "status"
            case AdminResult():
                frame = {"code": "success", "type": "admin", **reply.result}
        if reply.request_id is not None and (self.rich or isinstance(reply, Pong)):
            frame["requestId"] = reply.request_id
        return dump_json(frame)

    def _history(self, reply: HistoryResult) -> str:
        """A new frame (no High-templar equivalent), the same in both dialects."""
        messages = ",".join(f'{{"offset":{e.offset},"id":{dump_json(e.id)},"data":{e.data_json}}}'
                            for e in reply.entries)
        head = f'{{"type":"history","room":{reply.room.key},"offset":{reply.top}'
        if reply.recovered is not None:
            head += ',"recovered":' + ("true" if reply.recovered else "false")
        if reply.request_id is not None:
            head += ',"requestId":' + dump_json(reply.request_id)
        return f'{head},"messages":[{messages}]}}'

    def publish(self, sub: Subscription, data_json: str, room_key: str, trigger_id: str,
                offset: int | None = None) -> str:
        if not self.rich:
            return f'{{"type":"publish","requestId":{sub.request_id_json},"data":{data_json}}}'
        room_key = public_room_key(room_key)  # a static-key client's room, as it names it
        if offset is not None:  # a recorded trigger: its offset in ``room``'s history
            return (f'{{"type":"publish","requestId":{sub.request_id_json},"data":{data_json},'
                    f'"room":{room_key},"id":"{trigger_id}","offset":{offset}}}')
        return (f'{{"type":"publish","requestId":{sub.request_id_json},"data":{data_json},'
                f'"room":{room_key},"id":"{trigger_id}"}}')

    def presence(self, sub: Subscription, event: PresenceEvent) -> str:
        """A new frame (no High-templar equivalent), the same in both dialects:
        ``{"type":"join"|"leave","requestId":..,"room":R,"member":{"login":..,"profile":..}}``."""
        return (f'{{"type":"{event.kind}","requestId":{sub.request_id_json},'
                f'"room":{public_room_key(sub.room.key)},'
                f'"member":{dump_json(member_view(event.member))}}}')

    def confirmed(self, event: Confirmed) -> str:
        """To the sender of an acknowledged message: every connection that got it confirmed."""
        return dump_json({"type": "confirmed", "id": event.message_id,
                          "to": public_destination(event.by)})

    def watched(self, sub: Subscription, message: DirectMessage) -> str:
        """A watcher's copy of a direct message: a publish frame whose data is that message."""
        return self.publish(sub, message.frame, message.room, message.id)

    def message(self, message: DirectMessage) -> str:
        """A direct message to its recipient: the message frame is the same in both dialects."""
        return message.frame

    def resync(self, recovered: list[dict[str, Any]] | None = None) -> str | None:
        """Live frames may have been missed. ``recovered``: the history subscriptions whose
        gap is replayed next (requestId, offset, recovered), as in a resumed welcome."""
        if not self.rich:
            return None
        if not recovered:
            return '{"type":"resync"}'
        return dump_json({"type": "resync", "subscriptions": recovered})

    # ---- the server API's frames

    def server_message(self, identity: Identity, message_id: str, data_json: str) -> str:
        """Data from the backend to this login: a direct message's frame (the same in both
        dialects), ``from`` null (the backend has no destination)."""
        return (f'{{"type":"message","from":null,'
                f'"to":{dump_json(identity.public_destination)},"data":{data_json},'
                f'"id":"{message_id}"}}')

    def broadcast(self, message_id: str, data_json: str) -> str:
        """Data from the backend to every connection: a new frame, the same in both dialects
        (as ``history`` and ``confirmed``)."""
        return f'{{"type":"broadcast","data":{data_json},"id":"{message_id}"}}'

    def unsubscribed(self, sub: Subscription, reason: str) -> str | None:
        """Rich dialect: the subscription ``requestId`` ended (``reason``: ``server`` or
        ``recheck``). High-templar has no such frame: nothing."""
        if not self.rich:
            return None
        return (f'{{"type":"unsubscribed","requestId":{sub.request_id_json},'
                f'"room":{public_room(sub.room).key},"reason":{dump_json(reason)}}}')


def _presence(reply: PresenceResult) -> str:
    """A new frame, the same in both dialects: the members, or (``presence_stats``) counts."""
    frame = {"type": "presence_stats" if reply.stats else "presence",
             "room": public_room(reply.room).original,
             **presence_counts(reply.members, reply.stats)}
    if reply.request_id is not None:
        frame["requestId"] = reply.request_id
    return dump_json(frame)
