"""Held KV prefixes on a real server: cached tokens reach `done`, OpenAI's usage and /metrics, and an
image seen before skips the vision tower."""

from __future__ import annotations

from tests.conftest import RunningServer
from tests.unit.engine.test_prefix_cache import picture


async def test_cached_tokens_reach_done_openai_usage_and_metrics(server: RunningServer) -> None:
    """A session's second turn reuses the first's KV: `done.usage.cached_tokens`; a stateless client
    resending a conversation gets OpenAI's `prompt_tokens_details.cached_tokens`; /metrics holds bytes."""
    import requests

    from gateway.client import GatewayClient

    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("a", "tell me about the sky", max_tokens=8, temperature=0)
        second = await client.turn("b", "and the sea?", max_tokens=4, temperature=0)
    assert first.done and second.done and first.done["usage"]["cached_tokens"] == 0
    assert client.ready["limits"]["kv_cache_bytes"] == server.engine.load().kv_cache_budget == 256 << 20
    assert client.ready["limits"]["kv_spill_bytes"] == 0  # nothing spills on the CPU
    assert second.done["usage"]["cached_tokens"] > first.done["usage"]["prompt_tokens"] // 2
    body = {"model": "gateway-demo", "messages": [{"role": "user", "content": "hello there sky"}], "max_tokens": 4}
    url = f"{server.http_url}/v1/chat/completions"
    answer = requests.post(url, json=body, timeout=60).json()
    body["messages"] += [
        {"role": "assistant", "content": answer["choices"][0]["message"]["content"]},
        {"role": "user", "content": "more"},
    ]
    again = requests.post(url, json=body, timeout=60).json()
    assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    metrics = requests.get(f"{server.http_url}/metrics", timeout=10).text
    held = next(line for line in metrics.splitlines() if line.startswith("gateway_kv_cache_bytes "))
    assert float(held.split()[1]) > 0


async def test_an_image_seen_before_skips_the_vision_tower_over_websockets(server: RunningServer) -> None:
    """A second session sending a picture the first sent, after its own system prompt (so no KV is
    shared), takes the picture's held encoder output: /metrics counts the hit and the held bytes."""
    import requests

    from gateway.client import GatewayClient

    def metric(name: str) -> float:
        text = requests.get(f"{server.http_url}/metrics", timeout=10).text
        return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[1])

    image = picture(60).data
    async with GatewayClient(server.ws_url) as client:
        first = await client.turn("a", "what is this", [image], max_tokens=2, temperature=0)
    hits = metric("gateway_encoder_cache_hits")
    async with GatewayClient(server.ws_url) as client:
        await client.request({"type": "configure", "system": "Answer in one word."})
        second = await client.turn("b", "and this", [image], max_tokens=2, temperature=0)
    assert first.done and second.done and second.done["usage"]["cached_tokens"] < first.done["usage"]["prompt_tokens"] // 2
    assert metric("gateway_encoder_cache_hits") == hits + 1 and metric("gateway_encoder_cache_bytes") > 0
