"""The JSON codec: text frames <-> session requests and replies, in two dialects.

- High-templar dialect (no subprotocol, PROTOCOL §3.1): frames are exactly High-templar 3.x's.
- Rich dialect (``combroker.v1``, §3.2): the same frames plus ``type``, the echoed
  ``requestId``, and extra fields.

Delivery frames are built by string concatenation around the trigger's ``data`` already encoded
once per trigger, so fanning one trigger out to N connections encodes the data once, not N times.
"""

from __future__ import annotations

import json
from typing import Any

from .. import errors
from ..identity import Identity
from ..session import (
    Admin,
    AdminResult,
    Error,
    Invalid,
    Ping,
    Pong,
    Publish,
    Reply,
    Request,
    Send,
    Status,
    StatusInfo,
    Subscribe,
    Subscription,
    Success,
    Unsubscribe,
    dump_json,
)

RICH_SUBPROTOCOL = "combroker.v1"


def _decode_request(msg: dict[str, Any]) -> Request:
    kind = msg.get("type")
    rid = msg.get("requestId")
    if kind == "subscribe":
        return Subscribe(rid, msg.get("room"))
    if kind == "unsubscribe":
        return Unsubscribe(rid)
    if kind == "ping":
        return Ping(rid)
    if kind == "status":
        return Status(rid)
    if kind == "send":
        if "to" not in msg or "data" not in msg:
            return Invalid(errors.INVALID_MESSAGE, rid, "send needs 'to' and 'data'")
        return Send(rid, msg["to"], msg["data"])
    if kind == "publish":
        if "data" not in msg:
            return Invalid(errors.INVALID_MESSAGE, rid, "publish needs 'rooms' and 'data'")
        return Publish(rid, msg.get("rooms"), msg["data"])
    if kind == "admin":
        args = {k: v for k, v in msg.items() if k not in ("type", "requestId", "action")}
        return Admin(rid, msg.get("action"), args)
    return Invalid(errors.MESSAGE_TYPE_NOT_ALLOWED, rid)


class JsonCodec:
    def __init__(self, rich: bool) -> None:
        self.rich = rich

    # ---- inbound

    def decode(self, text: str | None) -> Request:
        if text is None:  # a binary frame
            return Invalid(errors.NON_JSON_MESSAGE)
        if text == "ping":
            return Ping(text=True)
        try:
            msg = json.loads(text)
        except ValueError:
            return Invalid(errors.NON_JSON_MESSAGE)
        if not isinstance(msg, dict):
            return Invalid(errors.INVALID_MESSAGE)
        return _decode_request(msg)

    # ---- outbound

    def welcome(self, identity: Identity, connection_id: str, resume_token: str | None) -> str:
        rooms = [r.original for r in identity.allowed_rooms]
        if not self.rich:
            return dump_json({"is_authorized": True, "allowed_rooms": rooms})
        return dump_json({
            "type": "welcome", "is_authorized": True, "is_authenticated": True,
            "allowed_rooms": rooms, "connection_id": connection_id,
            "login_id": identity.login_id, "profile": str(identity.profile),
            "destination": identity.destination, "resume_token": resume_token,
        })

    def refused(self, reason: str) -> str:
        if not self.rich:
            return dump_json({"is_authorized": False})
        return dump_json({"type": "refused", "is_authorized": False, "reason": reason})

    def reply(self, reply: Reply) -> str:
        frame: dict[str, Any]
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

    def publish(self, sub: Subscription, data_json: str, room_key: str, trigger_id: str) -> str:
        if not self.rich:
            return f'{{"type":"publish","requestId":{sub.request_id_json},"data":{data_json}}}'
        return (f'{{"type":"publish","requestId":{sub.request_id_json},"data":{data_json},'
                f'"room":{room_key},"id":"{trigger_id}"}}')

    def watched(self, sub: Subscription, message: dict[str, Any]) -> str:
        """A watcher's copy of a direct message: a publish frame whose data is that message."""
        return self.publish(sub, str(message["message"]), message["room"], message["id"])

    def message(self, message: dict[str, Any]) -> str:
        """A direct message to its recipient: the message frame is the same in both dialects."""
        return str(message["message"])

    def resync(self) -> str | None:
        return '{"type":"resync"}' if self.rich else None
