"""STOMP 1.2 frame codec: the wire syntax only, sans-I/O.

This module owns the byte-level side of STOMP (PROTOCOL.md §4): turning bytes into
:class:`Frame` objects and frames into bytes. It knows nothing about sessions, rooms,
Django or asyncio.

- :func:`encode_frame` serializes a frame (LF EOLs, header escaping except on
  CONNECT/CONNECTED, ``content-length``, trailing NUL).
- :class:`StompParser` is the incremental parser for standard NUL-terminated STOMP over a
  byte stream (TCP gate): split frames, CRLF, ``content-length`` bodies containing NUL,
  heart-beats (reported as :data:`HEARTBEAT`), size limits enforced before buffering.
- :func:`parse_frame` parses exactly one frame text (one WebSocket message, or one
  Communication Broker frame).
- :class:`CBFramer` speaks the Communication Broker length-prefixed framing (§4.1): a flag
  byte (0 = little-endian, else big-endian), a 4-byte length, the frame text.

Malformed input raises :class:`StompFrameError`, whose message is short enough for the
``message`` header of an ERROR frame.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["COMMANDS", "HEARTBEAT", "CBFramer", "Frame", "Heartbeat", "StompFrameError",
           "StompParser", "encode_frame", "is_heartbeat", "parse_frame"]

CLIENT_COMMANDS = frozenset({"CONNECT", "STOMP", "SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK",
                             "NACK", "BEGIN", "COMMIT", "ABORT", "DISCONNECT"})
SERVER_COMMANDS = frozenset({"CONNECTED", "MESSAGE", "RECEIPT", "ERROR"})
COMMANDS = CLIENT_COMMANDS | SERVER_COMMANDS
_COMMAND_BYTES = frozenset(c.encode() for c in COMMANDS)
# What an incomplete first line may hold: a prefix of a command, or a command and its CR.
_COMMAND_PREFIXES = frozenset({c[:i] for c in _COMMAND_BYTES for i in range(len(c) + 1)}
                              | {c + b"\r" for c in _COMMAND_BYTES})
_MAX_LINE = max(map(len, _COMMAND_PREFIXES))
_UNESCAPED_COMMANDS = frozenset({"CONNECT", "CONNECTED"})

# NUL ends a frame and STOMP has no escape for it: in any header it becomes U+FFFD, so no
# header, whatever the broker was given (a login, a destination), can end or split a frame.
_NUL = "\x00"
NUL_REPLACEMENT = "\ufffd"
_ESCAPE = str.maketrans({"\\": "\\\\", "\r": "\\r", "\n": "\\n", ":": "\\c",
                         _NUL: NUL_REPLACEMENT})
_UNESCAPE = {"r": "\r", "n": "\n", "c": ":", "\\": "\\"}
_ESCAPE_RE = re.compile(r"\\(.?)", re.DOTALL)
# Unescaped frames (CONNECT/CONNECTED, Communication Broker) cannot carry these: replace them.
_SANITIZE_VALUE = str.maketrans({"\r": " ", "\n": " ", _NUL: NUL_REPLACEMENT})
_SANITIZE_NAME = str.maketrans({"\r": "_", "\n": "_", ":": "_", _NUL: NUL_REPLACEMENT})


class StompFrameError(ValueError):
    """Malformed STOMP input; ``str(error)`` is fit for an ERROR frame's ``message`` header.

    ``frames``: what ``feed()`` completed before the bad input, to handle before the ERROR.
    """

    def __init__(self, message: str, frames: list[Frame | Heartbeat] | None = None):
        super().__init__(message)
        self.frames: list[Frame | Heartbeat] = frames or []


@dataclass(slots=True)
class Frame:
    command: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


class Heartbeat:
    """Marker for a bare EOL seen between frames (use the :data:`HEARTBEAT` singleton)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "HEARTBEAT"


HEARTBEAT = Heartbeat()


def is_heartbeat(data: bytes) -> bool:
    """True if a whole message (e.g. one WebSocket message) is only EOLs: a heart-beat."""
    return not data.strip(b"\r\n")


def encode_frame(frame: Frame, *, escape: bool | None = None, content_length: bool = True) -> bytes:
    """Serialize ``frame`` with LF EOLs and a trailing NUL.

    ``escape=None`` escapes headers unless the command is CONNECT or CONNECTED. Unescaped
    headers cannot carry CR/LF (nor ':' in names); those characters are replaced. NUL, which
    no STOMP header can carry, becomes U+FFFD either way: no header value can end the frame
    or start another, whatever it holds. With
    ``content_length`` a correct ``content-length`` is written (replacing a caller's value)
    whenever there is a body; without it the body must not contain NUL.
    """
    if escape is None:
        escape = frame.command not in _UNESCAPED_COMMANDS
    headers = frame.headers
    if content_length and (frame.body or "content-length" in headers):
        headers = dict(headers)
        headers["content-length"] = str(len(frame.body))
    parts = [frame.command, "\n"]
    for name, value in headers.items():
        if escape:
            parts += (name.translate(_ESCAPE), ":", value.translate(_ESCAPE), "\n")
        else:
            parts += (name.translate(_SANITIZE_NAME), ":", value.translate(_SANITIZE_VALUE), "\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8", "replace") + frame.body + b"\x00"


