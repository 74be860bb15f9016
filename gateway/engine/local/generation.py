"""The generation thread's work: admit turns, prefill them, decode every active turn together, stream tokens."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from gateway.engine.contract import FinishReason
from gateway.engine.local.batch import Batch
from gateway.engine.local.compiled_step import CompiledDecode
from gateway.engine.local.constrain import GrammarVocabulary, mask_logits
from gateway.engine.local.detok import TextStream
from gateway.engine.local.embed_rows import with_embeds
from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.image_prefix import content_key
from gateway.engine.local.joining import Joining, split, text_groups
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.padded import hold_fed, hold_finished, supports_batching
from gateway.engine.local.prefix_cache import HeldPrefix, PrefixCache
from gateway.engine.local.profile import PhaseClock, name_os_thread
from gateway.engine.local.prompt import ModelInputs
from gateway.engine.local.relay import EventRelay
from gateway.engine.local.sequence import Sequence
from gateway.engine.local.waiting import Job, WaitingLine
from gateway.errors import GatewayError

log = logging.getLogger("gateway.engine")
_Prefilled = tuple[torch.Tensor, Any, torch.Tensor]  # last logits, cache, mask


_WARM_UP_TOKENS = 256  # the most a warm-up prefills with chunking off (the chunk's default size)


class Generation:
    """What the generation thread does, and the state it alone writes (`tokens_generated` and the held
    KV are read elsewhere only as a moment's figures)."""

    def __init__(
        self,
        loaded: LoadedModel,
        line: WaitingLine,
        prefix_cache: PrefixCache,
        encoder_cache: EncoderCache,
        grammars: GrammarVocabulary | None,
        threads: int,
        chunk_tokens: int = 0,
        warm_up_chunk_tokens: int = 0,
        compiled: CompiledDecode | None = None,
    ) -> None:
        self.loaded = loaded
        self.line = line
        self.prefix_cache = prefix_cache
        self.encoder_cache = encoder_cache
        self.grammars = grammars
        self.threads = threads
        self.compiled = compiled  # the compiled decode step (engine_compile), or None: eager
        self.tokens_generated = 0
        # Prompts prefilled a chunk per step beside the decoding batch (and long ones, and warm-ups, when idle).
        self.joining = Joining(chunk_tokens, warm_up_chunk_tokens)
        self.clock = PhaseClock()  # the engine profile
        self.busy = threading.Event()  # set while any turn is on the model
        self.abort = threading.Event()  # set to cut running turns short (after stop's grace)
        self._relay = EventRelay()

    @property
    def max_batch(self) -> int:
        return self.line.max_batch

    def run(self) -> None:
        name_os_thread("gateway-engine")  # before torch starts its workers, which take the name
        torch.set_num_threads(self.threads)  # in this thread: OpenMP's thread count is a per-thread setting
        batch = Batch(self.loaded, self.encoder_cache, self.line.max_batch, self.compiled)
        while True:
            self.prefix_cache.expire()
            self.clock.lap("holding")
            active = len(batch) + len(self.joining)
            admitted, cancelled, still_waiting = self.line.take(active, self.prefix_cache.seconds_to_expiry())
            self.clock.lap("waiting")
            for job in cancelled:
                self._finish(self._sequence(job), "cancelled")
            if admitted is None:
                self._flush()
                break
            if self.joining:
                self._warm_ups_give_way(batch, admitted)  # before the turns admitted now look up held KV
            if admitted:
                self._prefill(batch, admitted)
            if self.joining:
                self._feed_joining(batch)
            for position, job in enumerate(still_waiting, start=1):
                self._emit(job, job.sink.on_queued, position)
            if batch:
                self._step(batch)
            self.line.settle([seq.request.handle for seq in batch.sequences + self.joining.sequences()])
            if not batch and not self.joining:
                self.busy.clear()
            self._flush()  # before the errands: a turn's `done` reaches its loop ahead of an unload it let go
            self.clock.lap("streaming")
            self._run_errands(batch)
            self.clock.lap("errands")
        for errand in self.line.errands()[0]:
            errand.abandon()

    def _run_errands(self, batch: Batch) -> None:
        """Errands (an adapter's swap) run here, between two steps; one not ready yet is posted again."""
        errands, waiting = self.line.errands()
        in_use = waiting | {seq.request.adapter for seq in batch.sequences + self.joining.sequences()}
        for errand in errands:
            if not errand.run(in_use):
                self.line.post(errand)

    def _sequence(self, job: Job) -> Sequence:
        params = job.request.params
        grammar = None
        if params.grammar is not None and self.grammars is not None:
            grammar = self.grammars.matcher(params.grammar)
        # A stop string would cut a constrained reply short of its grammar: constrained rows ignore them.
        stop = () if params.grammar is not None else params.stop
        return Sequence(request=job.request, stream=TextStream(self.loaded.tokenizer, stop), job=job, grammar=grammar)

    def _prefill(self, batch: Batch, jobs: list[Job]) -> None:
        """Prefill newly admitted turns: text prompts, each on its longest held prefix or none, in one
        forward pass per group of similar new lengths (or joining the rows fed beside a decoding batch);
        prompts with images join those rows where the family splices them into the input embeddings, else
        each is prefilled alone; sample each one's first token at once, then join the batch."""
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
                built = self.loaded.prompt.build(job.request.messages, job.request.tools)
                if job.request.warm_up and self._warm_up_too_long(batch, job, built):
                    self._finish(seq, "cancelled")
                    continue
                ready.append((seq, built))
            except GatewayError as exc:
                self._finish(seq, "error", exc.message)
            except Exception:  # a bad input ends this turn, never the thread
                log.exception("building the prompt failed")
                self._finish(seq, "error", "generation failed")
        if ready:
            self.busy.set()
        self.clock.lap("prompts")
        # Cheap text prompts first: a turn with many images must not hold up the first token of the
        # text turns admitted with it.
        # On cross-attention models every prompt prefills alone: a grouped text pass carries no
        # cross-attention states to merge with the batch's image rows.
        alone = batch.cross_attention
        rows = [(seq, item, self._held(seq, item)) for seq, item in ready if not alone and (batch.splices or not item.extras)]
        text = [row for row in rows if not row[1].extras]
        self.joining.waiting.extend(row for row in rows if row[1].extras)  # fed whole at once when nobody decodes
        if text and self.joining.merges(bool(batch)):  # fed beside the batch, with the rows already joining
            self.joining.waiting.extend(text)
            text = []
        elif text:  # a text prompt longer than a chunk is fed a chunk at a time even when nobody decodes
            self.joining.waiting.extend(row for row in text if self.joining.long_row(row))
            text = [row for row in text if not self.joining.long_row(row)]
        for group in text_groups(text, self.max_batch):
            seqs, inputs, helds = split(group)
            self._prefill_group(batch, seqs, partial(_feed_whole, batch, seqs, inputs, helds))
        for seq, item in ready:
            if alone or (item.extras and not batch.splices):
                held = self._held(seq, item)
                run = partial(batch.prefill_on, seq, item, held) if held else partial(batch.prefill, seq, item)
                self._prefill_group(batch, [seq], run)

    def _warm_up_too_long(self, batch: Batch, job: Job, inputs: ModelInputs) -> bool:
        """Whether a warm-up is dropped unrun: where nothing of it could be held, or where it would prefill more
        than a chunk (`_WARM_UP_TOKENS` with chunking off) in one pass that a turn arriving would wait for all of:
        with chunking off, and for prompts prefilled alone (every prompt on a cross-attention model, image prompts
        on families that do not splice pictures into the embeddings). Otherwise a long one is fed a chunk at a time
        and gives way to turns (`_warm_ups_give_way`)."""
        key = content_key(inputs) if self.prefix_cache.max_bytes > 0 else None
        if key is None:
            return True
        alone = batch.cross_attention or (bool(inputs.extras) and not batch.splices)
        if self.joining.chunk_tokens > 0 and not alone:
            return False
        limit = self.joining.chunk_tokens if self.joining.chunk_tokens > 0 else _WARM_UP_TOKENS
        return len(key) - self.prefix_cache.held_length(job.request.adapter, key) > limit

    def _warm_ups_give_way(self, batch: Batch, admitted: list[Job]) -> None:
        """Warm-ups fill idle time only. One whose prefill is under way a chunk at a time stops when any turn is on
        the engine (or when it is cancelled), and what it was fed so far is held (`hold_fed`). It goes back to the
        front of its line, to go on from there when the engine is idle again, or ends where its own session's turn
        has come (that turn takes its KV). So a turn waits for one chunk of a warm-up at most, however long the
        warm-up: a session's whole prompt re-prefilled ahead after its history was trimmed (core/warm_ups.py)."""
        rows, joining = self.joining.rows, self.joining
        turns = [job.request for job in admitted if not job.request.warm_up]
        turns += [seq.request for seq in batch.sequences + joining.sequences() if not seq.request.warm_up]
        # Turns still in the line too: with `max_batch` 1 the warm-up's row holds the one place they wait for. And
        # a stopping engine's: nothing waits for a warm-up then, and the line refuses to take it back.
        waiting = bool(turns) or len(self.line) > 0 or self.line.stopping
        stopping = [
            row for row, seq in enumerate(rows.seqs) if seq.request.warm_up and (waiting or seq.request.handle.cancelled.is_set())
        ]
        unfed = [i for i, seq in enumerate(joining.waiting_sequences()) if seq.request.warm_up] if waiting else []
        if not stopping and not unfed:
            return
        seqs = [rows.seqs[row] for row in stopping] + [joining.waiting[i][0] for i in unfed]
        if self.prefix_cache.max_bytes > 0 and rows.mask is not None:
            for row in stopping:
                hold_fed(self.prefix_cache, rows.seqs[row], rows.cache, rows.mask, row)
        rows.keep([row for row in range(len(rows)) if row not in stopping])
        joining.keep_waiting([i for i in range(len(joining.waiting)) if i not in unfed])
        sessions = {request.affinity for request in turns if request.affinity is not None}
        for seq in seqs:
            request = seq.request
            if request.handle.cancelled.is_set() or request.affinity in sessions or not self.line.park(seq.job):
                self._finish(seq, "cancelled")

    def _held(self, seq: Sequence, inputs: ModelInputs) -> HeldPrefix | None:
        """The longest held prefix of the prompt's content key (token ids, images by content); None when
        none is held (or reuse is off, or its images' layout is not understood)."""
        if self.prefix_cache.max_bytes <= 0:
            return None
        seq.prompt_ids = content_key(inputs)
        if seq.prompt_ids is None:
            return None
        return self.prefix_cache.lookup(seq.request.adapter, seq.prompt_ids, seq.request.affinity)

    def _feed_joining(self, batch: Batch) -> None:
        """One pass feeds every joining row its next columns (all it has left once nobody decodes); the rows
        whose prompts ended in it take their first tokens and join the batch. Beside a decoding batch, a step
        that ran a big vision tower (`Joining.tower_apart`) for joining image prompts feeds nothing."""
        rows = self.joining.rows
        self._warm_ups_give_way(batch, [])  # one cancelled since the step began keeps what it was fed
        rows.keep(self._live(rows.seqs))
        self.joining.keep_waiting(self._live(self.joining.waiting_sequences()))
        decoding = bool(batch)
        chunked = self.joining.chunked(decoding)  # beside a decoding batch, or a prompt longer than a chunk
        admitted = self.joining.admit(chunked)
        admitted, embeds = with_embeds(admitted, lambda row: batch.splice(*row) if row[1].extras else None, self._failed)
        if not rows and not admitted:
            return
        phase = "chunks" if decoding else "prefill"
        try:
            if admitted:
                batch.add_joiners(rows, *split(admitted), embeds)
            if self.joining.tower_apart(decoding, admitted):
                return  # the vision tower was this step's pass: the batch decodes before the first chunk
            leaving = batch.feed_joiners(rows, self.joining.columns(chunked))
        except Exception:  # the rows share the pass's cache: a failure ends them all, never the thread
            self._failed(rows.clear())
            return
        self.clock.lap(phase)
        if leaving is not None:
            self._prefill_group(batch, leaving[0], lambda: leaving[1], phase)

    def _prefill_group(self, batch: Batch, seqs: list[Sequence], run: Callable[[], _Prefilled], phase: str = "prefill") -> None:
        """Run a prefill; sample each row's first token (sent to its loop at once); join the batch with the rest."""
        try:
            prefilled = run()
            self.clock.lap(phase)
            logits, cache, mask = prefilled
            mask_logits(logits, [seq.grammar for seq in seqs])
            if not supports_batching(cache) and self.max_batch > 1:
                log.warning("this model's cache cannot be merged; decoding one turn at a time")
                self.line.max_batch = 1
            alive = [i for i, seq in enumerate(seqs) if not self._after_token(seq, batch.choose(seq, logits[i]))]
            self.clock.lap("sampling")
        except Exception:  # a model failure ends these turns, never the thread
            self._failed(seqs)
            return
        self._flush()  # first tokens out now, not after the step's other prefills and its decode step
        hold_finished(self.prefix_cache, seqs, cache, mask, alive)
        if alive:
            if len(alive) < len(seqs):
                cache.batch_select_indices(torch.tensor(alive, device=mask.device))
                mask = mask[alive]
            batch.join([seqs[i] for i in alive], cache, mask)
        self.clock.lap("joins")

    def _failed(self, seqs: list[Sequence]) -> None:
        log.exception("prefill failed")
        for seq in seqs:
            self._finish(seq, "error", "generation failed")

    def _live(self, seqs: list[Sequence]) -> list[int]:
        """Indices of the sequences still wanted; the cancelled ones (all, on abort) are finished."""
        live = []
        for i, seq in enumerate(seqs):
            if seq.request.handle.cancelled.is_set() or self.abort.is_set():
                self._finish(seq, "cancelled")
            else:
                live.append(i)
        return live

    def _step(self, batch: Batch) -> None:
        batch.keep(self._live(batch.sequences))
        self.clock.lap("joins")
        if not batch:
            return
        try:
            logits = batch.decode([seq.token_ids[-1] for seq in batch.sequences])
            self.clock.lap("decode")
            mask_logits(logits, [seq.grammar for seq in batch.sequences])
        except Exception:
            log.exception("decode step failed; ending every turn in the batch")
            for seq in batch.sequences:
                self._finish(seq, "error", "generation failed")
            batch.keep([])
            return
        tokens = batch.choose_all(logits)
        self.clock.lap("sampling")
        keep = [i for i, seq in enumerate(batch.sequences) if not self._after_token(seq, tokens[i])]
        self.clock.lap("streaming")
        hold_finished(self.prefix_cache, batch.sequences, batch.cache, batch.mask, keep)
        self.clock.lap("holding")
        batch.keep(keep)
        self.clock.lap("joins")

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
        job: Job = seq.job
        tail = seq.stream.finish()
        if tail and reason != "error":
            self._emit(job, job.sink.on_token, tail)
        self._emit(job, job.sink.on_done, seq.result(reason, error, job.submitted, job.admitted))

    def _emit(self, job: Job, callback: Callable[..., None], *args: Any) -> None:
        self._relay.emit(job.loop, callback, *args)

    def _flush(self) -> None:
        self._relay.flush()


def _feed_whole(batch: Batch, seqs: list[Sequence], inputs: list[ModelInputs], helds: list[HeldPrefix | None]) -> _Prefilled:
    """Text rows laid out and fed in one pass."""
    return batch.feed_rows(batch.start_rows(seqs, inputs, helds))
