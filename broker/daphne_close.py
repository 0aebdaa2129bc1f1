"""Make daphne send the contract's WebSocket close codes and reasons.

daphne (4.2) hands an ASGI ``websocket.close`` to autobahn's public ``sendClose``, which accepts
only 1000 and 3000-4999, and it drops the message's ``reason``. So the contract's 1009 (message
too big) and 1011 (``auth-unavailable``) raised inside daphne and left the socket open, and
every reason (``replaced``, ``kicked``, ``slow``) was lost. ``patch()`` makes daphne send the
close frame with the code and reason the application asked for. Other ASGI servers (uvicorn)
already do, so the patch applies only when daphne's protocol module is loaded: it always is
before the application when daphne serves it (the ``daphne`` CLI, daphne's ``runserver`` and
``runbroker`` import ``daphne.server`` first), and it is never imported from here.
"""

from __future__ import annotations

import sys
from typing import Any


def patch() -> None:
    module = sys.modules.get("daphne.ws_protocol")
    if module is None:
        return
    cls = module.WebSocketProtocol
    if getattr(cls, "_combroker_close_patched", False):
        return
    from autobahn.util import encode_truncate  # autobahn is daphne's dependency

    original = cls.handle_reply

    def handle_reply(self: Any, message: dict[str, Any]) -> None:
        # Before the accept, daphne answers HTTP 403 (its own path); once closing or closed,
        # sendCloseFrame does nothing, where sendClose would still raise on the code.
        if message.get("type") == "websocket.close" and self.state != self.STATE_CONNECTING:
            code = message.get("code") or 1000
            reason = message.get("reason") or ""
            self.sendCloseFrame(code=int(code), isReply=False,
                                reasonUtf8=encode_truncate(reason, 123) if reason else None)
            return
        original(self, message)

    cls.handle_reply = handle_reply
    cls._combroker_close_patched = True