def _unescape_match(match: re.Match[str]) -> str:
    try:
        return _UNESCAPE[match.group(1)]
    except KeyError:
        raise StompFrameError(f"invalid header escape \\{match.group(1)}") from None


def _unescape(text: str) -> str:
    return _ESCAPE_RE.sub(_unescape_match, text) if "\\" in text else text


def _parse_head(head: bytes, *, cb_compat: bool = False) -> tuple[str, dict[str, str], int | None]:
    """Parse the command and header lines (no blank line); return command, headers, length."""
    try:
        text = head.removesuffix(b"\r").decode("utf-8")  # drop the CR of the last line's CRLF
    except UnicodeDecodeError:
        raise StompFrameError("invalid utf-8") from None
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    command = lines[0].strip() if cb_compat else lines[0]
    if command not in COMMANDS:
        raise StompFrameError("unknown command")
    escaped = not cb_compat and command not in _UNESCAPED_COMMANDS
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon:
            raise StompFrameError("malformed frame: header line without ':'")
        if cb_compat:
            name, value = name.strip(), value.strip()
        elif escaped:
            name, value = _unescape(name), _unescape(value)
        headers.setdefault(name, value)  # a repeated header: the first one wins
    length: int | None = None
    if "content-length" in headers:
        digits = headers["content-length"].strip()
        if not (digits.isascii() and digits.isdigit()):
            raise StompFrameError("invalid content-length")
        length = int(digits) if len(digits.lstrip("0")) <= 18 else 1 << 62
    return command, headers, length


def _skip_eols(data: bytes | bytearray, pos: int) -> tuple[int, int]:
    """Skip bare EOLs from ``pos``; return the new position and how many EOLs were skipped."""
    count, end = 0, len(data)
    while pos < end:
        if data[pos] == 0x0A:
            pos += 1
        elif data[pos] == 0x0D and pos + 1 < end and data[pos + 1] == 0x0A:
            pos += 2
        else:
            break
        count += 1
    return pos, count


def parse_frame(data: bytes, *, max_header_bytes: int = 65_536, cb_compat: bool = False) -> Frame:
    """Parse exactly one frame text; a trailing NUL (then EOLs) is allowed, not required.

    Leading EOLs are skipped; a text that is only EOLs raises "empty frame" (check
    :func:`is_heartbeat` first). A missing blank line means a frame without body.

    ``cb_compat`` is the Communication Broker dialect: no header escaping, whitespace around
    header names and values ignored, and the frame boundary beats ``content-length`` (its
    clients count characters, not bytes): the header is honoured only when it agrees.
    """
    start, _ = _skip_eols(data, 0)
    if start == len(data):
        raise StompFrameError("empty frame")
    line_start, head_end, body_start = start, -1, len(data)
    while (nl := data.find(b"\n", line_start)) >= 0:
        if nl == line_start or (nl == line_start + 1 and data[line_start] == 0x0D):
            head_end, body_start = line_start - 1, nl + 1  # drop the EOL ending the last line
            break
        line_start = nl + 1
    if head_end < 0:  # no blank line: all head, no body
        head_end = len(data.rstrip(b"\x00").rstrip(b"\r\n"))
    if head_end - start > max_header_bytes:
        raise StompFrameError("headers too large")
    command, headers, length = _parse_head(data[start:head_end], cb_compat=cb_compat)
    rest = data[body_start:]
    if cb_compat:
        if length is None or length > len(rest) or rest[length:].strip(b"\r\n\x00"):
            length = len(rest) - rest.endswith(b"\x00")
        return Frame(command, headers, rest[:length])
    if length is not None:
        if length > len(rest):
            raise StompFrameError("frame truncated: body shorter than content-length")
        body, tail = rest[:length], rest[length:]
        if tail.removeprefix(b"\x00").strip(b"\r\n"):
            raise StompFrameError("missing NUL after body")
        return Frame(command, headers, body)
    body, nul, tail = rest.partition(b"\x00")
    if nul and tail.strip(b"\r\n"):
        raise StompFrameError("malformed frame: data after NUL")
    return Frame(command, headers, body)


