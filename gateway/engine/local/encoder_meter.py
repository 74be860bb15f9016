"""Passes of the model's vision tower and the generation thread's time in them, counted by hooks on the tower."""

from __future__ import annotations

import time
from typing import Any

from torch import nn

# Where families keep their vision tower, on the model's inner model or the model itself: Qwen-VL and GLM-4V
# `visual`, LLaVA-likes `vision_tower`, Mllama and Idefics `vision_model`.
TOWERS = ("visual", "vision_tower", "vision_model")


def vision_tower(model: nn.Module) -> nn.Module | None:
    """The model's vision tower, or None for a text model (or a layout not named in TOWERS)."""
    for owner in (getattr(model, "model", None), model):
        for name in TOWERS:
            tower = getattr(owner, name, None)
            if isinstance(tower, nn.Module):
                return tower
    return None


class EncoderMeter:
    """Counts the vision tower's forward passes and the seconds they take. Hooks add no work to the model;
    they run on the generation thread, the only one that calls it, and are read elsewhere as a moment's value."""

    def __init__(self, model: nn.Module) -> None:
        self.passes = 0
        self.seconds = 0.0
        self._started = 0.0  # the pass running now began (a pass that raised is overwritten by the next)
        tower = vision_tower(model)
        if tower is not None:
            tower.register_forward_pre_hook(self._enter)
            tower.register_forward_hook(self._leave)

    def _enter(self, *_: Any) -> None:
        self._started = time.perf_counter()

    def _leave(self, *_: Any) -> None:
        self.seconds += time.perf_counter() - self._started
        self.passes += 1
