"""A scripted OpenAI-compatible server on a real uvicorn: streams words, or misbehaves as told."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.vllm_support import free_port

CONTEXT_MESSAGE = "This model's maximum context length is 64 tokens. However, you requested 90 tokens."


class FakeUpstream:
    """Streams `max_tokens` words, or misbehaves as `mode` says: 429 and 503 (with Retry-After), 500,
    context (vLLM's 400), overloaded_chunk (a word, then an error chunk naming 503), stall, slow,
    slow_health (streams, but answers /health late), paced (a word every 20 ms), no_lora (vLLM without runtime
    LoRA updating: its adapter endpoints are 404), down (restarting: /health is 503). Adapters load, unload and
    are listed in /v1/models as vLLM's are; `events` records their loads, unloads and each stream's end, in order."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests = 0
        self.health_checks = 0  # /health requests begun
        self.traceparents: list[str | None] = []  # each chat request's W3C trace context header
        self.chat_models: list[str] = []  # each chat request's `model`
        self.loras: dict[str, str] = {}  # adapters loaded: name -> path
        self.events: list[str] = []  # "load NAME", "unload NAME", "end MODEL", in order
        self.port = free_port()
        routes = [
            Route("/v1/chat/completions", self.chat, methods=["POST"]),
            Route("/tokenize", self.tokenize, methods=["POST"]),
            Route("/health", self.health),
            Route("/v1/models", self.models),
            Route("/v1/load_lora_adapter", self.load_lora, methods=["POST"]),
            Route("/v1/unload_lora_adapter", self.unload_lora, methods=["POST"]),
        ]
        self.server = uvicorn.Server(
            uvicorn.Config(Starlette(routes=routes), host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def health(self, request: Request) -> Response:
        self.health_checks += 1
        if self.mode == "slow_health":
            await asyncio.sleep(2.5)  # past the engine's 1 s health timeout
        return Response(status_code=503 if self.mode == "down" else 200)

    async def models(self, request: Request) -> Response:
        loras = [{"id": name, "object": "model", "parent": "fake"} for name in self.loras]
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}, *loras]})

    async def load_lora(self, request: Request) -> Response:
        """As vLLM's: a path it cannot read, or a name taken, is a 400; success is plain text."""
        body = await request.json()
        name, path = body["lora_name"], body["lora_path"]
        if self.mode == "no_lora":
            return JSONResponse({"detail": "Not Found"}, 404)
        if name in self.loras or not path.startswith("/ok"):
            message = f"Loading lora {name} failed: No adapter found for {path}"
            return JSONResponse({"error": {"message": message, "type": "BadRequestError", "code": 400}}, 400)
        self.loras[name] = path
        self.events.append(f"load {name}")
        return Response(f"Success: LoRA adapter '{name}' added successfully.")

    async def unload_lora(self, request: Request) -> Response:
        name = (await request.json())["lora_name"]
        if self.loras.pop(name, None) is None:
            message = f"The lora adapter '{name}' cannot be found."
            return JSONResponse({"error": {"message": message, "type": "NotFoundError", "code": 404}}, 404)
        self.events.append(f"unload {name}")
        return Response(f"Success: LoRA adapter '{name}' removed successfully.")

    async def tokenize(self, request: Request) -> Response:
        return JSONResponse({"count": 5, "max_model_len": 1024, "tokens": [1, 2, 3, 4, 5]})

    async def chat(self, request: Request) -> Response:
        self.requests += 1
        self.traceparents.append(request.headers.get("traceparent"))
        body = await request.json()
        self.chat_models.append(body["model"])
        if self.mode == "429":
            return JSONResponse({"error": {"message": "full"}}, 429, headers={"Retry-After": "7"})
        if self.mode == "503":
            return JSONResponse({"error": {"message": "busy"}}, 503, headers={"Retry-After": "3"})
        if self.mode == "500":
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if body["model"] not in ("fake", *self.loras):  # as vLLM answers for an adapter it does not hold
            return JSONResponse({"object": "error", "message": f"The model `{body['model']}` does not exist.", "code": 404}, 404)
        if self.mode == "context":
            return JSONResponse({"object": "error", "message": CONTEXT_MESSAGE, "type": "BadRequestError", "code": 400}, 400)
        return StreamingResponse(self.stream(body["max_tokens"], body["model"]), media_type="text/event-stream")

    async def stream(self, max_tokens: int, model: str = "fake") -> AsyncIterator[str]:
        if self.mode == "slow":
            await asyncio.sleep(30)
        for i in range(max_tokens):
            chunk = {"choices": [{"index": 0, "delta": {"content": f" w{i}"}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            if self.mode == "stall":
                await asyncio.sleep(30)
            if self.mode == "paced":
                await asyncio.sleep(0.02)
            if self.mode == "overloaded_chunk":
                await asyncio.sleep(0.05)  # the word reaches the client before the error does
                yield f"data: {json.dumps({'error': {'message': 'engine overloaded', 'code': 503}})}\n\n"
                return
        usage = {"prompt_tokens": 5, "completion_tokens": max_tokens, "total_tokens": 5 + max_tokens}
        yield f"data: {json.dumps({'choices': [{'index': 0, 'delta': {}, 'finish_reason': 'length'}]})}\n\n"
        self.events.append(f"end {model}")
        yield f"data: {json.dumps({'choices': [], 'usage': usage})}\n\ndata: [DONE]\n\n"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
