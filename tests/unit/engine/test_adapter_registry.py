"""The adapter registry: names, the max_adapters bound, and an unload's refusals (gateway/engine/adapters.py)."""

from __future__ import annotations

import pytest

from gateway.engine.adapters import AdapterRegistry
from gateway.errors import ErrorCode, GatewayError


def refusal(call: object, *args: object) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        call(*args)  # type: ignore[operator]
    return caught.value


@pytest.mark.parametrize("name", ["", "a:b", "a.b", "default", "__base__", "-x", "x" * 65, "a b"])
def test_bad_names_are_invalid_field(name: str) -> None:
    """A name that cannot be a model id of its own (or is peft's) is `invalid_field` naming `name`."""
    error = refusal(AdapterRegistry(8).claim, name)
    assert (error.code, error.field) == (ErrorCode.INVALID_FIELD, "name")


def test_a_claimed_adapter_is_served_only_once_loaded() -> None:
    """Loading holds a place but serves nothing; `loaded` serves it; a second claim of the name is refused."""
    registry = AdapterRegistry(8, ("boot",))
    registry.claim("fresh")
    assert registry.served == ("boot",)
    assert refusal(registry.check_servable, "fresh").code is ErrorCode.NOT_FOUND
    registry.loaded("fresh")
    assert registry.served == ("boot", "fresh")
    assert refusal(registry.claim, "fresh").code is ErrorCode.INVALID_FIELD


def test_max_adapters_counts_start_up_loading_and_leaving_ones() -> None:
    """The bound holds across start-up adapters, loads in progress and unloads in progress."""
    registry = AdapterRegistry(3, ("boot",))
    registry.claim("a")
    registry.claim("b")
    registry.loaded("b")
    registry.leave("b")
    error = refusal(registry.claim, "c")
    assert (error.code, error.field) == (ErrorCode.TOO_LARGE, "name")
    registry.gone("b")
    registry.claim("c")
    registry.failed("a")
    registry.claim("d")


def test_an_adapter_leaving_starts_no_turn() -> None:
    """From an unload's start, turns naming it are `not_found`; the base model and other adapters go on."""
    registry = AdapterRegistry(8, ("a", "b"))
    registry.leave("a")
    assert registry.leaving("a") and registry.served == ("b",)
    assert refusal(registry.check_servable, "a").code is ErrorCode.NOT_FOUND
    registry.check_servable(None)
    registry.check_servable("b")


def test_unloading_what_is_not_served_is_not_found() -> None:
    """Unloading an unknown adapter, or one already leaving, is `not_found`."""
    registry = AdapterRegistry(8, ("a",))
    assert refusal(registry.leave, "nope").code is ErrorCode.NOT_FOUND
    registry.leave("a")
    assert refusal(registry.leave, "a").code is ErrorCode.NOT_FOUND
