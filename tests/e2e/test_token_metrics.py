"""Scoped tokens on /metrics: each one minted counted, each refused at the handshake counted by its reason."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_tokens import KEY, SETTINGS, minted, opened, refusal


@pytest.fixture(scope="module")
def counted(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, SETTINGS)
    yield running
    running.stop()


def token_counts(server: RunningServer) -> dict[str, float]:
    """`minted` and `refused:<reason>` as /metrics says now."""
    body = requests.get(f"{server.http_url}/metrics", headers={"Authorization": f"Bearer {KEY}"}, timeout=10).text
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == "gateway_scoped_tokens_minted_total":
                counts["minted"] = sample.value
            elif sample.name == "gateway_scoped_tokens_refused_total":
                counts[f"refused:{sample.labels['reason']}"] = sample.value
    return counts


async def test_tokens_minted_and_refused_are_counted_by_reason(counted: RunningServer) -> None:
    """Two mints, one reuse of a single-use token, one malformed and one expired token: each counted once, by reason."""
    assert token_counts(counted) == {"minted": 0}
    token = await minted(counted)
    client = await opened(counted, token)
    assert (await refusal(counted, token))[0] == 401
    await client.ws.close()
    assert (await refusal(counted, "gw1.not-a-token"))[0] == 401
    expiring = await minted(counted, ttl_s=0.05)
    await asyncio.sleep(0.2)
    assert (await refusal(counted, expiring))[0] == 401
    assert token_counts(counted) == {"minted": 2, "refused:used": 1, "refused:malformed": 1, "refused:expired": 1}
