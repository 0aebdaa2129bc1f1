"""This process's own channel-layer channel, and probes sent through the layer to see a path
work end to end.

Every message for this process arrives on one channel (the groups it joined all forward to
it). A probe is a ``messages.Probe`` with a fresh token, sent to a channel or a group; it
"came back" when the hub receives it on this channel (``answered``). Because the layer keeps
order per channel, a probe sent to ourselves comes back behind every message queued before it
(``Hub.quiesce``); a probe sent to a group comes back only once Redis has processed our
SUBSCRIBE (``Membership``); a probe through each pub/sub connection tells that it is whole
again after a loss (``Upkeep``). Other processes ignore a token they do not know.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from ..messages import Probe


class ProcessChannel:
    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.name = ""  # set by ``open``
        self._probes: dict[str, asyncio.Future[None]] = {}

    async def open(self) -> str:
        self.name = await self.layer.new_channel("cb.proc.")
        return self.name

    def answered(self, probe: Probe) -> None:
        """A probe came back on this channel."""
        future = self._probes.get(probe.token)
        if future is not None and not future.done():
            future.set_result(None)

    async def probe(self, timeout: float = 2.0, group: str | None = None,
                    resend: float | None = None, channel: str | None = None) -> bool:
        """Send a probe to ``channel`` (default: this process's own) or to ``group`` (every
        ``resend`` seconds if given); True once one comes back within ``timeout``."""
        token = uuid.uuid4().hex
        wire = Probe(token).to_wire()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._probes[token] = future
        deadline = time.monotonic() + timeout
        try:
            while True:
                if group is None:
                    await self.layer.send(channel or self.name, wire)
                else:
                    await self.layer.group_send(group, wire)
                left = deadline - time.monotonic()
                wait = left if resend is None else min(resend, left)
                done, _ = await asyncio.wait([future], timeout=max(wait, 0))
                if done:
                    return True
                if time.monotonic() >= deadline:
                    return False
        except Exception:  # noqa: BLE001 - any failure means: not yet
            return False
        finally:
            self._probes.pop(token, None)
