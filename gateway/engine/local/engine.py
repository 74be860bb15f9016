"""The local engine: one generation thread owns the model and steps every active turn together."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.config import Settings
from gateway.engine.contract import (
    ChatImage,
    ChatMessage,
    EngineHealth,
    EngineLoad,
    GenerationRequest,
    TurnHandle,
    TurnSink,
)
from gateway.engine.local import compile_warmup, compiled_step
from gateway.engine.local.adapter_swaps import LocalAdapters
from gateway.engine.local.constrain import GrammarVocabulary, logits_width
from gateway.engine.local.encode_ahead import EncodeAhead
from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.encoder_meter import EncoderMeter
from gateway.engine.local.generation import Generation
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.prefix_cache import PrefixCache, default_budget, spill_for
from gateway.engine.local.probe import probe_vision
from gateway.engine.local.waiting import Job, WaitingLine
from gateway.media.images import yield_cpu

log = logging.getLogger("gateway.engine")


class LocalEngine:
    """Admits turns through a bounded waiting line; the generation thread prefills new turns (text ones
    joining a decoding batch a chunk per step, see engine/local/joining.py), then decodes each with every
    other active turn in one forward pass per step."""

    def __init__(
        self,
        loaded: LoadedModel,
        queue_size: int = 64,
        context_tokens: int | None = None,
        max_batch: int = 16,
        max_prefills_per_step: int = 16,
        image_cache_bytes: int = 256 << 20,
        image_workers: int = 2,
        kv_cache_bytes: int | None = None,
        kv_cache_idle_s: float = 300.0,
        kv_spill_bytes: int = 1 << 30,
        encoder_cache_bytes: int = 128 << 20,
        threads: int = 0,
        gather_ms: float = Settings.engine_gather_ms,  # one default, the setting's
        prefill_chunk_tokens: int = Settings.engine_prefill_chunk_tokens,  # one default, the setting's
        warm_up_chunk_tokens: int = Settings.engine_warm_up_chunk_tokens,
        max_adapters: int = 8,
        max_adapter_bytes: int = 1 << 30,
        compile_mode: str = Settings.engine_compile,
    ) -> None:
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.vision = loaded.prompt.vision  # until start() has tried an image prompt
        self.reads_video = self.vision and loaded.prompt.video is not None  # the family lays clips out natively
        self.token_counter = "model"
        loaded.prompt.images.max_bytes = self._image_cache_bytes = image_cache_bytes
        # The generation thread builds prompts with loaded.prompt; counting runs on a thread of its own
        # with its own tokenizer (no tokenizer is shared between threads), and images are processed
        # ahead of their turn on a small pool, so neither work lands on the event loop or the model.
        self._counter = loaded.prompt.for_another_thread()
        self._count_pool = ThreadPoolExecutor(1, thread_name_prefix="gateway-count")
        self._image_pool = ThreadPoolExecutor(max(1, image_workers), thread_name_prefix="gateway-images", initializer=yield_cpu)
        self.context_tokens = min(loaded.context_tokens, context_tokens or loaded.context_tokens)
        self.chat_template: str | None = loaded.prompt.template  # the served one: --chat-template FILE or the model's
        self.threads = threads or engine_threads()
        self._line = WaitingLine(queue_size, max_batch, max_prefills_per_step, gather_ms / 1000, gather_ms / 4000)
        # Finished turns' KV; the generation thread's alone.
        budget = default_budget(loaded.device) if kv_cache_bytes is None else kv_cache_bytes
        self.warms_up = budget > 0  # a warm-up's KV is held there for the turn that follows
        prefix_cache = PrefixCache(budget, kv_cache_idle_s, kv_spill_bytes, spill_for(loaded.device))
        self.encoder_meter = EncoderMeter(loaded.model)  # the vision tower's passes and time, for /metrics
        # Not with LoRA adapters: one may adapt the vision tower, and held outputs are not keyed by adapter.
        family, plain = loaded.prompt.family, not loaded.adapter_names
        self.encoder_cache = EncoderCache(encoder_cache_bytes, family.encoder_rows if family.image_kv and plain else None)
        self.grammars = _grammar_vocabulary(loaded)
        self._generation = Generation(
            loaded,
            self._line,
            prefix_cache,
            self.encoder_cache,
            self.grammars,
            self.threads,
            prefill_chunk_tokens,
            warm_up_chunk_tokens,
            compiled_step.for_model(loaded, compile_mode, max_batch),
        )
        self.busy = self._generation.busy  # set while any turn is on the model
        # Live frames' outputs encoded while the engine is idle, at most a batch of them pending.
        self._ahead = EncodeAhead(loaded, self._line, self.encoder_cache, max_batch)
        self._adapters = LocalAdapters(self._generation, max_adapters, max_adapter_bytes)
        self._thread = threading.Thread(target=self._generation.run, name="gateway-generation", daemon=True)

    @property
    def max_batch(self) -> int:
        return self._line.max_batch

    @property
    def adapters(self) -> tuple[str, ...]:
        return self._adapters.registry.served

    @property
    def tokens_generated(self) -> int:
        return self._generation.tokens_generated

    @property
    def prefix_cache(self) -> PrefixCache:
        return self._generation.prefix_cache

    @prefix_cache.setter
    def prefix_cache(self, cache: PrefixCache) -> None:  # tests swap in one that records its peaks
        self._generation.prefix_cache = cache

    # ---- called from the event loop --------------------------------------------------------------

    async def count_prompt_tokens(self, messages: Seq[ChatMessage], tools: Seq[dict[str, Any]] = ()) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._count_pool, self._counter.count, messages, tools)

    async def prepare(self, images: Seq[ChatImage]) -> None:
        cache = self.loaded.prompt.images
        missing = [image for image in images if image not in cache]
        if missing and self.vision:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._image_pool, cache.get, image) for image in missing))

    def encode_ahead(self, images: Seq[ChatImage]) -> bool:
        return self.vision and not self.reads_video and self._ahead.offer(images)

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        self._adapters.registry.check_servable(request.adapter)
        job = Job(request=request, sink=sink, loop=asyncio.get_running_loop())
        ahead = self._line.offer(job)
        if ahead >= 0:  # after the caller has acknowledged the turn, hence call_soon
            job.loop.call_soon(sink.on_queued, ahead + 1)
        return request.handle

    def unloading(self, name: str) -> bool:
        return self._adapters.registry.leaving(name)

    async def load_adapter(self, name: str, path: str) -> None:
        await self._adapters.load(name, path)

    async def unload_adapter(self, name: str) -> None:
        await self._adapters.unload(name)

    def limit_image_cache(self, max_bytes: int) -> None:
        self.loaded.prompt.images.limit(max(0, min(self._image_cache_bytes, max_bytes)))

    def load(self) -> EngineLoad:
        held = self.prefix_cache  # written by the generation thread (as the encoder cache): a moment's reading
        with self._line.lock:
            return EngineLoad(
                active=self._line.active,
                waiting=len(self._line),
                capacity=self.max_batch,
                kv_cache_bytes=held.bytes,
                kv_cache_spilled_bytes=held.spilled_bytes,
                kv_cache_hits=held.hits,
                kv_cache_misses=held.misses,
                kv_cache_budget=held.max_bytes,
                kv_spill_budget=held.spill_bytes,
                encoder_cache_bytes=self.encoder_cache.bytes,
                encoder_cache_hits=self.encoder_cache.hits,
                encoder_passes=self.encoder_meter.passes,
                encoder_seconds=self.encoder_meter.seconds,
                image_cache_bytes=self.loaded.prompt.images.bytes,
                phase_seconds=self._generation.clock.totals(),
            )

    def health(self) -> EngineHealth:
        if self._thread.is_alive() or not self._thread.ident:
            return EngineHealth(ok=True)
        return EngineHealth(ok=False, detail="the generation thread has stopped")

    def start(self) -> None:
        """Try one image prompt through the model (so `vision` is a fact, not a guess), compile every bucket of
        the compiled decode step (engine_compile), then start the generation thread, which owns the model from
        here on."""
        if self.vision:
            reason = probe_vision(self.loaded)
            if reason is not None:
                log.warning("images disabled: this model's image prompt failed at start-up (%s)", reason)
                self.vision = self.reads_video = False
        if self._generation.compiled is not None:
            compile_warmup.warm_up(self._generation.compiled, self.loaded, self.threads)
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Refuse new turns, let running ones finish for up to `timeout_s`, then cut them."""
        self._line.stop()
        if self._thread.ident:
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._generation.abort.set()
            self._thread.join(timeout_s)
        self._count_pool.shutdown(wait=False, cancel_futures=True)
        self._adapters.close()
        self._image_pool.shutdown(wait=False, cancel_futures=True)


def engine_threads() -> int:
    """The generation thread's default intra-op threads: one fewer than the CPUs this process may run on."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


def _grammar_vocabulary(loaded: LoadedModel) -> GrammarVocabulary | None:
    """The vocabulary for constrained decoding; a tokenizer llguidance cannot read leaves it off."""
    try:
        return GrammarVocabulary(loaded.tokenizer, logits_width(loaded.model, loaded.tokenizer), loaded.eos_token_ids)
    except Exception:
        log.warning("constrained decoding is unavailable for this tokenizer", exc_info=True)
        return None
