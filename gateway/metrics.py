"""Prometheus metrics: one registry per app, so tests can build many apps side by side."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector

from gateway.engine.contract import EngineLoad
from gateway.errors import GatewayError


@dataclass(frozen=True)
class ServiceGauges:
    """What the gauges above the engine read at scrape time (the app wires them to the service and hub)."""

    in_flight: Callable[[], int]
    image_bytes: Callable[[], int]
    image_bytes_limit: int
    sessions: Callable[[], int]
    sessions_detached: Callable[[], int]
    store_healthy: Callable[[], bool]


LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# Gauges read from the engine's load at each scrape: metric, help, EngineLoad field.
ENGINE_GAUGES = (
    ("gateway_turns_active", "Turns on the model", "active"),
    ("gateway_turns_queued", "Turns waiting for a batch slot", "waiting"),
    ("gateway_kv_cache_bytes", "Bytes of finished turns' KV held for reuse", "kv_cache_bytes"),
    ("gateway_kv_cache_spilled_bytes", "Bytes of held KV spilled to pinned host memory", "kv_cache_spilled_bytes"),
    ("gateway_encoder_cache_bytes", "Bytes of vision-encoder outputs held for images seen before", "encoder_cache_bytes"),
    ("gateway_encoder_cache_hits", "Prefills that took images' encoder outputs from those held", "encoder_cache_hits"),
    ("gateway_encoder_passes", "Forward passes of the vision tower", "encoder_passes"),
    ("gateway_encoder_seconds", "The generation thread's seconds in the vision tower", "encoder_seconds"),
    ("gateway_image_cache_bytes", "Bytes of processed images held for reuse", "image_cache_bytes"),
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.connections = Gauge("gateway_connections", "Open WebSocket connections", registry=r)
        self.connections_total = Counter("gateway_connections_accepted", "WebSocket connections accepted", registry=r)
        self.rejected = Counter("gateway_connections_rejected", "WebSocket handshakes refused", ["reason"], registry=r)
        self.turns = Counter("gateway_turns", "Turns finished", ["finish_reason"], registry=r)
        self.tokens = Counter("gateway_tokens_generated", "Completion tokens streamed", registry=r)
        self.preempted = Counter(
            "gateway_turns_preempted", "Detached sessions' turns stopped for an attached client's turn", registry=r
        )
        self.errors = Counter("gateway_errors", "Error frames sent", ["code"], registry=r)
        self.ttft = Histogram("gateway_time_to_first_token_seconds", "Time to first token", buckets=LATENCY_BUCKETS_S, registry=r)
        self.inter_token = Histogram(
            "gateway_inter_token_seconds", "Mean time between tokens per turn", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.engine_gauges = [(Gauge(name, doc, registry=r), field) for name, doc, field in ENGINE_GAUGES]
        self.kv_hit_rate = Gauge("gateway_kv_cache_hit_rate", "Share of prefills that started from held KV", registry=r)
        self.prompt_tokens = Counter("gateway_prompt_tokens", "Prompt tokens of finished turns", registry=r)
        self.cached_tokens = Counter(
            "gateway_prompt_tokens_cached", "Prompt tokens whose KV was reused instead of prefilled", registry=r
        )
        self.turn_seconds = Histogram(
            "gateway_turn_duration_seconds", "Turns' time from submission to done", buckets=LATENCY_BUCKETS_S, registry=r
        )
        self.live_frames = LiveFrameCounters(r)  # what sessions' live windows did with the frames sent
        self.store_failures = Counter("gateway_store_failures", "Session store calls that failed or timed out", registry=r)
        self.store_healthy = Gauge("gateway_store_healthy", "1 while the session store answers, else 0", registry=r)
        self.image_bytes = Gauge("gateway_session_image_bytes", "Image bytes sessions' histories hold", registry=r)
        self.image_bytes_limit = Gauge(
            "gateway_session_image_bytes_limit", "The most image bytes sessions' histories may hold together", registry=r
        )
        self.sessions = Gauge("gateway_sessions", "Sessions in memory, attached or detached", registry=r)
        self.sessions_detached = Gauge("gateway_sessions_detached", "Sessions in memory with no connection", registry=r)
        self.in_flight = Gauge("gateway_turns_in_flight", "Turns submitted and not yet done, both front ends", registry=r)
        self.tokens_minted = Counter("gateway_scoped_tokens_minted", "Scoped tokens minted", registry=r)
        self.tokens_refused = Counter(
            "gateway_scoped_tokens_refused",
            "Scoped tokens refused at the handshake, by reason (malformed, bad_signature, expired, used, off, store_unavailable)",
            ["reason"],
            registry=r,
        )
        self.adapters = AdapterMetrics(r)

    def watch_engine(self, load: Callable[[], EngineLoad]) -> None:
        """Read the engine's counts and cache sizes at scrape time."""
        for gauge, field in self.engine_gauges:
            gauge.set_function(_reading(load, field))
        self.kv_hit_rate.set_function(lambda: _rate(load()))
        self.registry.register(_EnginePhases(load))

    def watch_service(self, watched: ServiceGauges) -> None:
        """Read the turn service's and the hub's sizes at scrape time."""
        self.in_flight.set_function(lambda: float(watched.in_flight()))
        self.image_bytes.set_function(lambda: float(watched.image_bytes()))
        self.image_bytes_limit.set(watched.image_bytes_limit)
        self.sessions.set_function(lambda: float(watched.sessions()))
        self.sessions_detached.set_function(lambda: float(watched.sessions_detached()))
        self.store_healthy.set_function(lambda: float(watched.store_healthy()))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def observe_turn(self, result: Any) -> None:
        self.turns.labels(result.finish_reason).inc()
        self.tokens.inc(result.completion_tokens)
        self.prompt_tokens.inc(result.prompt_tokens)
        self.cached_tokens.inc(result.cached_tokens)
        self.turn_seconds.observe(result.total_ms / 1000)
        if result.ttft_ms is not None:
            self.ttft.observe(result.ttft_ms / 1000)
        if result.tokens_per_s > 0:
            self.inter_token.observe(1 / result.tokens_per_s)


