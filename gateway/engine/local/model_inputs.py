"""What a prefill gives the model besides ids: extras on its device and dtype, and who computes 3-D positions."""

from __future__ import annotations

from typing import Any

import torch


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
