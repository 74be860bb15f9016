"""The keeper of big schemas: one is let go, a slice at a time, only once nothing else holds it."""

from __future__ import annotations

import asyncio
from unittest import mock

from gateway.core.letting_go import SLICE_VALUES, Keeper

ROWS = 64  # lists of 1,000 values: 64,000 values, past SLICE_VALUES several times


def wide() -> dict[str, list[list[int]]]:
    return {"enum": [[n] * 1000 for n in range(ROWS)]}


async def test_a_schema_something_else_holds_is_kept_whole() -> None:
    """While a session (here, a local) still holds the schema, a sweep lets go of nothing and leaves it whole."""
    keeper, schema = Keeper(), wide()
    keeper.keep(schema)
    try:
        assert await keeper.sweep() == 0 and len(keeper) == 1
        assert all(row == [n] * 1000 for n, row in enumerate(schema["enum"]))
    finally:
        keeper.close()


async def test_a_schema_nothing_else_holds_is_let_go_a_slice_at_a_time() -> None:
    """Once its other holders are gone, a sweep takes it and frees its values with a pause every SLICE_VALUES."""
    keeper = Keeper()
    keeper.keep(wide())
    try:
        with mock.patch("gateway.core.letting_go.asyncio.sleep", wraps=asyncio.sleep) as sleep:
            assert await keeper.sweep() == 1
        assert len(keeper) == 0 and sleep.call_count >= ROWS * 1000 // SLICE_VALUES
    finally:
        keeper.close()
