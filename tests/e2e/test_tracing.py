"""OpenTelemetry traces through a real OTLP/HTTP exporter into a receiver that decodes them: the span tree of a
WebSocket turn, an HTTP turn and an upstream turn, the caller's `traceparent` honoured and sent on."""

from __future__ import annotations

import gzip
import itertools
import secrets
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest, ExportTraceServiceResponse
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.app import create_app
from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.core.tracing import NO_TRACE, Tracer
from tests.conftest import DemoDirs, RunningServer, serve_app, start_server
from tests.unit.engine.test_upstream_engine import engine_for
from tests.upstream_fake import FakeUpstream

PROMPT = "zebra quokka narwhal"


class OtlpReceiver:
    """A tiny OTLP/HTTP collector: each POST is an ExportTraceServiceRequest, decoded with opentelemetry-proto."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.bodies: list[bytes] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                export = ExportTraceServiceRequest.FromString(body)
                receiver.bodies.append(body)
                receiver.spans += [span for rs in export.resource_spans for ss in rs.scope_spans for span in ss.spans]
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def trace(self, trace_id: bytes) -> tuple[Span, list[Span]]:
        """The trace's `turn` span and its children in start order."""
        spans = [span for span in self.spans if span.trace_id == trace_id]
        [root] = [span for span in spans if span.name == "turn"]
        children = sorted((s for s in spans if s.parent_span_id == root.span_id), key=lambda s: s.start_time_unix_nano)
        return root, children

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def traced(demo_dirs: DemoDirs, receiver: OtlpReceiver) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(otlp_traces_endpoint=receiver.url))
    yield running
    running.stop()


def caller_context() -> tuple[str, bytes, bytes]:
    """A W3C traceparent as a caller's own tracing would send it, with its trace and span ids."""
    trace_id, span_id = secrets.token_bytes(16), secrets.token_bytes(8)
    return f"00-{trace_id.hex()}-{span_id.hex()}-01", trace_id, span_id


def attributes(span: Span) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for kv in span.attributes:
        kind = kv.value.WhichOneof("value")
        value = getattr(kv.value, kind)
        values[kv.key] = list(v.string_value for v in value.values) if kind == "array_value" else value
    return values


def check_tree(root: Span, children: list[Span], phases: list[str]) -> None:
    """The phases in order, one after another, all within the turn: their times add up to at most the turn's."""
    assert [child.name for child in children] == phases
    for before, after in itertools.pairwise(children):
        assert before.end_time_unix_nano <= after.start_time_unix_nano
    assert root.start_time_unix_nano <= children[0].start_time_unix_nano
    assert children[-1].end_time_unix_nano <= root.end_time_unix_nano
    spent = sum(child.end_time_unix_nano - child.start_time_unix_nano for child in children)
    assert 0 < spent <= root.end_time_unix_nano - root.start_time_unix_nano


def received(receiver: OtlpReceiver, tracer: Tracer, trace_id: bytes) -> tuple[Span, list[Span]]:
    """The trace once the exporter has sent it (the turn's span ends just after `done`)."""
    deadline = time.monotonic() + 60
    while True:
        tracer.flush()
        try:
            return receiver.trace(trace_id)
        except ValueError:
            assert time.monotonic() < deadline, "the turn's span never arrived"
            time.sleep(0.05)


def post(url: str, body: dict[str, Any], traceparent: str) -> requests.Response:
    return requests.post(f"{url}/v1/chat/completions", json=body, headers={"traceparent": traceparent}, timeout=60)


def no_text(receiver: OtlpReceiver) -> None:
    assert all(word.encode() not in body for body in receiver.bodies for word in PROMPT.split())


async def test_a_websocket_turn_is_a_span_in_the_handshakes_trace(traced: RunningServer, receiver: OtlpReceiver) -> None:
    """A turn on a socket opened with a traceparent is a child of the caller's span, with a child per phase
    (the store write last), the model, token counts and finish reason as attributes, and no text."""
    traceparent, trace_id, caller = caller_context()
    async with GatewayClient(traced.ws_url, additional_headers={"traceparent": traceparent}) as client:
        result = await client.turn("t1", PROMPT, max_tokens=4, temperature=0)
    assert result.done is not None
    root, children = received(receiver, traced.app.state.runtime.turns.tracer, trace_id)
    assert root.parent_span_id == caller and root.kind == Span.SPAN_KIND_SERVER
    check_tree(root, children, ["admission", "images", "planning", "queue", "prefill", "decode", "store_write"])
    usage = result.done["usage"]
    assert attributes(root) == {
        "gateway.front_end": "websocket",
        "gen_ai.request.model": "gateway-demo",
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": 4,
        "gen_ai.usage.cached_tokens": usage.get("cached_tokens", 0),
        "gen_ai.response.finish_reasons": ["length"],
        "gateway.ttft_ms": pytest.approx(result.done["timing"]["ttft_ms"], abs=0.01),
    }
    no_text(receiver)


