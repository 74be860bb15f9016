"""Exact prompt lengths: the upstream's own /tokenize (vLLM), or a local tokenizer directory."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from gateway.engine.contract import ChatMessage
from gateway.engine.upstream import wire
from gateway.engine.upstream.client import ReplicaClient, UpstreamError
from gateway.engine.upstream.replicas import Replica


class TokenCounter(Protocol):
    name: str  # "upstream" or "tokenizer", for `ready` and the logs

    async def count(self, messages: Sequence[ChatMessage], affinity: str | None) -> int: ...

    def close(self) -> None: ...


class UpstreamCounter:
    """vLLM's /tokenize with the same messages a turn would send: its template, its image processor."""

    name = "upstream"

    def __init__(
        self, model: str, pick: Callable[[str | None, Sequence[Replica]], Replica], client_for: Callable[[Replica], ReplicaClient]
    ):
        self.model = model
        self.pick = pick
        self.client_for = client_for

    async def count(self, messages: Sequence[ChatMessage], affinity: str | None) -> int:
        """On the session's replica (its tokenizer is every replica's); a failed one is skipped once."""
        tried: list[Replica] = []
        while True:
            replica = self.pick(affinity, tried)
            try:
                answer = await self.client_for(replica).post_json("/tokenize", wire.tokenize_body(self.model, messages))
                return int(answer["count"])
            except UpstreamError as exc:
                if not exc.retryable or tried:
                    raise
                tried.append(replica)

    def close(self) -> None:
        pass


class TokenizerCounter:
    """A local tokenizer (and image processor, when the directory has one) on a thread of its own: one
    owner, so the tokenizer is never used from two threads."""

    name = "tokenizer"

    def __init__(self, directory: str) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="gateway-tokenizer")
        self._tokenizer, self._processor = self._pool.submit(_load, directory).result()

    async def count(self, messages: Sequence[ChatMessage], affinity: str | None) -> int:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._count, messages)

    def _count(self, messages: Sequence[ChatMessage]) -> int:
        conversation = [wire.message_body(m) for m in messages]
        for message in conversation:
            if isinstance(message["content"], list):
                message["content"] = [{"type": "image"} if p["type"] == "image_url" else p for p in message["content"]]
        prompt = self._tokenizer.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        images = [_pil(image.data) for m in messages for image in m.images]
        if images and self._processor is not None:
            return len(self._processor(text=prompt, images=images)["input_ids"][0])
        return len(self._tokenizer(prompt, add_special_tokens=False)["input_ids"])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _load(directory: str) -> tuple[Any, Any]:
    from transformers import AutoProcessor, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(directory)
    try:
        processor = AutoProcessor.from_pretrained(directory)  # type: ignore[no-untyped-call]
    except (OSError, ValueError, ImportError):
        processor = None
    return tokenizer, None if processor is tokenizer else processor


def _pil(data: bytes) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB")
