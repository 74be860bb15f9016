"""Processed images (and laid-out clips) keyed by sha256 and bounded in bytes, so a history's are processed once."""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import torch

ProcessedImage = dict[str, torch.Tensor]  # one image's processor outputs: pixel_values, image_grid_thw, ...


def _nbytes(processed: ProcessedImage) -> int:
    return sum(t.element_size() * t.nelement() for t in processed.values())


class Hashed(Protocol):
    @property
    def sha256(self) -> str: ...


Media = TypeVar("Media", bound=Hashed)


class ImageCache(Generic[Media]):
    """Least recently used out first. Safe across threads: the image workers fill it ahead of a turn,
    the generation thread reads it; a miss (an evicted image) is processed again by the caller."""

    def __init__(self, process: Callable[[Media], ProcessedImage], max_bytes: int) -> None:
        self._process = process
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: collections.OrderedDict[str, tuple[ProcessedImage, int]] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, image: Media) -> ProcessedImage:
        with self._lock:
            entry = self._entries.get(image.sha256)
            if entry is not None:
                self._entries.move_to_end(image.sha256)
                self.hits += 1
                return entry[0]
            self.misses += 1
        processed = self._process(image)  # outside the lock: processing is the slow part
        self._insert(image.sha256, processed)
        return processed

    def _insert(self, key: str, processed: ProcessedImage) -> None:
        size = _nbytes(processed)
        with self._lock:
            if key in self._entries or size > self.max_bytes:
                return  # larger than the whole cache: use it once, keep nothing
            self._entries[key] = (processed, size)
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted

    def limit(self, max_bytes: int) -> None:
        """A new bound, evicting the least recently used images at once to meet it."""
        with self._lock:
            self.max_bytes = max_bytes
            while self.bytes > self.max_bytes and self._entries:
                _, (_, evicted) = self._entries.popitem(last=False)
                self.bytes -= evicted

    def __contains__(self, image: Media) -> bool:
        with self._lock:
            return image.sha256 in self._entries
