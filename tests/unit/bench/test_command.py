"""`gateway bench` as a newcomer runs it: the scripted engine's report and chart, and --plot refused at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import free_port
from tests.unit.bench.test_plot import series_points


def bench(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gateway.cli", "bench", "--engine", "scripted", "--port", str(free_port()), *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_scripted_bench_with_one_session_prints_one_row_and_draws_it(tmp_path: Path) -> None:
    """`bench --engine scripted --sessions 1 --plot F.svg`: the header names the engine (no "None"), one
    row "1 session" (no "1 sessions"), and a chart of tokens/s at that one session count."""
    out = tmp_path / "bench.svg"
    done = bench("--sessions", "1", "--turns", "1", "--max-tokens", "4", "--plot", str(out))
    assert done.returncode == 0, done.stderr
    assert "None" not in done.stdout and "1 sessions" not in done.stdout and "scripted engine" in done.stdout
    assert series_points(out) == {"tokens-per-s-gateway": 1}


def test_plot_to_another_file_type_fails_before_the_run(tmp_path: Path) -> None:
    """`--plot F.pdf` is one line on stderr and no run: no report is printed and no JSON written."""
    report, chart = tmp_path / "report.json", str(tmp_path / "chart.pdf")
    done = bench("--plot", chart, "--out", str(report))
    assert done.returncode != 0 and done.stdout == "" and not report.exists()
    assert done.stderr.strip().splitlines() == [f"gateway bench: --plot draws a .png or .svg file, not {chart!r}"]
