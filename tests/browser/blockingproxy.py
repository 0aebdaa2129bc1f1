"""An HTTP forward proxy that passes plain HTTP through and refuses WebSockets, as a corporate
proxy may: the browser tests' "WebSocket blocked" path (issue 15).

A browser sends a ``ws://`` connection through an HTTP proxy as a ``CONNECT`` tunnel; this proxy
answers every ``CONNECT`` (and any request asking for an ``Upgrade``) with 403 and records it in
``refused``. A plain request (absolute form, ``GET http://host:port/path``) goes to its host with
``Connection: close``, its request line recorded in ``forwarded``, and the response is streamed
back as it comes (an event stream included) until either side closes.

    with WebSocketBlockingProxy() as proxy:
        context = browser.new_context(proxy={"server": proxy.url})
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType
from urllib.parse import urlsplit

_MAX_HEAD = 65536
_HOP_BY_HOP = {"connection", "proxy-connection", "keep-alive", "proxy-authorization", "te",
               "trailer", "upgrade"}
_FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class WebSocketBlockingProxy:
    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.refused: list[str] = []  # request lines refused: the WebSocket attempts
        self.forwarded: list[str] = []  # request lines passed on
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, name="blocking-proxy", daemon=True).start()

    def __enter__(self) -> WebSocketBlockingProxy:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            _close(s)

    def _track(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.add(s)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream: socket.socket | None = None
        try:
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                chunk = client.recv(4096)
                if not chunk or len(buffer) > _MAX_HEAD:
                    return
                buffer += chunk
            head, body = buffer.split(b"\r\n\r\n", 1)
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, target, version = request_line.split(" ", 2)
            headers = [tuple(part.strip() for part in line.split(":", 1)) for line in lines if ":" in line]
            if method == "CONNECT" or any(k.lower() == "upgrade" for k, _ in headers):
                self.refused.append(request_line)
                client.sendall(_FORBIDDEN)
                return
            self.forwarded.append(request_line)
            url = urlsplit(target)
            upstream = socket.create_connection((url.hostname or "127.0.0.1", url.port or 80))
            self._track(upstream)
            path = (url.path or "/") + (f"?{url.query}" if url.query else "")
            kept = "".join(f"{k}: {v}\r\n" for k, v in headers if k.lower() not in _HOP_BY_HOP)
            upstream.sendall(f"{method} {path} {version}\r\n{kept}Connection: close\r\n\r\n"
                             .encode("latin-1") + body)
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            _pipe(upstream, client)
        except OSError:
            pass
        finally:
            _close(client)
            if upstream is not None:
                _close(upstream)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    """Copy until either side closes, then close both (the browser closing an event stream
    reaches the broker at once)."""
    try:
        while chunk := source.recv(65536):
            sink.sendall(chunk)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
