"""A family whose processor lacks a package starts text-only and says why, instead of failing at the first image."""

from __future__ import annotations

import logging

import pytest

from gateway.engine.local.loader import load_model
from tests.families.builders import cached_family


def test_smolvlm_without_num2words_is_text_only(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """SmolVLM's processor refuses to build without num2words: the model loads without vision, with a log line."""
    import transformers.models.smolvlm.processing_smolvlm as smolvlm

    monkeypatch.setattr(smolvlm, "num2words", None)
    with caplog.at_level(logging.WARNING, logger="gateway.loader"):
        loaded = load_model(cached_family("smolvlm"))
    assert loaded.prompt.vision is False
    assert "images disabled" in caplog.text and "num2words" in caplog.text
