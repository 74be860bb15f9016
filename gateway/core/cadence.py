"""When a session's next live question is likely to come, from when its last ones came (a bot asks on a clock)."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

# Questions whose gaps are read: three gaps say a clock; one could be chance.
_KEPT = 4
# Gaps that vary more than this share of the shortest are no clock: a person typing, not a bot.
_REGULAR = 0.5


@dataclass
class Cadence:
    """A session's live questions' arrival times (monotonic seconds), the last few; and from them, when the next is
    due. A bot that asks on a clock (a doorbell every 5 s, a `watch`) shows it after a few questions; a person's
    questions come at no rhythm and are expected at no time."""

    asked_at: deque[float] = field(default_factory=lambda: deque(maxlen=_KEPT))
    announced: float | None = None  # when the next question comes, where its asker says so (a `watch`)

    def asked(self, now_s: float) -> None:
        self.asked_at.append(now_s)
        self.announced = None

    def announce(self, due_s: float | None) -> None:
        """The next question comes at `due_s`, as its asker knows (a `watch` asks on its own clock); None: it no
        longer says (the watch has stopped)."""
        self.announced = due_s

    def next_expected(self) -> float | None:
        """When the next question is due: when it was announced, else the last one plus the shortest recent gap
        (early rather than late: a turn prefilled ahead too early misses only the frames that come after it, one too
        late misses all of them). None until three gaps have been seen, or where they vary by more than half the
        shortest."""
        if self.announced is not None:
            return self.announced
        times = list(self.asked_at)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        if len(gaps) < _KEPT - 1 or min(gaps) <= 0:
            return None
        shortest = min(gaps)
        if max(gaps) - shortest > _REGULAR * shortest:
            return None
        return times[-1] + shortest
