"""Step-level batching: every active turn decodes in one forward pass per step over a shared KV cache."""

from __future__ import annotations

import time
from typing import Any

import torch

from gateway.engine.local import cross, embed_rows, kv, padded, ragged, slots
from gateway.engine.local.compiled_step import CompiledDecode
from gateway.engine.local.encoder_cache import EncoderCache, tower_of
from gateway.engine.local.image_prefix import images_before, suffix_extras
from gateway.engine.local.joining_rows import JoiningRows, Leaving
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.model_inputs import Positions, model_extras, rope_index_owner
from gateway.engine.local.prefix_cache import HeldPrefix
from gateway.engine.local.prompt import ModelInputs
from gateway.engine.local.sampling import choose_token, make_generator
from gateway.engine.local.sequence import Sequence


class Batch:
    """The shared cache of all active sequences, left-padded to a common length, plus their mask."""

    def __init__(self, loaded: LoadedModel, encoder: EncoderCache, max_rows: int = 16, step: CompiledDecode | None = None):
        self.loaded = loaded
        self.compiled = step  # the decode step through torch.compile (engine_compile), or eager
        self.encoder = encoder  # vision-encoder outputs of images seen before
        self._encode = tower_of(loaded.model)  # the vision tower alone over some images (engine/local/encoder_cache.py)
        self.sequences: list[Sequence] = []
        self.cache: Any = None  # a DynamicCache of GrowingLayers (and CrossLayers, see engine/local/cross.py)
        self.mask: torch.Tensor | None = None  # [batch, cached tokens]: 1 for real, 0 for padding
        self._rope = rope_index_owner(loaded.model)
        self._positions = Positions(self._rope, loaded.prompt.family.first_position, loaded.dtype)
        self._cross = cross.cross_layer_indices(loaded.model)  # mllama's cross-attention layers
        self._rows = slots.RowBuffers(max_rows)  # self-attention KV with spare rows (not with cross-attention)
        self.splices = embed_rows.splices(loaded.prompt.family, self._cross)  # image prompts join as embeddings

    def __len__(self) -> int:
        return len(self.sequences)

    @property
    def cross_attention(self) -> bool:
        return bool(self._cross)

    @torch.inference_mode()
    def prefill(self, seq: Sequence, item: ModelInputs) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Run one prompt (with its images) without touching the batch; return its last logits [1, vocab],
        its own cache and its mask [1, length]."""
        device = self.loaded.device
        input_ids = item.input_ids.to(device)
        mask = torch.ones_like(input_ids)
        extras = model_extras(item.extras, device, self.loaded.dtype)
        positions, delta = self._positions(input_ids, mask, extras)
        images = item.images if extras else ()
        out = self.loaded.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=positions,
            cache=kv.new_cache(),  # plain layers even for sliding-window models: the mask keeps the window
            use_cache=True,
            **self.encoder.inputs(images, extras, item.layout, 0, self._encode),
            **self._adapter_args([seq]),
        )
        self.encoder.keep(images, out, item.layout, 0)
        self._start(seq, item, delta)
        cache = padded.cache_of(out)
        if self._cross:
            cross.adopt(cache, self._cross, 1, extras.get("cross_attention_mask"))
        return out.logits[:, -1], cache, mask

    def start_rows(self, seqs: list[Sequence], inputs: list[ModelInputs], helds: list[HeldPrefix | None]) -> ragged.RowsPrefill:
        """Text prompts, each on its held prefix or none, laid out as rows for `feed_rows` (see engine/local/ragged.py),
        nothing fed yet. Cross-attention models pass no held prefixes."""
        prompts = [item.input_ids[0] for item in inputs]
        layout = ragged.lay_out(prompts, [held.length if held else 0 for held in helds], self._positions.text, self.loaded.device)
        for seq, item, delta, cached in zip(seqs, inputs, layout.deltas, layout.cached):
            self._start(seq, item, delta)
            seq.cached_tokens = cached
        return ragged.RowsPrefill(seqs, layout, ragged.held_cache(helds, layout, self.loaded.device))

    @torch.inference_mode()
    def feed_rows(self, rows: ragged.RowsPrefill) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Feed the rows in one forward pass; return what `prefill` does for every row."""
        layout = rows.layout
        out = self.loaded.model(
            input_ids=layout.input_ids,
            attention_mask=layout.mask,
            position_ids=layout.positions,
            cache=rows.cache,
            use_cache=True,
            **self._adapter_args(rows.seqs),
        )
        cache = padded.cache_of(out)
        if self._cross:
            cross.adopt(cache, self._cross, len(rows.seqs), None)
        return out.logits[:, -1], cache, layout.mask

    def add_joiners(
        self,
        rows: JoiningRows,
        seqs: list[Sequence],
        inputs: list[ModelInputs],
        helds: list[HeldPrefix | None],
        embeds: list[torch.Tensor | None] | None = None,
    ) -> None:
        """Prompts join the rows prefilled beside the batch (see engine/local/joining_rows.py), each on its whole
        held prefix or none, nothing fed yet; image prompts as their `embeds` (`splice`)."""
        prompts = [item.input_ids[0].to(self.loaded.device) for item in inputs]
        places = [self._positions.of(item, self.loaded.device) for item in inputs]
        rows.add(seqs, prompts, helds, places, embeds)
        for seq, item, (_, delta), held in zip(seqs, inputs, places, helds):
            self._start(seq, item, delta)
            seq.cached_tokens = held.length if held else 0

    def splice(self, seq: Sequence, item: ModelInputs, held: HeldPrefix | None) -> torch.Tensor:
        """An image prompt's input embeddings after its held prefix (see engine/local/embed_rows.py): only its
        images after the held part go through the vision tower, and of those only the ones not held by the
        encoder cache, which then holds them."""
        start = held.length if held else 0
        extras = self._suffix(item, start, whole=True)[2] | self._adapter_args([seq])
        positions = self._positions.of(item, self.loaded.device)[0][..., start:]
        return embed_rows.spliced_embeds(self.loaded.model, item.input_ids[:, start:].to(self.loaded.device), positions, extras)

    def _suffix(self, item: ModelInputs, start: int, whole: bool = False) -> tuple[int, tuple[str, ...], dict[str, Any]]:
        """The prompt's images from token `start` on (the first one's index, their keys) and what a pass over
        its tokens from there takes besides ids: held encoder outputs in place of pixels where it can."""
        first = images_before(item, start)
        images = item.images[first:] if item.extras else ()
        extras = model_extras(suffix_extras(item, start) if start else item.extras, self.loaded.device, self.loaded.dtype)
        return first, images, self.encoder.inputs(images, extras, item.layout, first, self._encode, whole)

    @torch.inference_mode()
    def feed_joiners(self, rows: JoiningRows, columns: int | None) -> Leaving | None:
        """Feed every joining row its next `columns` (None: all it has left) in one forward pass; return the
        rows whose prompts ended with what `prefill` returns for them, None while none did."""
        chunk = rows.chunk(columns)
        out = self.loaded.model(
            **embed_rows.chunk_inputs(self.loaded.model, chunk.input_ids, chunk.embeds),
            attention_mask=chunk.attention_mask,
            position_ids=chunk.position_ids,
            cache=rows.cache if rows.cache is not None else kv.new_cache(),
            use_cache=True,
            **self._adapter_args(rows.seqs),
        )
        return rows.advance(chunk, padded.cache_of(out), out.logits)

    @torch.inference_mode()
    def prefill_on(self, seq: Sequence, item: ModelInputs, held: HeldPrefix) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Prefill a prompt's tokens after a held prefix on top of that prefix's KV; return what `prefill`
        does for one sequence. Positions are the whole prompt's, sliced, so 3-D ones continue the held
        images' offset exactly; only images after the held part go through the vision tower."""
        device = self.loaded.device
        cache = kv.held_cache(held.layers, held.length, device)
        input_ids = item.input_ids.to(device)
        mask = torch.ones(1, item.prompt_tokens, dtype=torch.long, device=device)
        positions, delta = self._positions.of(item, device)
        first, images, extras = self._suffix(item, held.length)
        out = self.loaded.model(
            input_ids=input_ids[:, held.length :],
            attention_mask=mask,
            position_ids=positions[..., held.length :],
            cache=cache,
            use_cache=True,
            **extras,
            **self._adapter_args([seq]),
        )
        self.encoder.keep(images, out, item.layout, first)
        self._start(seq, item, delta)
        seq.cached_tokens = held.length
        cache = padded.cache_of(out)
        if self._cross:
            cross.adopt(cache, self._cross, 1, None)
        return out.logits[:, -1], cache, mask

    def _start(self, seq: Sequence, item: ModelInputs, delta: int) -> None:
        seq.prompt_tokens = item.prompt_tokens
        seq.position = item.prompt_tokens + delta
        seq.generator = make_generator(seq.request.params, self.loaded.device)
        if seq.request.params.repetition_penalty != 1.0:
            seq.seen = item.input_ids[0].to(self.loaded.device)

    def _adapter_args(self, sequences: list[Sequence]) -> dict[str, Any]:
        """With several adapters loaded, each row names its own (peft routes LoRA per row)."""
        if not self.loaded.adapter_names:
            return {}
        default = self.loaded.default_adapter
        return {"adapter_names": [s.request.adapter or default for s in sequences]}

    def join(self, seqs: list[Sequence], cache: Any, rows: torch.Tensor) -> None:
        """Merge prefilled sequences (their cache and mask rows) into the batch, left-padding whichever
        side is shorter."""
        if self.cache is None or self.mask is None:
            self.cache, self.mask = cache, rows
            self.sequences.extend(seqs)
            return
        width, length = self.mask.shape[1], rows.shape[1]
        if length < width:
            padded.pad_left(cache, width - length)
            rows = torch.cat([rows.new_zeros(rows.shape[0], width - length), rows], dim=1)
        elif length > width:
            padded.pad_left(self.cache, length - width)
            self.mask = torch.cat([self.mask.new_zeros(self.mask.shape[0], length - width), self.mask], dim=1)
        for index, (mine, theirs) in enumerate(zip(self.cache.layers, cache.layers)):
            if isinstance(mine, cross.CrossLayer):
                self.cache.layers[index] = cross.merge(mine, theirs)
            elif self._cross:
                mine.keys = torch.cat([mine.keys, theirs.keys], dim=0)
                mine.values = torch.cat([mine.values, theirs.values], dim=0)
            else:
                self._rows.append(index, mine, theirs)
        self.mask = torch.cat([self.mask, rows], dim=0)
        self.sequences.extend(seqs)

    @torch.inference_mode()
    def decode(self, tokens: list[int]) -> torch.Tensor:
        """One forward pass for every sequence, each fed its last token; returns logits [batch, vocab]."""
        assert self.cache is not None and self.mask is not None
        device = self.loaded.device
        batch = len(self.sequences)
        input_ids = torch.tensor(tokens, device=device).view(batch, 1)
        self.mask = torch.cat([self.mask, torch.ones(batch, 1, dtype=torch.long, device=device)], dim=1)
        positions = torch.tensor([s.position for s in self.sequences], device=device).view(1, batch, 1)
        position_ids = positions.expand(3, batch, 1) if self._rope is not None else positions[0]
        logits = self.compiled.run(self._rows, self.cache, input_ids, position_ids, self.mask) if self.compiled else None
        if logits is None:
            out = self.loaded.model(
                input_ids=input_ids,
                attention_mask=self.mask,
                position_ids=position_ids,
                cache=self.cache,
                use_cache=True,
                **cross.decode_args(self.cache),
                **self._adapter_args(self.sequences),
            )
            self.cache, logits = padded.cache_of(out), out.logits[:, -1]
        for seq in self.sequences:
            seq.position += 1
        return logits

    def keep(self, keep: list[int]) -> None:
        """Drop every sequence not listed (finished or cancelled), freeing its share of the cache."""
        if len(keep) == len(self.sequences):
            return
        if not keep or self.cache is None or self.mask is None:
            self.sequences, self.cache, self.mask = [], None, None
            self._rows.clear()
            return
        moves, order = slots.moves_for(keep)
        if self._cross or not self._rows.owns(self.cache.layers):
            order = keep
            self.cache.batch_select_indices(torch.tensor(keep, device=self.loaded.device))
        else:  # the last rows move into the leavers' places; nobody else's row is copied
            for index, layer in enumerate(self.cache.layers):
                self._rows.keep(index, layer, moves, len(keep))
        self.sequences = [self.sequences[i] for i in order]
        self.mask = self.mask[torch.tensor(order, device=self.mask.device)]
        # Columns that are padding in every remaining row are dead weight: cut them.
        real = self.mask.any(dim=0).nonzero()
        start = int(real[0].item()) if real.numel() else 0
        if start > 0:
            for layer in padded.self_attention(self.cache):
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    def choose(self, seq: Sequence, logits: torch.Tensor) -> int:
        seen = seq.seen if seq.seen is not None else _EMPTY
        return self._record(seq, choose_token(logits, seq.request.params, seen, seq.generator))

    def choose_all(self, logits: torch.Tensor) -> list[int]:
        """Every row's next token: plain greedy rows (no repetition penalty) from one argmax over the batch,
        the same first maximum each row's own argmax picks; the others one by one."""
        plain = [seq.seen is None and seq.request.params.greedy for seq in self.sequences]
        greedy: list[int] = logits.float().argmax(-1).tolist() if any(plain) else []
        return [self._record(seq, greedy[i]) if plain[i] else self.choose(seq, logits[i]) for i, seq in enumerate(self.sequences)]

    def _record(self, seq: Sequence, token: int) -> int:
        if seq.grammar is not None:
            seq.grammar.accept(token)
        if seq.seen is not None:
            seq.seen = torch.cat([seq.seen, torch.tensor([token], device=seq.seen.device)])
        now = time.perf_counter()
        seq.token_ids.append(token)
        seq.first_token_at = seq.first_token_at or now
        seq.last_token_at = now
        return token


_EMPTY = torch.empty(0, dtype=torch.long)
