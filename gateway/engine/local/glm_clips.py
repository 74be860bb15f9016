"""GLM-4.1V's model told a clip's tokens from an image's, so one prompt may hold both (transformers 5.25 cannot)."""

from __future__ import annotations

from typing import Any

import torch

# The classes whose `get_placeholder_mask` takes every image token for an image and for a video alike.
_GLM_MODELS = ("Glm4vModel", "Glm4vMoeModel")


def separate_clip_tokens(model: Any) -> None:
    """Each GLM-4V model inside `model` placing image features only outside clips and video features only inside:
    its own mask takes all of a prompt's image tokens for both (a clip's frames are image tokens), so a prompt
    with a photo and a clip fails its feature count. Where a prompt holds only one of the two, both masks are
    the model's own."""
    for module in model.modules():
        if type(module).__name__ in _GLM_MODELS:
            module.get_placeholder_mask = clip_aware_mask(module.config, module.get_placeholder_mask)


def inside_clips(input_ids: torch.Tensor, start_id: int, end_id: int) -> torch.Tensor:
    """For each token, whether it lies between a clip's start and end. A suffix after held KV may begin inside a
    clip (held KV ends before a clip's first frame token, not before its start): its first marker is then an end."""
    starts = torch.cumsum(input_ids == start_id, dim=-1)
    ends = torch.cumsum(input_ids == end_id, dim=-1)
    markers = (input_ids == start_id) | (input_ids == end_id)
    first = torch.argmax(markers.int(), dim=-1, keepdim=True)
    begun_inside = (markers.any(dim=-1, keepdim=True) & (input_ids.gather(-1, first) == end_id)).int()
    inside: torch.Tensor = starts - ends + begun_inside > 0
    return inside


def clip_aware_mask(config: Any, own: Any) -> Any:
    image_id, start_id, end_id = config.image_token_id, config.video_start_token_id, config.video_end_token_id

    def get_placeholder_mask(
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        image_features: torch.Tensor | None = None,
        video_features: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if input_ids is None:  # embeddings alone say nothing of where clips are; the gateway always passes ids
            return own(input_ids, inputs_embeds, image_features=image_features, video_features=video_features)
        placeholders = input_ids == image_id
        inside = inside_clips(input_ids, start_id, end_id)
        image_mask, video_mask = placeholders & ~inside, placeholders & inside
        for mask, features, kind in ((image_mask, image_features, "image"), (video_mask, video_features, "video")):
            if features is not None and int(mask.sum()) * inputs_embeds.shape[-1] != features.numel():
                raise ValueError(f"{kind} features and {kind} tokens do not match: {int(mask.sum())} tokens")
        return image_mask.unsqueeze(-1).to(inputs_embeds.device), video_mask.unsqueeze(-1).to(inputs_embeds.device)

    return get_placeholder_mask
