"""``python manage.py runbroker``: the broker in one process, for development and the demo.

It runs the production server, uvicorn, with the options of the production command that change
what a client sees (docs/operations.md "Processes": uvloop, httptools, the broker's WebSocket
edge without compression, a 1 MiB inbound message cap, 30 s keep-alive, 5 s for uvicorn's own
teardown), and the TCP gate (``--tcp-port``) on the same asyncio loop, so WebSocket and TCP
clients share one hub.
Its clients reach it directly, so it trusts no proxy headers.

With no BROKER_REDIS_URL it uses the in-memory layer; with no BROKER_AUTH_URL it serves the
built-in demo auth API and points itself at it; with no BROKER_TRIGGER_TOKEN it generates one
and prints it.

SIGTERM or SIGINT stops it gracefully (docs/operations.md "Stopping a process"): the TCP gate
stops accepting, a WebSocket handshake gets 503 ``shutting-down``, every connection (WebSocket
or TCP) is closed with 1001 ``going-away`` once its outbox is written, within
BROKER_SHUTDOWN_GRACE (``broker.shutdown.graceful_shutdown``, through ``Gate.shutdown``), and
then uvicorn stops. A second signal goes to uvicorn at once.

It lives in ``combroker``, the composition root, because it composes both halves: the broker
(WebSocket + /trigger) and the TCP gate. ``broker`` never imports ``tcpgate`` (the
import-linter contract in pyproject.toml); only this layer above both may.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
from types import FrameType
from typing import TYPE_CHECKING, Any

from django.core.management.base import BaseCommand, CommandParser

if TYPE_CHECKING:
    import uvicorn

    from tcpgate.server import Gate

log = logging.getLogger("combroker.runbroker")


class Command(BaseCommand):
    help = ("Run the broker (WebSocket + /trigger, and the TCP gate) in one uvicorn process, "
            "with demo defaults.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument("--tcp-port", type=int, default=61613,
                            help="TCP gate port (STOMP, Communication Broker, JSON lines); 0 = off")

    def handle(self, *args: Any, **opts: Any) -> None:
        import uvicorn
        import uvloop

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
        # The production command's options (README "Production"), but for the proxy headers
        # and the access log: the server is uvicorn's, its loop uvloop (as ``--loop uvloop``).
        config = uvicorn.Config(
            get_default_application(), host=host, port=port, http="httptools",
            ws="broker.wsedge:WebSocketEdge", ws_per_message_deflate=False,
            ws_max_size=1_048_576, timeout_graceful_shutdown=5,
            timeout_keep_alive=30, proxy_headers=False, access_log=False)
        server = uvicorn.Server(config)
        try:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(self.serve(server, host, opts["tcp_port"]))
        except KeyboardInterrupt:  # a SIGINT before the server took the signals over
            pass

    async def serve(self, server: uvicorn.Server, host: str, tcp_port: int) -> None:
        """Start the TCP gate, then serve with uvicorn until a signal stops both."""
        from tcpgate.server import start_server

        gate: Gate | None = None
        if tcp_port:
            try:
                gate, _ = await start_server(host, tcp_port)
            except OSError as exc:
                self.stderr.write(f"TCP gate not started on port {tcp_port}: {exc}")
        # uvicorn installs its own SIGTERM/SIGINT handlers as it starts: ours replace them
        # once it is listening (a signal before that stops uvicorn alone; nothing is open).
        async def take_signals_once_started() -> None:
            while not server.started:
                await asyncio.sleep(0.01)
            self.take_signals(server, gate)

        watcher = asyncio.ensure_future(take_signals_once_started())
        try:
            await server.serve()  # uvicorn's sys.exit (say, the port is taken) ends it here
        finally:
            watcher.cancel()

    def take_signals(self, server: uvicorn.Server, gate: Gate | None) -> None:
        """The first SIGTERM/SIGINT runs the graceful shutdown (the gate's, which stops it
        accepting, when there is one), then lets uvicorn stop; a second goes to uvicorn at once.
        ``broker.shutdown.serving_hub`` leaves these handlers alone (they are not uvicorn's)."""
        from broker.shutdown import graceful_shutdown

        loop = asyncio.get_running_loop()
        signalled = False
        tasks: list[asyncio.Task[None]] = []  # a reference, so that the task is not collected

        async def stop() -> None:
            try:
                if gate is not None:
                    await gate.shutdown()
                else:
                    await graceful_shutdown()
            except Exception:  # noqa: BLE001 - the server must still stop
                log.exception("graceful shutdown failed")
            finally:
                server.should_exit = True

        def on_signal(signum: int, frame: FrameType | None) -> None:
            nonlocal signalled
            if signalled:
                server.handle_exit(signum, frame)
                return
            signalled = True
            loop.call_soon_threadsafe(lambda: tasks.append(loop.create_task(stop())))

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
