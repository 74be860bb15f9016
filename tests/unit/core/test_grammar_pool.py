"""The grammar pool's bounds: size, CPU budget, queue, per-client compile rate, and one compile per source."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest

from gateway.config import Settings
from gateway.core.compile_procs import CompileProcess
from gateway.core.grammar_pool import GrammarPool
from gateway.core.structured import CheckedGrammars, GrammarLimits, validate
from gateway.engine.contract import Grammar
from gateway.errors import GatewayError, RetryLater
from gateway.ws import protocol as p


def schema_format(n: int, tag: str) -> p.JsonSchemaFormat:
    """A distinct small schema (the tag keeps tests from finding each other's outcomes in the shared cache)."""
    schema = {"type": "object", "properties": {f"{tag}{n}": {"type": "integer"}}}
    return p.JsonSchemaFormat(json_schema=p.JsonSchemaSpec(name="s", schema=schema))


def counting(calls: list[str], gate: threading.Event | None = None) -> Callable[[str, GrammarLimits], str]:
    def check(source: str, limits: GrammarLimits) -> str:
        calls.append(source)
        if gate is not None:
            gate.wait(10)
        return validate(source, limits)

    return check


async def test_each_distinct_schema_compiles_once_however_many_ask() -> None:
    """Four clients asking for one schema at once share one compile; asking again is a cache hit."""
    calls: list[str] = []
    pool = GrammarPool(Settings(), counting(calls))
    fmt = schema_format(0, "once")
    grammars = await asyncio.gather(*(pool.response_grammar(fmt, pool.quota(f"10.0.0.{n}")) for n in range(4)))
    again = await pool.response_grammar(fmt, pool.quota("10.0.0.9"))
    assert len(calls) == 1 and all(g is grammars[0] for g in grammars) and again is grammars[0]


async def test_at_most_grammar_workers_compiles_run_at_once() -> None:
    """Six distinct schemas asked for at once with 2 workers: never more than 2 compiles run together, counting
    a compile process's and the engine's check after it (a schema's two never overlap: one worker runs both)."""
    pool = GrammarPool(Settings(grammar_workers=2), counting([]))
    formats = [schema_format(n, "peak") for n in range(6)]
    try:
        await asyncio.gather(*(pool.response_grammar(fmt, pool.quota(f"10.1.0.{n}")) for n, fmt in enumerate(formats)))
    finally:
        pool.close()
    assert 1 <= pool.running.peak <= 2 and pool.running.now == 0


async def test_a_schema_over_max_grammar_bytes_is_refused_without_compiling() -> None:
    """A response_format larger than max_grammar_bytes is `invalid_field` naming the setting; nothing compiles."""
    calls: list[str] = []
    pool = GrammarPool(Settings(max_grammar_bytes=200), counting(calls))
    big = p.JsonSchemaFormat(json_schema=p.JsonSchemaSpec(name="s", schema={"enum": ["x" * 300]}))
    with pytest.raises(GatewayError, match="max_grammar_bytes is 200") as refused:
        await pool.response_grammar(big, pool.quota("10.0.0.1"))
    assert refused.value.code.value == "invalid_field" and calls == []


async def test_a_compile_past_its_cpu_budget_is_refused_naming_it() -> None:
    """A compile that burns grammar_cpu_s of CPU is `invalid_field` naming grammar_cpu_s; so is a repeat, at once."""

    def spin(source: str, limits: GrammarLimits) -> str:
        began = time.thread_time()
        while time.thread_time() - began < 0.5:
            pass
        return ""

    pool = GrammarPool(Settings(grammar_cpu_s=0.1), spin)
    fmt = schema_format(0, "cpu")
    for _ in range(2):
        with pytest.raises(GatewayError, match=r"grammar_cpu_s \(0.1 s\)"):
            await pool.response_grammar(fmt, pool.quota("10.0.0.1"))
    assert pool.compiles == 1


async def test_waiting_for_a_worker_costs_no_cpu_budget() -> None:
    """A compile queued behind another is judged by its own CPU time, not by how long it waited."""
    gate = threading.Event()
    calls: list[str] = []
    pool = GrammarPool(Settings(grammar_cpu_s=0.2), counting(calls, gate))
    quota = pool.quota("10.0.0.1")
    first = asyncio.create_task(pool.response_grammar(schema_format(0, "wait"), quota))
    second = asyncio.create_task(pool.response_grammar(schema_format(1, "wait"), quota))
    await asyncio.sleep(0.5)  # the first blocks (no CPU) past the budget; the second waits for the worker
    gate.set()
    assert await first is not None and await second is not None


async def test_a_full_queue_is_overloaded_with_retry_after() -> None:
    """Beyond grammar_workers + grammar_queue compiles, a new one is `overloaded` with retry_after_ms."""
    gate = threading.Event()
    pool = GrammarPool(Settings(grammar_workers=1, grammar_queue=2), counting([], gate))
    tasks = [asyncio.create_task(pool.response_grammar(schema_format(n, "full"), pool.quota(f"10.1.0.{n}"))) for n in range(3)]
    await asyncio.sleep(0.05)
    with pytest.raises(RetryLater) as refused:
        await pool.response_grammar(schema_format(3, "full"), pool.quota("10.1.0.3"))
    gate.set()
    await asyncio.gather(*tasks)
    assert refused.value.code.value == "overloaded" and refused.value.retry_after_ms >= 100


@pytest.fixture
def frozen_rates() -> Iterator[None]:
    """The compile quotas' clock stands still, later than any bucket's creation: every bucket starts full and
    none refills, so a test counts compiles, however long a compile process takes to start on a busy machine
    (a bucket that refilled meanwhile made the rate tests flaky)."""
    now = time.monotonic() + 3600
    clock = SimpleNamespace(**{**vars(time), "monotonic": lambda: now})
    with mock.patch("gateway.core.grammar_pool.time", clock):
        yield


async def test_compile_rate_is_per_connection_and_per_address(frozen_rates: None) -> None:
    """A connection past its compile burst is `rate_limited` with retry_after_ms, while another connection
    from elsewhere is not; an address's connections together share the per-address rate."""
    pool = GrammarPool(Settings(grammar_compiles_per_minute=12, grammar_compiles_per_minute_per_client=18), counting([]))
    one = pool.quota("10.2.0.1")
    for n in range(2):  # a sixth of a minute's rate: a burst of 2
        await pool.response_grammar(schema_format(n, "rate"), one)
    with pytest.raises(RetryLater) as limited:
        await pool.response_grammar(schema_format(2, "rate"), one)
    assert limited.value.code.value == "rate_limited" and limited.value.retry_after_ms > 1000
    assert await pool.response_grammar(schema_format(3, "rate"), pool.quota("10.2.0.2")) is not None
    sibling = pool.quota("10.2.0.1")  # a fresh connection, same address: 1 of the address's burst of 3 is left
    await pool.response_grammar(schema_format(4, "rate"), sibling)
    with pytest.raises(RetryLater, match="slow down"):
        await pool.response_grammar(schema_format(5, "rate"), sibling)
    assert await pool.response_grammar(schema_format(0, "rate"), sibling) is not None  # compiled already: free


async def test_http_requests_from_one_address_share_one_connections_compile_rate(frozen_rates: None) -> None:
    """Each HTTP request is no fresh connection: an address's requests together get one connection's burst
    (2 here, below the address's 30), while another address's requests get their own."""
    pool = GrammarPool(Settings(grammar_compiles_per_minute=12, grammar_compiles_per_minute_per_client=180), counting([]))
    for n in range(2):
        await pool.response_grammar(schema_format(n, "http"), pool.http_quota("10.4.0.1"))
    with pytest.raises(RetryLater) as limited:
        await pool.response_grammar(schema_format(2, "http"), pool.http_quota("10.4.0.1"))
    assert limited.value.code.value == "rate_limited"
    assert await pool.response_grammar(schema_format(3, "http"), pool.http_quota("10.4.0.2")) is not None


async def test_a_grammar_whose_matcher_the_engine_let_go_compiles_again_on_the_pool() -> None:
    """Accepted once, then evicted from the engine's kept matchers: the next check compiles it on the pool
    again (the generation thread never has to), and while kept it is a cache hit."""
    calls: list[str] = []
    kept: set[str] = set()

    def check(source: str, limits: GrammarLimits) -> str:
        calls.append(source)
        kept.add(source)
        return validate(source, limits)

    pool = GrammarPool(Settings(), check, kept.__contains__)
    fmt = schema_format(0, "evicted")
    quota = pool.quota("10.3.0.1")
    grammar = await pool.response_grammar(fmt, quota)
    await pool.response_grammar(fmt, quota)
    kept.clear()
    assert await pool.response_grammar(fmt, quota) == grammar and len(calls) == 2


def test_checked_outcomes_are_bounded_by_bytes() -> None:
    """The outcome cache lets the least recently used go once its grammar text passes capacity_bytes."""
    cache = CheckedGrammars(capacity_bytes=1000)
    for n in range(5):
        cache.put(f"k{n}", Grammar("regex", "x" * 300))
    assert cache.held_bytes <= 1000 and cache.get("k0") is None and cache.get("k4") is not None


async def test_a_compiler_failure_refuses_that_grammar_only() -> None:
    """A compiler that raises (a bug) answers `internal` for that grammar; the pool goes on compiling others."""

    def failing(source: str, limits: GrammarLimits) -> str:
        if "boom" in source:
            raise RuntimeError("compiler bug")
        return validate(source, limits)

    pool = GrammarPool(Settings(), failing)
    quota = pool.quota("10.4.0.1")
    with pytest.raises(GatewayError) as failed:
        await pool.response_grammar(schema_format(0, "boom"), quota)
    assert failed.value.code.value == "internal" and "bug" not in failed.value.message
    assert await pool.response_grammar(schema_format(1, "fine"), quota) is not None


def many_required(n: int, tag: str) -> p.JsonSchemaFormat:
    """A schema of `n` required properties: llguidance takes about 0.1 ms of CPU a property to compile it."""
    properties = {f"{tag}{i}": {"type": "integer"} for i in range(n)}
    schema = {"type": "object", "properties": properties, "required": list(properties)}
    return p.JsonSchemaFormat(json_schema=p.JsonSchemaSpec(name="s", schema=schema))


async def test_a_compile_past_its_cpu_budget_is_killed_and_its_worker_compiles_the_next() -> None:
    """A schema whose compile (in llguidance, which no thread can stop) outlasts grammar_cpu_s is refused
    naming it, its process is killed, and the one worker then compiles the next schema in a new process."""
    calls: list[str] = []
    pool = GrammarPool(Settings(grammar_workers=1, grammar_cpu_s=0.1), counting(calls))
    quota = pool.quota("10.5.0.1")
    try:
        # ~2 s of CPU to compile; 20,000 properties could meet llguidance's own size limit before the budget
        with pytest.raises(GatewayError, match=r"grammar_cpu_s \(0.1 s\)") as refused:
            await pool.response_grammar(many_required(10_000, "slow"), quota)
        assert refused.value.code.value == "invalid_field" and pool.kills == 1 and calls == []
        assert await pool.response_grammar(schema_format(0, "killed"), quota) is not None
        assert len(calls) == 1 and pool.kills == 1
    finally:
        pool.close()


async def test_a_compile_past_its_memory_budget_is_killed_and_its_worker_compiles_the_next() -> None:
    """A schema whose compile grows its process by more than grammar_memory_bytes is refused naming it, the
    process is killed, and the one worker then compiles the next schema in a new process."""
    calls: list[str] = []
    pool = GrammarPool(Settings(grammar_workers=1, grammar_memory_bytes=6 << 20), counting(calls))
    quota = pool.quota("10.6.0.1")
    try:
        # 4,000 properties grow llguidance's compile by about 15 MiB
        with pytest.raises(GatewayError, match=r"grammar_memory_bytes \(6 MiB\)") as refused:
            await pool.response_grammar(many_required(4_000, "big"), quota)
        assert refused.value.code.value == "invalid_field" and pool.kills == 1 and calls == []
        assert await pool.response_grammar(schema_format(0, "after-big"), quota) is not None
        assert len(calls) == 1 and pool.kills == 1
    finally:
        pool.close()


async def test_waiting_on_the_compile_process_costs_no_thread_budget() -> None:
    """The worker's own CPU while it waits on its compile process (polling /proc, for a long while on a busy
    machine, where a niced process gets little CPU) is not the compile's: the process keeps its own budget,
    so the schema is accepted and no process is killed. (This CPU used to be counted: a flaky refusal.)"""
    compile_in_process = CompileProcess.compile

    def busy_waiting(process: CompileProcess, *args: Any) -> Grammar | GatewayError:
        began = time.thread_time()
        while time.thread_time() - began < 0.3:  # the polls of a long wait, more than the budget
            pass
        return compile_in_process(process, *args)

    pool = GrammarPool(Settings(grammar_workers=1, grammar_cpu_s=0.2), counting([]))
    try:
        with mock.patch.object(CompileProcess, "compile", busy_waiting):
            assert await pool.response_grammar(schema_format(0, "waited"), pool.quota("10.7.0.1")) is not None
        assert pool.kills == 0
    finally:
        pool.close()
