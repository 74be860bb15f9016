"""Adapters at run time in front of a real vLLM (started with --enable-lora and runtime LoRA updating): the
gateway's POST and DELETE /v1/adapters are forwarded to vLLM's own endpoints, and turns on the adapter run on it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gateway.client import GatewayClient
from gateway.config import Settings
from tests.e2e.test_upstream_vllm import Gateway, start_gateway
from tests.vllm_support import VllmServer, free_port, start_vllm, wait_ready, write_vision_lora, write_vision_model

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

ADMIN = {"Authorization": "Bearer admin-key"}


@pytest.fixture(scope="module")
def lora_vllm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[VllmServer, Path]]:
    root = tmp_path_factory.mktemp("vllm-lora")
    model = write_vision_model(root / "model")
    adapter = write_vision_lora(model, root / "adapter")
    server = start_vllm(model, free_port(), root, lora_rank=8)
    try:
        wait_ready(server, timeout_s=600)
        yield server, adapter
    finally:
        server.kill()


@pytest.fixture(scope="module")
def gateway(lora_vllm: tuple[VllmServer, Path]) -> Iterator[Gateway]:
    running = start_gateway(Settings(upstreams=lora_vllm[0].url, admin_key="admin-key"))
    yield running
    running.stop()


def vllm_models(server: VllmServer) -> list[str]:
    with urllib.request.urlopen(f"{server.url}/v1/models", timeout=10) as answer:
        return [entry["id"] for entry in json.loads(answer.read())["data"]]


async def test_loads_and_unloads_are_forwarded_and_turns_run_on_the_adapter(
    gateway: Gateway, lora_vllm: tuple[VllmServer, Path]
) -> None:
    """A load reaches vLLM (its /v1/models lists the adapter), a turn naming it gets vLLM's reply with the adapter,
    a bad path is `bad_adapter` with vLLM's reason, and an unload removes it from vLLM too."""
    vllm, adapter = lora_vllm
    url = f"http://127.0.0.1:{gateway.port}"
    loaded = requests.post(f"{url}/v1/adapters", json={"name": "tuned", "path": str(adapter)}, headers=ADMIN, timeout=120)
    assert loaded.status_code == 201, loaded.text
    assert "tuned" in vllm_models(vllm)
    async with GatewayClient(gateway.ws_url) as client:
        assert client.ready["models"] == ["tiny-vlm", "tuned"]
        base = await client.turn("b", "the red house", max_tokens=8, temperature=0)
        tuned = await client.turn("t", "the red house", max_tokens=8, temperature=0, model="tuned")
    assert base.done is not None and tuned.done is not None, (base.errors, tuned.errors)
    assert tuned.done["text"] != base.done["text"]
    bad = requests.post(f"{url}/v1/adapters", json={"name": "bad", "path": "/nonexistent"}, headers=ADMIN, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_adapter", bad.text
    gone = requests.delete(f"{url}/v1/adapters/tuned", headers=ADMIN, timeout=60)
    assert gone.status_code == 200 and "tuned" not in vllm_models(vllm)


async def test_a_restarted_vllm_gets_the_run_time_adapter_again(
    gateway: Gateway, lora_vllm: tuple[VllmServer, Path], tmp_path: Path
) -> None:
    """vLLM holds run-time adapters in memory only: after it restarts, the gateway's health check loads the adapter
    on it again unasked, and a turn naming it gets the same greedy reply as before the restart."""
    vllm, adapter = lora_vllm
    url = f"http://127.0.0.1:{gateway.port}"
    loaded = requests.post(f"{url}/v1/adapters", json={"name": "tuned", "path": str(adapter)}, headers=ADMIN, timeout=120)
    assert loaded.status_code == 201, loaded.text
    async with GatewayClient(gateway.ws_url) as client:
        before = await client.turn("t", "the red house", max_tokens=8, temperature=0, model="tuned")
    vllm.kill()
    again = start_vllm(adapter.parent / "model", vllm.port, tmp_path, lora_rank=8)
    try:
        await asyncio.to_thread(wait_ready, again, 600)
        while "tuned" not in await asyncio.to_thread(vllm_models, again):  # nobody but the gateway loads it
            await asyncio.sleep(0.5)
        async with GatewayClient(gateway.ws_url) as client:
            after = await client.turn("t", "the red house", max_tokens=8, temperature=0, model="tuned")
    finally:
        again.kill()
    assert before.done is not None and after.done is not None, (before.errors, after.errors)
    assert after.done["text"] == before.done["text"]
