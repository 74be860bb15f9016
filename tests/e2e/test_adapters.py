"""Adapters at run time on a real server: loaded by POST /v1/adapters, served on both front ends, unloaded under load."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from gateway.client import GatewayClient, TurnResult
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server, wait_until

ADMIN, KEY = "admin-secret", "api-secret"
AS_ADMIN = {"Authorization": f"Bearer {ADMIN}"}
AS_USER = {"Authorization": f"Bearer {KEY}"}
PROMPT = "Tell me a story."
LONG = 256  # tokens a turn runs for: the unload starts while every turn is still decoding


@pytest.fixture(scope="module")
def running(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    settings = Settings(api_key=KEY, admin_key=ADMIN, max_adapters=2, turns_per_minute=1e6, frames_per_second=1e6)
    server = start_server(demo_dirs.model, settings)
    yield server
    server.stop()


def load(server: RunningServer, name: str, path: object, headers: dict[str, str] = AS_ADMIN) -> requests.Response:
    return requests.post(f"{server.http_url}/v1/adapters", json={"name": name, "path": str(path)}, headers=headers, timeout=60)


def unload(server: RunningServer, name: str, headers: dict[str, str] = AS_ADMIN) -> requests.Response:
    return requests.delete(f"{server.http_url}/v1/adapters/{name}", headers=headers, timeout=120)


def client(server: RunningServer) -> GatewayClient:
    return GatewayClient(server.ws_url, additional_headers=AS_USER)


def completion(server: RunningServer, model: str, max_tokens: int = 24) -> requests.Response:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    body |= {"temperature": 0, "max_tokens": max_tokens}
    return requests.post(f"{server.http_url}/v1/chat/completions", json=body, headers=AS_USER, timeout=60)


async def first_token(ws: GatewayClient, turn_id: str) -> TurnResult:
    """The turn's frames up to its first token: it is decoding."""
    result = TurnResult(id=turn_id)
    while not result.deltas:
        frame = await ws.recv()
        if frame["type"] == "accepted":
            result.accepted = frame
        elif frame["type"] == "token":
            result.deltas.append(frame["text"])
        assert frame["type"] != "error", frame
    return result


def model_ids(server: RunningServer) -> list[str]:
    listed = requests.get(f"{server.http_url}/v1/models", headers=AS_USER, timeout=10).json()
    return [entry["id"] for entry in listed["data"]]


async def test_a_loaded_adapter_is_listed_and_served_on_both_front_ends(running: RunningServer, demo_dirs: DemoDirs) -> None:
    """After a load, /v1/models, /status and `ready` list it; a WebSocket turn and a /v1 completion naming it get
    its own greedy reply, not the base model's; after the unload none lists it."""
    loaded = load(running, "tuned", demo_dirs.adapter)
    assert loaded.status_code == 201, loaded.text
    assert loaded.json() | {"created": 0} == {
        "id": "tuned",
        "object": "model",
        "created": 0,
        "owned_by": "gateway",
        "parent": "gateway-demo",
    }
    assert model_ids(running) == ["gateway-demo", "tuned"]
    assert requests.get(f"{running.http_url}/status", timeout=10).json()["adapters"] == ["tuned"]
    async with client(running) as ws:
        assert ws.ready["models"] == ["gateway-demo", "tuned"]
        tuned = await ws.turn("t", PROMPT, max_tokens=24, temperature=0, model="tuned")
        base = await ws.turn("b", PROMPT, max_tokens=24, temperature=0)
    assert tuned.done is not None and base.done is not None
    assert tuned.done["text"] != base.done["text"]
    over_http = completion(running, "tuned")
    assert (
        over_http.status_code == 200
        and over_http.json()["choices"][0]["message"]["content"]
        != completion(running, "gateway-demo").json()["choices"][0]["message"]["content"]
    )
    assert unload(running, "tuned").json() == {"id": "tuned", "object": "model", "deleted": True}
    assert model_ids(running) == ["gateway-demo"]


