"""The serving process's heap: what start-up made is out of the cyclic collector's sight."""

from __future__ import annotations

import gc

from tests.conftest import DemoDirs, RunningServer, start_server


def test_start_up_objects_are_frozen_out_of_full_collections(server: RunningServer) -> None:
    """Once the engine is served, the engine and the app are in the permanent generation: a full
    collection walks only the objects made since, not start-up's hundreds of thousands."""
    tracked = gc.get_objects()
    assert gc.get_freeze_count() > len(tracked)
    assert all(obj is not server.engine and obj is not server.app for obj in tracked)


def test_a_stopped_server_gives_its_objects_back_to_the_collector(demo_dirs: DemoDirs) -> None:
    """A process that serves again (these tests start many servers in one) keeps no stopped server's
    reference cycles for ever: the stop unfreezes what start-up froze."""
    running = start_server(demo_dirs.model)
    assert gc.get_freeze_count() > 0
    running.stop()
    assert gc.get_freeze_count() == 0
