"""Helpers for the TCP gate tests: start a gate process, a self-signed certificate, a Communication
Broker framing client written from PROTOCOL §4.1/§4.3, a raw standard-STOMP socket client, and
RSS measurement. No Django: the gate runs as a subprocess (``manage.py runtcpgate``).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import queue
import socket
import threading
import time
from pathlib import Path
from typing import Any

import stomp

from broker.codecs.stompframe import Frame, StompParser, encode_frame, parse_frame

STATIC_KEYS = {"BROKER_APP_KEY": "app-secret",
               "BROKER_PROFILE_KEYS": {"agent": "ak", "super_agent": "sk", "service": "vk",
                                       "admin": "dk"}}


def start_gate(broker_factory: Any, *, certfile: str | None = None, keyfile: str | None = None,
               heartbeat_ms: int | None = None, name: str = "gate", **env: Any) -> Any:
    """A ``manage.py runtcpgate`` process (ready when its port is open)."""
    argv = ["{python}", "manage.py", "runtcpgate", "--host", "127.0.0.1", "--port", "{port}"]
    if certfile:
        argv += ["--certfile", certfile, "--keyfile", keyfile or certfile]
    if heartbeat_ms is not None:
        argv += ["--heartbeat-ms", str(heartbeat_ms)]
    gate = broker_factory(argv=argv, ready_path=None, name=name, **env)
    gate.wait_for_log("listening on")
    return gate


def self_signed_cert(directory: Path, cn: str = "localhost") -> tuple[str, str]:
    """A self-signed certificate for localhost and 127.0.0.1: (certfile, keyfile) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = directory / f"{cn}-cert.pem", directory / f"{cn}-key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return str(certfile), str(keyfile)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------- stomp.py


class Collector(stomp.ConnectionListener):
    """Every frame stomp.py hands to its listener, in a queue: (kind, frame)."""

    def __init__(self) -> None:
        self.frames: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.heartbeats = 0
        self.disconnected = False
        self.answered = threading.Event()  # CONNECTED or ERROR arrived

    def on_connected(self, frame: Any) -> None:
        self.frames.put(("connected", frame))
        self.answered.set()

    def on_message(self, frame: Any) -> None:
        self.frames.put(("message", frame))

    def on_receipt(self, frame: Any) -> None:
        self.frames.put(("receipt", frame))

    def on_error(self, frame: Any) -> None:
        self.frames.put(("error", frame))
        self.answered.set()

    def on_heartbeat(self) -> None:
        self.heartbeats += 1

    def on_disconnected(self) -> None:
        self.disconnected = True
        self.frames.put(("disconnected", None))

    def next(self, kind: str | None = None, timeout: float = 5.0) -> Any:
        deadline = time.monotonic() + timeout
        skipped = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {kind or 'frame'} within {timeout}s; got {skipped}")
            try:
                got, frame = self.frames.get(timeout=left)
            except queue.Empty:
                continue
            if kind is None or got == kind:
                return frame if kind else (got, frame)
            skipped.append((got, getattr(frame, "headers", None)))

    def receipt(self, receipt_id: str, timeout: float = 5.0) -> Any:
        while True:
            frame = self.next("receipt", timeout)
            if frame.headers.get("receipt-id") == receipt_id:
                return frame


def stomp_client(port: int, *, headers: dict[str, str], ca_certs: str | None = None,
                 heartbeats: tuple[int, int] = (0, 0)) -> tuple[Any, Collector]:
    conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=heartbeats,
                              reconnect_attempts_max=1, timeout=5)
    if ca_certs is not None:
        conn.set_ssl(for_hosts=[("127.0.0.1", port)], ca_certs=ca_certs)
    listener = Collector()
    conn.set_listener("collector", listener)
    # not wait=True: stomp.py would then wait for CONNECTED without a time limit
    conn.connect(headers=headers, wait=False)
    if not listener.answered.wait(10):
        conn.disconnect()
        raise AssertionError("no CONNECTED or ERROR within 10 s")
    return conn, listener


# --------------------------------------------------------------------------- raw sockets


class _Socket:
    """What the blocking test clients share: their socket, and how it ends."""

    sock: socket.socket

    def closed(self, timeout: float = 5.0) -> bool:
        """True when the gate closes the socket within ``timeout`` (frames are discarded)."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return False
        except OSError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


class CBClient(_Socket):
    """The Communication Broker framing (§4.1) on a blocking socket, written from the contract:
    flag byte (0 = little-endian), 4-byte length, frame text without NUL; answers end with NUL.
    """

    def __init__(self, port: int, *, big_endian: bool = False, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.big = big_endian
        self.buf = b""

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, command: str, headers: dict[str, str] | None = None, body: str = "") -> None:
        lines = [command] + [f"{k}:{v}" for k, v in (headers or {}).items()]
        text = ("\n".join(lines) + "\n\n" + body).encode()
        order = "big" if self.big else "little"
        self.sock.sendall((b"\x01" if self.big else b"\x00") + len(text).to_bytes(4, order) + text)

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the gate")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv(self) -> Frame:
        head = self._read(5)
        assert head[0] == (1 if self.big else 0), f"answered in the wrong byte order: {head!r}"
        size = int.from_bytes(head[1:5], "big" if self.big else "little")
        text = self._read(size)
        assert text.endswith(b"\x00"), text
        return parse_frame(text[:-1], cb_compat=True)

    def connect(self, login: str, passcode: str, app_key: str = "app-secret") -> Frame:
        self.send("CONNECT", {"login": login, "passcode": passcode, "secret-key": app_key,
                              "accept-version": "1.2"})
        return self.recv()

class RawStomp(_Socket):
    """Standard STOMP on a blocking socket, for the malformed-input and slow-reader tests."""

    def __init__(self, port: int, *, timeout: float = 5.0, rcvbuf: int | None = None) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(("127.0.0.1", port))
        self.parser = StompParser(max_frame_bytes=1 << 26)
        self.pending: list[Frame] = []

    def send(self, command: str, body: str = "", **headers: str) -> None:
        self.sock.sendall(encode_frame(Frame(command, headers, body.encode())))

    def recv(self) -> Frame:
        while not self.pending:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed by the gate")
            self.pending += [f for f in self.parser.feed(chunk) if isinstance(f, Frame)]
        return self.pending.pop(0)

    def connect(self, token: str) -> Frame:
        self.send("CONNECT", **{"accept-version": "1.2", "host": "x", "token": token})
        return self.recv()


class JsonLines:
    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, obj: Any) -> None:
        self.sock.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self) -> Any:
        line = self.file.readline()
        if not line:
            raise ConnectionError("closed by the gate")
        return json.loads(line)

    def close(self) -> None:
        self.file.close()
        self.sock.close()
