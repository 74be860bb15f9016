"""End to end: /metrics counts every live frame once, as its window did: accepted, merged or dropped."""

from __future__ import annotations

import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.client import GatewayClient
from tests.conftest import RunningServer
from tests.e2e.test_live_window_ws import BLUE, RED, stream, window_of

NAMES = ("accepted", "merged", "dropped")


def live_counters(server: RunningServer) -> dict[str, float]:
    body = requests.get(f"{server.http_url}/metrics", timeout=10).text
    values = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    return {name: values[f"gateway_live_frames_{name}_total"] for name in NAMES}


async def test_each_frame_is_counted_once_as_its_window_counted_it(server: RunningServer) -> None:
    """A burst past the rate (the server's default of 2 a second): the metrics move by exactly the window's
    own counts, and together by every frame sent."""
    before = live_counters(server)
    async with GatewayClient(server.ws_url) as client:
        await stream(client, [(RED, 0), (RED, 10), (BLUE, 20), (BLUE, 30), (RED, 40), (BLUE, 50)])
        window = window_of(server, client)
    after = live_counters(server)
    moved = {name: after[name] - before[name] for name in NAMES}
    assert moved == {"accepted": window.counters.accepted, "merged": window.counters.merged, "dropped": window.counters.dropped}
    assert sum(moved.values()) == 6 and moved["accepted"] >= 1
