"""What a prefill gives the model besides ids: extras on its device and dtype, and its positions (3-D ones too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine.local.image_prefix import rope_inputs
from gateway.engine.local.prompt import ModelInputs


def rope_index_owner(model: Any) -> Any | None:
    """The submodule computing multimodal (3-D) rotary positions, for models that have one."""
    for module in model.modules():
        if hasattr(module, "get_rope_index"):
            return module
    return None


def model_extras(extras: dict[str, torch.Tensor], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Prefill tensors on the model's device; floating ones (pixels) in the model's dtype, but for a video's
    seconds per temporal patch, which time its rotary positions (bfloat16 would round them)."""
    return {
        k: v.to(device, dtype) if v.is_floating_point() and k != "second_per_grid_ts" else v.to(device) for k, v in extras.items()
    }


@dataclass(frozen=True)
class Positions:
    """A model's prompt positions. Text positions count real tokens only (left padding sits at 0), from the
    family's `first`; multimodal models (`rope`, see `rope_index_owner`) get their 3-D positions and the
    offset images add to every later position."""

    rope: Any | None
    first: int
    dtype: torch.dtype

    def __call__(self, input_ids: torch.Tensor, mask: torch.Tensor, extras: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        text = (mask.cumsum(-1) - 1).clamp(min=0) + self.first
        if self.rope is None:
            return text, self.first
        if "image_grid_thw" not in extras and "video_grid_thw" not in extras:
            return text.unsqueeze(0).expand(3, -1, -1), 0
        positions, deltas = self.rope.get_rope_index(input_ids, attention_mask=torch.ones_like(input_ids), **rope_inputs(extras))
        return positions, int(deltas.view(-1)[0].item())

    def text(self, ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        return self(ids, torch.ones_like(ids), {})

    def of(self, item: ModelInputs, device: torch.device) -> tuple[torch.Tensor, int]:
        """A whole prompt's positions (3-D ones from its images' grids) and their offset."""
        ids = item.input_ids.to(device)
        return self(ids, torch.ones_like(ids), model_extras(rope_inputs(item.extras), device, self.dtype))
