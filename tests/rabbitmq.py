"""A private RabbitMQ for the tests of the AMQP trigger source (tests/integration/
test_amqp_source.py), in the style of ``tests.harness.RedisServer``.

``RabbitMQServer`` runs Debian's ``rabbitmq-server`` (installed by ./test.sh) on 127.0.0.1
and free ports, with everything in a temp dir: its own node name, Mnesia and log dirs, config
file (the AMQP listener only, no disk-space alarm), an empty plugin list (no management
plugin), its own Erlang cookie (HOME) and its own ``epmd`` on a port of its own (started in
the foreground, so stopping it is ours to do). Nothing is fetched at run time. Starting takes
about 5 s: one server per test session (``stop``/``start`` keeps the port and the data).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.harness import LOCALHOST, _LIVE, _kill_proc, _sigkill, _tail, free_port, port_open

SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's, without the wrapper that su's


class RabbitMQServerError(RuntimeError):
    pass


def _binary() -> str:
    if Path(SERVER).exists():
        return SERVER
    found = shutil.which("rabbitmq-server")
    if found is None:
        raise RabbitMQServerError("rabbitmq-server is not installed; run ./test.sh to "
                                  "install it (Debian's rabbitmq-server)")
    return found


class RabbitMQServer:
    """``start()``, ``url``, ``stop()`` (an outage: the port is closed), ``start()`` again on
    the same port, ``close()``."""

    def __init__(self, start_timeout: float = 60.0) -> None:
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.start_timeout = start_timeout
        self.dir = Path(tempfile.mkdtemp(prefix="combroker-rabbitmq-"))
        self.log_path = self.dir / "rabbitmq.log"
        self.node = f"combroker{self.port}@localhost"
        self.proc: subprocess.Popen | None = None
        self.epmd: subprocess.Popen | None = None
        (self.dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = {LOCALHOST}:{self.port}\n"
            "disk_free_limit.absolute = 1MB\n"
            "log.console = true\nlog.console.level = warning\nlog.file = false\n")
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq-env.conf").write_text("")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@{LOCALHOST}:{self.port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("RABBITMQ_", "ERL_"))}
        d = self.dir
        env.update({
            "HOME": str(d),  # the Erlang cookie
            "RABBITMQ_CONF_ENV_FILE": str(d / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(d / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": LOCALHOST,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": LOCALHOST,
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_PID_FILE": str(d / "rabbitmq.pid"),
            "RABBITMQ_LOGS": "-",
        })
        return env

    def start(self) -> RabbitMQServer:
        if self.running:
            return self
        binary = _binary()
        env = self._env()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start on port {self.port} ---\n".encode())
            log.flush()
            if self.epmd is None or self.epmd.poll() is not None:
                self.epmd = subprocess.Popen(
                    ["epmd", "-port", str(self.epmd_port), "-address", LOCALHOST],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    start_new_session=True)
            self.proc = subprocess.Popen([binary], env=env, cwd=self.dir, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        _LIVE.add(self)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RabbitMQServerError(
                    f"rabbitmq-server exited with {self.proc.returncode} on port {self.port}:"
                    f"\n{_tail(self.log_path)}")
            if self.answers():
                return
            time.sleep(0.1)
        self._hard_kill()
        raise RabbitMQServerError(f"rabbitmq-server on port {self.port} did not answer "
                                  f"within {self.start_timeout}s:\n{_tail(self.log_path)}")

    def answers(self, timeout: float = 1.0) -> bool:
        """True when the AMQP port answers the protocol header with Connection.Start."""
        try:
            with socket.create_connection((LOCALHOST, self.port), timeout=timeout) as s:
                s.sendall(b"AMQP\x00\x00\x09\x01")
                frame = s.recv(7)
                return len(frame) == 7 and frame[0] == 1  # a method frame
        except OSError:
            return False

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the node (SIGTERM, SIGKILL after ``timeout``) and wait for the port to close.
        Its epmd stays up for the next ``start``."""
        if self.proc is None:
            return
        _kill_proc(self.proc, group=True, timeout=timeout)
        deadline = time.monotonic() + 5
        while port_open(self.port) and time.monotonic() < deadline:
            time.sleep(0.05)

    def _hard_kill(self) -> None:
        for proc in (self.proc, self.epmd):
            if proc is not None and proc.poll() is None:
                _sigkill(proc, group=True)
                with contextlib.suppress(Exception):
                    proc.wait(5)

    def close(self) -> None:
        """Stop the node and its epmd, remove the temp dir."""
        self.stop()
        if self.epmd is not None:
            _kill_proc(self.epmd, group=True, timeout=5)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RabbitMQServer {self.url} running={self.running}>"


__all__ = ["RabbitMQServer", "RabbitMQServerError"]
