"""The local engine: one generation thread owns the model and steps every active turn together."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence as Seq
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from gateway.engine.batch import Batch, Sequence, row_states, supports_batching
from gateway.engine.constrain import GrammarVocabulary, logits_width, mask_logits
from gateway.engine.contract import (
    ChatImage,
    ChatMessage,
    EngineFull,
    EngineHealth,
    EngineLoad,
    FinishReason,
    GenerationRequest,
    GenerationResult,
    TurnHandle,
    TurnSink,
)
from gateway.engine.detok import TextStream
from gateway.engine.encoder_cache import EncoderCache
from gateway.engine.image_prefix import content_key
from gateway.engine.loader import LoadedModel
from gateway.engine.prefix_cache import HeldPrefix, PrefixCache, default_budget, spill_for
from gateway.engine.probe import probe_vision
from gateway.engine.prompt import ModelInputs
from gateway.engine.ragged import suffix_groups
from gateway.engine.relay import EventRelay
from gateway.errors import GatewayError
from gateway.media.images import yield_cpu

log = logging.getLogger("gateway.engine")
_Prefilled = tuple[torch.Tensor, Any, torch.Tensor]  # last logits, cache, mask
_Row = tuple[Sequence, ModelInputs, HeldPrefix | None]  # a text prompt and its held prefix, if any


@dataclass
class _Job:
    request: GenerationRequest
    sink: TurnSink
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None  # when a batch slot took it: its prefill begins


class LocalEngine:
    """Admits turns through a bounded waiting line; the generation thread prefills each new turn
    alone, then decodes it with every other active turn in one forward pass per step."""

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
    ) -> None:
        self.loaded = loaded
        self.model_id = loaded.model_id
        self.vision = loaded.prompt.vision  # until start() has tried an image prompt
        self.token_counter = "model"
        loaded.prompt.images.max_bytes = self._image_cache_bytes = image_cache_bytes
        # The generation thread builds prompts with loaded.prompt; counting runs on a thread of its own
        # with its own tokenizer (no tokenizer is shared between threads), and images are processed
        # ahead of their turn on a small pool, so neither work lands on the event loop or the model.
        self._counter = loaded.prompt.for_another_thread()
        self._count_pool = ThreadPoolExecutor(1, thread_name_prefix="gateway-count")
        self._image_pool = ThreadPoolExecutor(max(1, image_workers), thread_name_prefix="gateway-images", initializer=yield_cpu)
        self.context_tokens = min(loaded.context_tokens, context_tokens or loaded.context_tokens)
        self.adapters: tuple[str, ...] = loaded.adapter_names
        self.chat_template: str | None = loaded.prompt.template  # the served one: --chat-template FILE or the model's
        self.max_batch = max_batch
        self.threads = threads or engine_threads()
        self.max_prefills_per_step = max_prefills_per_step
        self.queue_size = queue_size
        self.tokens_generated = 0  # written only by the generation thread
        # Finished turns' KV; the generation thread's alone.
        budget = default_budget(loaded.device) if kv_cache_bytes is None else kv_cache_bytes
        self.prefix_cache = PrefixCache(budget, kv_cache_idle_s, kv_spill_bytes, spill_for(loaded.device))
        # Not with LoRA adapters: one may adapt the vision tower, and held outputs are not keyed by adapter.
        family, plain = loaded.prompt.family, not loaded.adapter_names
        self.encoder_cache = EncoderCache(encoder_cache_bytes, family.encoder_rows if family.image_kv and plain else None)
        self.busy = threading.Event()  # set while any turn is on the model
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: collections.deque[_Job] = collections.deque()
        self._active = 0
        self._active_handles: list[TurnHandle] = []  # the active turns', so that cancelled ones hold no place
        self._stopping = False
        self._abort = threading.Event()
        self._relay = EventRelay()
        self._thread = threading.Thread(target=self._run, name="gateway-generation", daemon=True)
        self.grammars = _grammar_vocabulary(loaded)

    # ---- called from the event loop --------------------------------------------------------------

    async def count_prompt_tokens(self, messages: Seq[ChatMessage], tools: Seq[dict[str, Any]] = ()) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._count_pool, self._counter.count, messages, tools)

    async def prepare(self, images: Seq[ChatImage]) -> None:
        cache = self.loaded.prompt.images
        missing = [image for image in images if image not in cache]
        if missing and self.vision:
            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(self._image_pool, cache.get, image) for image in missing))

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        job = _Job(request=request, sink=sink, loop=asyncio.get_running_loop())
        with self._lock:
            # Cancelled turns still in line leave at the next step: they hold no place (a turn that yields
            # to this one, say).
            waiting = sum(1 for waiting_job in self._waiting if not waiting_job.request.handle.cancelled.is_set())
            active = sum(1 for handle in self._active_handles if not handle.cancelled.is_set())
            ahead = waiting - (self.max_batch - active)
            if len(self._waiting) >= 2 * self.queue_size:  # cancelled entries are bounded too, until the next step
                raise EngineFull()
            if self._stopping or ahead >= self.queue_size:
                raise EngineFull()
            self._waiting.append(job)
            self._wake.notify()
        if ahead >= 0:  # after the caller has acknowledged the turn, hence call_soon
            job.loop.call_soon(sink.on_queued, ahead + 1)
        return request.handle

    def limit_image_cache(self, max_bytes: int) -> None:
        self.loaded.prompt.images.limit(max(0, min(self._image_cache_bytes, max_bytes)))

    def load(self) -> EngineLoad:
        held = self.prefix_cache  # written by the generation thread (as the encoder cache): a moment's reading
        with self._lock:
            return EngineLoad(
                active=self._active,
                waiting=len(self._waiting),
                capacity=self.max_batch,
                kv_cache_bytes=held.bytes,
                kv_cache_spilled_bytes=held.spilled_bytes,
                kv_cache_hits=held.hits,
                kv_cache_misses=held.misses,
                kv_cache_budget=held.max_bytes,
                kv_spill_budget=held.spill_bytes,
                encoder_cache_bytes=self.encoder_cache.bytes,
                encoder_cache_hits=self.encoder_cache.hits,
                image_cache_bytes=self.loaded.prompt.images.bytes,
            )

    def health(self) -> EngineHealth:
        if self._thread.is_alive() or not self._thread.ident:
            return EngineHealth(ok=True)
        return EngineHealth(ok=False, detail="the generation thread has stopped")

    def start(self) -> None:
        """Try one image prompt through the model (so `vision` is a fact, not a guess), then start the
        generation thread, which owns the model from here on."""
        if self.vision:
            reason = probe_vision(self.loaded)
            if reason is not None:
                log.warning("images disabled: this model's image prompt failed at start-up (%s)", reason)
                self.vision = False
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Refuse new turns, let running ones finish for up to `timeout_s`, then cut them."""
        with self._lock:
            self._stopping = True
            self._wake.notify()
        if self._thread.ident:
            self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._abort.set()
            self._thread.join(timeout_s)
        self._count_pool.shutdown(wait=False, cancel_futures=True)
        self._image_pool.shutdown(wait=False, cancel_futures=True)

    # ---- the generation thread -------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_num_threads(self.threads)  # in this thread: OpenMP's thread count is a per-thread setting
        batch = Batch(self.loaded, self.encoder_cache, self.max_batch)
        while True:
            self.prefix_cache.expire()
            admitted, cancelled, still_waiting = self._next_admissions(len(batch))
            for job in cancelled:
                self._finish(self._sequence(job), "cancelled")
            if admitted is None:
                self._flush()
                break
            if admitted:
                self._prefill(batch, admitted)
            for position, job in enumerate(still_waiting, start=1):
                self._emit(job, job.sink.on_queued, position)
            if batch:
                self._step(batch)
            with self._lock:
                self._active = len(batch)
                self._active_handles = [seq.request.handle for seq in batch.sequences]
            if not batch:
                self.busy.clear()
            self._flush()

    def _next_admissions(self, active: int) -> tuple[list[_Job] | None, list[_Job], list[_Job]]:
        """Block until there is work; take the waiting turns that fit (their prefill costs this step)."""
        with self._lock:
            while not self._waiting and not active and not self._stopping:
                # Idle, the thread still wakes when a held entry's time is up, to let it go.
                if not self._wake.wait(self.prefix_cache.seconds_to_expiry()):
                    return [], [], []
            if self._stopping:
                cancelled = list(self._waiting)
                self._waiting.clear()
                return (None if not active else []), cancelled, []
            cancelled = [j for j in self._waiting if j.request.handle.cancelled.is_set()]
            for job in cancelled:
                self._waiting.remove(job)
            admitted: list[_Job] = []
            while self._waiting and active + len(admitted) < self.max_batch and len(admitted) < self.max_prefills_per_step:
                admitted.append(self._waiting.popleft())
                admitted[-1].admitted = time.perf_counter()
            self._active = active + len(admitted)
            self._active_handles += [job.request.handle for job in admitted]
            moved = admitted or cancelled
            return admitted, cancelled, list(self._waiting) if moved else []

    def _sequence(self, job: _Job) -> Sequence:
        params = job.request.params
        grammar = None
        if params.grammar is not None and self.grammars is not None:
            grammar = self.grammars.matcher(params.grammar)
        # A stop string would cut a constrained reply short of its grammar: constrained rows ignore them.
        stop = () if params.grammar is not None else params.stop
        return Sequence(request=job.request, stream=TextStream(self.loaded.tokenizer, stop), job=job, grammar=grammar)

    def _prefill(self, batch: Batch, jobs: list[_Job]) -> None:
        """Prefill newly admitted turns: text prompts, each on its longest held prefix or none, in one
        forward pass per group of similar new lengths; each prompt with images alone; sample each one's
        first token at once, then join the batch."""
        ready: list[tuple[Sequence, ModelInputs]] = []
        for job in jobs:
            seq = self._sequence(job)
            if job.request.handle.cancelled.is_set():
                self._finish(seq, "cancelled")
                continue
            if job.request.params.grammar is not None and seq.grammar is None:
                self._finish(seq, "error", "this model's tokenizer does not support constrained decoding")
                continue
            try:
                ready.append((seq, self.loaded.prompt.build(job.request.messages, job.request.tools)))
            except GatewayError as exc:
                self._finish(seq, "error", exc.message)
            except Exception:  # a bad input ends this turn, never the thread
                log.exception("building the prompt failed")
                self._finish(seq, "error", "generation failed")
        if ready:
            self.busy.set()
        # Cheap text prompts first: a turn with many images must not hold up the first token of the
        # text turns admitted with it.
        # On cross-attention models every prompt prefills alone: a grouped text pass carries no
        # cross-attention states to merge with the batch's image rows.
        alone = batch.cross_attention
        text = [(seq, inputs, self._held(seq, inputs)) for seq, inputs in ready if not inputs.extras and not alone]
        for group in self._text_groups(text):
            seqs = [seq for seq, _, _ in group]
            run = partial(batch.prefill_rows, seqs, [item for _, item, _ in group], [held for _, _, held in group])
            self._prefill_group(batch, seqs, run)
        for seq, item in ready:
            if item.extras or alone:
                held = self._held(seq, item)
                run = partial(batch.prefill_on, seq, item, held) if held else partial(batch.prefill, seq, item)
                self._prefill_group(batch, [seq], run)

    def _text_groups(self, rows: list[_Row]) -> list[list[_Row]]:
        """Text prompts in groups for one forward pass each: of similar new lengths (engine/ragged.py);
        one at a time when turns decode alone."""
        if self.max_batch <= 1:
            return [[row] for row in rows]
        suffixes = [inputs.prompt_tokens - (held.length if held else 0) for _, inputs, held in rows]
        return [[rows[i] for i in group] for group in suffix_groups(suffixes)]

    def _held(self, seq: Sequence, inputs: ModelInputs) -> HeldPrefix | None:
        """The longest held prefix of the prompt's content key (token ids, images by content); None when
        none is held (or reuse is off, or its images' layout is not understood)."""
        if self.prefix_cache.max_bytes <= 0:
            return None
        seq.prompt_ids = content_key(inputs)
        if seq.prompt_ids is None:
            return None
        return self.prefix_cache.lookup(seq.request.adapter, seq.prompt_ids)

    def _prefill_group(self, batch: Batch, seqs: list[Sequence], run: Callable[[], _Prefilled]) -> None:
        try:
            logits, cache, mask = run()
            mask_logits(logits, [seq.grammar for seq in seqs])
            if not supports_batching(cache) and self.max_batch > 1:
                log.warning("this model's cache cannot be merged; decoding one turn at a time")
                self.max_batch = 1
            alive = [i for i, seq in enumerate(seqs) if not self._after_token(seq, batch.choose(seq, logits[i]))]
        except Exception:  # a model failure ends these turns, never the thread
            log.exception("prefill failed")
            for seq in seqs:
                self._finish(seq, "error", "generation failed")
            return
        self._hold(seqs, cache, mask, alive)
        if alive:
            if len(alive) < len(seqs):
                cache.batch_select_indices(torch.tensor(alive, device=mask.device))
                mask = mask[alive]
            batch.join([seqs[i] for i in alive], cache, mask)

    def _step(self, batch: Batch) -> None:
        keep = []
        for i, seq in enumerate(batch.sequences):
            if seq.request.handle.cancelled.is_set() or self._abort.is_set():
                self._finish(seq, "cancelled")
            else:
                keep.append(i)
        batch.keep(keep)
        if not batch:
            return
        try:
            logits = batch.decode([seq.token_ids[-1] for seq in batch.sequences])
            mask_logits(logits, [seq.grammar for seq in batch.sequences])
        except Exception:
            log.exception("decode step failed; ending every turn in the batch")
            for seq in batch.sequences:
                self._finish(seq, "error", "generation failed")
            batch.keep([])
            return
        keep = [i for i, seq in enumerate(batch.sequences) if not self._after_token(seq, batch.choose(seq, logits[i]))]
        self._hold(batch.sequences, batch.cache, batch.mask, keep)
        batch.keep(keep)

    def _hold(self, seqs: list[Sequence], cache: Any, mask: Any, alive: list[int]) -> None:
        """Keep the KV of the sequences that just finished (prompt and every reply token fed; the last
        one sampled never was) for later prompts that start the same way."""
        try:
            for row in sorted(set(range(len(seqs))) - set(alive)):
                seq = seqs[row]
                if seq.prompt_ids is not None:
                    ids = seq.prompt_ids + tuple(seq.token_ids[:-1])
                    self.prefix_cache.store(seq.request.adapter, ids, row_states(cache, mask, row))
        except Exception:  # holding is an optimisation: a failure (out of memory) costs a later prefill only
            log.exception("holding a finished turn's KV failed")
            self.prefix_cache.clear()

    def _after_token(self, seq: Sequence, token: int) -> bool:
        """Stream one sampled token's text; True when the turn ended with it."""
        self.tokens_generated += 1
        grammar = seq.grammar
        if grammar is not None and grammar.failed:
            self._finish(seq, "error", grammar.error)
            return True
        # The grammar allows an end-of-turn token only where the reply is complete: it always ends the turn.
        if token in self.loaded.eos_token_ids and (not seq.request.params.ignore_eos or grammar is not None):
            self._finish(seq, "stop")
            return True
        delta = seq.stream.push(token)
        if delta:
            self._emit(seq.job, seq.job.sink.on_token, delta)
        if seq.stream.stopped or (grammar is not None and grammar.complete):
            self._finish(seq, "stop")
            return True
        if len(seq.token_ids) >= seq.request.params.max_tokens:
            self._finish(seq, "length")
            return True
        return False

    def _finish(self, seq: Sequence, reason: FinishReason, error: str | None = None) -> None:
        job: _Job = seq.job
        tail = seq.stream.finish()
        if tail and reason != "error":
            self._emit(job, job.sink.on_token, tail)
        now = time.perf_counter()
        first, last = seq.first_token_at, seq.last_token_at
        decode_s = (last - first) if first is not None and last is not None else 0.0
        n = len(seq.token_ids)
        result = GenerationResult(
            finish_reason=reason,
            text=seq.stream.text,
            token_ids=tuple(seq.token_ids),
            prompt_tokens=seq.prompt_tokens,
            ttft_ms=(first - job.submitted) * 1000 if first is not None else None,
            total_ms=(now - job.submitted) * 1000,
            tokens_per_s=(n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            error=error,
            cached_tokens=seq.cached_tokens,
            structured=None if seq.grammar is None else reason == "stop" and seq.grammar.accepting,
            queue_ms=(job.admitted - job.submitted) * 1000 if job.admitted is not None else None,
        )
        self._emit(job, job.sink.on_done, result)

    def _emit(self, job: _Job, callback: Callable[..., None], *args: Any) -> None:
        self._relay.emit(job.loop, callback, *args)

    def _flush(self) -> None:
        self._relay.flush()


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
