"""Model families: what differs between architectures, chosen from `config.model_type`.

Everything a processor already knows (placeholders, tokens per image, structural tokens, the tensors
prefill needs) comes from the model's own transformers processor; a family only says how one image is
processed, how one prompt's separately processed images combine (and split again, for a prompt's images
after held KV), and whether an image's tokens follow from its size alone."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from PIL import Image

from gateway.engine.local.image_layout import Stacked

EncoderRows = Literal["per_image", "pixel_rows", "token_rows"]
VideoLayout = Literal["qwen2_vl", "qwen3_vl", "glm4v", "llava_onevision"]


@dataclass(frozen=True)
class Family:
    name: str
    # The axis along which one prompt's images stack in the processor's outputs: 0 for most, 1 where
    # outputs are [prompts, images, ...] (Idefics3, SmolVLM, mllama). Other axes are zero-padded to the
    # largest image, as the processors pad a batch of images.
    image_axis: int = 0
    # True where each image's replacement is the placeholder repeated, with a count the processor can
    # give from the image's size (`_get_num_multimodal_tokens`): prompts are then counted without pixels.
    tokens_from_size: bool = False
    # The position of a prompt's first token: PaliGemma counts from 1.
    first_position: int = 0
    # False where a prompt's held images cannot serve a later prompt (see FAMILIES_B): its image prompts
    # are prefilled in full.
    image_kv: bool = True
    # Per-token tensors the model reads by absolute position (Gemma 3's bidirectional image mask, as
    # transformers' own `prepare_inputs_for_generation` says): a suffix after held KV gets them whole.
    positional: tuple[str, ...] = ()
    # How the model's vision-encoder output holds a pass's images (see engine/local/encoder_cache.py): one item
    # per image, or one tensor of the images' pixel rows, or one item per prompt of the images' tokens.
    encoder_rows: EncoderRows = "per_image"
    # How a video is laid out where the gateway lays it out as the model's own video processor does (see
    # engine/local/video_layout.py): "qwen2_vl", temporal patches of frames behind one `<|video_pad|>` per
    # merged patch; "qwen3_vl", the same with Qwen3-VL's sizes and a budget for the whole clip (its
    # processor writes each patch's time); "glm4v", Qwen3-VL's sizing with 14-pixel patches, each temporal patch an
    # image's tokens followed by its whole seconds, inside video start and end; "llava_onevision" (see
    # engine/local/video_resized.py), frames resized to one size, their pooled features behind `<video>` tokens and
    # a newline. None: a video is read as its frames, images named with their times.
    video: VideoLayout | None = None
    # True where the images' features replace their placeholders' input embeddings and the text model's
    # attention is causal: image prompts then join the chunked rows as embeddings (engine/local/embed_rows.py).
    spliced: bool = False

    def process(self, image_processor: Any, pixels: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        """One image's outputs from the image processor, as for a prompt holding only that image."""
        return dict(image_processor(images=[[pixels]] if self.image_axis == 1 else [pixels], **kwargs))

    def variant(self, images: int) -> str:
        """How an image is processed in a prompt of `images` images, where that varies ("" for most): held
        KV of a picture processed one way never serves a prompt that processes it another."""
        return ""

    def used(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each image's outputs as a prompt of these images uses them: for most, as processed alone."""
        return outputs

    def stacked(self, outputs: list[dict[str, Any]]) -> dict[str, Stacked]:
        """For each tensor `combine` stacks, the axis it stacks along and each image's extent on it."""
        used = self.used(outputs)
        return {
            key: Stacked(self._axis(value), tuple(int(o[key].shape[self._axis(value)]) for o in used))
            for key, value in used[0].items()
            if isinstance(value, torch.Tensor)
        }

    def combine(self, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        """One prompt's processor outputs from each image's own outputs, as if processed together."""
        combined: dict[str, Any] = {}
        outputs = self.used(outputs)
        for key in outputs[0]:
            values = [o[key] for o in outputs]
            if isinstance(values[0], torch.Tensor):
                combined[key] = _stack(values, self.image_axis)
            elif isinstance(values[0], list) and self.image_axis == 1:
                combined[key] = [[item for v in values for item in v[0]]]
            elif isinstance(values[0], list):
                combined[key] = [item for v in values for item in v]
            else:
                combined[key] = values[0]
        return combined

    def image_options(self, processor: Any) -> dict[str, Any]:
        """Options the processor adds when it calls its image processor itself (in `_process_images`)."""
        return {}

    def _axis(self, tensor: torch.Tensor) -> int:
        return self.image_axis if tensor.dim() > self.image_axis else 0


def _stack(tensors: list[torch.Tensor], axis: int) -> torch.Tensor:
    if tensors[0].dim() <= axis:
        return torch.cat(tensors)
    shape = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    padded = []
    for t in tensors:
        pad: list[int] = []
        for d in reversed(range(t.dim())):
            pad += [0, 0 if d == axis else shape[d] - t.shape[d]]
        padded.append(torch.nn.functional.pad(t, pad) if any(pad) else t)
    return torch.cat(padded, dim=axis)


# ---- Mistral 3 (Pixtral), PaliGemma, Llama 3.2 Vision ---------------------------------------------------


@dataclass(frozen=True)
class Pixtral(Family):
    """Pixtral's processor resizes images to whole merged patches (patch size times spatial merge)."""

    def image_options(self, processor: Any) -> dict[str, Any]:
        return {"patch_size": processor.patch_size * processor.spatial_merge_size}


FAMILIES_B: dict[str, Family] = {
    "mistral3": Pixtral("mistral3"),
    "pixtral": Pixtral("pixtral"),
    # Prefix-LM: every prompt token attends to every other, so a prompt's KV changes with what follows it.
    "paligemma": Family("paligemma", first_position=1, image_kv=False),
    # Images reach the text through cross-attention, not the self-attention KV that is held.
    "mllama": Family("mllama", image_axis=1, image_kv=False),
}

# ----------------------------------------------------------------------------------------------------------

# An architecture not checked here keeps its image prompts out of held KV: how its images attend is unknown.
GENERIC = Family("generic", image_kv=False)
_SIZED = ("glm4v", "glm4v_moe", "glm46v", "qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe", "llava")
_BY_IMAGE_AXIS_1 = ("idefics3", "smolvlm")
_TILED = ("aya_vision", "internvl")

FAMILIES: dict[str, Family] = {
    **{name: Family(name, tokens_from_size=True) for name in _SIZED},
    **{name: Family(name, image_axis=1, encoder_rows="token_rows") for name in _BY_IMAGE_AXIS_1},
    "llava_next": Family("llava_next"),
    # Qwen2.5-VL's processor adds each temporal patch's seconds (`second_per_grid_ts`) from the clip's rate.
    **{name: Family(name, tokens_from_size=True, video="qwen2_vl") for name in ("qwen2_vl", "qwen2_5_vl")},
    **{name: Family(name, tokens_from_size=True, video="qwen3_vl") for name in ("qwen3_vl", "qwen3_vl_moe")},
    # GLM-4.5V (glm4v_moe) shares GLM-4.1V's processor and its video processor.
    **{name: Family(name, tokens_from_size=True, video="glm4v") for name in ("glm4v", "glm4v_moe")},
    **{name: Family(name, encoder_rows="pixel_rows") for name in _TILED},
    "gemma3": Family("gemma3", positional=("token_type_ids",), encoder_rows="pixel_rows"),
    **FAMILIES_B,
}


def family_for(model_type: str) -> Family:
    return FAMILIES.get(model_type, GENERIC)


# ---- LLaVA-OneVision -------------------------------------------------------------------------------------

_SEVERAL = "several:"  # the prefix of an image's outputs as processed for a prompt of several images
_COMPANION = Image.new("RGB", (8, 8))  # not 1x1: a 1x1x3 array reads as channels-first


@dataclass(frozen=True)
class LoneImageTiles(Family):
    """LLaVA-OneVision tiles an image (anyres) only where it is its prompt's one image; among several, each
    image is one square patch. Each image is processed both ways, and `combine` picks by count."""

    def process(self, image_processor: Any, pixels: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        alone = super().process(image_processor, pixels, kwargs)
        # The image processor tells "several" from one prompt's list: a small companion, then dropped.
        several = image_processor(images=[[pixels, _COMPANION]], **kwargs)
        return alone | {_SEVERAL + k: v[:1] for k, v in several.items() if k != "batch_num_images"}

    def variant(self, images: int) -> str:
        return ":alone" if images == 1 else ":several"

    def used(self, outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        several = len(outputs) > 1
        return [
            {k.removeprefix(_SEVERAL): v for k, v in o.items() if k.startswith(_SEVERAL) == several and k != "batch_num_images"}
            for o in outputs
        ]

    def combine(self, outputs: list[dict[str, Any]]) -> dict[str, Any]:
        # The prompt's image count: the model makes it one "tile it" flag per image (only a lone image is
        # tiled) and pairs the flags with the images it is given, so a suffix's images, given the whole
        # prompt's count, stay processed as the prompt processed them.
        return super().combine(outputs) | {"batch_num_images": torch.tensor([len(outputs)])}


FAMILIES["llava_onevision"] = LoneImageTiles("llava_onevision", video="llava_onevision")

# Not these: Gemma 3 and PaliGemma attend bidirectionally within an image (a chunk must not cut one), mllama
# reads images through cross-attention, Qwen3-VL adds image features inside its first layers too (deepstack),
# and an architecture not checked here is not known to splice.
SPLICED: tuple[str, ...] = ("aya_vision", "glm4v", "glm4v_moe", "idefics3", "internvl", "llava", "llava_next")
SPLICED += ("llava_onevision", "mistral3", "qwen2_vl", "qwen2_5_vl", "smolvlm")
for _name in SPLICED:
    FAMILIES[_name] = replace(FAMILIES[_name], spliced=True)
