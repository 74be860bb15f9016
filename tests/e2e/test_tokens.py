"""Scoped tokens against a real server: minted with the key, opened where the key goes, each refusal clear,
single use across two gateways on one Redis, the duration limit's close code, and no secret in the logs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway.config import Settings
from gateway.edge.tokens import TokenClaims, TokenKeys, mint, new_token_id
from tests.conftest import DemoDirs, RunningServer, free_port, start_server, wait_until
from tests.e2e.test_readme import block_after
from tests.e2e.waits import next_of

KEY = "sk-gw-token-test-key-0123456789"
SECRET, OLD_SECRET = "token-secret-now-0123456789", "token-secret-old-0123456789"
SETTINGS = Settings(
    api_key=KEY,
    token_secret=SECRET,
    token_secret_previous=OLD_SECRET,
    token_closing_grace_s=0.3,
    turns_per_minute=1e6,
    frames_per_second=1e6,
)


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, SETTINGS)
    yield running
    running.stop()


def post_token(server: RunningServer, body: dict[str, Any], key: str | None = KEY) -> tuple[int, dict[str, Any]]:
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{server.http_url}/v1/realtime/tokens", json.dumps(body).encode(), headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def minted(server: RunningServer, **body: Any) -> str:
    status, answer = await asyncio.to_thread(post_token, server, body)
    assert status == 200, answer
    return str(answer["token"])


class Client:
    """A JSON client that opens with a token in the `bearer.` subprotocol (or the Authorization header)."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self) -> dict[str, Any]:
        return dict(json.loads(await asyncio.wait_for(self.ws.recv(), 60)))

    async def until(self, *kinds: str) -> dict[str, Any]:
        return await next_of(self.recv, *kinds)


async def opened(server: RunningServer, token: str, header: bool = False) -> Client:
    if header:
        ws = await websockets.connect(
            server.ws_url, subprotocols=["gateway.json"], additional_headers={"Authorization": f"Bearer {token}"}
        )  # type: ignore[list-item]
    else:
        ws = await websockets.connect(server.ws_url, subprotocols=["gateway.json", f"bearer.{token}"])  # type: ignore[list-item]
    client = Client(ws)
    await client.until("ready")
    return client


async def refusal(server: RunningServer, token: str) -> tuple[int, str]:
    """The handshake's HTTP status and body for a token that must not open."""
    try:
        async with websockets.connect(server.ws_url, subprotocols=["gateway.json", f"bearer.{token}"]):  # type: ignore[list-item]
            return 101, ""
    except InvalidStatus as exc:
        return int(exc.response.status_code), json.loads(exc.response.body or b"{}").get("error", "")


async def turn(client: Client, turn_id: str, **options: Any) -> dict[str, Any]:
    await client.send({"type": "turn", "id": turn_id, "text": "hello", "options": {"temperature": 0, "max_tokens": 4, **options}})
    return await client.until("done", "error")


async def test_a_minted_token_opens_a_connection_that_serves_turns(server: RunningServer) -> None:
    """A token from POST /v1/realtime/tokens opens /ws in a `bearer.` subprotocol and in the Authorization header."""
    for header in (False, True):
        client = await opened(server, await minted(server), header=header)
        assert (await turn(client, "t1"))["type"] == "done"
        await client.ws.close()


async def test_minting_needs_the_key_and_a_bounded_body(server: RunningServer) -> None:
    """Without the key minting is 401; an unknown field, a TTL past the server's limit or a model not served is 400."""
    assert (await asyncio.to_thread(post_token, server, {}, None))[0] == 401
    assert (await asyncio.to_thread(post_token, server, {"colour": "red"}))[0] == 400
    status, answer = await asyncio.to_thread(post_token, server, {"ttl_s": 10**6})
    assert status == 400 and answer["error"]["param"] == "ttl_s"
    status, answer = await asyncio.to_thread(post_token, server, {"model": "not-served"})
    assert status == 400 and answer["error"]["param"] == "model"


async def test_an_expired_token_is_refused(server: RunningServer) -> None:
    """A token past its time to open is refused at the handshake as expired."""
    token = await minted(server, ttl_s=0.2)
    await asyncio.sleep(0.4)
    assert await refusal(server, token) == (401, "token expired")


async def test_a_single_use_token_opens_once(server: RunningServer) -> None:
    """The second handshake with a single-use token is refused as used; a multi-use one opens again."""
    token = await minted(server)
    client = await opened(server, token)
    assert await refusal(server, token) == (401, "token used")
    await client.ws.close()
    again = await minted(server, single_use=False)
    for _ in range(2):
        await (await opened(server, again)).ws.close()


async def test_a_forged_token_is_refused(server: RunningServer) -> None:
    """A payload swapped under another token's signature is refused as a bad signature."""
    prefix, _, mac = (await minted(server, model="gateway-demo")).split(".")
    other_payload = (await minted(server, single_use=False)).split(".")[1]
    assert await refusal(server, f"{prefix}.{other_payload}.{mac}") == (401, "token bad_signature")


async def test_the_previous_secret_is_accepted_and_others_are_not(server: RunningServer) -> None:
    """After a rotation a token signed with the previous secret opens; one signed with an unknown secret does not."""

    def signed(secret: str) -> str:
        return mint(TokenClaims(id=new_token_id(), issued_at=0, expires_at=4e9, session_s=60), TokenKeys(secret))

    await (await opened(server, signed(OLD_SECRET))).ws.close()
    assert await refusal(server, signed("never-configured-secret")) == (401, "token bad_signature")


