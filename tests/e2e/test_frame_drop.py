"""A frame of half a million free-form JSON values, refused, on a real server: letting it go holds up no other client."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_grammar_attack import GREEDY, wide_format
from tests.loop_watch import watching


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    settings = Settings(turns_per_minute=1e6, frames_per_second=1e6, inbound_bytes_per_second=64 * 1024 * 1024)
    running = start_server(demo_dirs.model, settings)
    yield running
    running.stop()


async def test_a_refused_frame_of_half_a_million_values_is_let_go_in_slices(server: RunningServer) -> None:
    """Turns whose schema holds 500k values (just under the free-form bound, past max_grammar_bytes):
    each `invalid_field`, and no event-loop callback takes 50 ms of CPU, freeing the frame included."""
    async with GatewayClient(server.ws_url, compression=None) as client:
        with watching(server.thread) as watch:
            for seed in range(3):
                refused = await client.turn(f"w{seed}", "x", max_tokens=2, response_format=wide_format(seed, 250), **GREEDY)
                assert refused.errors[0]["code"] == "invalid_field" and refused.done is None
            after = await client.turn("after", "hello", max_tokens=2, **GREEDY)
    assert after.done is not None
    print(f"\n[drop] slowest loop callback {watch.slowest_ms:.1f} ms CPU of {watch.callbacks}; over: {watch.slow}")
    watch.check()
