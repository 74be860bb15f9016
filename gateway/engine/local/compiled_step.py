"""A compiled decode step (torch.compile, inductor): rows padded up to buckets, the KV length one dynamic dimension."""

from __future__ import annotations

import logging
import os
import time
import types
from collections import Counter
from typing import Any

import torch
import torch._dynamo
from torch._dynamo.utils import counters

from gateway.engine.local import kv
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.slots import RowBuffers

log = logging.getLogger("gateway.engine")

MODES = ("off", "decode")


def buckets(max_rows: int) -> list[int]:
    """The row counts a compiled step runs at: powers of two below `max_rows`, then `max_rows`. A model compiles
    at most once per bucket: the KV length is dynamic, so no length ever recompiles."""
    sizes, rows = [], 1
    while rows < max_rows:
        sizes.append(rows)
        rows *= 2
    return [*sizes, max_rows]


def bucket_of(rows: int, max_rows: int) -> int:
    return next(size for size in buckets(max_rows) if size >= rows)


def why_not(loaded: LoadedModel) -> str | None:
    """Why this model's decode step stays eager, or None when it compiles. The step attends under a 4-D mask
    it builds itself (every column of every row), so it serves only plain causal self-attention: no
    sliding windows, no cross-attention states, no per-row LoRA adapters."""
    config = loaded.model.config.get_text_config()
    if any(kind != "full_attention" for kind in getattr(config, "layer_types", None) or ()):
        return "sliding-window layers"
    if getattr(config, "sliding_window", None) is not None and getattr(config, "use_sliding_window", True):
        return "a sliding window"
    if getattr(loaded.model.config, "model_type", "") == "mllama":
        return "cross-attention layers"
    if loaded.adapter_names:
        return "LoRA adapters"
    return None


def for_model(loaded: LoadedModel, mode: str, max_rows: int) -> CompiledDecode | None:
    """The compiled step `mode` asks for ("off" or "decode"), None where it is off or the model cannot take it."""
    if mode not in MODES:
        raise ValueError(f"engine_compile must be one of {', '.join(MODES)}, not {mode!r}")
    if mode == "off":
        return None
    reason = why_not(loaded)
    if reason is not None:
        log.warning("engine_compile=%s: this model's decode step stays eager (%s)", mode, reason)
        return None
    if loaded.device.type == "cpu":
        # transformers' sdpa repeats grouped KV heads (a copy of the whole KV per layer) whenever a mask is given;
        # in a compiled graph that copy is a slow loop (16 rows: 67 ms a step against eager's 35-42), while torch's
        # CPU kernels take the mask with grouped heads as they are (33-35 ms). Read at every forward, so it is set
        # before any graph is traced. (CUDA's fast kernels take no mask with grouped heads: not there.)
        os.environ.setdefault("TRANSFORMERS_SDPA_FORCE_GQA", "1")
    return CompiledDecode(loaded.model, max_rows)


