"""The bench's load pieces with no server: percentiles, prompts of a fixed length, and the start line."""

from __future__ import annotations

import asyncio

from gateway.bench.run import StartLine, percentiles, prompt_text


def test_percentiles_of_nothing_are_zero() -> None:
    """A run with no samples reports zeros, not an error."""
    assert percentiles([]) == {"p50": 0.0, "p90": 0.0, "p99": 0.0}


def test_percentiles_are_samples_at_their_rank() -> None:
    """p50, p90 and p99 are the samples at those ranks, whatever order they came in."""
    values = [float(v) for v in range(100, 0, -1)]
    assert percentiles(values) == {"p50": 51.0, "p90": 91.0, "p99": 100.0}


def test_a_prompt_has_exactly_the_words_asked_for() -> None:
    """Every turn of a run sends the same number of words, so prompt lengths are comparable."""
    assert len(prompt_text(48).split()) == 48 and prompt_text(5) == prompt_text(5)


async def test_the_start_line_opens_when_the_last_session_reaches_it() -> None:
    """No session starts its first turn before every session has connected."""
    line = StartLine(3)
    early = [asyncio.create_task(line.reach()) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(task.done() for task in early)
    await line.reach()
    await asyncio.gather(*early)
    assert line.opened.is_set()
