"""Free-form JSON bounds: integers and floats checked per container, and the walk yields in small slices."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.core.json_bounds import (
    _STEP_VALUES,
    JSON_INT_MAX,
    JSON_INT_MIN,
    MAX_JSON_DEPTH,
    _batches,
    check_json_value,
    json_value_checks,
)
from gateway.errors import GatewayError


def wide(groups: int, each: int) -> dict[str, Any]:
    return {f"g{g}": {f"p{i}": {"type": "integer"} for i in range(each)} for g in range(groups)}


def test_many_small_objects_yield_often() -> None:
    """60 objects of 1,000 one-entry objects (120k entries, 60k containers) yield at least 14 times: a
    container counts as an entry towards a slice, however few entries it holds."""
    assert sum(1 for _ in json_value_checks(wide(60, 1000), "schema")) >= 14


class Counted(dict[str, Any]):
    """A map that counts how often its size is read: what a slice of the walk looked at."""

    reads = 0

    def __len__(self) -> int:
        Counted.reads += 1
        return super().__len__()


def test_a_slice_measures_only_its_own_containers_however_wide_the_level() -> None:
    """A level of 250,000 one-entry maps (a 500k-value schema's widest): its first slice reads the size of
    at most _STEP_VALUES maps, not the whole level's (that count alone took 30-60 ms of one loop callback),
    and the slices still cut where the running count, each map counted too, reaches _STEP_VALUES."""
    level: list[Any] = [Counted(type="integer") for _ in range(250_000)]
    Counted.reads = 0
    first = next(_batches(level))
    assert Counted.reads <= _STEP_VALUES
    assert len(first) == _STEP_VALUES // 2
    runs = list(_batches(level))
    assert sum(map(len, runs)) == len(level) and {len(run) for run in runs[:-1]} == {_STEP_VALUES // 2}


def test_a_container_bigger_than_a_step_is_a_run_of_its_own() -> None:
    level: list[Any] = [[0], list(range(3 * _STEP_VALUES)), [1], [2]]
    assert [len(run) for run in _batches(level)] == [2, 2]


@pytest.mark.parametrize("number", [JSON_INT_MAX + 1, JSON_INT_MIN - 1])
def test_an_integer_beyond_64_bits_is_refused_at_any_depth(number: int) -> None:
    """An integer outside 64 bits, deep in a list or a map, is `invalid_field` naming the range."""
    for value in ({"a": [{"b": number}]}, [1, [2, number]], number):
        with pytest.raises(GatewayError, match="64-bit range"):
            check_json_value(value, "schema")


def test_the_64_bit_extremes_and_booleans_pass() -> None:
    """Both 64-bit extremes, booleans and finite floats are accepted."""
    check_json_value({"a": [JSON_INT_MIN, JSON_INT_MAX, True, 1.5], "b": False}, "schema")


def test_a_non_finite_float_is_refused() -> None:
    """An infinite number inside a map is `invalid_field`."""
    with pytest.raises(GatewayError, match="not finite"):
        check_json_value({"a": {"b": float("inf")}}, "schema")


@pytest.mark.parametrize("at", [0, 500, 999])
def test_depth_is_bounded_wherever_the_deep_branch_is(at: int) -> None:
    """A branch one level too deep, at any place among 1,000 shallow siblings, is `invalid_field`; at the
    bound exactly it passes (the walk goes a level at a time, all siblings together)."""

    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = {"a": value}
        return value

    for levels, refused in ((MAX_JSON_DEPTH - 1, False), (MAX_JSON_DEPTH, True)):
        siblings: list[Any] = [{"b": 2}] * 1000
        siblings[at] = nested(levels)
        if refused:
            with pytest.raises(GatewayError, match="nests deeper"):
                check_json_value(siblings, "schema")
        else:
            check_json_value(siblings, "schema")
