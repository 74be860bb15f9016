"""A log line for an event that can repeat thousands of times a second: at most one per interval, with a count."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any


class ThrottledLog:
    """Logs the first occurrence, then at most one line per `interval_s` saying how many were left out."""

    def __init__(self, logger: str, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = logging.getLogger(logger)
        self.interval_s = interval_s
        self.clock = clock
        self.last = -math.inf
        self.left_out = 0

    def warning(self, message: str, *args: Any) -> bool:
        """Log it unless one was logged within the interval; True when this one was logged."""
        now = self.clock()
        if now - self.last < self.interval_s:
            self.left_out += 1
            return False
        if self.left_out:
            message += f" ({self.left_out} more like it since the last report)"
        self.log.warning(message, *args)
        self.last, self.left_out = now, 0
        return True
