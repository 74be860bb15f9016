"""Start-up, before serving (blocking, on the loader's thread): the upstream's model, context window,
adapters, whether it speaks vLLM's extensions, and whether an image turn really runs through it."""

from __future__ import annotations

import base64
import io
import logging
from dataclasses import dataclass
from typing import Any

import httpx2 as httpx

from gateway.engine.upstream import wire

log = logging.getLogger("gateway.upstream")

FALLBACK_CONTEXT_TOKENS = 4096  # a server that does not say (vLLM does, as max_model_len)


@dataclass(frozen=True)
class UpstreamInfo:
    model: str
    context_tokens: int
    adapters: tuple[str, ...]
    vllm: bool  # answers /tokenize with messages, and takes vLLM's sampling extensions
    vision: bool
    vision_detail: str  # why not, when not
    video: bool = False  # takes clips as `video_url` parts of sampled frames (vLLM on a video model)


def probe_image_url(fmt: str = "PNG") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 60, 200)).save(buffer, fmt)  # not square: some processors only fail on real ratios
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def discover(urls: list[str], model: str | None, api_key: str | None, timeout_s: float) -> UpstreamInfo:
    """From the first replica that answers; the others join through the health checks."""
    failures = []
    for url in urls:
        try:
            with httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s, headers=_headers(api_key)) as http:
                return _discover_one(http, model)
        except httpx.HTTPError as exc:
            failures.append(f"{url}: {type(exc).__name__}")
    raise RuntimeError("no upstream answered: " + "; ".join(failures))


def _headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def _discover_one(http: httpx.Client, model: str | None) -> UpstreamInfo:
    entries = http.get("/v1/models").raise_for_status().json()["data"]
    bases = [e for e in entries if not e.get("parent")]
    chosen = next((e for e in entries if e["id"] == model), None) if model else (bases or entries)[0]
    if chosen is None:
        raise RuntimeError(f"the upstream serves {[e['id'] for e in entries]}, not {model!r}")
    adapters = tuple(e["id"] for e in entries if e.get("parent") == chosen["id"])
    vllm = _answers_tokenize(http, chosen["id"])
    vision_detail = _probe_vision(http, chosen["id"])
    if vision_detail:
        log.info("upstream %s takes no images: %s", chosen["id"], vision_detail)
    video = vllm and not vision_detail and _takes_video(http, chosen["id"])
    return UpstreamInfo(
        model=chosen["id"],
        context_tokens=int(chosen.get("max_model_len") or FALLBACK_CONTEXT_TOKENS),
        adapters=adapters,
        vllm=vllm,
        vision=not vision_detail,
        vision_detail=vision_detail,
        video=video,
    )


def _answers_tokenize(http: httpx.Client, model: str) -> bool:
    body = {"model": model, "messages": [{"role": "user", "content": "probe"}], "add_generation_prompt": True}
    response = http.post("/tokenize", json=body)
    return response.status_code == 200 and isinstance(response.json().get("count"), int)


def _probe_vision(http: httpx.Client, model: str) -> str:
    """ "" when a one-image turn generates a token; otherwise the upstream's reason, in a few words."""
    content: list[dict[str, Any]] = [{"type": "image_url", "image_url": {"url": probe_image_url()}}]
    content.append({"type": "text", "text": "probe"})
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    response = http.post("/v1/chat/completions", json=body)
    if response.status_code == 200:
        return ""
    return f"{response.status_code}: {wire.error_message(response.content)[:200]}"


def _takes_video(http: httpx.Client, model: str) -> bool:
    """Whether a two-frame clip, sent as the gateway sends clips, generates a token."""
    frame = probe_image_url("JPEG").partition(",")[2]
    clip = {"type": "video_url", "video_url": {"url": f"data:video/jpeg;base64,{frame},{frame}"}}
    content: list[dict[str, Any]] = [clip, {"type": "text", "text": "probe"}]
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    body["media_io_kwargs"] = {"video": {"fps": 2.0}}
    return http.post("/v1/chat/completions", json=body).status_code == 200
