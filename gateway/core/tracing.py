"""Traces (OpenTelemetry, the optional `otel` extra): a span per turn, a child per phase; a no-op when off."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

from gateway.engine.contract import GenerationResult
from gateway.errors import GatewayError

log = logging.getLogger("gateway.tracing")

# A turn's phases, in order. The first three and the last two are timed as they happen; queue, prefill and
# decode are timed by the engine (GenerationResult's queue_ms, ttft_ms and total_ms) and written once it is done.
PHASES = ("admission", "images", "planning", "queue", "prefill", "decode", "tool_parsing", "store_write")


class TurnTrace:
    """One turn's trace while tracing is off: every call does nothing, so the turn path calls it unconditionally."""

    traceparent: str | None = None  # W3C trace context of the turn's span, for the upstream request

    def phase(self, name: str) -> None:
        """The turn enters phase `name`: the phase before it (if any) ends now."""

    def submitted(self, model: str) -> None:
        """The turn went to the engine (on `model`): the phase before it ends; queueing begins."""

    def engine_done(self, result: GenerationResult) -> None:
        """The engine's phases, from its timings, and the turn's numbers (never its text)."""

    def end_phase(self) -> None:
        """The phase running now ends; the turn waits on nothing of its own until the next one."""

    def end(self) -> None:
        """The turn is over (its `done` is out): its span ends. Idempotent."""

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        """Around a turn's work up to submission: a turn refused or failed on the way ends here."""
        yield


NO_TRACE = TurnTrace()


class Tracer:
    """Makes each turn's trace: off without an endpoint or without the SDK; spans go out on the SDK's own
    export thread in batches, never on the event loop."""

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider
        self._tracer = provider.get_tracer("gateway") if provider is not None else None

    @classmethod
    def from_endpoint(cls, endpoint: str | None) -> Tracer:
        """Spans to an OTLP/HTTP collector at `endpoint` (e.g. http://collector:4318/v1/traces); None: off."""
        return cls(_otlp_provider(endpoint) if endpoint else None)

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    def turn(self, traceparent: str | None, front_end: str) -> TurnTrace:
        """A turn's trace, a child of the caller's W3C `traceparent` when one came with the request."""
        if self._tracer is None:
            return NO_TRACE
        return _LiveTrace(self._tracer, traceparent, front_end)

    def flush(self) -> None:
        if self._provider is not None:
            self._provider.force_flush()

    def close(self) -> None:
        if self._provider is not None:
            self._provider.shutdown()


def _otlp_provider(endpoint: str) -> Any:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "otlp_traces_endpoint is set but the OpenTelemetry SDK is not installed (pip install 'gateway[otel]'): no traces"
        )
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "gateway")}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class _LiveTrace(TurnTrace):
    """The turn's span and the phase running now; every call on the event loop thread."""

    def __init__(self, tracer: Any, traceparent: str | None, front_end: str) -> None:
        from opentelemetry.trace import SpanKind, set_span_in_context
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        propagator = TraceContextTextMapPropagator()
        parent = propagator.extract({"traceparent": traceparent}) if traceparent else None
        self._tracer = tracer
        self._root = tracer.start_span("turn", context=parent, kind=SpanKind.SERVER, attributes={"gateway.front_end": front_end})
        self._context = set_span_in_context(self._root)
        carrier: dict[str, str] = {}
        propagator.inject(carrier, context=self._context)
        self.traceparent = carrier.get("traceparent")
        self._phase: Any = None
        self._submitted_ns: int | None = None
        self._ended = False

    def phase(self, name: str) -> None:
        self.end_phase()
        self._phase = self._tracer.start_span(name, context=self._context)

    def end_phase(self) -> None:
        if self._phase is not None:
            self._phase.end()
            self._phase = None

    def submitted(self, model: str) -> None:
        self.end_phase()
        self._submitted_ns = time.time_ns()
        self._root.set_attribute("gen_ai.request.model", model)

    def engine_done(self, result: GenerationResult) -> None:
        now = time.time_ns()
        at = _Timeline(self._submitted_ns or now, now)
        admitted = at.ms(result.queue_ms)
        if result.queue_ms is not None:
            self._span("queue", at.start_ns, admitted)
        if result.ttft_ms is not None:
            first = max(admitted, at.ms(result.ttft_ms))
            self._span("prefill", admitted, first)
            self._span("decode", first, max(first, at.ms(result.total_ms)))
        self._root.set_attributes(_result_attributes(result))
        if result.finish_reason == "error":
            code = result.error_code.value if result.error_code is not None else "generation"
            self._fail(code)

    def _span(self, name: str, start_ns: int, end_ns: int) -> None:
        self._tracer.start_span(name, context=self._context, start_time=start_ns).end(end_time=end_ns)

    def _fail(self, code: str) -> None:
        from opentelemetry.trace import Status, StatusCode

        self._root.set_attribute("gateway.error_code", code)
        self._root.set_status(Status(StatusCode.ERROR, code))  # the code only: an error's message may quote the client

    def end(self) -> None:
        if not self._ended:
            self._ended = True
            self.end_phase()
            self._root.end()

    @contextlib.contextmanager
    def opened(self) -> Iterator[None]:
        try:
            yield
        except BaseException as exc:
            self._fail(_failure_code(exc))
            raise
        finally:
            if self._submitted_ns is None:
                self.end()


def _failure_code(exc: BaseException) -> str:
    """What a refused turn's span says: the stable error code (an HTTP error's too), else the exception's type."""
    if isinstance(exc, GatewayError):
        return exc.code.value
    code = getattr(exc, "code", None)  # the OpenAI front end's ApiError
    return code if isinstance(code, str) else type(exc).__name__


class _Timeline:
    """Engine timings (milliseconds from submission, on the engine's clock) as span timestamps (nanoseconds
    since the epoch), kept between submission and now: the engine's phases never spill out of the turn's."""

    def __init__(self, start_ns: int, now_ns: int) -> None:
        self.start_ns = start_ns
        self.now_ns = now_ns

    def ms(self, offset_ms: float | None) -> int:
        if offset_ms is None:
            return self.start_ns
        return min(self.now_ns, self.start_ns + int(offset_ms * 1_000_000))


def _result_attributes(result: GenerationResult) -> dict[str, Any]:
    return {
        "gen_ai.response.finish_reasons": [result.finish_reason],
        "gen_ai.usage.input_tokens": result.prompt_tokens,
        "gen_ai.usage.output_tokens": result.completion_tokens,
        "gen_ai.usage.cached_tokens": result.cached_tokens,
        "gateway.ttft_ms": result.ttft_ms if result.ttft_ms is not None else -1.0,
    }
