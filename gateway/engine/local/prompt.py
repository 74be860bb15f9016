"""Turning chat messages into model inputs through the model's own chat template and processor."""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from gateway.engine.contract import ChatImage, ChatMessage, ChatVideo
from gateway.engine.local.families import GENERIC, Family
from gateway.engine.local.image_cache import ImageCache, ProcessedImage
from gateway.engine.local.image_layout import ImageLayout, image_spans
from gateway.engine.local.video_prompt import PreparedVideos, VideoProcessing, renders_clips, without_clips
from gateway.errors import ErrorCode, GatewayError
from gateway.media.images import decode_pixels
from gateway.tools.fallback import needs_fallback, plain_messages
from gateway.tools.formats import arguments_object
from gateway.tools.registry import renders_tools

Tools = Sequence[dict[str, Any]]

_MARKED = re.compile("\U000f0000(.*?)\U000f0001|[\U000f0000\U000f0001]", re.DOTALL)  # transformers' markers


def _mark(value: Any, control: re.Pattern[str]) -> Any:
    """Client text marked as transformers' `mark_control_tokens` marks it, JSON object keys included: a
    template that writes `tools | tojson`, or loops over a schema's properties, prints parameter names too."""
    from transformers.utils.chat_template_utils import mark_control_tokens

    def marked(item: Any) -> Any:
        if isinstance(item, dict):
            return {marked(k): marked(v) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            return [marked(v) for v in item]
        return mark_control_tokens(item, control)

    return marked(value)


def _break(match: re.Match[str]) -> str:
    token = match.group(1) or ""
    return token[:1] + "\u2060" + token[1:]


_NOT_PREFILL = ("input_ids", "attention_mask", "labels")  # labels: PaliGemma's processor returns them for training
_STAND_IN = Image.new("RGB", (1, 1))  # what the processor is handed in place of an image already processed


@dataclass
class ModelInputs:
    """Everything one prefill needs; `input_ids` has shape [1, prompt_tokens]."""

    input_ids: torch.Tensor
    extras: dict[str, torch.Tensor]  # pixel_values, image_grid_thw, mm_token_type_ids, ...
    # Each image's sha256 (and how it was processed, where the family varies that), in prompt order: held
    # KV is keyed by them.
    images: tuple[str, ...] = ()
    layout: ImageLayout | None = None  # None where the images cannot come from held KV

    @property
    def prompt_tokens(self) -> int:
        return int(self.input_ids.shape[1])


class PreparedImages:
    """Stands in for a processor's image processor: hands back the features of images processed ahead
    (one by one, through the cache), so the processor only expands placeholders and tokenizes."""

    def __init__(self, real: Any) -> None:
        self.real = real
        self.features: Any = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        assert self.features is not None, "PreparedImages called without prepared features"
        return self.features

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class PromptBuilder:
    """Renders messages with the chat template and tokenizes the whole prompt in one go, as the model's
    own processor does. Control tokens (special tokens, placeholders) inside message texts are marked
    first (transformers' `sanitize_control_tokens`), so they are encoded as plain text. A builder's
    tokenizer and processor belong to one thread; `for_another_thread` copies them."""

    def __init__(
        self,
        tokenizer: Any,
        processor: Any | None = None,
        family: Family = GENERIC,
        chat_template: str | None = None,
        image_cache_bytes: int = 256 << 20,
        video: VideoProcessing | None = None,
    ) -> None:
        from transformers.utils.chat_template_utils import _get_control_token_patterns

        self.tokenizer = tokenizer
        self.processor: Any = processor  # None for a text-only model
        self.family = family
        self.template = chat_template or getattr(processor, "chat_template", None) or tokenizer.chat_template
        self.vision = processor is not None and getattr(processor, "image_token", None) is not None
        self.images = ImageCache(self.process_image, image_cache_bytes)
        # How clips are laid out natively (None: this model reads no video; a front end sends frames as images).
        self.video = video if self.vision and renders_clips(self.template, tokenizer, processor) else None
        # Laid-out clips, shared by the builders of every thread: counting lays a clip out ahead of the
        # generation thread, which then finds it here.
        self.clips: ImageCache[ChatVideo] = ImageCache(self._lay_out, image_cache_bytes)
        control = set(tokenizer._get_control_tokens(self.template))
        control.update(t for t in getattr(processor, "all_special_multimodal_tokens", []) if t in tokenizer.get_added_vocab())
        self._control = _get_control_token_patterns(tuple(sorted(control)))[0]
        self._image_processor: Any = None
        self._images_kwargs: dict[str, Any] = {}
        # The tokens the processor types as image tokens (placeholders, and on some the breaks between tiles).
        self._image_ids = frozenset(i for i in getattr(processor, "image_token_ids", None) or () if i is not None)
        if self.vision and processor is not None:
            self._image_processor = processor.image_processor
            merged = processor._merge_kwargs(tokenizer_init_kwargs=tokenizer.init_kwargs, return_tensors="pt")
            self._images_kwargs = {**merged["images_kwargs"], **family.image_options(processor)}
            self._adopt_processor(processor)

    def _adopt_processor(self, processor: Any) -> None:
        self.processor = copy.copy(processor)
        self.processor.tokenizer = self.tokenizer
        self._prepared = PreparedImages(self._image_processor)
        self.processor.image_processor = self._prepared
        self._videos = PreparedVideos(self.video, self.processor.video_token_id) if self.video is not None else None
        if self._videos is not None:
            self.processor.video_processor = self._videos

    def for_another_thread(self) -> PromptBuilder:
        """The same builder with a tokenizer (and processor) of its own; the processed-image cache is shared."""
        twin = copy.copy(self)
        twin.tokenizer = copy.deepcopy(self.tokenizer)
        if self.vision:
            twin._adopt_processor(self.processor)
        return twin

    def count(self, messages: Sequence[ChatMessage], tools: Tools = ()) -> int:
        """Prompt length in tokens; without touching pixels where the family counts image tokens from sizes."""
        messages, tools = self._with_tools(messages, tools)
        images = self._images_of(messages)
        if not images and not self._videos_of(messages):
            return len(self._encode(self._render(messages, tools)))
        if not self.family.tokens_from_size or self._videos_of(messages):
            return self.build(messages, tools).prompt_tokens
        replacements = [self.processor.image_token * self.image_tokens(i.height, i.width) for i in images]
        text, _ = self.processor.get_text_with_replacements([self._render(messages, tools)], replacements)
        return len(self._encode(text[0]))

    @property
    def image_token_id(self) -> int | None:
        """The placeholder token each image's tokens repeat, for models that have one."""
        return getattr(self.processor, "image_token_id", None) if self.vision else None

    def image_tokens(self, height: int, width: int) -> int:
        """How many placeholder tokens an image of this size takes (structural tokens aside)."""
        try:
            counts = self.processor._get_num_multimodal_tokens(image_sizes=[[height, width]]).num_image_tokens
        except ValueError as exc:  # e.g. an aspect ratio beyond what the model accepts
            raise GatewayError(ErrorCode.BAD_IMAGE, f"image of {width}x{height} rejected by the model: {exc}") from None
        return int(counts[0])

    def process_image(self, image: ChatImage) -> ProcessedImage:
        """One image through the image processor, with the options the processor would pass it."""
        pixels = decode_pixels(image)
        try:
            processed = self.family.process(self._image_processor, pixels, self._images_kwargs)
        except ValueError as exc:
            raise GatewayError(
                ErrorCode.BAD_IMAGE, f"image of {image.width}x{image.height} rejected by the model: {exc}"
            ) from None
        return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in processed.items()}

    def build(self, messages: Sequence[ChatMessage], tools: Tools = ()) -> ModelInputs:
        """Model inputs for a prompt; images come from the processed-image cache (a miss is processed here)."""
        messages, tools = self._with_tools(messages, tools)
        images, videos = self._images_of(messages), self._videos_of(messages)
        rendered = self._render(messages, tools)
        if not images and not videos:
            return ModelInputs(torch.tensor([self._encode(rendered)], dtype=torch.long), {})
        processed = [self.images.get(image) for image in images]
        self._prepared.features = self.family.combine(processed) if processed else None
        stand_ins = self._videos.prepare(videos, [self.clips.get(v) for v in videos]) if self._videos and videos else []
        try:
            out = self._process(rendered, len(images), stand_ins)
        except ValueError as exc:
            raise GatewayError(ErrorCode.INTERNAL, f"the processor refused the prompt: {exc}") from None
        finally:
            self._prepared.features = None
            if self._videos is not None:
                self._videos.features = None
        extras = {k: v for k, v in out.items() if isinstance(v, torch.Tensor) and k not in _NOT_PREFILL}
        input_ids = out["input_ids"].to(torch.long)
        keys = tuple(image.sha256 + self.family.variant(len(images)) for image in images)
        layout = self._layout(input_ids, extras, processed, out.get("text_replacement_offsets"))
        if videos and layout is not None and self._videos is not None:
            layout = self._videos.placed(layout, input_ids[0].tolist(), extras, videos)
        return ModelInputs(input_ids, extras, keys, layout)

    def _layout(
        self, input_ids: torch.Tensor, extras: dict[str, torch.Tensor], processed: list[ProcessedImage], offsets: Any
    ) -> ImageLayout | None:
        """Where each image sits: in the prompt, its image-typed tokens as counted in the processor's
        replacement of its placeholder; in the tensors, its rows as in its own outputs. None where the
        family cannot reuse images or the counts disagree with the prompt's."""
        if not self.family.image_kv or not offsets:
            return None
        counts = [self._image_tokens_in(o["replacement"]) for o in offsets[0] if o["type"] == "image"]
        spans = image_spans(without_clips(input_ids[0].tolist(), extras), self._image_ids, counts)
        stacked = {k: v for k, v in self.family.stacked(processed).items() if k in extras} if processed else {}
        if spans is None or len(spans) != len(processed):
            return None
        if any(sum(rows.sizes) != extras[k].shape[rows.axis] for k, rows in stacked.items()):
            return None
        not_sliced = {*stacked, *self.family.positional}
        per_token = tuple(k for k, v in extras.items() if v.shape == input_ids.shape and k not in not_sliced)
        return ImageLayout(spans, stacked, per_token, tuple(counts))

    def _image_tokens_in(self, replacement: str) -> int:
        # Image-typed tokens are special tokens, so they encode alike alone and inside the prompt.
        return sum(token in self._image_ids for token in self.tokenizer(replacement, add_special_tokens=False)["input_ids"])

    def _process(self, rendered: str, images: int, videos: list[Any]) -> Any:
        """The processor on the rendered prompt. Text holding no control token is tokenized as is (the
        same ids as sanitizing, and processors that map characters to tokens, like Idefics3's, need the
        plain path); marked control tokens are encoded as text, or where the processor cannot sanitize,
        broken with a word joiner so they cannot match."""
        kwargs: dict[str, Any] = {"add_special_tokens": False, "return_tensors": "pt"}
        kwargs |= {"images": [_STAND_IN] * images} if images else {}
        kwargs |= {"videos": videos} if videos else {}
        if self.family.image_kv:  # each image's replacement text: where its tokens are (see `_layout`)
            kwargs["return_text_replacement_offsets"] = True
        if not _MARKED.search(rendered):
            return self.processor(text=[rendered], **kwargs)
        try:
            return self.processor(text=[rendered], sanitize_control_tokens=True, **kwargs)
        except ValueError:
            return self.processor(text=[_MARKED.sub(_break, rendered)], **kwargs)

    def _images_of(self, messages: Sequence[ChatMessage]) -> list[ChatImage]:
        images = [image for m in messages for image in m.images]
        if images and not self.vision:
            raise GatewayError(ErrorCode.IMAGES_UNSUPPORTED, "the served model is text-only; send turns without images")
        return images

    def _lay_out(self, video: ChatVideo) -> dict[str, torch.Tensor]:
        assert self._videos is not None, "clips are laid out only where the family reads video"
        return self._videos.lay_out(video)

    def _videos_of(self, messages: Sequence[ChatMessage]) -> list[ChatVideo]:
        videos = [video for m in messages for video in m.videos]
        if videos and self.video is None:
            raise GatewayError(ErrorCode.BAD_VIDEO, "the served model does not read videos natively; send their frames")
        return videos

    def _with_tools(self, messages: Sequence[ChatMessage], tools: Tools) -> tuple[Sequence[ChatMessage], Tools]:
        """A template that does not render tools gets them (and calls, results) as plain text instead."""
        if renders_tools(self.template) or not needs_fallback(messages, tools):
            return messages, tools
        return plain_messages(messages, tools), ()

    def _render(self, messages: Sequence[ChatMessage], tools: Tools = ()) -> str:
        chat = _mark([self._template_message(m) for m in messages], self._control)
        # Tool definitions and call arguments are client text too: their control tokens are marked the same way.
        extra = {"tools": _mark(list(tools), self._control)} if tools else {}
        return str(
            self.tokenizer.apply_chat_template(
                chat, chat_template=self.template, tokenize=False, add_generation_prompt=True, **extra
            )
        )

    def _template_message(self, message: ChatMessage) -> dict[str, Any]:
        rendered: dict[str, Any] = {"role": message.role, "content": message.text}
        if self.vision and message.role != "tool":
            parts: list[dict[str, Any]] = [{"type": "image"} for _ in message.images]
            parts += [{"type": "video"} for _ in message.videos]
            rendered["content"] = [*parts, {"type": "text", "text": message.text}]
        if message.tool_calls:
            rendered["tool_calls"] = [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": arguments_object(c.arguments)}}
                for c in message.tool_calls
            ]
        if message.tool_call_id is not None:
            rendered["tool_call_id"] = message.tool_call_id
        return rendered

    def _encode(self, text: str) -> list[int]:
        # The template wrote every special token; adding BOS/EOS again would change the prompt.
        encoded = self.tokenizer(text, add_special_tokens=False, sanitize_control_tokens=True)
        return list(encoded["input_ids"])
