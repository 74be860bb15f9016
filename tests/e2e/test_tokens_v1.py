"""/v1 takes no scoped token: each of a token's limits is a connection's, and a stateless request has none."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from gateway.openai.routes import SCOPED_ON_HTTP
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_tokens import KEY, SETTINGS, minted, opened


@pytest.fixture(scope="module")
def scoped(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, SETTINGS)
    yield running
    running.stop()


def completion(server: RunningServer, credential: str) -> requests.Response:
    body = {"model": "gateway-demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    headers = {"Authorization": f"Bearer {credential}"}
    return requests.post(f"{server.http_url}/v1/chat/completions", json=body, headers=headers, timeout=60)


async def test_a_scoped_token_on_v1_is_refused_and_stays_unused(scoped: RunningServer) -> None:
    """A minted token on /v1/chat/completions is 401 `invalid_api_key` saying it opens a WebSocket session only;
    the refusal does not spend it (it still opens its one connection), and the API key is answered as before."""
    token = await minted(scoped)
    refused = completion(scoped, token)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
    assert refused.json()["error"]["message"] == SCOPED_ON_HTTP and token not in refused.text
    client = await opened(scoped, token)
    await client.ws.close()
    assert completion(scoped, KEY).status_code == 200
    assert completion(scoped, "sk-not-the-key").json()["error"]["message"] == "missing or incorrect API key"
