"""One turn's decoding state inside the batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gateway.engine.contract import GenerationRequest
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
