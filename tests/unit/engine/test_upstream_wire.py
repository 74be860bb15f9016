"""The upstream's wire format and replica choice, pure: no network."""

from __future__ import annotations

import base64

import pytest

from gateway.engine.contract import ChatMessage, SamplingParams
from gateway.engine.upstream import stream, wire
from gateway.engine.upstream.client import ContextOverflow, Overloaded, Rejected, Unavailable, classify, classify_event
from gateway.engine.upstream.replicas import NoReplica, ReplicaSet
from tests.conftest import chat_image


def test_images_travel_as_data_uris_of_their_original_bytes() -> None:
    """An image part carries the client's bytes and MIME type unchanged, before the text."""
    image = chat_image(fmt="JPEG")
    body = wire.message_body(ChatMessage("user", "what is it", (image,)))
    url = body["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/jpeg;base64,") and base64.b64decode(url.split(",", 1)[1]) == image.data
    assert body["content"][1] == {"type": "text", "text": "what is it"}
    assert wire.message_body(ChatMessage("assistant", "hi")) == {"role": "assistant", "content": "hi"}


def test_vllm_extensions_only_when_they_change_something() -> None:
    """Neutral top_k, repetition_penalty and ignore_eos stay out, so any OpenAI server accepts the body."""
    assert set(wire.sampling_body(SamplingParams())) == {"temperature", "top_p", "max_tokens"}
    body = wire.sampling_body(
        SamplingParams(temperature=0, top_k=5, repetition_penalty=1.2, ignore_eos=True, stop=("x",), seed=3)
    )
    assert body["temperature"] == 0.0 and body["top_k"] == 5 and body["ignore_eos"] is True
    assert body["stop"] == ["x"] and body["seed"] == 3 and body["repetition_penalty"] == 1.2
    assert "min_p" not in body and wire.sampling_body(SamplingParams(min_p=0.05))["min_p"] == 0.05


def test_sse_lines_become_events() -> None:
    chunk = '{"id":"x","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null,"logprobs":null}]}'
    assert stream.parse_sse_line(f"data: {chunk}") == stream.StreamEvent(text="hi")
    usage = stream.parse_sse_line('data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2}}')
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (4, 2)
    assert stream.parse_sse_line("data: [DONE]") is None and stream.parse_sse_line(": keep-alive") is None


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ('data: {"error":{"message":"boom"}}', Unavailable),
        ('data: {"error":{"message":"full","code":429}}', Overloaded),
        ('data: {"object":"error","message":"busy","type":"ServiceUnavailable","code":503}', Overloaded),
        ('data: {"error":{"message":"maximum context length is 64 tokens","code":"context_length_exceeded"}}', ContextOverflow),
        ('data: {"error":{"message":"bad field","code":400}}', Rejected),
        ("data: {not json", Unavailable),
    ],
)
def test_error_chunks_map_to_errors(line: str, kind: type) -> None:
    """An error inside a 200 stream is classified like an error response: by its status, else its words."""
    event = stream.parse_sse_line(line)
    assert event is not None and event.error and isinstance(classify_event(event), kind)


def test_sse_decoder_joins_lines_cut_across_reads() -> None:
    """Chunks arrive in arbitrary pieces: every whole line is decoded once, in order, CRLF or LF."""
    body = b"".join(f'data: {{"choices":[{{"delta":{{"content":"t{i}"}}}}]}}\r\n\r\n'.encode() for i in range(20))
    body += b"data: [DONE]\n\n"
    for size in (1, 7, 64, len(body)):
        decoder = stream.SseDecoder()
        events = [e for i in range(0, len(body), size) for e in decoder.feed(body[i : i + size])]
        assert [e.text for e in events] == [f"t{i}" for i in range(20)]


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (429, b'{"error":{"message":"slow down"}}', Overloaded),
        (503, b"busy", Overloaded),
        (500, b"{}", Unavailable),
        (400, b'{"error":{"message":"This model\'s maximum context length is 1024 tokens"}}', ContextOverflow),
        (400, b'{"error":{"message":"bad field"}}', Rejected),
    ],
)
def test_status_codes_map_to_errors(status: int, body: bytes, kind: type) -> None:
    assert isinstance(classify(status, body, None), kind)


def test_retry_after_as_seconds_or_date() -> None:
    assert wire.retry_after_s("7", now=0) == 7.0
    assert wire.retry_after_s("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480) == 10.0
    assert wire.retry_after_s(None, now=0) == 1.0 and wire.retry_after_s("soon", now=0) == 1.0


def test_rendezvous_moves_only_the_dead_replicas_sessions() -> None:
    """Each key sticks to one replica; when one goes down only its keys move, and they spread over the rest."""
    replicas = ReplicaSet(["http://a", "http://b", "http://c"])
    keys = [f"session-{i}" for i in range(300)]
    before = {k: replicas.pick(k, now=0).url for k in keys}
    assert len(set(before.values())) == 3
    replicas.mark_down(replicas.replicas[1])
    after = {k: replicas.pick(k, now=0).url for k in keys}
    moved = {k for k in keys if before[k] != after[k]}
    assert moved == {k for k in keys if before[k] == "http://b"}
    assert {after[k] for k in moved} == {"http://a", "http://c"}


def test_no_replica_says_when_to_retry() -> None:
    replicas = ReplicaSet(["http://a"])
    replicas.mark_overloaded(replicas.replicas[0], now=10.0, retry_after_s=5.0)
    with pytest.raises(NoReplica) as refused:
        replicas.pick("k", now=11.0)
    assert refused.value.retry_after_s == pytest.approx(4.0)


def test_down_replicas_are_still_tried_when_no_other_can_be() -> None:
    """Up replicas come first; when all are down they are tried anyway (one failed connect must not refuse
    every turn until the next health check); an overloaded one waits out its Retry-After."""
    replicas = ReplicaSet(["http://a", "http://b"])
    a, b = replicas.replicas
    replicas.mark_down(a)
    assert all(replicas.pick(f"k{i}", now=0) is b for i in range(20))
    replicas.mark_down(b)
    assert {replicas.pick(f"k{i}", now=0).url for i in range(20)} == {"http://a", "http://b"}
    replicas.mark_overloaded(b, now=0, retry_after_s=5)
    assert replicas.pick("k", now=1) is a
    with pytest.raises(NoReplica):
        replicas.pick("k", now=1, exclude=[a])


def test_a_replica_lacking_an_adapter_is_left_out_of_turns_on_it_only() -> None:
    """A replica that lost an adapter is excluded from that adapter's turns, not from the base model's or others'."""
    replicas = ReplicaSet(["http://a", "http://b"])
    replicas.replicas[0].lacking.add("tuned")
    assert replicas.lacking("tuned") == [replicas.replicas[0]]
    assert replicas.lacking("other") == [] and replicas.lacking(None) == []
    for key in ("s1", "s2", "s3", "s4"):
        assert replicas.pick(key, 0.0, replicas.lacking("tuned")) is replicas.replicas[1]
