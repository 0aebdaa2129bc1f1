"""``python manage.py runtcpgate``: the TCP gate (STOMP, Communication Broker, JSON lines).

Production runs M of these next to N uvicorn processes, all on one BROKER_REDIS_URL: the gate
shares the hub and the channel layer with them, so triggers and messages cross between
WebSocket and TCP clients. SIGTERM/SIGINT stop accepting and close every connection with
``going-away`` once its outbox is written (``broker.shutdown``, BROKER_SHUTDOWN_GRACE).

The command belongs to the ``tcpgate`` app (``"tcpgate"`` in INSTALLED_APPS): the gate sits
above the broker, which never imports it.
"""

from __future__ import annotations

import asyncio
import signal
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the TCP gate: STOMP 1.2, Communication Broker framing and JSON lines (+TLS)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=61613)
        parser.add_argument("--certfile", help="PEM certificate (chain): serve TLS")
        parser.add_argument("--keyfile", help="PEM private key (default: in --certfile)")
        parser.add_argument("--heartbeat-ms", type=int, default=None,
                            help="STOMP heart-beat period offered (default "
                                 "BROKER_STOMP_HEARTBEAT_MS)")

    def handle(self, *args: Any, **opts: Any) -> None:
        asyncio.run(self.serve(opts))

    async def serve(self, opts: dict[str, Any]) -> None:
        from broker.fanout.running import get_hub
        from tcpgate.server import start_server

        await get_hub()  # fail now, not at the first client, when the layer is misconfigured
        gate, server = await start_server(opts["host"], opts["port"], certfile=opts["certfile"],
                                          keyfile=opts["keyfile"],
                                          heartbeat_ms=opts["heartbeat_ms"])
        scheme = "tls" if opts["certfile"] else "tcp"
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            self.stdout.write(f"combroker TCP gate listening on {scheme}://{host}:{port}")
        self.stdout.flush()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await gate.shutdown()  # closes every connection with going-away, then stops the hub
