"""The bench's engine profile: shares of the engine's busy time by phase and of the gateway's CPU by thread."""

from __future__ import annotations

import os
import threading

from gateway.bench.profile import Reading, cpu_seconds, read, shares
from gateway.engine.local.profile import name_os_thread


def test_shares_are_of_the_busy_time_between_two_readings() -> None:
    """Waiting is reported apart; the other phases' growth splits the engine's busy time, threads the CPU."""
    before = Reading({"waiting": 1.0, "decode": 2.0, "prefill": 1.0}, {"gateway-engine": 3.0, "python": 1.0})
    after = Reading({"waiting": 4.0, "decode": 5.0, "prefill": 2.0}, {"gateway-engine": 9.0, "python": 3.0, "pool": 0.0})
    profile = shares(before, after)
    assert profile["engine_busy_s"] == 4.0 and profile["engine_waiting_s"] == 3.0
    assert profile["engine_phase_share"] == {"decode": 0.75, "prefill": 0.25}
    assert profile["gateway_cpu_share_by_thread"] == {"gateway-engine": 0.75, "python": 0.25}


def test_this_process_threads_are_read_by_name() -> None:
    """A named thread of this process shows in the reading; a gone process reads as nothing."""
    done = threading.Event()
    named = threading.Event()

    def probe() -> None:
        name_os_thread("bench-probe")
        named.set()
        done.wait()

    worker = threading.Thread(target=probe)
    worker.start()
    named.wait()
    try:
        reading = read("ws://127.0.0.1:9/ws", os.getpid())  # no gateway there: no phases
    finally:
        done.set()
        worker.join()
    assert reading.phases == {} and "bench-probe" in reading.threads
    assert cpu_seconds("/proc/0/stat") == ("", 0.0)
