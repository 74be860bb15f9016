"""The engine profile of one load: the gateway's time by engine phase (/metrics) and by thread (/proc), before and after."""

from __future__ import annotations

import os
import re
import urllib.request
from dataclasses import dataclass

_PHASE = re.compile(r'^gateway_engine_seconds_total\{phase="(\w+)"\} (\S+)$', re.MULTILINE)


@dataclass(frozen=True)
class Reading:
    phases: dict[str, float]  # the generation thread's seconds by phase
    threads: dict[str, float]  # the gateway process's CPU seconds by thread name


def read(ws_url: str, pid: int | None) -> Reading:
    """The gateway's counters now (its /metrics next to `ws_url`; its threads when `pid` is known)."""
    return Reading(phases(metrics_text(ws_url)), _thread_cpu(pid))


def phases(text: str) -> dict[str, float]:
    """The engine's seconds by phase, from a /metrics text."""
    return {name: float(value) for name, value in _PHASE.findall(text)}


def metrics_text(ws_url: str) -> str:
    """The gateway's /metrics next to `ws_url` ("" when it cannot be read)."""
    url = ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1).rsplit("/ws", 1)[0] + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return str(response.read().decode())
    except OSError:
        return ""


def shares(before: Reading, after: Reading) -> dict[str, object]:
    """Where the engine's busy time went between two readings (shares of prefill, decode, joins, sampling,
    streaming...), and where the gateway's CPU went: the generation thread and its OpenMP workers (named
    after it), the event loop (framing, the WebSocket I/O), the image and counting pools."""
    busy = {phase: after.phases.get(phase, 0.0) - before.phases.get(phase, 0.0) for phase in after.phases}
    waited = busy.pop("waiting", 0.0)
    total = sum(busy.values())
    cpu = {name: after.threads[name] - before.threads.get(name, 0.0) for name in after.threads}
    cpu_total = sum(cpu.values())
    return {
        "engine_busy_s": round(total, 3),
        "engine_waiting_s": round(waited, 3),
        "engine_phase_share": {phase: round(s / total, 4) for phase, s in sorted(busy.items()) if total},
        "gateway_cpu_s": round(cpu_total, 3),
        "gateway_cpu_share_by_thread": {name: round(s / cpu_total, 4) for name, s in sorted(cpu.items()) if cpu_total and s},
    }


def _thread_cpu(pid: int | None) -> dict[str, float]:
    """User and system CPU seconds of each of a process's threads, summed by thread name."""
    seconds: dict[str, float] = {}
    try:
        tasks = os.listdir(f"/proc/{pid}/task") if pid is not None else []
    except OSError:
        return seconds
    for task in tasks:
        name, used = cpu_seconds(f"/proc/{pid}/task/{task}/stat")
        seconds[name] = seconds.get(name, 0.0) + used
    return seconds


def cpu_seconds(stat_path: str) -> tuple[str, float]:
    """A process's or thread's name and its user and system CPU seconds, from its /proc stat file (0: gone)."""
    try:
        with open(stat_path) as stat:
            head, tail = stat.read().rsplit(")", 1)
        fields = tail.split()
        return head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return "", 0.0
