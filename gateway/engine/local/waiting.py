"""The local engine's waiting line: turns offered from event loops, taken by the generation thread, bounded."""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from dataclasses import dataclass, field

from gateway.engine.contract import EngineFull, GenerationRequest, TurnHandle, TurnSink
from gateway.engine.local.errands import Errand


@dataclass
class Job:
    """A submitted turn: its request, who listens, on which loop, and since when."""

    request: GenerationRequest
    sink: TurnSink
    loop: asyncio.AbstractEventLoop
    submitted: float = field(default_factory=time.perf_counter)
    admitted: float | None = None  # when a batch slot took it: its prefill begins


Admissions = tuple[list[Job] | None, list[Job], list[Job]]  # admitted (None: stop), cancelled, still waiting


@dataclass(eq=False)  # a line is itself, not its bounds
class WaitingLine:
    """At most `queue_size` live turns wait beyond the batch's free places (cancelled ones hold none, and
    leave at the generation thread's next step; with them the line holds at most twice that). `max_batch`
    is the batch's bound; the generation thread lowers it to 1 for a model whose cache cannot be merged.
    Turns arriving together at an empty batch are gathered for up to `gather_s` (see `_gather`).

    Warm-ups (GenerationRequest.warm_up) wait in a line of their own, at most `max_batch` of them, one per
    affinity (a newer one replaces one still waiting): one is taken only when the batch is empty and no turn
    waits, so a turn waits for a warm-up's one prefill pass at most, and warm-ups fill only idle time."""

    queue_size: int
    max_batch: int
    max_prefills_per_step: int
    gather_s: float = 0.0
    quiet_s: float = 0.0

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self._wake = threading.Condition(self.lock)
        self._waiting: collections.deque[Job] = collections.deque()
        self._warm: collections.deque[Job] = collections.deque()  # warm-ups, the oldest first
        self.active = 0
        self._active_handles: list[TurnHandle] = []  # the active turns', so that cancelled ones hold no place
        self.stopping = False
        self._errands: list[Errand] = []  # work for the generation thread between two steps

    def __len__(self) -> int:
        return len(self._waiting)

    def offer(self, job: Job) -> int:
        """Line a turn up (any thread); return how many turns wait ahead of it beyond the batch's free
        places (negative: none, it joins the batch at the next step). Raises EngineFull."""
        if job.request.warm_up:
            return self._offer_warm_up(job)
        with self.lock:
            waiting = sum(1 for waiting_job in self._waiting if not waiting_job.request.handle.cancelled.is_set())
            active = sum(1 for handle in self._active_handles if not handle.cancelled.is_set())
            ahead = waiting - (self.max_batch - active)
            if len(self._waiting) >= 2 * self.queue_size:  # cancelled entries are bounded too, until the next step
                raise EngineFull()
            if self.stopping or ahead >= self.queue_size:
                raise EngineFull()
            for warm in self._warm:  # its session's own turn: a warm-up waiting (or given way) is stale now
                if job.request.affinity is not None and warm.request.affinity == job.request.affinity:
                    warm.request.handle.cancel()
            self._waiting.append(job)
            self._wake.notify()
        return ahead

    def _offer_warm_up(self, job: Job) -> int:
        with self.lock:
            for waiting in self._warm:
                if waiting.request.affinity == job.request.affinity:
                    waiting.request.handle.cancel()  # the newer one prefills more of what the next turn reads
            live = sum(1 for waiting in self._warm if not waiting.request.handle.cancelled.is_set())
            if self.stopping or live >= self.max_batch or len(self._warm) >= 2 * self.max_batch:
                raise EngineFull()
            self._warm.append(job)
            self._wake.notify()
        return -1  # never "queued": nobody waits for it

    def park(self, job: Job) -> bool:
        """A warm-up taken, then made to give way to turns before its prefill ended (generation thread): it goes
        back to the front of its line, to go on from the KV it had when the engine is idle again, and its session's
        turn may cancel it again. False, and it is not lined up, where a newer one for its affinity waits or the line
        is full (its KV is held all the same)."""
        with self.lock:
            waiting = [w for w in self._warm if not w.request.handle.cancelled.is_set()]
            newer = any(w.request.affinity == job.request.affinity for w in waiting)
            if self.stopping or newer or len(waiting) >= self.max_batch:
                return False
            job.request.handle.admitted.clear()
            self._warm.appendleft(job)
        return True

    def stop(self) -> None:
        """Refuse new turns; the generation thread cancels the waiting ones at its next step."""
        with self.lock:
            self.stopping = True
            self._wake.notify()

    def take(self, active: int, idle_s: float | None) -> Admissions:
        """Block until there is work (generation thread); take the waiting turns that fit (their prefill
        costs this step). Idle, return nothing after `idle_s`, so that held KV can expire."""
        with self.lock:
            while not self._waiting and not active and not self.stopping and not self._errands and not self._warm:
                if not self._wake.wait(idle_s):
                    return [], [], []
            if not active:
                self._gather()
            if self.stopping:
                cancelled = [*self._waiting, *self._warm]
                self._waiting.clear()
                self._warm.clear()
                return (None if not active else []), cancelled, []
            cancelled = [j for j in [*self._waiting, *self._warm] if j.request.handle.cancelled.is_set()]
            for job in cancelled:
                (self._warm if job.request.warm_up else self._waiting).remove(job)
            admitted: list[Job] = []
            while self._waiting and active + len(admitted) < self.max_batch and len(admitted) < self.max_prefills_per_step:
                admitted.append(self._waiting.popleft())
                admitted[-1].admitted = time.perf_counter()
                admitted[-1].request.handle.admitted.set()  # under the lock, as `load` counts the line
            if not active and not admitted and not self._waiting and self._warm:  # idle: one warm-up
                admitted.append(self._warm.popleft())
                admitted[-1].admitted = time.perf_counter()
                admitted[-1].request.handle.admitted.set()
            self.active = active + len(admitted)
            self._active_handles += [job.request.handle for job in admitted]
            moved = admitted or cancelled
            return admitted, cancelled, list(self._waiting) if moved else []

    def _gather(self) -> None:
        """With the batch empty, gather the turns arriving together: wait while each comes within `quiet_s`
        of the one before, at most `gather_s` after the first, and no longer than the batch's room is full.
        One prefill pass then takes them all, where a second one would pause the first ones' decoding for
        its whole length (clients answering one step's `done` frames arrive over tens of ms). A lone turn
        waits `quiet_s`; nothing waits while turns decode: a newcomer then joins at the next step."""
        room = min(self.max_batch, self.max_prefills_per_step)
        while self._waiting and len(self._waiting) < room and not self.stopping:
            first, last = self._waiting[0].submitted, self._waiting[-1].submitted
            left = min(first + self.gather_s, last + self.quiet_s) - time.perf_counter()
            if left <= 0 or not self._wake.wait(left):
                return

    def post(self, errand: Errand) -> None:
        """Hand the generation thread an errand (any thread); an idle one wakes for it."""
        with self.lock:
            self._errands.append(errand)
            self._wake.notify()

    def errands(self) -> tuple[list[Errand], frozenset[str | None]]:
        """The errands posted (taken from the line) and the adapters of the turns waiting (generation thread)."""
        with self.lock:
            errands, self._errands = self._errands, []
            return errands, frozenset(job.request.adapter for job in self._waiting)

    def settle(self, handles: list[TurnHandle]) -> None:
        """Record the turns left in the batch after a step (generation thread)."""
        with self.lock:
            self.active = len(handles)
            self._active_handles = handles
