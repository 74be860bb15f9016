"""Step-level batching: every active turn decodes in one forward pass per step over a shared KV cache."""

from __future__ import annotations

import time
from typing import Any

import torch

from gateway.engine.local import cross, kv, padded, ragged, slots
from gateway.engine.local.compiled_step import CompiledDecode
from gateway.engine.local.encoder_cache import EncoderCache
from gateway.engine.local.image_prefix import images_before, rope_inputs, suffix_extras
from gateway.engine.local.joining_rows import JoiningRows, Leaving
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.model_inputs import model_extras, rope_index_owner
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
        self.sequences: list[Sequence] = []
        self.cache: Any = None  # a DynamicCache of GrowingLayers (and CrossLayers, see engine/local/cross.py)
        self.mask: torch.Tensor | None = None  # [batch, cached tokens]: 1 for real, 0 for padding
        self._rope = rope_index_owner(loaded.model)
        self._first = loaded.prompt.family.first_position
        self._cross = cross.cross_layer_indices(loaded.model)  # mllama's cross-attention layers
        self._rows = slots.RowBuffers(max_rows)  # self-attention KV with spare rows (not with cross-attention)

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
        positions, delta = self._prompt_positions(input_ids, mask, extras)
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
        layout = ragged.lay_out(prompts, [held.length if held else 0 for held in helds], self._text_positions, self.loaded.device)
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
        self, rows: JoiningRows, seqs: list[Sequence], inputs: list[ModelInputs], helds: list[HeldPrefix | None]
    ) -> None:
        """Text prompts join the rows prefilled beside the batch (see engine/local/joining_rows.py), each on its
        whole held prefix or none, nothing fed yet."""
        prompts = [item.input_ids[0].to(self.loaded.device) for item in inputs]
        for seq, item, delta, held in zip(seqs, inputs, rows.add(seqs, prompts, helds, self._text_positions), helds):
            self._start(seq, item, delta)
            seq.cached_tokens = held.length if held else 0

    @torch.inference_mode()
    def feed_joiners(self, rows: JoiningRows, columns: int | None) -> Leaving | None:
        """Feed every joining row its next `columns` (None: all it has left) in one forward pass; return the
        rows whose prompts ended with what `prefill` returns for them, None while none did."""
        chunk = rows.chunk(columns)
        out = self.loaded.model(
            input_ids=chunk.input_ids,
            attention_mask=chunk.attention_mask,
            position_ids=chunk.position_ids,
            cache=rows.cache if rows.cache is not None else kv.new_cache(),
            use_cache=True,
            **self._adapter_args(rows.seqs),
        )
        return rows.advance(chunk, padded.cache_of(out), out.logits)

    def _text_positions(self, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self._prompt_positions(ids, torch.ones_like(ids), {})

    @torch.inference_mode()
    def prefill_on(self, seq: Sequence, item: ModelInputs, held: HeldPrefix) -> tuple[torch.Tensor, Any, torch.Tensor]:
        """Prefill a prompt's tokens after a held prefix on top of that prefix's KV; return what `prefill`
        does for one sequence. Positions are the whole prompt's, sliced, so 3-D ones continue the held
        images' offset exactly; only images after the held part go through the vision tower."""
        device, dtype = self.loaded.device, self.loaded.dtype
        cache = kv.new_cache()
        for keys, values in held.layers:  # views, not copies: the forward pass copies them into its buffer
            layer = kv.GrowingLayer()
            layer.lazy_initialization(keys, values)
            layer.keys, layer.values = keys[:, :, : held.length].to(device), values[:, :, : held.length].to(device)
            cache.layers.append(layer)
        input_ids = item.input_ids.to(device)
        mask = torch.ones(1, item.prompt_tokens, dtype=torch.long, device=device)
        positions, delta = self._prompt_positions(input_ids, mask, model_extras(rope_inputs(item.extras), device, dtype))
        first = images_before(item, held.length)
        images = item.images[first:] if item.extras else ()
        out = self.loaded.model(
            input_ids=input_ids[:, held.length :],
            attention_mask=mask,
            position_ids=positions[..., held.length :],
            cache=cache,
            use_cache=True,
            **self.encoder.inputs(
                images, model_extras(suffix_extras(item, held.length), device, dtype), item.layout, first, self._encode
            ),
            **self._adapter_args([seq]),
        )
        self.encoder.keep(images, out, item.layout, first)
        self._start(seq, item, delta)
        seq.cached_tokens = held.length
        cache = padded.cache_of(out)
        if self._cross:
            cross.adopt(cache, self._cross, 1, None)
        return out.logits[:, -1], cache, mask

    def _encode(self, tensors: dict[str, torch.Tensor]) -> Any:
        """The vision tower alone over some images (see engine/local/encoder_cache.py)."""
        return self.loaded.model.get_image_features(**tensors, return_dict=True)

    def _start(self, seq: Sequence, item: ModelInputs, delta: int) -> None:
        seq.prompt_tokens = item.prompt_tokens
        seq.position = item.prompt_tokens + delta
        seq.generator = make_generator(seq.request.params, self.loaded.device)
        if seq.request.params.repetition_penalty != 1.0:
            seq.seen = item.input_ids[0].to(self.loaded.device)

    def _prompt_positions(
        self, input_ids: torch.Tensor, mask: torch.Tensor, extras: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, int]:
        """Text positions count real tokens only (left padding sits at 0); multimodal models get
        their 3-D positions and the offset images add to every later position."""
        text = (mask.cumsum(-1) - 1).clamp(min=0) + self._first
        if self._rope is None:
            return text, self._first
        if "image_grid_thw" not in extras and "video_grid_thw" not in extras:
            return text.unsqueeze(0).expand(3, -1, -1), 0
        grids = rope_inputs(extras)
        positions, deltas = self._rope.get_rope_index(input_ids, attention_mask=torch.ones_like(input_ids), **grids)
        return positions, int(deltas.view(-1)[0].item())

    def _cross_args(self) -> dict[str, Any]:
        """Rows with images attend to them at every step, as their prompt's last token did."""
        layers = [layer for layer in self.cache.layers if isinstance(layer, cross.CrossLayer)]
        mask = layers[0].decode_mask() if layers else None
        return {"cross_attention_mask": mask} if mask is not None else {}

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
                **self._cross_args(),
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
