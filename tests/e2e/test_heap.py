"""The serving process's heap: what start-up made is out of the cyclic collector's sight."""

from __future__ import annotations

import gc

from tests.conftest import RunningServer


def test_start_up_objects_are_frozen_out_of_full_collections(server: RunningServer) -> None:
    """Once the engine is served, the engine and the app are in the permanent generation: a full
    collection walks only the objects made since, not start-up's hundreds of thousands."""
    tracked = gc.get_objects()
    assert gc.get_freeze_count() > len(tracked)
    assert all(obj is not server.engine and obj is not server.app for obj in tracked)
