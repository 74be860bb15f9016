"""`gateway bench --history` on the local engine: conversations trimmed to a window, with and without headroom."""

from __future__ import annotations

from gateway.bench.report import format_report
from gateway.config import Settings
from tests.conftest import DemoDirs


def test_bench_history_in_a_window_trims_less_with_headroom(demo_dirs: DemoDirs) -> None:
    """`bench --history N --context-tokens W` runs real conversations trimmed to W tokens, with
    trim_headroom and without: without, nearly every turn at the edge drops exchanges; with, few do."""
    from gateway.bench.history import run_window

    report = run_window(str(demo_dirs.model), 14, 1, 48, 8, 300)
    kept, bare = report["headroom"], report["no_headroom"]
    assert (kept["trim_headroom"], bare["trim_headroom"]) == (Settings().trim_headroom, 0.0)
    assert bare["trims"] >= bare["edge_turns"] - 1 >= 4 and kept["trims"] < bare["trims"], report
    assert len(kept["ttft_ms_by_turn"]) == 14 and report["edge_speedup"] is not None
    text = format_report(report)
    assert "trimmed to a 300-token window" in text and f"{kept['trims']} with headroom, {bare['trims']} without" in text