class _StepCache:
    """The cache a compiled step's forward sees: each layer's keys and values as wide as the new column, which
    `update` writes in place (index_copy_, as transformers' static cache does, so inductor keeps it in place)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], at: torch.Tensor) -> None:
        self.keys, self.values, self.at = keys, values, at

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer: int, *args: Any, **kwargs: Any) -> Any:
        self.keys[layer].index_copy_(2, self.at, key_states)
        self.values[layer].index_copy_(2, self.at, value_states)
        return self.keys[layer], self.values[layer]


def _step(
    model: Any, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor, keys: Any, values: Any, at: torch.Tensor
) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask, position_ids=positions, cache=_StepCache(keys, values, at), use_cache=True)
    logits: torch.Tensor = out.logits[:, -1]
    return logits


class CompiledDecode:
    """One decode step of the batch through a compiled forward. The batch's KV sits in its RowBuffers (slots.py)
    with rows to spare: a step reads the first `bucket` rows of them (dead rows masked, attending only to their
    own new column) over their whole capacity (masked past the new column), so padding copies nothing. A bucket's
    graph is compiled before serving (compile_warmup.py, `warm`) or else at its first step (`graphs`, `compile_s`);
    a model the compiler fails on falls back to eager."""

    def __init__(self, model: Any, max_rows: int) -> None:
        self.max_rows = max_rows
        self.steps = 0  # steps run compiled
        self.steps_at: Counter[int] = Counter()  # of them, at each rows bucket
        self.graphs = 0  # graphs compiled (dynamo's unique_graphs while this step ran)
        self.compile_s = 0.0  # time of the steps that compiled a graph
        self.broken = False
        self.warm = False  # every bucket compiled (compile_warmup.py): a compile from here on is a stall, and warned of
        self._model = model
        # Dynamo compiles a code object at most recompile_limit times (8): one graph per bucket must fit.
        limit = torch._dynamo.config.recompile_limit
        torch._dynamo.config.recompile_limit = max(limit, len(buckets(max_rows)))
        # Dynamo keeps its graphs (and its recompile limit) per code object: each engine's step gets a code object
        # of its own, so engines in one process (tests) never spend each other's limit.
        step = types.FunctionType(_step.__code__.replace(co_name=f"_step_{id(self):x}"), _step.__globals__)
        # (Compiled as it is: a functools.partial would be compiled through one wrapper shared by every engine.)
        self._forward = torch.compile(step, fullgraph=True, dynamic=False)

    def run(
        self, rows: RowBuffers, cache: Any, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor | None:
        """Logits [rows, vocab] of one step, every row fed `ids` [rows, 1] at `positions` [rows, 1] under `mask`
        [rows, width + 1]; the cache's layers hold the new column after it. None (nothing done) where the step
        must run eager: broken, or a layer that is not a plain growing one."""
        layers = cache.layers
        if self.broken or not all(type(layer) is kv.GrowingLayer for layer in layers):
            return None
        count, length = ids.shape[0], layers[0]._key_length
        size = bucket_of(count, self.max_rows)
        keys, values = [], []
        for index, layer in enumerate(layers):
            own_keys, own_values = rows.reserve(index, layer, size, length + 1)
            keys.append(own_keys[:size])
            values.append(own_values[:size])
        # The step reads the buffers' whole capacity, masked past the new column: a view of the filled columns
        # would carry strides of the capacity, which dynamo guards on (a recompile at every growth).
        full = torch.zeros(size, 1, 1, keys[0].shape[2], dtype=torch.bool, device=mask.device)
        full[:count, 0, 0, : length + 1] = mask.bool()
        full[count:, 0, 0, length] = True  # a dead row attends to its own column only: no empty softmax
        for tensor in (*keys, *values):
            torch._dynamo.mark_dynamic(tensor, 2)
        torch._dynamo.mark_dynamic(full, 3)
        logits = self._call(_padded(ids, size), _padded(positions, size), full, keys, values, ids.new_tensor([length]))
        if logits is None:
            return None
        for layer in layers:
            layer._key_length = layer._value_length = length + 1
        self.steps += 1
        self.steps_at[size] += 1
        return logits[:count]

    def _call(self, *args: Any) -> torch.Tensor | None:
        graphs, started = counters["stats"]["unique_graphs"], time.perf_counter()
        try:
            logits: torch.Tensor = self._forward(self._model, *args)
        except Exception:  # the compiler could not take this model: decode eager from here on
            log.warning("the compiled decode step failed; decoding eager from here on", exc_info=True)
            self.broken = True
            return None
        added = counters["stats"]["unique_graphs"] - graphs
        if added:
            took, rows = time.perf_counter() - started, args[0].shape[0]
            self.graphs += added
            self.compile_s += took
            if self.warm:
                log.warning("compiled the decode step for %d rows while serving (%.1f s, holding the GIL)", rows, took)
            else:
                log.info("compiled the decode step for %d rows in %.1f s", rows, took)
        return logits


def _padded(rows: torch.Tensor, size: int) -> torch.Tensor:
    """`rows` ([count, 1], or [3, count, 1] for 3-D positions) with zero rows added up to `size`, contiguous:
    3-D positions come expanded, and a graph is specialised to its inputs' strides (a recompile otherwise)."""
    dim = rows.dim() - 2
    if rows.shape[dim] == size:
        return rows.contiguous()
    shape = list(rows.shape)
    shape[dim] = size - shape[dim]
    return torch.cat([rows, rows.new_zeros(shape)], dim=dim)
