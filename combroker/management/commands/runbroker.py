"""``python manage.py runbroker``: the broker in one daphne process, for development and the demo.

With no BROKER_REDIS_URL it uses the in-memory layer; with no BROKER_AUTH_URL it serves the
built-in demo auth API and points itself at it; with no BROKER_TRIGGER_TOKEN it generates one
and prints it.

It lives in ``combroker``, the composition root, because it composes both halves: the broker
(WebSocket + /trigger) and the TCP gate (``--tcp-port``). ``broker`` never imports ``tcpgate``
(the import-linter contract in pyproject.toml); only this layer above both may.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.core.management.base import BaseCommand, CommandParser


class Command(BaseCommand):
    help = "Run the broker (WebSocket + /trigger) in one daphne process, with demo defaults."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--tcp-port", type=int, default=61613,
                            help="TCP gate port (STOMP, Communication Broker, JSON lines); 0 = off")

    def handle(self, *args: Any, **opts: Any) -> None:
        # daphne.server installs the asyncio Twisted reactor on import; it must come first.
        from daphne.endpoints import build_endpoint_description_strings
        from daphne.server import Server

        from broker.conf import conf

        host, port = opts["host"], opts["port"]
        local = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        os.environ["BROKER_DEMO"] = "1"
        demo_auth = not os.environ.get("BROKER_AUTH_URL")
        if demo_auth:
            os.environ["BROKER_AUTH_URL"] = f"http://{local}:{port}/demo/api/bootstrap/"
        token = os.environ.get("BROKER_TRIGGER_TOKEN") or secrets.token_urlsafe(18)
        os.environ["BROKER_TRIGGER_TOKEN"] = token
        conf.cache_clear()
        c = conf()

        from channels.routing import get_default_application

        base = f"http://{local}:{port}"
        demo_users = "  (built-in demo users: alice, bob, carol, billing, root, guest)"
        layer = f"redis {c.BROKER_REDIS_URL}" if c.BROKER_REDIS_URL else "in-memory (one process)"
        self.stdout.write(
            "combroker is running\n"
            f"  demo page     {base}/\n"
            f"  WebSocket     ws://{local}:{port}/ws/?token=alice\n"
            + (f"  TCP gate      tcp://{local}:{opts['tcp_port']} (STOMP 1.2, "
               "Communication Broker, JSON lines)\n" if opts["tcp_port"] else "") +
            f"  trigger       POST {base}/trigger\n"
            f"  trigger token {token}\n"
            f"  auth API      {c.BROKER_AUTH_URL}{demo_users if demo_auth else ''}\n"
            f"  channel layer {layer}\n"
            "example:\n"
            f"  curl -X POST {base}/trigger -H 'Authorization: Bearer {token}' "
            "-H 'Content-Type: application/json' "
            "-d '{\"rooms\":[{\"target\":\"news\"}],\"data\":{\"hello\":\"world\"}}'\n"
        )
        self.stdout.flush()
        if opts["tcp_port"]:
            self._start_tcp_gate(host, opts["tcp_port"])
        Server(
            application=get_default_application(),
            endpoints=build_endpoint_description_strings(host=host, port=port),
            signal_handlers=True,
        ).run()

    def _start_tcp_gate(self, host: str, port: int) -> None:
        """Serve the TCP gate on daphne's loop (Twisted's asyncio reactor): same hub as WS."""
        import asyncio

        from twisted.internet import reactor

        from tcpgate.server import start_server

        async def start() -> None:
            try:
                await start_server(host, port)
            except OSError as exc:
                self.stderr.write(f"TCP gate not started on port {port}: {exc}")

        reactor.callWhenRunning(lambda: asyncio.get_event_loop().create_task(start()))
