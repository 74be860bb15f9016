"""Generation on OpenAI-compatible servers (vLLM first): replicas, affinity, health, and the Engine over them."""

from __future__ import annotations

import dataclasses

from gateway.config import Settings
from gateway.engine.upstream.counting import TokenCounter, TokenizerCounter
from gateway.engine.upstream.discovery import discover
from gateway.engine.upstream.engine import UpstreamEngine, UpstreamOptions
from gateway.engine.upstream.replicas import ReplicaSet
from gateway.engine.upstream.turn import Deadlines


def upstream_urls(settings: Settings) -> list[str]:
    return [url.strip() for url in settings.upstreams.split(",") if url.strip()]


def build_upstream_engine(settings: Settings) -> UpstreamEngine:
    """Blocking (the loader's thread): discover the model and its limits, probe vision, then the engine."""
    urls = upstream_urls(settings)
    info = discover(urls, settings.model_id, settings.upstream_api_key, max(5.0, settings.upstream_connect_timeout_s))
    if settings.context_tokens:
        info = dataclasses.replace(info, context_tokens=settings.context_tokens)
    counter: TokenCounter | None = TokenizerCounter(settings.tokenizer) if settings.tokenizer else None
    if counter is None and not info.vllm:
        raise RuntimeError("this upstream has no /tokenize with messages; pass --tokenizer DIR for exact prompt lengths")
    options = UpstreamOptions(
        connect_timeout_s=settings.upstream_connect_timeout_s,
        deadlines=Deadlines(settings.upstream_first_token_timeout_s, settings.upstream_token_gap_timeout_s),
        health_interval_s=settings.upstream_health_interval_s,
        max_in_flight=settings.upstream_max_in_flight,
        api_key=settings.upstream_api_key,
        max_adapters=settings.max_adapters,
    )
    return UpstreamEngine(info, ReplicaSet(urls, settings.upstream_health_interval_s), options, counter)


__all__ = ["UpstreamEngine", "UpstreamOptions", "build_upstream_engine", "upstream_urls"]
