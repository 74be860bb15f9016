"""Grammar compilation off the event loop: a bounded worker pool, a time budget, and a compile rate per client."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from gateway.config import Settings
from gateway.core import request as req
from gateway.core.compile_procs import CompileProcess, Job, Running
from gateway.core.format_keys import format_key_sliced
from gateway.core.letting_go import LET_GO_BYTES, Keeper
from gateway.core.ratelimit import BucketsByAddress, TokenBucket
from gateway.core.structured import (
    CHECKED,
    Checker,
    GrammarLimits,
    settled,
    source_key,
    validate,
)
from gateway.engine.contract import Engine, Grammar, GrammarCompiler
from gateway.errors import ErrorCode, GatewayError, RetryLater
from gateway.media.images import yield_cpu

log = logging.getLogger("gateway.grammar")

_MAX_ADDRESSES = 4096  # per-address buckets kept; beyond it, those refilled to full (idle clients) go


@dataclass
class CompileQuota:
    """One client's compile rate: its connection's bucket and its address's, both charged per compile
    (a grammar already compiled, by anyone, costs nothing)."""

    connection: TokenBucket
    address: TokenBucket

    def take(self) -> float:
        """0.0 when both allow a compile (both are charged), else the seconds until both would."""
        now = time.monotonic()
        wait = max(_wait_for(self.connection, now), _wait_for(self.address, now))
        if wait == 0.0:
            self.connection.take(now)
            self.address.take(now)
        return wait


def _wait_for(bucket: TokenBucket, now: float) -> float:
    tokens = min(bucket.burst, bucket.tokens + (now - bucket.updated) * bucket.rate)
    return 0.0 if tokens >= 1.0 else (1.0 - tokens) / bucket.rate if bucket.rate > 0 else float("inf")


@dataclass
class _Compile:
    """One compile in flight: everyone asking for the same source awaits it."""

    outcome: asyncio.Future[Grammar | GatewayError]
    started: asyncio.Event = field(default_factory=asyncio.Event)
    clock: int | None = None  # the worker thread's CPU clock, once it has begun
    cpu_began: float = 0.0

    def begin(self) -> None:
        """On the worker, as the compile starts running on it (not while it waits on its process, which keeps
        a budget of its own, and where the worker's polling would count against it): its CPU clock, so the
        budget counts the compile's own CPU time (a worker niced below a busy machine's other threads may wait
        long between its slices; that is not its cost)."""
        clock = time.pthread_getcpuclockid(threading.get_ident())
        self.cpu_began = time.clock_gettime(clock)
        self.clock = clock  # last: the loop reads the two without a lock

    def cpu_s(self) -> float:
        try:
            return 0.0 if self.clock is None else time.clock_gettime(self.clock) - self.cpu_began
        except OSError:  # the thread is gone: the compile has ended
            return 0.0


class GrammarPool:
    """Checks response formats and tool grammars on `grammar_workers` threads; at most `grammar_queue`
    compiles wait for one (beyond, `overloaded`). Each thread has the grammar compiled in a process of its
    own, killed and replaced once the compile uses grammar_cpu_s or grammar_memory_bytes; with a local engine, a grammar accepted
    there is then compiled by the engine's own check, kept for its turns. Each distinct source compiles
    once (structured.CHECKED)."""

    def __init__(self, settings: Settings, check: Checker | None = None, holds: Callable[[str], bool] | None = None) -> None:
        self.settings = settings
        self.holds = holds  # whether the engine still keeps a grammar's compiled matcher
        self.limits = GrammarLimits(settings.max_grammar_bytes, settings.grammar_lexer_fuel, settings.grammar_max_lexer_states)
        self.check = check or validate
        self.compiles = 0  # compiles started, ever
        self.running = Running()  # compiles running, a process's or the engine's: at most grammar_workers at once
        self.kept = Keeper()  # big accepted schemas, let go in slices once nothing else holds them
        CHECKED.capacity_bytes = settings.grammar_cache_bytes
        workers = max(1, settings.grammar_workers)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="gateway-grammar", initializer=yield_cpu)
        self._processes: list[CompileProcess] = []  # one a thread, each used by its thread only
        self._own = threading.local()
        self._running: dict[str, _Compile] = {}
        self._pending = 0  # compiles submitted and not finished (one past its time budget still counts)
        self._compile_ms = 100.0  # a moving average, for retry_after_ms
        per_address = settings.grammar_compiles_per_minute_per_client
        self._addresses = BucketsByAddress(per_address / 60, max(1.0, per_address / 6), _MAX_ADDRESSES)
        per_connection = settings.grammar_compiles_per_minute
        self._http = BucketsByAddress(per_connection / 60, max(1.0, per_connection / 6), _MAX_ADDRESSES)

    def close(self) -> None:
        self.kept.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in list(self._processes):
            process.close()

    @property
    def kills(self) -> int:
        """Compile processes killed past grammar_cpu_s or grammar_memory_bytes, ever (each replaced by the next compile)."""
        return sum(process.kills for process in list(self._processes))

    @property
    def capped(self) -> int:
        """Of those, the ones ended by their own address-space cap (an allocation between two RSS polls)."""
        return sum(process.capped for process in list(self._processes))

    def quota(self, address: str) -> CompileQuota:
        """A new connection's (or HTTP request's) quota, sharing its address's bucket."""
        return CompileQuota(_bucket(self.settings.grammar_compiles_per_minute), self._addresses.get(address))

    def http_quota(self, address: str) -> CompileQuota:
        """An HTTP request's quota. A request is no connection to get a fresh burst each time: all of an
        address's HTTP requests share one connection's bucket, besides the address's bucket that its
        WebSockets share too. (The server has one API key, so an address is the finest client there is.)"""
        return CompileQuota(self._http.get(address), self._addresses.get(address))

    async def response_grammar(self, response_format: req.ResponseFormat | None, quota: CompileQuota) -> Grammar | None:
        """The format's checked grammar (None for free text); `invalid_field`, `rate_limited` or `overloaded`."""
        if response_format is None or isinstance(response_format, req.TextFormat):
            return None
        # Hashed a slice at a time, and only up to max_grammar_bytes: a 14 MB schema took 350 ms of one callback.
        key, size = await format_key_sliced(response_format, self.limits.max_bytes)
        if size > self.limits.max_bytes:  # refused before anything is compiled, and without a charge
            message = f"response_format is over {self.limits.max_bytes} bytes; max_grammar_bytes is {self.limits.max_bytes}"
            raise GatewayError(ErrorCode.INVALID_FIELD, message)
        grammar = await self._checked(key, quota, (response_format, size), "response_format")
        if size >= LET_GO_BYTES and isinstance(response_format, req.JsonSchemaFormat):
            # Whoever drops it last (a replaced configure, a turn's end) would free it in one callback.
            self.kept.keep(response_format.json_schema.schema)
        return grammar

    async def checked(
        self, grammar: Grammar | None, field: str, quota: CompileQuota, built_from: Sequence[Any] = ()
    ) -> Grammar | None:
        """A grammar built by the caller (a forced tool call's), checked the same way; once accepted, the client
        JSON it was `built_from` (tool parameters) is let go in slices when big, as a response_format is."""
        if grammar is None:
            return None
        if len(grammar.source) > self.limits.max_bytes:
            message = f"{field}: the grammar is {len(grammar.source)} characters; max_grammar_bytes is {self.limits.max_bytes}"
            raise GatewayError(ErrorCode.INVALID_FIELD, message)
        checked = await self._checked(source_key(grammar), quota, (grammar, field), field)
        if len(grammar.source) >= LET_GO_BYTES:  # its text holds their JSON, so they are no bigger
            for value in built_from:
                if isinstance(value, (dict, list)):
                    self.kept.keep(value)
        return checked

    async def _checked(self, key: str, quota: CompileQuota, job: Job, field: str) -> Grammar:
        outcome = CHECKED.get(key)
        if outcome is None or self._evicted(outcome):
            running = self._running.get(key) or self._start(key, quota, lambda running: self._compile(job, field, running))
            outcome = await self._outcome(key, running)
        return settled(outcome)

    def _compile(self, job: Job, field: str, running: _Compile) -> Grammar | GatewayError:
        """On a pool thread: the job compiled in this thread's process, then, where the engine has a check of
        its own, by that check (its compile in this process is what its turns copy)."""
        process: CompileProcess | None = getattr(self._own, "process", None)
        if process is None:
            process = self._own.process = CompileProcess()
            self._processes.append(process)
        with self.running.counted():
            outcome = process.compile(job, self.limits, self.settings.grammar_cpu_s, self.settings.grammar_memory_bytes)
        if not isinstance(outcome, Grammar) or self.check is validate:
            return outcome
        # An accepted grammar compiles twice, on purpose: only a process can be killed mid-compile, and its
        # compiled matcher cannot cross into this one, so the engine's own compile (whose matcher its turns
        # copy) runs only after the process showed it finishes within grammar_cpu_s. Refused ones run once.
        running.begin()
        with self.running.counted():
            problem = self.check(outcome.source, self.limits)
        return self.limits.refusal(field, problem) if problem else outcome

    def _evicted(self, outcome: Grammar | GatewayError) -> bool:
        """An accepted grammar whose compiled matcher the engine has let go: compiled again here, so the
        generation thread never has to."""
        return self.holds is not None and isinstance(outcome, Grammar) and not self.holds(outcome.source)

    def _start(self, key: str, quota: CompileQuota, compile_: Callable[[_Compile], Grammar | GatewayError]) -> _Compile:
        wait_s = quota.take()
        if wait_s > 0:
            raise RetryLater(ErrorCode.RATE_LIMITED, "too many distinct grammars; slow down", int(wait_s * 1000) + 1)
        s = self.settings
        if self._pending >= max(1, s.grammar_workers) + s.grammar_queue:
            raise RetryLater(ErrorCode.OVERLOADED, "the grammar compiler is busy; try again shortly", self.retry_after_ms())
        loop = asyncio.get_running_loop()
        running = _Compile(loop.create_future())
        self._running[key] = running
        self._pending += 1
        self.compiles += 1

        def work() -> Grammar | GatewayError:
            loop.call_soon_threadsafe(running.started.set)
            began = time.monotonic()
            try:
                return compile_(running)
            except Exception:  # the compiler's bug, not the client's: logged, and this one grammar refused
                log.exception("compiling a grammar failed")
                return GatewayError(ErrorCode.INTERNAL, "the grammar could not be compiled")
            finally:
                elapsed_ms = (time.monotonic() - began) * 1000
                loop.call_soon_threadsafe(self._finished, key, running, elapsed_ms)

        future = loop.run_in_executor(self._pool, work)
        future.add_done_callback(lambda done: _settle(running, done))
        return running

    async def _outcome(self, key: str, running: _Compile) -> Grammar | GatewayError:
        """The compile's outcome, or once it has used grammar_cpu_s of CPU a refusal naming that (the worker
        cannot be stopped: it finishes, still counted against the queue, and its outcome is dropped)."""
        await running.started.wait()
        budget = self.settings.grammar_cpu_s
        outcome: Grammar | GatewayError | None = None
        while outcome is None:
            try:
                outcome = await asyncio.wait_for(asyncio.shield(running.outcome), max(0.05, budget - running.cpu_s()))
            except asyncio.TimeoutError:
                if running.cpu_s() >= budget:
                    outcome = GatewayError(
                        ErrorCode.INVALID_FIELD, f"compiling the grammar took over grammar_cpu_s ({budget:g} s)"
                    )
        if CHECKED.get(key) is None or isinstance(outcome, Grammar):
            CHECKED.put(key, outcome)
        return outcome

    def _finished(self, key: str, running: _Compile, elapsed_ms: float) -> None:
        self._pending -= 1
        if self._running.get(key) is running:
            del self._running[key]
        self._compile_ms += 0.2 * (elapsed_ms - self._compile_ms)

    def retry_after_ms(self) -> int:
        """When a worker is likely free: the compiles ahead, in rounds of the workers, times the recent
        compile duration; at least 100 ms, at most a minute."""
        rounds = self._pending / max(1, self.settings.grammar_workers)
        return int(min(60_000, max(100, rounds * self._compile_ms)))


def _bucket(per_minute: float) -> TokenBucket:
    return TokenBucket(rate=per_minute / 60, burst=max(1.0, per_minute / 6))


def _settle(running: _Compile, done: asyncio.Future[Grammar | GatewayError]) -> None:
    running.started.set()  # a compile cancelled before it began has begun and ended
    outcome = running.outcome
    if outcome.done():
        return
    if done.cancelled():  # the pool shut down
        outcome.set_result(GatewayError(ErrorCode.SHUTTING_DOWN, "the server is shutting down"))
    else:
        outcome.set_result(done.result())


def pool_for(engine: Engine, settings: Settings) -> GrammarPool:
    """With an engine that compiles grammars itself (the local one), its compile is the check, so each grammar
    compiles once for both."""
    vocabulary = getattr(engine, "grammars", None)
    if not isinstance(vocabulary, GrammarCompiler):
        return GrammarPool(settings)
    vocabulary.capacity = settings.grammar_matchers_kept
    return GrammarPool(settings, vocabulary.check, vocabulary.holds)
