"""The OpenAI-compatible API, end to end: the official `openai` client against a real uvicorn server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import time
from collections.abc import Iterator, Sequence
from typing import Any

import openai
import pytest
import requests
from openai import OpenAI

from gateway.app import create_app
from gateway.config import Settings
from gateway.core.url_guard import FetchPolicy
from gateway.engine.contract import (
    ChatMessage,
    EngineFull,
    GenerationRequest,
    GenerationResult,
    TurnHandle,
    TurnSink,
)
from gateway.engine.scripted import ScriptedEngine as BaseScriptedEngine
from tests.conftest import DemoDirs, RunningServer, image_bytes, record_submissions, serve_app, start_server
from tests.unit.core.test_fetch import HANDLERS, LoopbackServer

API_KEY = "sk-test-0123456789"
MODEL = "gateway-demo"
HELLO: Any = [{"role": "user", "content": "hello"}]


def use_fetch_policy(app: Any, policy: FetchPolicy | None = None) -> None:
    """Image URLs are fetched under `policy` (default: the settings', which refuse loopback)."""
    app.state.runtime.turns.attachments.fetch_policy = policy or FetchPolicy.from_settings(app.state.runtime.settings)


@pytest.fixture(scope="module")
def api(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    settings = Settings(api_key=API_KEY, max_frame_bytes=2 << 20, max_image_bytes=1 << 20, adapters=f"tuned={demo_dirs.adapter}")
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


@pytest.fixture
def client(api: RunningServer) -> OpenAI:
    use_fetch_policy(api.app)  # the default fetch policy: no loopback
    return OpenAI(base_url=f"{api.http_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


@pytest.fixture
def submitted(api: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[GenerationRequest]:
    """Every request the engine is handed during the test."""
    return record_submissions(api, monkeypatch)


def post(api: RunningServer, body: Any, key: str | None = API_KEY, **kwargs: Any) -> requests.Response:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return requests.post(f"{api.http_url}/v1/chat/completions", data=data, headers=headers, timeout=60, **kwargs)


def greedy(client: OpenAI, messages: Any = HELLO, max_tokens: int = 12, **kwargs: Any) -> Any:
    return client.chat.completions.create(model=MODEL, messages=messages, max_tokens=max_tokens, temperature=0, **kwargs)


def data_uri(fmt: str) -> str:
    mime = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}[fmt]
    return f"data:{mime};base64," + base64.b64encode(image_bytes(fmt)).decode()


def with_image(url: str) -> list[dict[str, Any]]:
    return [
        {
            "role": "user",
            "content": [{"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}],
        }
    ]


def wait_for(predicate: Any, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


# ---- models ------------------------------------------------------------------------------------


def test_models_list_the_served_model(client: OpenAI) -> None:
    """/v1/models lists the base model and each adapter as a model id of its own."""
    assert [m.id for m in client.models.list()] == [MODEL, "tuned"]
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve("tuned").id == "tuned"


def test_unknown_model_is_404_model_not_found(client: OpenAI) -> None:
    """An unknown model id is a 404 with code model_not_found, as OpenAI answers."""
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-nope", messages=HELLO, max_tokens=4)
    assert caught.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-nope")


# ---- completions -------------------------------------------------------------------------------


def test_completion_has_text_and_exact_usage(client: OpenAI, api: RunningServer) -> None:
    """A non-streamed completion carries its text, finish_reason and the engine's exact token counts."""
    reply = greedy(client, max_tokens=8)
    assert reply.object == "chat.completion" and reply.model == MODEL
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 8
    assert reply.usage.prompt_tokens == prompt_length(api, [ChatMessage("user", "hello")])
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 8


def test_stream_matches_completion_and_reports_usage(client: OpenAI) -> None:
    """Streamed deltas add up to the non-streamed text; the last choice chunk has finish_reason; usage follows."""
    whole = greedy(client, max_tokens=12)
    chunks = list(greedy(client, max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "length"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage


def test_sse_framing_ends_with_done(api: RunningServer) -> None:
    """The raw stream is text/event-stream `data:` events ending with `data: [DONE]`; no usage unless asked."""
    body = {"model": MODEL, "messages": HELLO, "max_tokens": 4, "temperature": 0, "stream": True}
    with post(api, body, stream=True) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [str(line) for line in response.iter_lines(decode_unicode=True) if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[6:]) for e in events[:-1]]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert all(c["usage"] is None for c in chunks)


def test_system_message_joins_the_prompt(client: OpenAI, api: RunningServer) -> None:
    """System (and developer) messages reach the model: the prompt counts them."""
    system = [{"role": "system", "content": "Answer briefly."}, *HELLO]
    reply = greedy(client, system, max_tokens=2)
    expected = prompt_length(api, [ChatMessage("system", "Answer briefly."), ChatMessage("user", "hello")])
    assert reply.usage is not None and reply.usage.prompt_tokens == expected
    developer = greedy(client, [{"role": "developer", "content": "Answer briefly."}, *HELLO], max_tokens=2)
    assert developer.usage is not None and developer.usage.prompt_tokens == reply.usage.prompt_tokens
    assert developer.usage.completion_tokens == reply.usage.completion_tokens


def test_multi_turn_with_content_parts(client: OpenAI, api: RunningServer) -> None:
    """Assistant turns and lists of text parts are accepted; text parts join with newlines."""
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "hello"}, {"type": "text", "text": "world"}]},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "again"},
    ]
    reply = greedy(client, messages, max_tokens=2)
    expected = [ChatMessage("user", "hello\nworld"), ChatMessage("assistant", "hi"), ChatMessage("user", "again")]
    assert reply.usage is not None and reply.usage.prompt_tokens == prompt_length(api, expected)


def test_max_completion_tokens_and_stop(client: OpenAI) -> None:
    """max_completion_tokens bounds the reply; a stop string ends it before the string, finish_reason stop."""
    text = (
        client.chat.completions.create(model=MODEL, messages=HELLO, temperature=0, max_completion_tokens=20)
        .choices[0]
        .message.content
    )
    assert text
    stop = text.split()[-1]
    stopped = greedy(client, max_tokens=20, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == text[: text.index(stop)]


def test_sampling_options_take_effect(client: OpenAI) -> None:
    """seed reproduces a sample; top_k=1 (extension) is greedy; repetition_penalty (extension) changes greedy text."""
    plain = greedy(client, max_tokens=16).choices[0].message.content

    def sample(**kwargs: Any) -> Any:
        return (
            client.chat.completions.create(model=MODEL, messages=HELLO, max_tokens=16, temperature=1.0, top_p=1.0, **kwargs)
            .choices[0]
            .message.content
        )

    assert sample(seed=7) == sample(seed=7)
    assert sample(seed=3, extra_body={"top_k": 1}) == plain
    assert greedy(client, max_tokens=16, extra_body={"repetition_penalty": 3.0}).choices[0].message.content != plain


# ---- images ------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_by_data_uri(client: OpenAI, api: RunningServer, submitted: list[GenerationRequest], fmt: str) -> None:
    """A data: URI image reaches the model as decoded pixels."""
    reply = greedy(client, with_image(data_uri(fmt)), max_tokens=3)
    images = submitted[-1].messages[-1].images
    assert len(images) == 1 and (images[0].width, images[0].height) == (64, 48)
    text_only = prompt_length(api, [ChatMessage("user", "what is this?")])
    assert reply.usage is not None and reply.usage.prompt_tokens > text_only


def test_image_by_url_from_allow_listed_server(client: OpenAI, api: RunningServer) -> None:
    """An http image URL is fetched when the operator allow-lists its network, and refused otherwise."""
    server = LoopbackServer(HANDLERS)
    try:
        url = server.url("/png")
        with pytest.raises(openai.BadRequestError) as caught:
            greedy(client, with_image(url), max_tokens=3)
        assert "private or reserved address" in caught.value.message
        assert caught.value.param == "messages[0].content"
        use_fetch_policy(api.app, FetchPolicy(allow=("127.0.0.0/8",), total_timeout_s=5.0))
        by_url = greedy(client, with_image(url), max_tokens=3)
        by_data = greedy(client, with_image(data_uri("PNG")), max_tokens=3)
        assert by_url.usage == by_data.usage
        assert by_url.choices[0].message.content == by_data.choices[0].message.content
    finally:
        server.close()


# ---- validation and errors ---------------------------------------------------------------------

NOT_AN_IMAGE = base64.b64encode(b"not an image").decode()
IMAGE_PART = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}


def body(**changes: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": HELLO, "max_tokens": 4} | changes


@pytest.mark.parametrize(
    "request_body,param",
    [
        ({"messages": HELLO}, "model"),
        (body(messages=[]), "messages"),
        (body(messages=[{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
        (body(messages=[{"role": "user", "content": [{"type": "input_audio"}]}]), "messages[0].content[0].type"),
        (body(messages=[{"role": "user", "content": "x", "foo": 1}]), "messages[0].foo"),
        (body(messages=[{"role": "user", "content": None}]), "messages[0].content"),
        (body(tools=[{"type": "function"}]), "tools[0].function"),
        (body(tool_choice="required"), "tool_choice"),
        (body(temperature=-1), "temperature"),
        (body(temperature="hot"), "temperature"),
        (body(top_p=0), "top_p"),
        (body(n=2), "n"),
        (body(presence_penalty=0.5), "presence_penalty"),
        (body(logprobs=True), "logprobs"),
        (body(stream_options={"include_usage": True}), "stream_options"),
        (body(max_tokens=0), "max_tokens"),
        (body(max_tokens=5000), "max_tokens"),
        (body(max_tokens=4, max_completion_tokens=5), "max_tokens"),
        (body(stop=["a"] * 9), "stop"),
        (body(stop=""), "stop"),
        (body(seed=-1), "seed"),
        (body(min_p=2), "min_p"),
        (body(messages=[*HELLO, {"role": "assistant", "content": [IMAGE_PART]}]), "messages[1].content"),
        (body(messages=with_image("ftp://example.com/a.png")), "messages[0].content"),
        (body(messages=with_image("file:///etc/passwd")), "messages[0].content"),
        (body(messages=with_image("data:image/png;base64,@@@")), "messages[0].content"),
        (body(messages=with_image("data:text/plain;base64,aGk=")), "messages[0].content"),
        (
            body(messages=with_image("data:image/png;base64," + base64.b64encode(b"not an image").decode())),
            "messages[0].content",
        ),
        (body(max_tokens=2048), "messages"),  # prompt + max_tokens over the 2048-token context
    ],
)
def test_invalid_requests_are_400_naming_the_field(api: RunningServer, request_body: Any, param: str) -> None:
    """Each problem is a 400 in OpenAI's error shape whose `param` names the field."""
    response = post(api, request_body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]


def test_min_p_reaches_the_engine(client: OpenAI) -> None:
    """min_p 1 leaves only the likeliest token: sampling at temperature 1.5 then answers as greedy decoding does."""
    sampled = client.chat.completions.create(
        model=MODEL, messages=HELLO, max_tokens=12, temperature=1.5, seed=7, extra_body={"min_p": 1.0}
    )
    assert sampled.choices[0].message.content == greedy(client).choices[0].message.content


def test_context_overflow_has_openai_code(client: OpenAI) -> None:
    """Prompt plus max_tokens beyond the context window is code context_length_exceeded."""
    with pytest.raises(openai.BadRequestError) as caught:
        greedy(client, max_tokens=2048)
    assert caught.value.code == "context_length_exceeded"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"", b'{"model": "gateway-demo", "messages": NaN}'])
def test_malformed_bodies_are_400(api: RunningServer, raw: bytes) -> None:
    """Bodies that are not a JSON object are 400s."""
    response = post(api, raw)
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"


def test_oversized_body_and_image_are_413(api: RunningServer) -> None:
    """A body over max_frame_bytes, or an image over max_image_bytes, is 413."""
    assert post(api, b"x" * (3 << 20)).status_code == 413
    huge = "data:image/png;base64," + "A" * (3 << 19)  # 1.1 MiB decoded, in a 1.5 MiB body
    response = post(api, body(messages=with_image(huge)))
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"


def test_api_key_is_enforced(api: RunningServer) -> None:
    """With api_key set, a missing or wrong bearer token is 401 on every route."""
    for key in (None, "sk-wrong"):
        response = post(api, body(), key=key)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    wrong = OpenAI(base_url=f"{api.http_url}/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    assert post(api, body()).status_code == 200


# ---- cancellation ------------------------------------------------------------------------------


def test_client_leaving_a_stream_stops_generation(client: OpenAI, api: RunningServer, submitted: list[GenerationRequest]) -> None:
    """Dropping a long stream cancels its turn: the engine goes idle long before max_tokens."""
    stream = greedy(client, max_tokens=2000, stream=True)
    assert len(list(itertools.islice(stream, 5))) == 5
    assert api.engine.busy.is_set()
    stream.close()
    assert wait_for(lambda: submitted[-1].handle.cancelled.is_set(), 60)
    assert wait_for(lambda: not api.engine.busy.is_set(), 60)


def test_client_leaving_a_completion_stops_generation(
    client: OpenAI, api: RunningServer, submitted: list[GenerationRequest]
) -> None:
    """A non-streamed request whose client times out and hangs up is cancelled too."""
    with pytest.raises(openai.APITimeoutError):
        greedy(client.with_options(timeout=1.0), max_tokens=2000)
    assert wait_for(lambda: submitted[-1].handle.cancelled.is_set(), 60)
    assert wait_for(lambda: not api.engine.busy.is_set(), 60)


# ---- adapters ----------------------------------------------------------------------------------


def test_adapter_model_id_changes_greedy_output(client: OpenAI) -> None:
    """Choosing an adapter by model id gives different greedy output from the base model."""
    ids = [m.id for m in client.models.list()]
    adapters = [i for i in ids if i != MODEL]
    assert adapters, "the engine serves no adapters"
    base = greedy(client, max_tokens=16).choices[0].message.content
    tuned = (
        client.chat.completions.create(model=adapters[0], messages=HELLO, max_tokens=16, temperature=0).choices[0].message.content
    )
    assert tuned != base


def prompt_length(api: RunningServer, messages: Sequence[ChatMessage]) -> int:
    """The engine's own count, through its asynchronous contract (these tests are synchronous)."""
    return asyncio.run(api.engine.count_prompt_tokens(messages))


# ---- a scripted engine, for what the demo model cannot be made to do ---------------------------


class ScriptedEngine(BaseScriptedEngine):
    """The shared scripted engine, with a reply chosen by the last message: `full`, `crash`, `fail`,
    else it names the adapter."""

    def __init__(self) -> None:
        super().__init__(model_id="scripted", context_tokens=100)
        self.vision = False
        self.adapters = ("scripted-lora",)

    def count(self, messages: Sequence[ChatMessage]) -> int:
        return sum(len(m.text.split()) + 1 for m in messages)

    def submit(self, request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        command = request.messages[-1].text
        if command == "full":
            raise EngineFull()
        if command == "crash":
            raise RuntimeError("secret: /srv/model/weights.safetensors")
        text = f"adapter={request.adapter}"
        result = GenerationResult(
            finish_reason="error" if command == "fail" else "stop",
            text="" if command == "fail" else text,
            token_ids=(1, 2),
            prompt_tokens=self.count(request.messages),
            ttft_ms=1.0,
            total_ms=2.0,
            tokens_per_s=1.0,
            error="the model failed" if command == "fail" else None,
        )
        loop = asyncio.get_running_loop()
        if command != "fail":
            loop.call_soon(sink.on_token, text)
        loop.call_soon(sink.on_done, result)
        return request.handle


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve an app built here with a real uvicorn on a free loopback port; yields its base URL."""
    with serve_app(app) as url:
        yield url


@pytest.fixture(scope="module")
def scripted() -> Iterator[OpenAI]:
    with serving(create_app(Settings(), engine=ScriptedEngine())) as url:
        yield OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=30)


def ask(client: OpenAI, text: str, model: str = "scripted", **kwargs: Any) -> Any:
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kwargs)


def test_model_id_selects_the_adapter(scripted: OpenAI) -> None:
    """Adapters are listed as models; naming one sends the turn to it, naming the base sends none."""
    models = {m.id: m for m in scripted.models.list()}
    assert set(models) == {"scripted", "scripted-lora"}
    assert models["scripted-lora"].model_extra == {"parent": "scripted"}
    assert ask(scripted, "hi").choices[0].message.content == "adapter=None"
    assert ask(scripted, "hi", model="scripted-lora").choices[0].message.content == "adapter=scripted-lora"


def test_full_engine_is_503_with_retry_after(scripted: OpenAI) -> None:
    """EngineFull is a 503 `overloaded` with Retry-After, which the openai client retries on its own."""
    with pytest.raises(openai.InternalServerError) as caught:
        ask(scripted, "full")
    assert caught.value.status_code == 503 and caught.value.code == "overloaded"
    assert caught.value.response.headers["retry-after"] == "1"


def test_bug_is_500_without_internals(scripted: OpenAI) -> None:
    """An unexpected exception is a bare 500: nothing of it reaches the client."""
    with pytest.raises(openai.InternalServerError) as caught:
        ask(scripted, "crash")
    assert caught.value.status_code == 500
    assert "secret" not in caught.value.response.text and "Error" not in caught.value.response.text


def test_generation_failure_is_500_or_error_event(scripted: OpenAI) -> None:
    """A failed turn is a 500 `generation` error, or in a stream an error event the client raises."""
    with pytest.raises(openai.InternalServerError) as caught:
        ask(scripted, "fail")
    assert caught.value.code == "generation"
    with pytest.raises(openai.APIError, match="the model failed"):
        list(ask(scripted, "fail", stream=True))


def test_images_on_text_only_model_are_400(scripted: OpenAI) -> None:
    """A text-only model refuses image parts with images_unsupported."""
    with pytest.raises(openai.BadRequestError) as caught:
        scripted.chat.completions.create(model="scripted", messages=with_image(data_uri("PNG")))  # type: ignore[arg-type]
    assert caught.value.code == "images_unsupported"


def test_loading_model_is_503() -> None:
    """Before the engine is ready, the API answers 503 model_loading."""
    with serving(create_app(Settings())) as url:  # no engine and no factory: it never becomes ready
        response = requests.get(f"{url}/v1/models", timeout=10)
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_loading"
