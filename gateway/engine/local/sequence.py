"""One turn's decoding state inside the batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from gateway.engine.contract import FinishReason, GenerationRequest, GenerationResult
from gateway.engine.local.constrain import RowGrammar
from gateway.engine.local.detok import TextStream


@dataclass
class Sequence:
    """One turn's decoding state inside the batch."""

    request: GenerationRequest
    stream: TextStream
    job: Any = None  # the engine's record of who is listening
    prompt_tokens: int = 0
    position: int = 0  # the text position of the next token fed (rope offset included)
    generator: torch.Generator | None = None
    seen: torch.Tensor | None = None  # context ids, kept only when a repetition penalty needs them
    prompt_ids: tuple[int, ...] | None = None  # set for prompts whose KV may be held after the turn
    cached_tokens: int = 0  # prompt tokens whose KV came from a held prefix
    token_ids: list[int] = field(default_factory=list)
    grammar: RowGrammar | None = None  # set when the reply is constrained (see engine/local/constrain.py)
    first_token_at: float | None = None
    last_token_at: float | None = None

    def result(self, reason: FinishReason, error: str | None, submitted: float, admitted: float | None) -> GenerationResult:
        """The finished turn's result; times in ms from its submission (`submitted`, `admitted`: perf_counter)."""
        now = time.perf_counter()
        first, last = self.first_token_at, self.last_token_at
        decode_s = (last - first) if first is not None and last is not None else 0.0
        n = len(self.token_ids)
        return GenerationResult(
            finish_reason=reason,
            text=self.stream.text,
            token_ids=tuple(self.token_ids),
            prompt_tokens=self.prompt_tokens,
            ttft_ms=(first - submitted) * 1000 if first is not None else None,
            total_ms=(now - submitted) * 1000,
            tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            error=error,
            cached_tokens=self.cached_tokens,
            structured=None if self.grammar is None else reason == "stop" and self.grammar.accepting,
            queue_ms=(admitted - submitted) * 1000 if admitted is not None else None,
        )
