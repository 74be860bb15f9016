"""Image prompts as joining rows of input embeddings: the vision tower runs once, its features spliced at the placeholders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gateway.engine.local.families import Family


class _Spliced(Exception):
    """Carries the text model's input embeddings out of the model's forward, before any layer runs."""

    def __init__(self, embeds: torch.Tensor) -> None:
        super().__init__("spliced")
        self.embeds = embeds


def splices(family: Family, cross: frozenset[int]) -> bool:
    """Whether this model's image prompts join the chunked rows: its family splices image features into the
    input embeddings alone under causal attention (no cross-attention). Positions, 3-D ones included, are
    computed once over the whole prompt, as for text rows."""
    return family.spliced and not cross


@torch.inference_mode()
def spliced_embeds(model: Any, input_ids: torch.Tensor, position_ids: torch.Tensor, extras: dict[str, Any]) -> torch.Tensor:
    """The prompt's input embeddings [tokens, hidden] exactly as the model's own forward hands them to its text
    model (the images' features at their placeholders), from a forward stopped there: the model's own
    splicing, whatever the family's vision tower, projector or merger."""

    def stop(_: Any, args: Any, kwargs: dict[str, Any]) -> None:
        raise _Spliced(kwargs["inputs_embeds"])

    handle = model.get_decoder().register_forward_pre_hook(stop, with_kwargs=True)
    try:
        model(input_ids=input_ids, position_ids=position_ids, **extras)
    except _Spliced as spliced:
        return spliced.embeds[0]
    finally:
        handle.remove()
    raise RuntimeError("the model's forward never reached its text model")


def chunk_inputs(model: Any, input_ids: torch.Tensor, embeds: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A pass's token inputs: its ids, or, where some rows are image prompts' embeddings, every row's
    embeddings (text rows' ids through the model's input embedding layer, as its own forward would)."""
    if not embeds:
        return {"input_ids": input_ids}
    inputs = model.get_input_embeddings()(input_ids)
    for row, rows in embeds.items():
        inputs[row, : len(rows)] = rows.to(inputs.dtype)
    return {"inputs_embeds": inputs}


def with_embeds(
    rows: list[Any], embed: Callable[[Any], torch.Tensor | None], failed: Callable[[list[Any]], None]
) -> tuple[list[Any], list[torch.Tensor | None]]:
    """Each joining prompt's embeddings (None for text); a prompt whose images fail ends alone, the others join."""
    kept, embeds = [], []
    for row in rows:
        try:
            embeds.append(embed(row))
        except Exception:  # a bad image ends its own turn, never the rows it would have joined
            failed([row[0]])
            continue
        kept.append(row)
    return kept, embeds
