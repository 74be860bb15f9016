"""Incremental detokenization: UTF-8-safe text deltas with stop strings held back and cut."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

# Decode a short window behind the new tokens so tokenizers that merge spaces and byte pieces
# across token boundaries still produce the right delta.
_WINDOW = 6


class Decoder(Protocol):
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = ...) -> str: ...


class TextStream:
    """Feed token ids one at a time; get back text that is safe to send now."""

    def __init__(self, tokenizer: Decoder, stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(s for s in stop if s)
        self._ids: list[int] = []
        self._prefix = 0  # start of the decode window
        self._read = 0  # ids before this have been turned into text
        self._text = ""  # all text decoded so far (before the stop cut)
        self._sent = 0  # characters of _text already emitted
        self.stopped = False

    @property
    def text(self) -> str:
        """The reply so far: exactly what has been emitted (after `finish`, all of it)."""
        return self._text[: self._sent]

    def push(self, token_id: int) -> str:
        """Add one token; return the delta that can be sent now (maybe empty)."""
        if self.stopped:
            return ""
        self._ids.append(token_id)
        window = self._ids[self._prefix :]
        before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
        after = self._tokenizer.decode(window, skip_special_tokens=True)
        if after.endswith("\ufffd"):  # a multi-byte character is still incomplete
            return ""
        self._text += after[len(before) :]
        self._read = len(self._ids)
        self._prefix = max(0, self._read - _WINDOW)
        return self._release()

    def finish(self) -> str:
        """The held-back tail at the end of generation (never part of a stop string)."""
        if self.stopped:
            return ""
        if self._read < len(self._ids):
            # Ids held for a character that never completed: send what they decode to (U+FFFD),
            # so the reply equals the tokenizer's own decoding of everything generated.
            before = self._tokenizer.decode(self._ids[self._prefix : self._read], skip_special_tokens=True)
            after = self._tokenizer.decode(self._ids[self._prefix :], skip_special_tokens=True)
            self._text += after[len(before) :]
            self._read = len(self._ids)
        delta = self._text[self._sent :]
        self._sent = len(self._text)
        return delta

    def _release(self) -> str:
        hits = [at for s in self._stop if (at := self._text.find(s, max(0, self._sent - len(s) + 1))) != -1]
        if hits:  # the earliest stop string in the text wins, whatever its place in the list
            self.stopped = True
            self._text = self._text[: min(hits)]
            delta = self._text[self._sent :]
            self._sent = len(self._text)
            return delta
        # Hold back the longest tail that could still grow into a stop string.
        hold = 0
        for stop in self._stop:
            for n in range(min(len(stop) - 1, len(self._text) - self._sent), 0, -1):
                if stop.startswith(self._text[-n:]):
                    hold = max(hold, n)
                    break
        end = len(self._text) - hold
        delta = self._text[self._sent : end]
        self._sent = end
        return delta
