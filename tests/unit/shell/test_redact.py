"""Secrets never reach a log line: the API key, `bearer.` subprotocols, Authorization headers and resume
tokens are redacted in any text, in a record's arguments, and by every logger of an app built with a key."""

from __future__ import annotations

import logging

import pytest

from gateway.app import create_app
from gateway.config import Settings
from gateway.redact import REDACTED, Redactor

KEY = "sk-gw-0123456789abcdefSECRET"

LINES = [
    ("< authorization: Bearer sk-other", "< authorization: [redacted]"),
    ("< Proxy-Authorization: Basic dXNlcjpwYXNz", "< Proxy-Authorization: [redacted]"),
    ("< sec-websocket-protocol: gateway.json, bearer.sk-other", "< sec-websocket-protocol: gateway.json, bearer.[redacted]"),
    ("calling with Bearer sk-other now", "calling with Bearer [redacted] now"),
    ('< TEXT \'{"type": "resume", "session": "s1", "token": "kq3V0m8t"}\' [58 bytes]', "< TEXT [redacted] [58 bytes]"),
    ("> BINARY 8c a4 74 79 70 65 ... 73 65 71 01 [904 bytes]", "> BINARY [redacted] [904 bytes]"),
    ('{"resume_token": "kq3V0m8t", "seq": 1}', '{"resume_token": "[redacted]", "seq": 1}'),
    ("GET /ws?token=kq3V0m8t&x=1", "GET /ws?token=[redacted]&x=1"),
    ("store at redis://:hunter2@127.0.0.1:6379/0", "store at redis://[redacted]127.0.0.1:6379/0"),
    ("opening with gw1.eyJpZCI6IngifQ.AAAA-_b tail", "opening with gw1.[redacted] tail"),
    ("prompt_tokens=12 max_tokens: 5", "prompt_tokens=12 max_tokens: 5"),
]


@pytest.mark.parametrize(("line", "expected"), LINES)
def test_credential_shapes_are_redacted(line: str, expected: str) -> None:
    """Each shape a credential travels in is hidden, what says where it was stays; other text is untouched."""
    assert Redactor().redact(line) == expected


def test_a_known_secret_is_redacted_wherever_it_appears() -> None:
    """The configured key is hidden in any text, not only in the shapes above."""
    assert Redactor([KEY, None]).redact(f"x{KEY}y") == f"x{REDACTED}y"


def test_arguments_are_redacted_in_place_where_formatters_read_them() -> None:
    """uvicorn's access formatter unpacks a record's arguments: they stay five, with the token hidden."""
    args = ("127.0.0.1:5000", "GET", "/ws?token=kq3V0m8t", "1.1", 101)
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', args, None)
    Redactor().filter(record)
    assert record.args == ("127.0.0.1:5000", "GET", "/ws?token=[redacted]", "1.1", 101)


def test_create_app_redacts_every_logger(caplog: pytest.LogCaptureFixture) -> None:
    """Once an app is built with a key, any logger's record (and its exception text) hides the key."""
    create_app(Settings(api_key=KEY))
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("some.library").debug("header %s", f"Bearer {KEY}")
        try:
            raise ValueError(f"refused {KEY}")
        except ValueError:
            logging.getLogger("uvicorn.error").exception("failed")
    assert caplog.records and KEY not in caplog.text
