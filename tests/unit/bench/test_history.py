"""`gateway bench --history` on the local engine: conversations trimmed to a window, with and without headroom."""

from __future__ import annotations

from gateway.bench.report import format_report
from gateway.config import Settings
from tests.conftest import DemoDirs

HISTORY = {
    "model": "/m",
    "history_turns": 1,
    "prompt_words": 16,
    "reuse": {"ttft_ms_by_turn": [5.0], "late_over_early": 1.0},
    "no_reuse": {"ttft_ms_by_turn": [5.0], "late_over_early": 1.0},
    "speedup_late_turns": 1.0,
}


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


def test_the_edit_mix_reuses_held_kv_up_to_each_change(demo_dirs: DemoDirs) -> None:
    """At the end of a conversation: a regenerate holds all its prompt but the token that starts decoding, an
    edit holds the path above the edited message, a switch and a fork hold their path; cold prefills hold none."""
    from gateway.bench.edits import run_edit_mix

    mix = run_edit_mix(str(demo_dirs.model), 8, 16, 2)
    held = {label: (mix[label]["cached_tokens"], mix[label]["prompt_tokens"]) for label in mix if label != "edit_back_turns"}
    assert held["regenerate"][0] == held["regenerate"][1] - 1 == held["warm_turn"][1] - 1
    assert 0 < held["edit"][0] < held["edit"][1] < held["warm_turn"][1]
    assert all(cached > prompt // 2 for cached, prompt in (held["switch_then_turn"], held["fork_then_turn"]))
    assert "regenerate the last reply" in format_report({**HISTORY, "edit_mix": mix})