class LiveFrameCounters:
    """What sessions' live windows did with the `frame`s they were sent, all sessions together."""

    def __init__(self, r: CollectorRegistry) -> None:
        def counter(name: str, documentation: str) -> Counter:
            return Counter(f"gateway_live_{name}", documentation, registry=r)

        self.accepted = counter("frames_accepted", "Distinct live frames added to a window")
        self.merged = counter("frames_merged", "Live frames merged into a window's latest as near-duplicates")
        self.dropped = counter(
            "frames_dropped", "Live frames dropped unread: over a source's rate, or while its last were being hashed"
        )
        self.warm_ups = counter("warm_ups", "Live turns prefilled ahead of their question, to the end (core/warm_ups.py)")
        self.warm_ups_dropped = counter(
            "warm_ups_dropped",
            "Live warm-ups that did not prefill: the session's own turn came first, the engine was full, or no plan",
        )
        self.warm_ups_expected = counter(
            "warm_ups_expected", "Live warm-ups started ahead of a question due on the session's clock (core/cadence.py)"
        )
        # Not only live sessions': any history at the context's edge (core/warm_ups.py).
        self.trims_ahead = Counter(
            "gateway_trims_ahead",
            "Histories trimmed ahead of their next turn, the prompt they leave re-prefilled while the engine idles",
            registry=r,
        )


def _reading(load: Callable[[], EngineLoad], field: str) -> Callable[[], float]:
    return lambda: float(getattr(load(), field))


def _rate(load: EngineLoad) -> float:
    lookups = load.kv_cache_hits + load.kv_cache_misses
    return load.kv_cache_hits / lookups if lookups else 0.0


class _EnginePhases(Collector):
    """The engine's time by phase (its profile, where it keeps one), read at scrape time."""

    def __init__(self, load: Callable[[], EngineLoad]) -> None:
        self.load = load

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("gateway_engine_seconds", "The generation thread's time by phase", labels=["phase"])
        for phase, seconds in self.load().phase_seconds.items():
            family.add_metric([phase], seconds)
        yield family


ADAPTER_LOAD_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class AdapterMetrics:
    """LoRA adapters loaded and unloaded at run time (POST and DELETE /v1/adapters, either engine), and the turns
    each serves. A load's or unload's `result` is `ok` or the error code it was refused with."""

    def __init__(self, r: CollectorRegistry) -> None:
        self.loaded = Gauge("gateway_adapters_loaded", "LoRA adapters a request may select besides the base model", registry=r)
        self.loads = Counter("gateway_adapter_loads", "Adapter loads asked for, by result", ["result"], registry=r)
        self.unloads = Counter("gateway_adapter_unloads", "Adapter unloads asked for, by result", ["result"], registry=r)
        self.load_seconds = Histogram(
            "gateway_adapter_load_seconds",
            "Adapter loads' time from the request to the adapter served",
            buckets=ADAPTER_LOAD_BUCKETS_S,
            registry=r,
        )
        self.turns = Counter("gateway_adapter_turns", "Turns started on each adapter loaded now", ["adapter"], registry=r)
        self.loads.labels("ok")
        self.unloads.labels("ok")

    def watch(self, served: Callable[[], int]) -> None:
        self.loaded.set_function(lambda: float(served()))

    @contextmanager
    def loading(self) -> Iterator[None]:
        start = time.perf_counter()
        with self._counted(self.loads):
            yield
        self.load_seconds.observe(time.perf_counter() - start)

    @contextmanager
    def unloading(self, name: str) -> Iterator[None]:
        with self._counted(self.unloads):
            yield
        self.turns.remove(name)  # a gone adapter's series goes with it: the names stay bounded by max_adapters

    def started(self, adapter: str | None) -> None:
        if adapter is not None:
            self.turns.labels(adapter).inc()

    @contextmanager
    def _counted(self, counter: Counter) -> Iterator[None]:
        try:
            yield
        except GatewayError as exc:
            counter.labels(exc.code.value).inc()
            raise
        except BaseException:
            counter.labels("error").inc()
            raise
        counter.labels("ok").inc()