class StompParser:
    """Incremental parser for NUL-terminated STOMP 1.2 over a byte stream.

    :meth:`feed` returns the complete frames, plus :data:`HEARTBEAT` for each bare EOL
    between frames. After a :class:`StompFrameError` (see its ``frames``) the stream is
    unusable: further feeds raise the same error (the caller sends ERROR and closes).
    """

    def __init__(self, *, max_frame_bytes: int = 1_048_576, max_header_bytes: int = 65_536):
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = max_header_bytes
        self._buf = bytearray()
        self._line = 0  # start of the head line being scanned (the frame start is 0)
        self._scan = 0  # where the next search resumes
        self._pending: tuple[str, dict[str, str], int | None] | None = None
        self._body_start = 0
        self._error: str | None = None

    def feed(self, data: bytes) -> list[Frame | Heartbeat]:
        if self._error is not None:
            raise StompFrameError(self._error)
        out: list[Frame | Heartbeat] = []
        try:
            self._feed(data, out)
        except StompFrameError as error:
            self._error = str(error)
            self._buf.clear()
            raise StompFrameError(self._error, out) from None
        return out

    def _feed(self, data: bytes, out: list[Frame | Heartbeat]) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._pending is None:
                if self._line == 0:
                    skip, beats = _skip_eols(buf, 0)
                    out.extend([HEARTBEAT] * beats)
                    if skip:
                        del buf[:skip]
                        self._scan = 0
                if not buf or buf == b"\r" or not self._scan_head():
                    return
            frame = self._take_body()
            if frame is None:
                return
            out.append(frame)

    def _scan_head(self) -> bool:
        """Look for the blank line ending the head; parse the head once it is complete."""
        buf = self._buf
        while (nl := buf.find(b"\n", self._scan)) >= 0:
            line = self._line
            if nl > self.max_header_bytes:
                raise StompFrameError("headers too large")
            if line == 0 and bytes(buf[:nl]).rstrip(b"\r") not in _COMMAND_BYTES:
                raise StompFrameError("unknown command")
            if line and (nl == line or (nl == line + 1 and buf[line] == 0x0D)):
                self._pending = _parse_head(bytes(buf[: line - 1]))
                length = self._pending[2]
                if length is not None and length > self.max_frame_bytes:
                    raise StompFrameError("frame too large")
                self._body_start = self._scan = nl + 1
                return True
            self._line = self._scan = nl + 1
        self._scan = len(buf)
        if len(buf) > self.max_header_bytes:
            raise StompFrameError("headers too large")
        # fail fast on junk rather than wait for an EOL that may never come
        if self._line == 0 and (len(buf) > _MAX_LINE or bytes(buf) not in _COMMAND_PREFIXES):
            raise StompFrameError("unknown command")
        return False

    def _take_body(self) -> Frame | None:
        assert self._pending is not None
        buf, start = self._buf, self._body_start
        command, headers, length = self._pending
        if length is not None:
            end = start + length
            if len(buf) <= end:
                return None
            if buf[end] != 0:
                raise StompFrameError("missing NUL after body")
        else:
            end = buf.find(b"\x00", self._scan)
            if end < 0:
                if len(buf) - start > self.max_frame_bytes:
                    raise StompFrameError("frame too large")
                self._scan = len(buf)
                return None
            if end - start > self.max_frame_bytes:  # the same limit when it came in one chunk
                raise StompFrameError("frame too large")
        frame = Frame(command, headers, bytes(buf[start:end]))
        self._pending = None
        del buf[: end + 1]
        self._line = self._scan = 0
        return frame


class CBFramer:
    """Communication Broker length-prefixed framing over a byte stream (PROTOCOL §4.1).

    Incoming: flag byte (0 = little-endian length, other = big-endian), 4-byte unsigned
    length, that many bytes of frame text (parsed with ``parse_frame(cb_compat=True)``).
    Frames whose text is empty or only EOLs/NUL are ignored as keep-alives. Outgoing frames
    use the client's byte order (little-endian until known) and end their text with one NUL.
    """

    def __init__(self, *, max_frame_bytes: int = 1_048_576, max_header_bytes: int = 65_536):
        self.max_frame_bytes = max_frame_bytes
        self.max_header_bytes = max_header_bytes
        self.big_endian: bool | None = None
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        try:
            while len(buf) - pos >= 5:
                big = buf[pos] != 0
                size = int.from_bytes(buf[pos + 1 : pos + 5], "big" if big else "little")
                if size > self.max_frame_bytes:
                    raise StompFrameError("frame too large")
                if len(buf) - pos - 5 < size:
                    break
                text = bytes(buf[pos + 5 : pos + 5 + size])
                pos += 5 + size
                if self.big_endian is None:
                    self.big_endian = big
                if text.strip(b"\r\n\x00"):
                    out.append(parse_frame(text, max_header_bytes=self.max_header_bytes,
                                           cb_compat=True))
        except StompFrameError as error:
            raise StompFrameError(str(error), list(out)) from None
        finally:
            del buf[:pos]
        return out

    def encode(self, frame: Frame) -> bytes:
        text = encode_frame(frame, escape=False)
        if self.big_endian:
            return b"\x01" + len(text).to_bytes(4, "big") + text
        return b"\x00" + len(text).to_bytes(4, "little") + text