def test_loading_needs_the_admin_key_when_one_is_set(running: RunningServer, demo_dirs: DemoDirs) -> None:
    """With an admin key set, the API key does not load or unload adapters, nor does no key: 401 both."""
    for headers in (AS_USER, {}):
        assert load(running, "tuned", demo_dirs.adapter, headers).status_code == 401
        assert unload(running, "tuned", headers).status_code == 401
    assert model_ids(running) == ["gateway-demo"]


def test_a_bad_adapter_is_one_clear_error(running: RunningServer, demo_dirs: DemoDirs) -> None:
    """A missing path, or a directory that is no adapter, is a 400 `bad_adapter` naming `path`; a bad name or an
    unknown field a 400 `invalid_field`; unloading an unknown adapter a 404 `not_found`."""
    for path in ("/nonexistent/adapter", demo_dirs.model):
        error = load(running, "tuned", path).json()["error"]
        assert (error["code"], error["param"]) == ("bad_adapter", "path"), error
    assert load(running, "bad:name", demo_dirs.adapter).json()["error"]["code"] == "invalid_field"
    extra = requests.post(
        f"{running.http_url}/v1/adapters", json={"name": "x", "path": "/x", "rank": 4}, headers=AS_ADMIN, timeout=10
    )
    assert extra.status_code == 400 and extra.json()["error"]["code"] == "invalid_field"
    missing = unload(running, "never")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert model_ids(running) == ["gateway-demo"]


def test_max_adapters_bounds_the_adapters_served(running: RunningServer, demo_dirs: DemoDirs) -> None:
    """With max_adapters adapters loaded another load is refused (413 `too_large`, param `name`) until one goes."""
    assert [load(running, name, demo_dirs.adapter).status_code for name in ("a1", "a2")] == [201, 201]
    refused = load(running, "a3", demo_dirs.adapter)
    assert refused.status_code == 413 and (refused.json()["error"]["code"], refused.json()["error"]["param"]) == (
        "too_large",
        "name",
    )
    assert unload(running, "a1").status_code == 200
    assert load(running, "a3", demo_dirs.adapter).status_code == 201
    assert [unload(running, name).status_code for name in ("a2", "a3")] == [200, 200]


async def test_unloading_under_load_loses_no_turn(running: RunningServer, demo_dirs: DemoDirs) -> None:
    """Turns running on an adapter when its unload starts finish whole; meanwhile a new turn naming it is
    `not_found` (WebSocket) or 404 (/v1); the DELETE answers once it is gone."""
    assert load(running, "busy", demo_dirs.adapter).status_code == 201
    clients = [client(running) for _ in range(3)]
    for ws in clients:
        await ws.__aenter__()
    try:
        for i, ws in enumerate(clients):
            await ws.start_turn(f"r{i}", PROMPT, max_tokens=LONG, ignore_eos=True, temperature=0, model="busy")
        started = [await first_token(ws, f"r{i}") for i, ws in enumerate(clients)]
        deleting = asyncio.create_task(asyncio.to_thread(unload, running, "busy"))
        await wait_until(lambda: running.engine.unloading("busy"))
        running_then = running.engine.load().active
        async with client(running) as late:
            refused = await late.turn("late", PROMPT, max_tokens=4, model="busy")
        refused_http = await asyncio.to_thread(completion, running, "busy", 4)
        results = [await ws.collect(f"r{i}", result) for (i, ws), result in zip(enumerate(clients), started)]
        deleted = await deleting
    finally:
        for ws in clients:
            await ws.__aexit__(None, None, None)
    assert running_then == 3  # the unload began with every turn on the adapter still decoding
    assert [(r.done or {}).get("finish_reason") for r in results] == ["length"] * 3
    assert [r.done["usage"]["completion_tokens"] for r in results if r.done] == [LONG] * 3
    assert refused.errors and refused.errors[0]["code"] == "not_found" and refused.done is None
    assert refused_http.status_code == 404
    assert deleted.status_code == 200 and model_ids(running) == ["gateway-demo"]
