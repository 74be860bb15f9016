"""permessage-deflate that leaves big messages alone, on a real server: a `history` with megabytes of images
is sent without the event loop deflating it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.config import Settings
from tests.conftest import DemoDirs, RunningServer, start_server
from tests.e2e.test_abandoned import From
from tests.e2e.test_image_budget import noise_png
from tests.loop_watch import watching


@pytest.fixture(scope="module")
def server(demo_dirs: DemoDirs) -> Iterator[RunningServer]:
    running = start_server(demo_dirs.model, Settings(turns_per_minute=1e6))
    yield running
    running.stop()


async def test_history_with_megabytes_of_images_does_not_deflate_on_the_loop(server: RunningServer) -> None:
    """A compressing client asks for a history with 3 MB of images: it arrives whole, and no event-loop
    callback spends 50 ms of CPU on it (deflating it took about 40 ms a MiB)."""
    images = [noise_png(seed, 700) for seed in (11, 12)]
    client = await From(server.ws_url, "127.0.2.1").open()
    assert client.ws.protocol.extensions, "the server negotiated permessage-deflate"
    await client.send({"type": "turn", "id": "t", "text": "look", "images": images, "options": {"max_tokens": 1}})
    await client.until("done")
    with watching(server.thread) as watch:
        await client.send({"type": "history", "id": "h", "include_images": True})
        history = await client.until("history")
    watch.check()
    assert [i["data"] for i in history["turns"][0]["images"]] == images
    await client.close()
