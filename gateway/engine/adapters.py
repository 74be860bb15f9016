"""Which LoRA adapters an engine serves, as the event loop sees them: named, bounded, and leaving in order."""

from __future__ import annotations

import re

from gateway.errors import ErrorCode, GatewayError

# A model id of its own on the wire and a peft adapter name: no ":" (BASE:ADAPTER ids), no "." (peft's module paths).
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED = frozenset({"default", "__base__"})  # peft's names for a served adapter and for "none" in a mixed batch


def check_adapter_name(name: str) -> None:
    """A name a request may select, or `invalid_field` (field `name`) saying what a name may be."""
    if not _NAME.fullmatch(name) or name in RESERVED:
        message = f"an adapter's name is 1-64 letters, digits, '-' or '_' (not {', '.join(sorted(RESERVED))}); got {name[:80]!r}"
        raise GatewayError(ErrorCode.INVALID_FIELD, message, field="name")


class AdapterRegistry:
    """Every adapter is loading, served or leaving; only served ones may start turns. Loading and leaving
    ones count toward `max_adapters` too (their weights are in memory, or about to be), so the bound holds
    while a load and an unload overlap. Touched on the event loop only."""

    def __init__(self, max_adapters: int, served: tuple[str, ...] = ()) -> None:
        self.max_adapters = max_adapters
        self._state: dict[str, str] = dict.fromkeys(served, "served")

    @property
    def served(self) -> tuple[str, ...]:
        return tuple(name for name, state in self._state.items() if state == "served")

    def leaving(self, name: str) -> bool:
        return self._state.get(name) == "leaving"

    def claim(self, name: str) -> None:
        """Hold a place for a new adapter (`loaded` or `failed` ends the claim); refused when the name is
        bad or taken, or every place is held."""
        check_adapter_name(name)
        if name in self._state:
            raise GatewayError(ErrorCode.INVALID_FIELD, f"an adapter named {name!r} is already {self._state[name]}", field="name")
        if len(self._state) >= self.max_adapters:
            message = f"{len(self._state)} adapters are loaded; the limit is {self.max_adapters} (unload one first)"
            raise GatewayError(ErrorCode.TOO_LARGE, message, field="name")
        self._state[name] = "loading"

    def loaded(self, name: str) -> None:
        self._state[name] = "served"

    def failed(self, name: str) -> None:
        self._state.pop(name, None)

    def leave(self, name: str) -> None:
        """Stop serving an adapter (new turns naming it are refused from now on); `not_found` unless served."""
        if self._state.get(name) != "served":
            state = self._state.get(name)
            message = f"no adapter named {name[:80]!r} is loaded" + (f" (it is {state})" if state else "")
            raise GatewayError(ErrorCode.NOT_FOUND, message, field="name")
        self._state[name] = "leaving"

    def gone(self, name: str) -> None:
        self._state.pop(name, None)

    def check_servable(self, name: str | None) -> None:
        """A turn may start on the base model (None) or a served adapter; any other (one leaving, or gone
        since the turn was checked) is `not_found`."""
        if name is not None and self._state.get(name) != "served":
            going = "is being unloaded" if self.leaving(name) else "is not loaded"
            raise GatewayError(ErrorCode.NOT_FOUND, f"the adapter {name[:80]!r} {going}", field="model")
