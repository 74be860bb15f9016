"""Secrets never reach a log line: API keys, Bearer credentials, Authorization headers, resume and scoped tokens."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

REDACTED = "[redacted]"

# Each pattern keeps what says where a secret was (group 1) and hides the secret itself.
_PATTERNS = (
    # Authorization (and cookie) headers, as uvicorn and websockets print requests at debug level
    re.compile(r"(?im)^(.*?\b(?:proxy-)?(?:authorization|cookie|set-cookie)\s*[:=]\s*).+$"),
    # `Bearer <key>` anywhere, and the `bearer.<key>` WebSocket subprotocol browsers send the key in
    re.compile(r"(?i)(\bbearer[ .])[^\s,;'\"]+"),
    # resume tokens in JSON frames or text: "resume_token": "...", "token": "...", token=...
    re.compile(r"(?i)(\b(?:resume_)?token[\"']?\s*[:=]\s*[\"']?)[^\s\"',;&}]+"),
    # scoped tokens (gateway/edge/tokens.py) wherever they appear: `gw1.` and what follows
    re.compile(r"(\bgw1\.)[A-Za-z0-9_\-.]+"),
    # credentials in URLs (a Redis password, an upstream's user:password)
    re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@"),
    # WebSocket frame dumps (websockets at debug level): payloads hold resume tokens, in text or as hex
    re.compile(r"(?m)^(.*[<>] (?:TEXT|BINARY|CONT) ).*?(?=\s*\[\d+ bytes[^\]]*\]\s*$)"),
)


class Redactor(logging.Filter):
    """Rewrites a record's message with every secret hidden: the given ones wherever they appear, and
    anything in the shapes that carry credentials. Installed as the log-record factory (see `install`),
    it covers every logger, uvicorn's and websockets' included, whatever handlers they are given later."""

    def __init__(self, secrets: Iterable[str | None] = ()) -> None:
        super().__init__()
        self.secrets: set[str] = set()
        self.add(secrets)

    def add(self, secrets: Iterable[str | None]) -> None:
        self.secrets.update(s for s in secrets if s)

    def redact(self, text: str) -> str:
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + (REDACTED if m.group(0) != m.group(1) else ""), text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: logging reports it itself when formatting
            return True
        redacted = self.redact(message)
        if redacted != message:
            self._rewrite(record, redacted)
        if record.exc_info and record.exc_info[1] is not None:  # an exception's text can quote what it failed on
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
        return True

    def _rewrite(self, record: logging.LogRecord, redacted: str) -> None:
        """Redact the arguments one by one where that suffices, since some formatters read them (uvicorn's
        access lines unpack them); else the whole message stands in for template and arguments."""
        if isinstance(record.args, tuple) and "%" in str(record.msg):
            original = record.args
            record.args = tuple(self.redact(a) if isinstance(a, str) else a for a in original)
            try:
                if record.getMessage() == redacted:
                    return
            except (TypeError, ValueError):
                pass
        record.msg, record.args = redacted, ()


_installed: Redactor | None = None


def install(*secrets: str | None) -> Redactor:
    """Redact every log record from now on (idempotent; later calls add their secrets)."""
    global _installed
    if _installed is None:
        redactor = Redactor()
        previous: Callable[..., logging.LogRecord] = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redactor.filter(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = redactor
    _installed.add(secrets)
    return _installed
