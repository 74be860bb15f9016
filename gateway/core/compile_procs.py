"""Grammar compiles in worker processes: one past its CPU or memory budget is killed with its process, which is replaced."""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection

from gateway.core import request as req
from gateway.core.structured import GrammarLimits, compile_format, compile_source, validate
from gateway.engine.contract import Grammar
from gateway.errors import ErrorCode, GatewayError

log = logging.getLogger("gateway.grammar")

# A compile runs in Rust (llguidance) that no thread can stop: only its process can be. A fresh interpreter
# running this module, not a fork (the server's threads, the generation thread and torch's, would be copied
# mid-lock) nor multiprocessing's spawn (it imports the server's main module, torch and all, again).
_START_S = 60.0  # the most a new process may take to import what it compiles with
_READY = "ready"
_POLL_S = 0.02  # how often a waiting worker thread reads its process's CPU time
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")

# What a process is asked: a response format with its JSON size, or a built grammar with its field.
Job = tuple[req.ResponseFormat, int] | tuple[Grammar, str]


class Running:
    """How many compiles run now (in a process, or the engine's own check after it), and the most at once."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def counted(self) -> Iterator[None]:
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            yield
        finally:
            with self._lock:
                self.now -= 1


class CompileProcess:
    """One worker process, used by one compile thread at a time: `compile` sends it a job and waits for
    its outcome, killing it once it has used `cpu_s` of CPU on that job or grown `memory_bytes` past what
    it held when it started (and the process itself caps its address space at that growth, so the watch's
    polls cannot be overshot); the next job starts a new one."""

    def __init__(self) -> None:
        self.kills = 0  # processes killed past a budget (each replaced on the next job)
        self.capped = 0  # of those, ended by their own address-space cap before the RSS watch saw it
        self._process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._rss_began = 0  # the process's resident bytes once its imports were done
        self._lock = threading.Lock()

    def compile(self, job: Job, limits: GrammarLimits, cpu_s: float, memory_bytes: int) -> Grammar | GatewayError:
        """The job's outcome, or `invalid_field` naming the budget (grammar_cpu_s, grammar_memory_bytes) it passed."""
        with self._lock:
            conn, pid = self._started()
            began, _ = process_usage(pid)
            conn.send((job, limits, memory_bytes))
            while not conn.poll(_POLL_S):
                used_s, rss = process_usage(pid)  # its own CPU: waiting for a core costs no budget
                refusal = _past_budget(used_s - began, cpu_s, rss - self._rss_began, memory_bytes)
                if refusal is not None:
                    self._kill()
                    self.kills += 1
                    return refusal
            try:
                answer: Grammar | tuple[str, str] = conn.recv()
            except (EOFError, OSError):  # the process died: past its address-space cap, or killed by the kernel
                return self._died(memory_bytes)
        return answer if isinstance(answer, Grammar) else GatewayError(ErrorCode(answer[0]), answer[1])

    def _died(self, memory_bytes: int) -> GatewayError:
        """The refusal for a job whose process ended without answering: an allocation past its address-space
        cap aborts it (Rust aborts on a failed allocation), which is the client's grammar's doing."""
        process = self._process
        returncode = process.wait(5) if process is not None else None
        self._kill()
        if returncode == -signal.SIGABRT:
            self.kills += 1
            self.capped += 1
            return memory_refusal(memory_bytes)
        log.error("a grammar compile process ended without an answer")
        return GatewayError(ErrorCode.INTERNAL, "the grammar could not be compiled")

    def close(self) -> None:
        """Kill the process now, without waiting for a compile in it (its thread sees the pipe close)."""
        process = self._process
        if process is not None:
            process.kill()

    def _started(self) -> tuple[Connection, int]:
        if self._process is None or self._conn is None or self._process.poll() is not None:
            self._kill()
            ours, theirs = socket.socketpair()
            command = [sys.executable, "-m", __name__, str(theirs.fileno())]
            env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}  # this process's gateway
            self._process = subprocess.Popen(command, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
            theirs.close()
            self._conn = Connection(ours.detach())
            if not self._conn.poll(_START_S) or self._conn.recv() != _READY:  # its imports cost no job's budget
                self._kill()
                raise RuntimeError("a grammar compile process did not start")
            self._rss_began = process_usage(self._process.pid)[1]
        return self._conn, self._process.pid

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait(5)
        if self._conn is not None:
            self._conn.close()
        self._process, self._conn = None, None


def serve(conn: Connection) -> None:
    """A worker process's life: each job's outcome (a refusal as its code and message), until the pipe closes."""
    _lower_priority()
    conn.send(_READY)
    while True:
        try:
            job, limits, memory_bytes = conn.recv()
        except (EOFError, OSError, KeyboardInterrupt):
            return
        capped = _cap_address_space(memory_bytes)
        try:
            outcome = outcome_of(job, limits)
        except MemoryError:  # an allocation Python made past the cap (Rust's abort the process instead)
            outcome = memory_refusal(memory_bytes)
        finally:
            resource.setrlimit(resource.RLIMIT_AS, capped)
        conn.send(outcome if isinstance(outcome, Grammar) else (outcome.code.value, outcome.message))


def outcome_of(job: Job, limits: GrammarLimits) -> Grammar | GatewayError:
    """A job compiled with llguidance's own check (no vocabulary: the engine compiles an accepted one)."""
    subject, detail = job
    try:
        if isinstance(subject, Grammar):
            assert isinstance(detail, str)
            return compile_source(subject, detail, limits, validate)
        assert isinstance(detail, int)
        return compile_format(subject, detail, limits, validate)
    except MemoryError:  # past the job's address-space cap: the client's grammar, refused by the caller
        raise
    except Exception:  # the compiler's bug, not the client's: logged, and this one grammar refused
        log.exception("compiling a grammar failed")
        return GatewayError(ErrorCode.INTERNAL, "the grammar could not be compiled")


def _cap_address_space(memory_bytes: int) -> tuple[int, int]:
    """A hard bound the RSS watch cannot overshoot between two polls: the process may map at most
    `memory_bytes` more than it has mapped now (for this job); the limits before, to restore after it."""
    before = resource.getrlimit(resource.RLIMIT_AS)
    try:
        with open("/proc/self/statm", "rb") as statm:
            mapped = int(statm.read().split()[0]) * _PAGE_BYTES
    except OSError:  # not Linux: the RSS watch alone
        return before
    cap = mapped + memory_bytes
    if before[1] != resource.RLIM_INFINITY:
        cap = min(cap, before[1])
    resource.setrlimit(resource.RLIMIT_AS, (cap, before[1]))
    return before


def memory_refusal(memory_bytes: int) -> GatewayError:
    mib = memory_bytes / (1 << 20)
    return GatewayError(ErrorCode.INVALID_FIELD, f"compiling the grammar took over grammar_memory_bytes ({mib:g} MiB)")


def _past_budget(used_s: float, cpu_s: float, grown_bytes: int, memory_bytes: int) -> GatewayError | None:
    """The refusal naming the budget a compile has used up, if any."""
    if used_s >= cpu_s:
        return GatewayError(ErrorCode.INVALID_FIELD, f"compiling the grammar took over grammar_cpu_s ({cpu_s:g} s)")
    if grown_bytes >= memory_bytes:
        return memory_refusal(memory_bytes)
    return None


def process_usage(pid: int) -> tuple[float, int]:
    """The CPU time (user and system) process `pid` has used, and its resident bytes, from Linux's /proc in
    one read; elsewhere the time since the epoch (a wall-clock budget, the nearest there is) and 0 bytes."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except OSError:
        return time.time(), 0
    # utime, stime and rss: fields 14, 15 and 24 of stat(5), counted from the state (field 3) here
    return (int(fields[11]) + int(fields[12])) * _TICK_S, int(fields[21]) * _PAGE_BYTES


def _lower_priority() -> None:
    """Compiles give way to the generation thread every session waits on."""
    try:
        os.nice(10)
    except OSError:
        pass


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])))
