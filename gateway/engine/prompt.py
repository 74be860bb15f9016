"""Turning chat messages into model inputs: chat template, image placeholders, pixel tensors."""

from __future__ import annotations

import copy
import re
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine.image_cache import ImageCache, ProcessedImage
from gateway.engine.types import ChatImage, ChatMessage
from gateway.errors import ErrorCode, GatewayError
from gateway.images import decode_pixels

IMAGE_TOKEN = "<|image|>"


@dataclass
class ModelInputs:
    """Everything one prefill needs; `input_ids` has shape [1, prompt_tokens]."""

    input_ids: torch.Tensor
    extras: dict[str, torch.Tensor]  # pixel_values, image_grid_thw, mm_token_type_ids, ...

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class PromptBuilder:
    """Renders messages with the tokenizer's chat template; for GLM-4V, expands one placeholder per
    image into its merged-patch count, built from the image processor and the tokenizer (the combined
    Glm4vProcessor needs torchvision). A builder's tokenizer belongs to one thread: tokenizers keep
    per-call switches (`split_special_tokens`) as shared state, so `for_another_thread` copies it."""

    def __init__(
        self, tokenizer: Any, image_processor: Any | None, image_token_id: int | None, image_cache_bytes: int = 256 << 20
    ) -> None:
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token_id = image_token_id
        self.vision = image_processor is not None and image_token_id is not None
        self.images = ImageCache(self.process_image, image_cache_bytes)
        # Message texts enter the template as unguessable markers, so that no text a client sends can
        # become a special token (a forged role tag, end of text or image placeholder).
        nonce = secrets.token_hex(8)
        self._marker = "<<text-{nonce}-{index}>>".replace("{nonce}", nonce)
        self._marker_pattern = re.compile(re.escape(f"<<text-{nonce}-") + r"(\d+)>>")

    def for_another_thread(self) -> PromptBuilder:
        """The same builder with a tokenizer of its own; the processed-image cache is shared."""
        twin = copy.copy(self)
        twin.tokenizer = copy.deepcopy(self.tokenizer)
        return twin

    def count(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt length in tokens, without touching pixels (image token counts come from sizes)."""
        self._check_images(messages)
        sizes = [(img.height, img.width) for m in messages for img in m.images]
        return len(self._token_ids(messages, [self.image_tokens(h, w) for h, w in sizes]))

    def process_image(self, image: ChatImage) -> ProcessedImage:
        """One image through the image processor; images are processed one by one and concatenated,
        which gives the processor's batched output (patches are per image)."""
        processed = self.image_processor(images=[decode_pixels(image)], return_tensors="pt")  # type: ignore[misc]
        return {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"]}

    def build(self, messages: Sequence[ChatMessage]) -> ModelInputs:
        """Model inputs for a prompt; images come from the processed-image cache (a miss is processed here)."""
        images = [self.images.get(img) for m in messages for img in m.images]
        extras: dict[str, torch.Tensor] = {}
        counts: list[int] = []
        if images:
            grid = torch.cat([i["image_grid_thw"] for i in images])
            merge = int(self.image_processor.merge_size) ** 2  # type: ignore[union-attr]
            counts = [int(g.prod().item()) // merge for g in grid]
            extras["pixel_values"] = torch.cat([i["pixel_values"] for i in images])
            extras["image_grid_thw"] = grid
        ids = torch.tensor([self._token_ids(messages, counts)], dtype=torch.long)
        if images and self.image_token_id is not None:
            extras["mm_token_type_ids"] = torch.eq(ids, self.image_token_id).to(torch.int32)
        return ModelInputs(input_ids=ids, extras=extras)

    def _token_ids(self, messages: Sequence[ChatMessage], counts: list[int]) -> list[int]:
        """The template's own text is tokenized with its special tokens; each message's text with
        special tokens split into plain pieces; each image placeholder repeated `counts[i]` times."""
        pieces = self._marker_pattern.split(self._render(messages))
        ids: list[int] = []
        images = iter(counts)
        for i, piece in enumerate(pieces):
            if i % 2:  # a marker's index: that message's text, never special
                ids += self._tokenize(messages[int(piece)].text, split_special_tokens=True)
            else:
                ids += self._tokenize(self._expand(piece, images))
        if next(images, None) is not None:
            raise GatewayError(ErrorCode.INTERNAL, "the chat template placed fewer images than the messages hold")
        return ids

    def _check_images(self, messages: Sequence[ChatMessage]) -> None:
        if any(m.images for m in messages) and not self.vision:
            raise GatewayError(ErrorCode.IMAGES_UNSUPPORTED, "the served model is text-only; send turns without images")

    def _render(self, messages: Sequence[ChatMessage]) -> str:
        self._check_images(messages)
        chat = [self._template_message(m, self._marker.replace("{index}", str(i))) for i, m in enumerate(messages)]
        return str(self.tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))

    def _template_message(self, message: ChatMessage, text: str) -> dict[str, Any]:
        if not self.vision:
            return {"role": message.role, "content": text}
        parts: list[dict[str, Any]] = [{"type": "image"} for _ in message.images]
        parts.append({"type": "text", "text": text})
        return {"role": message.role, "content": parts}

    def _expand(self, text: str, counts: Iterator[int]) -> str:
        """Each image placeholder the template wrote, repeated once per token that image takes."""
        pieces = text.split(IMAGE_TOKEN)
        out = [pieces[0]]
        for piece in pieces[1:]:
            count = next(counts, None)
            if count is None:
                raise GatewayError(ErrorCode.INTERNAL, "the chat template placed more images than the messages hold")
            out.append(IMAGE_TOKEN * count)
            out.append(piece)
        return "".join(out)

    def image_tokens(self, height: int, width: int) -> int:
        try:
            patches = self.image_processor.get_number_of_image_patches(height, width, {})  # type: ignore[union-attr]
        except ValueError as exc:  # e.g. an aspect ratio beyond what the model accepts
            raise GatewayError(ErrorCode.BAD_IMAGE, f"image of {width}x{height} rejected by the model: {exc}") from None
        return int(patches) // int(self.image_processor.merge_size) ** 2  # type: ignore[union-attr]

    def _tokenize(self, text: str, split_special_tokens: bool = False) -> list[int]:
        # The template already wrote every special token; adding BOS/EOS again would change the prompt.
        if not text:
            return []
        encoded = self.tokenizer(text, add_special_tokens=False, split_special_tokens=split_special_tokens)
        return list(encoded["input_ids"])
