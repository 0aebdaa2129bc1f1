"""What every log line of the process carries, and what it must never carry.

- ``conn_id``: a context variable holding the id of the connection being served. Every log
  record gets it as ``record.conn`` (``-`` outside a connection), so a format with
  ``conn=%(conn)s`` ties each line to one connection (``combroker.settings`` uses it). The
  WebSocket consumer sets it for its task, ``broker.connection`` for the tasks it spawns.
- ``redact``: credentials that travel in URLs (``?token=``, ``?app_key=``, ``?profile_key=``,
  ``?password=``...) are replaced with ``***`` in every log record, including the servers' own
  lines: uvicorn logs the WebSocket path with its query string, and daphne's access log (not
  Python logging; ``broker.daphne_ext`` patches it) does for HTTP requests.

``install()`` puts both into the logging record factory, so they apply to every logger and
handler of the process, whoever configured them. It is idempotent.
"""

from __future__ import annotations

import contextvars
import logging
import re
from typing import Any

conn_id: contextvars.ContextVar[str] = contextvars.ContextVar("combroker_conn", default="-")

# Query parameters (and form fields) whose value is a credential.
SECRET_PARAMS = ("token", "access_token", "app_key", "profile_key", "passcode", "password",
                 "secret", "secret-key", "secret_key", "api_key", "apikey", "sessionid",
                 "csrftoken", "authorization", "resume", "resume_token", "ticket")
_SECRET_RE = re.compile(
    r"(?i)([?&;]\s*(?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)[^&\s\"';]*")


def redact(text: str) -> str:
    """``text`` with the value of every credential query parameter replaced by ``***``."""
    if "=" not in text:
        return text
    return _SECRET_RE.sub(r"\1***", text)


_installed = False


def install() -> None:
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if not hasattr(record, "conn"):
            record.conn = conn_id.get()
        _redact_record(record)
        return record

    logging.setLogRecordFactory(factory)


def _redact_record(record: logging.LogRecord) -> None:
    # Redact the format and its string arguments in place, which keeps the record's shape
    # (uvicorn's access formatter unpacks ``args``); if a secret still shows in the final
    # message (an argument that is not a string), fall back to the redacted message alone.
    if isinstance(record.msg, str):
        record.msg = redact(record.msg)
    args = record.args
    if isinstance(args, tuple):
        record.args = tuple(redact(a) if isinstance(a, str) else a for a in args)
    elif isinstance(args, dict):
        record.args = {k: redact(v) if isinstance(v, str) else v for k, v in args.items()}
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format is the formatter's to report
        return
    clean = redact(message)
    if clean != message:
        record.msg, record.args = clean, None


class ConnFilter(logging.Filter):
    """Adds ``record.conn`` where the record factory did not (records made before
    ``install()``, or by code with its own factory): keeps ``%(conn)s`` formats safe."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "conn"):
            record.conn = conn_id.get()
        return True