async def test_a_turn_on_another_model_is_refused(server: RunningServer) -> None:
    """A model-bound token's turn naming another model is `token_limit`; the connection stays usable."""
    client = await opened(server, await minted(server, model="gateway-demo"))
    refused = await turn(client, "t1", model="another-model")
    assert (refused["type"], refused["code"], refused["id"]) == ("error", "token_limit", "t1")
    assert (await turn(client, "t2"))["type"] == "done"
    await client.ws.close()


async def test_a_session_bound_token_resumes_only_its_session(server: RunningServer) -> None:
    """Bound to a session: a turn before resuming it, a resume of another and a fork (a new session) are
    `token_limit`; its own resumes."""
    owner = await websockets.connect(server.ws_url, subprotocols=["gateway.json", f"bearer.{KEY}"])  # type: ignore[list-item]
    ready = await Client(owner).until("ready")
    await owner.close()
    client = await opened(server, await minted(server, session=ready["session"]))
    assert (await turn(client, "t1"))["code"] == "token_limit"
    await client.send({"type": "resume", "id": "r1", "session": "someone-else", "token": "x", "last_seq": 0})
    assert (await client.until("error"))["code"] == "token_limit"
    await client.send({"type": "resume", "id": "r2", "session": ready["session"], "token": ready["resume_token"], "last_seq": 0})
    assert (await client.until("resumed", "error"))["type"] == "resumed"
    assert (await turn(client, "t2"))["type"] == "done"
    await client.send({"type": "fork", "id": "f1"})
    refusal = await client.until("forked", "error")
    assert (refusal["type"], refusal["code"], refusal["id"]) == ("error", "token_limit", "f1")
    assert (await turn(client, "t3"))["type"] == "done"
    await client.ws.close()


async def test_limits_cap_max_tokens_and_spend_the_turn_budget(server: RunningServer) -> None:
    """`max_tokens` is capped to the token's; past its turn budget a turn is `token_limit`; tools are refused."""
    client = await opened(server, await minted(server, max_tokens=2, turns=2, tools=False))
    done = await turn(client, "t1", max_tokens=50, ignore_eos=True)
    assert done["type"] == "done" and done["usage"]["completion_tokens"] <= 2
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    assert (await turn(client, "t2", tools=[tool]))["code"] == "token_limit"
    assert (await turn(client, "t3"))["type"] == "done"
    assert (await turn(client, "t4"))["code"] == "token_limit"
    await client.ws.close()


async def test_the_session_duration_closes_with_the_documented_code(server: RunningServer) -> None:
    """At `session_s` a `closing` notice with `grace_ms` comes, then after the grace the close with 4004."""
    client = await opened(server, await minted(server, session_s=0.3))
    notice = await client.until("closing")
    assert (notice["code"], notice["grace_ms"]) == (4004, 300)
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await client.until("never")
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4004


async def test_single_use_holds_across_two_gateways_on_one_redis(demo_dirs: DemoDirs, redis_url: str) -> None:
    """A token used on one gateway is refused on another sharing its Redis and its secret."""
    settings = SETTINGS.replace(session_store=redis_url.rsplit("/", 1)[0] + "/5")
    first, second = start_server(demo_dirs.model, settings), start_server(demo_dirs.model, settings)
    try:
        token = await minted(first)
        client = await opened(first, token)
        assert await refusal(second, token) == (401, "token used")
        await client.ws.close()
        await (await opened(second, await minted(first))).ws.close()  # a fresh one opens on either
    finally:
        first.stop()
        second.stop()


async def test_no_token_or_key_reaches_the_logs(server: RunningServer, caplog: pytest.LogCaptureFixture) -> None:
    """Minting, opening, reuse and refusals, logged at debug level, never show a token, the key or the secret."""
    caplog.set_level(logging.DEBUG)
    token = await minted(server)
    client = await opened(server, token)
    await turn(client, "t1")
    await refusal(server, token)
    await refusal(server, token[:-3] + "AAA")
    await client.ws.close()
    await asyncio.sleep(0.1)
    assert caplog.records
    for secret in (token, token.split(".")[1], token.split(".")[2], KEY, SECRET):
        assert secret not in caplog.text


async def test_the_readme_backend_mints_a_token_that_opens(server: RunningServer, tmp_path: Path) -> None:
    """The README's ten-line backend, run as written against this server, answers a token a browser can open with."""
    code = block_after("### Scoped tokens for browsers", "python").replace("8080", str(port := free_port()))
    script = tmp_path / "backend.py"
    script.write_text(code)
    env = {**os.environ, "GATEWAY_URL": server.http_url, "GATEWAY_API_KEY": KEY}
    backend = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE)
    try:
        await wait_until(lambda: _listening(port), 120)
        with urllib.request.urlopen(
            urllib.request.Request(f"http://127.0.0.1:{port}/", b"", method="POST"), timeout=10
        ) as answer:
            token = json.loads(answer.read())["token"]
        client = await opened(server, token)
        assert (await turn(client, "t1"))["type"] == "done"
        await client.ws.close()
    finally:
        backend.terminate()
        backend.wait(10)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False
