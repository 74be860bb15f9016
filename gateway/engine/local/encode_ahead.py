"""Live frames encoded on the vision tower while the engine is idle, so the live turn that shows them skips the tower."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import torch

from gateway.engine.contract import ChatImage, ChatMessage
from gateway.engine.local.encoder_cache import EncoderCache, tower_of
from gateway.engine.local.errands import Errand, InUse
from gateway.engine.local.loader import LoadedModel
from gateway.engine.local.model_inputs import model_extras
from gateway.engine.local.waiting import WaitingLine

log = logging.getLogger("gateway.engine")


class EncodeAhead:
    """A frame the next live turn will show, once processed (the engine's `prepare`), is encoded here between two
    steps of an idle engine (no turn in the batch, joining or waiting) and its output held by the encoder cache: the
    turn then takes it from there, so the tower is off its time to first token. An engine with work to do runs none:
    the frames wait (at most `max_pending`; past that a frame is left to its turn), then go through the tower
    together, in one pass, so a running turn never waits for a frame's tower, and a turn arriving meanwhile waits
    for one such pass at most.

    Only where the cache holds outputs and a frame is processed the same alone as beside others (a family's
    `variant`: LLaVA-OneVision tiles a lone picture): else its output would be keyed apart from the turn's."""

    def __init__(self, loaded: LoadedModel, line: WaitingLine, cache: EncoderCache, max_pending: int) -> None:
        self.loaded, self.line, self.cache = loaded, line, cache
        self.max_pending = max_pending
        self._frames: list[ChatImage] = []  # waiting for an idle moment, the oldest first
        self._posted = False  # whether an errand for them is with the generation thread
        self._lock = threading.Lock()
        family = loaded.prompt.family
        self.same_alone = family.variant(1) == family.variant(2)
        self._tower = tower_of(loaded.model)

    def offer(self, images: Sequence[ChatImage]) -> bool:
        """Queue `images` for the tower (event loop); False where they are not: the cache holds no outputs (its budget
        is 0 for such families, and from when an adapter is loaded), a frame is keyed apart alone, or too many wait."""
        if not self.same_alone or not images or self.cache.max_bytes <= 0:
            return False
        with self._lock:
            if len(self._frames) + len(images) > self.max_pending:
                return False
            self._frames.extend(images)
            post, self._posted = not self._posted, True
        if post:
            self.line.post(Errand(self._encode, self._idle))
        return True

    def _idle(self, _: InUse) -> bool:
        """Whether the engine has nothing else to do (generation thread, after a step): no turn active or waiting."""
        return self.line.active == 0 and len(self.line) == 0

    @torch.inference_mode()
    def _encode(self) -> None:
        """The waiting frames' outputs into the cache, in one pass (generation thread): none for those held already.
        A failure only costs their turns the head start (they encode them themselves), and is logged."""
        with self._lock:
            frames, self._frames, self._posted = tuple(dict.fromkeys(self._frames)), [], False
        try:
            built = self.loaded.prompt.build([ChatMessage("user", "", frames)])
            if built.images and built.layout is not None:
                extras = model_extras(built.extras, self.loaded.device, self.loaded.dtype)
                self.cache.inputs(built.images, extras, built.layout, 0, self._tower, whole=True)
        except Exception:
            log.exception("encoding live frames ahead failed")
