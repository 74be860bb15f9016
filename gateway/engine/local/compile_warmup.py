"""The compiled decode step's every rows bucket compiled at start-up, by one dummy step each, before anything is served."""

from __future__ import annotations

import logging
import time
from types import SimpleNamespace

import torch

from gateway.engine.local import kv, padded, slots
from gateway.engine.local.compiled_step import CompiledDecode, buckets
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.model_inputs import rope_index_owner

log = logging.getLogger("gateway.engine")

# The dummy step's filled KV columns: any length compiles the same graph (the length is dynamic), but 0 and 1
# would be specialised by dynamo, so a graph traced at them could not serve a real step.
_LENGTH = 8


def warm_up(step: CompiledDecode, loaded: LoadedModel, threads: int) -> dict[int, float]:
    """One decode step of zeros at every rows bucket, each with what a serving batch gives the step (tensors of
    the same shapes, strides, dtypes and inference mode; the generation thread's `threads`: dynamo guards on all
    of them), so every graph exists before the generation thread starts: a compile holds the GIL for seconds, and
    while serving that would stall every session. The seconds per bucket, also logged with their total; stops
    early where the compiler fails on the model (the step is then `broken`)."""
    started, before = time.perf_counter(), torch.get_num_threads()
    seconds: dict[int, float] = {}
    layers = _layer_shapes(loaded)
    torch.set_num_threads(threads)  # in this thread only (OpenMP's count is per thread), and put back
    try:
        for rows in buckets(step.max_rows):
            began = time.perf_counter()
            if not _dummy_step(step, loaded, layers, rows):  # the compiler failed on the model: it decodes eager
                return seconds
            seconds[rows] = time.perf_counter() - began
    finally:
        torch.set_num_threads(before)
    each = ", ".join(f"{rows} rows {took:.1f} s" for rows, took in seconds.items())
    log.info("engine_compile=decode: %d buckets compiled in %.1f s (%s)", len(seconds), time.perf_counter() - started, each)
    step.warm = True
    return seconds


@torch.inference_mode()
def _layer_shapes(loaded: LoadedModel) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's keys and values after an eager two-token prefill: their heads, head sizes, dtype and device."""
    ids = torch.zeros(1, 2, dtype=torch.long, device=loaded.device)
    out = loaded.model(input_ids=ids, attention_mask=torch.ones_like(ids), cache=kv.new_cache(), use_cache=True)
    return [(layer.keys, layer.values) for layer in padded.cache_of(out).layers]


@torch.inference_mode()  # as Batch.decode runs: dynamo guards on it
def _dummy_step(step: CompiledDecode, loaded: LoadedModel, layers: list[tuple[torch.Tensor, torch.Tensor]], rows: int) -> bool:
    """One step of `rows` rows at _LENGTH filled columns, its inputs built as Batch.decode builds them; whether
    it ran compiled."""
    held = [kv.GrowingLayer.holding(_zeros(keys, rows), _zeros(values, rows), _LENGTH) for keys, values in layers]
    cache = SimpleNamespace(layers=held)  # the step reads only its layers
    input_ids = torch.zeros(rows, 1, dtype=torch.long, device=loaded.device)
    mask = torch.ones(rows, _LENGTH + 1, dtype=torch.long, device=loaded.device)
    positions = torch.full((1, rows, 1), _LENGTH, device=loaded.device)
    position_ids = positions.expand(3, rows, 1) if rope_index_owner(loaded.model) is not None else positions[0]
    return step.run(slots.RowBuffers(step.max_rows), cache, input_ids, position_ids, mask) is not None


def _zeros(states: torch.Tensor, rows: int) -> torch.Tensor:
    """`rows` rows of _LENGTH prefilled columns shaped as `states`' (sized exactly, as a prefill's)."""
    _, heads, _, size = states.shape
    return states.new_zeros(rows, heads, _LENGTH, size)