def test_an_http_turn_is_a_span_in_the_requests_trace(traced: RunningServer, receiver: OtlpReceiver) -> None:
    """/v1/chat/completions with a traceparent: the turn's span is the caller's child, its phases in order."""
    traceparent, trace_id, caller = caller_context()
    body = {"model": "gateway-demo", "max_tokens": 3, "messages": [{"role": "user", "content": PROMPT}]}
    response = post(traced.http_url, body, traceparent)
    assert response.status_code == 200
    root, children = received(receiver, traced.app.state.runtime.turns.tracer, trace_id)
    assert root.parent_span_id == caller
    check_tree(root, children, ["admission", "images", "planning", "queue", "prefill", "decode"])
    assert attributes(root)["gateway.front_end"] == "http" and attributes(root)["gen_ai.usage.output_tokens"] == 3
    no_text(receiver)


def test_a_turn_with_tools_has_a_tool_parsing_phase(traced: RunningServer, receiver: OtlpReceiver) -> None:
    """With tools offered, the reply is parsed for calls when it ends: a phase after decode."""
    traceparent, trace_id, _ = caller_context()
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {}}}}
    body = {"model": "gateway-demo", "max_tokens": 3, "tools": [tool], "messages": [{"role": "user", "content": PROMPT}]}
    assert post(traced.http_url, body, traceparent).status_code == 200
    root, children = received(receiver, traced.app.state.runtime.turns.tracer, trace_id)
    check_tree(root, children, ["admission", "images", "planning", "queue", "prefill", "decode", "tool_parsing"])


def test_a_refused_request_ends_its_span_with_the_code(traced: RunningServer, receiver: OtlpReceiver) -> None:
    """A request refused before it reaches the engine is a span with an error status naming the code, never the message."""
    traceparent, trace_id, _ = caller_context()
    body = {"model": "gateway-demo", "max_tokens": 10**9, "messages": [{"role": "user", "content": PROMPT}]}
    response = post(traced.http_url, body, traceparent)
    assert response.status_code == 400
    root, children = received(receiver, traced.app.state.runtime.turns.tracer, trace_id)
    assert [child.name for child in children] == ["admission"]
    assert root.status.code == Status.STATUS_CODE_ERROR and root.status.message == "invalid_field"
    assert attributes(root)["gateway.error_code"] == "invalid_field"


async def test_an_upstream_turn_sends_its_span_on(receiver: OtlpReceiver) -> None:
    """Through an upstream, the request to it carries the turn's span as its traceparent, in the caller's trace."""
    fake = FakeUpstream()
    try:
        app = create_app(Settings(otlp_traces_endpoint=receiver.url), engine=engine_for(fake.url))
        traceparent, trace_id, caller = caller_context()
        with serve_app(app) as url:
            ws_url = url.replace("http", "ws") + "/ws"
            async with GatewayClient(ws_url, additional_headers={"traceparent": traceparent}) as client:
                assert (await client.turn("t1", PROMPT, max_tokens=3)).done is not None
            root, children = received(receiver, app.state.runtime.turns.tracer, trace_id)
    finally:
        fake.stop()
    assert root.parent_span_id == caller
    check_tree(root, children, ["admission", "images", "planning", "prefill", "decode", "store_write"])
    assert fake.traceparents == [f"00-{trace_id.hex()}-{root.span_id.hex()}-01"]


def test_without_an_endpoint_tracing_is_off() -> None:
    """No endpoint: no provider, no export thread, and every turn gets the trace that does nothing."""
    tracer = Tracer.from_endpoint(None)
    assert not tracer.enabled and tracer.turn("00-" + "1" * 32 + "-" + "2" * 16 + "-01", "http") is NO_TRACE
