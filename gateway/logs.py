"""Log output: plain lines, or one JSON object a line (`--log-format json`) with structured fields and no secrets."""

from __future__ import annotations

import hashlib
import json
import logging
import logging.config
import re
from datetime import datetime, timezone
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from gateway.config import Settings
from gateway.engine.contract import GenerationResult
from gateway.errors import ErrorCode

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Structured fields a record may carry (`extra=`): an allowlist, so no caller can put message text or a
# secret into a field by accident. Strings among them still pass the redactor, as messages do.
FIELDS = ("code", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "ttft_ms", "total_ms", "model")
# Every line about a session starts "session <id>: " (the connection's adapter and the hub's lines):
# JSON output lifts it into a field, hashed, since the id together with a leaked token resumes the session.
_SESSION_PREFIX = re.compile(r"^session (\S+): ")
_ACCESS_ARGS = ("client", "method", "path", "http_version", "status")


def session_hash(session_id: str) -> str:
    """A stable short name for a session in logs: lines about one session match, the id stays out."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:16]


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ts (UTC, ISO 8601), level, logger, message, then the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()  # already redacted: the redactor is the log-record factory
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        session = _SESSION_PREFIX.match(message)
        if session is not None:
            entry["session"] = session_hash(session.group(1))
            message = message[session.end() :]
        entry["message"] = message
        entry.update(_access_fields(record))
        entry.update({name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None})
        if record.exc_info:
            entry["exc"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def _access_fields(record: logging.LogRecord) -> dict[str, Any]:
    """uvicorn's access lines as fields: its record's arguments are (client, method, path, version, status)."""
    if record.name != "uvicorn.access" or not isinstance(record.args, tuple) or len(record.args) != len(_ACCESS_ARGS):
        return {}
    return dict(zip(_ACCESS_ARGS, record.args))


def uvicorn_config(settings: Settings) -> dict[str, Any]:
    """The logging config uvicorn applies when it starts: its own for text; for JSON, every logger
    (uvicorn's access and error logs too) through one JSON handler on stderr."""
    if settings.log_format == "text":
        return LOGGING_CONFIG
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {"json": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["json"], "level": settings.log_level.upper()},
        "loggers": {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")},
    }


def configure(settings: Settings) -> None:
    """The process's logging, before its first line: plain text, or JSON (warnings included)."""
    if settings.log_format not in FORMATS:
        raise ValueError(f"log_format is one of {', '.join(FORMATS)}, not {settings.log_format!r}")
    if settings.log_format == "text":
        logging.basicConfig(level=settings.log_level.upper(), format=TEXT_FORMAT)
        return
    logging.config.dictConfig(uvicorn_config(settings))
    logging.captureWarnings(True)  # a library's warning is a log line too, not free text on stderr
    _quiet_transformers()


def _quiet_transformers() -> None:
    """transformers logs through a handler of its own and draws progress bars on stderr: in JSON
    output its lines go through ours, and bars (free text, not lines) are off."""
    from transformers.utils import logging as transformers_logging  # the engine imports it next anyway

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
    no_progress_bars()


def no_progress_bars() -> None:
    """transformers' bars ("Loading weights") are free text on stderr, redrawn in place: a log keeps each
    redraw as a line of its own, so they are off; the loader's one "loading ..." line says what happens."""
    from transformers.utils import logging as transformers_logging  # whoever asks imports it next anyway

    transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]


def turn_fields(result: GenerationResult) -> dict[str, Any]:
    """A finished turn's numbers for a log line's fields (never its text); a failed one's error code."""
    fields = {name: getattr(result, name) for name in ("finish_reason", "prompt_tokens", "cached_tokens", "ttft_ms", "total_ms")}
    failed = result.finish_reason == "error"
    code = (result.error_code or ErrorCode.GENERATION).value if failed else None
    return {**fields, "completion_tokens": result.completion_tokens, "code": code}
