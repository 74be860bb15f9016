"""Pure: the OpenAI chat API as the upstream speaks it: request bodies in, stream events and errors out."""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Sequence
from email.utils import parsedate_to_datetime
from typing import Any

from gateway.engine.contract import ChatImage, ChatMessage, ChatVideo, FinishReason, SamplingParams

_CONTEXT_WORDS = ("maximum context length", "context length", "max_model_len", "too long", "maximum model length")


def image_part(image: ChatImage) -> dict[str, Any]:
    """The client's original bytes as a data URI: the upstream decodes exactly what the client sent."""
    url = f"data:{image.mime};base64,{base64.b64encode(image.data).decode('ascii')}"
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(video: ChatVideo) -> dict[str, Any]:
    """A clip as vLLM takes sampled frames: one `video/jpeg` data URI of its frames' base64, comma-separated
    (vLLM opens each frame by its bytes, so a live window's PNG or WebP frames pass as they came)."""
    frames = ",".join(base64.b64encode(frame.data).decode("ascii") for frame in video.frames)
    return {"type": "video_url", "video_url": {"url": f"data:video/jpeg;base64,{frames}"}}


def video_options(messages: Sequence[ChatMessage]) -> dict[str, Any]:
    """vLLM's per-request `media_io_kwargs`: the clips' frame rate, which Qwen2.5-VL times its patches by. One
    rate per request: the first clip's (a turn's clips are sampled at one rate)."""
    videos = [video for message in messages for video in message.videos]
    return {"media_io_kwargs": {"video": {"fps": videos[0].sampled_fps}}} if videos else {}


def message_body(message: ChatMessage) -> dict[str, Any]:
    body: dict[str, Any] = {"role": message.role, "content": message.text}
    if message.images or message.videos:
        parts = [image_part(image) for image in message.images] + [video_part(video) for video in message.videos]
        body["content"] = [*parts, {"type": "text", "text": message.text}] if message.text else parts
    if message.tool_calls:
        body["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        body["tool_call_id"] = message.tool_call_id
    return body


def messages_body(messages: Sequence[ChatMessage]) -> list[dict[str, Any]]:
    return [message_body(m) for m in messages]


def sampling_body(params: SamplingParams) -> dict[str, Any]:
    """OpenAI's fields, plus vLLM's extensions only where they differ from their neutral values, so a
    server without them still accepts every default turn."""
    body: dict[str, Any] = {
        "temperature": 0.0 if params.greedy else params.temperature,
        "top_p": params.top_p,
        "max_tokens": params.max_tokens,
    }
    if params.stop:
        body["stop"] = list(params.stop)
    if params.seed is not None:
        body["seed"] = params.seed
    if params.top_k > 0:
        body["top_k"] = params.top_k
    if params.min_p > 0.0:
        body["min_p"] = params.min_p
    if params.repetition_penalty != 1.0:
        body["repetition_penalty"] = params.repetition_penalty
    if params.ignore_eos:
        body["ignore_eos"] = True
    return body


def chat_body(
    model: str, messages: Sequence[ChatMessage], params: SamplingParams, tools: Sequence[dict[str, Any]] = ()
) -> dict[str, Any]:
    """The turn as a streamed chat request; tools and constraints pass through for the upstream to enforce."""
    body = {
        "model": model,
        "messages": messages_body(messages),
        "stream": True,
        "stream_options": {"include_usage": True},
        **sampling_body(params),
        **video_options(messages),
    }
    if tools:
        body["tools"] = list(tools)
    if params.grammar is not None and params.grammar.upstream:
        body.update(json.loads(params.grammar.upstream))
    return body


def tokenize_body(model: str, messages: Sequence[ChatMessage]) -> dict[str, Any]:
    return {"model": model, "messages": messages_body(messages), "add_generation_prompt": True, **video_options(messages)}


def merge_tool_call_deltas(calls: dict[int, dict[str, str]], deltas: Sequence[dict[str, Any]]) -> None:
    """Stream deltas into whole calls, keyed by index: the id and name arrive once, arguments in pieces."""
    for delta in deltas:
        call = calls.setdefault(int(delta.get("index", len(calls))), {"id": "", "name": "", "arguments": ""})
        function = delta.get("function") or {}
        call["id"] = delta.get("id") or call["id"]
        call["name"] += function.get("name") or ""
        call["arguments"] += function.get("arguments") or ""


def finish_reason(upstream: str | None) -> FinishReason:
    """The upstream's reason in our terms: content filters end a turn like a stop."""
    if upstream in ("length", "tool_calls"):
        return upstream  # type: ignore[return-value]
    if upstream == "abort":
        return "cancelled"
    return "stop"


def is_context_error(status: int, message: str) -> bool:
    lowered = message.lower()
    return status == 400 and any(words in lowered for words in _CONTEXT_WORDS)


def stream_error_status(status: int | None, message: str) -> int:
    """An error chunk's status: the one it names; else 400 when it is about the context, else 500."""
    if status is not None:
        return status
    return 400 if is_context_error(400, message) else 500


def error_message(body: bytes) -> str:
    """The message of an OpenAI- or vLLM-shaped error body, or its first bytes."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error", data)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)[:500]
        return str(error)[:500]
    return str(data)[:500]


def retry_after_s(header: str | None, now: float, default_s: float = 1.0) -> float:
    """Retry-After as seconds: delta-seconds or an HTTP date; the default when absent or unreadable."""
    if not header:
        return default_s
    try:
        seconds = float(header)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(header).timestamp() - now
        except (TypeError, ValueError):
            return default_s
    return max(0.0, seconds) if math.isfinite(seconds) else default_s
