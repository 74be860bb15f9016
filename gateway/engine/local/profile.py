"""Where the generation thread's time goes, by phase, as running totals: the engine profile."""

from __future__ import annotations

import ctypes
import sys
import time

# waiting: blocked for work; prompts: building them; prefill: whole prefill passes (images included); chunks:
# joiners' chunk passes; decode: the batch's decode passes; sampling: logits masks and token choice; streaming:
# detokenizing and handing events to the event loops; joins: rows into and out of the batch's KV; holding:
# finished turns' KV copied out for reuse; errands: adapters' swaps between steps.
PHASES = ("waiting", "prompts", "prefill", "chunks", "decode", "sampling", "streaming", "joins", "holding", "errands")


class PhaseClock:
    """Each lap charges the time since the one before to the phase it names: laps at every phase's end split
    the thread's whole time, so the totals add up to its wall time (a gap goes to the phase that ends it)."""

    def __init__(self) -> None:
        self._seconds = dict.fromkeys(PHASES, 0.0)  # every key from the start: other threads copy it
        self._last = time.perf_counter()

    def lap(self, phase: str) -> None:
        now = time.perf_counter()
        self._seconds[phase] += now - self._last
        self._last = now

    def totals(self) -> dict[str, float]:
        """Seconds per phase so far (any thread: a moment's reading)."""
        return dict(self._seconds)


def name_os_thread(name: str) -> None:
    """Give the calling thread `name` (15 bytes at most) where the OS shows it (top -H, /proc): the threads it
    starts after this (OpenMP's workers) inherit it, so the engine's CPU can be told from the event loop's."""
    if sys.platform == "linux":
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # 15: PR_SET_NAME
