"""`gateway bench`'s report for people, from report dicts: tables with units, and what each ratio means."""

from __future__ import annotations

from gateway.bench.report import format_report


def test_bench_report_is_a_table_with_units_and_meanings() -> None:
    """The human report has a row per run with units, explains the late joiner and each ratio."""
    run = {
        "sessions": 1,
        "turns": 2,
        "errors": 0,
        "wall_s": 1.5,
        "tokens_per_s": 100.0,
        "frames_per_s": 90.0,
        "ttft_ms": {"p50": 5.0, "p90": 6.0, "p99": 7.0},
        "itl_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0},
        "session_tokens_per_s": {"p50": 99.0, "p90": 99.0, "p99": 99.0},
    }
    report = {
        "model": "/m",
        "engine": "real",
        "sessions": 4,
        "turns_per_session": 2,
        "max_tokens": 64,
        "prompt_words": 48,
        "images": 0,
        "gateway_1_session": run,
        "gateway_4_sessions": {**run, "sessions": 4, "turns": 8},
        "late_joiner": {"ttft_ms": 9.0, "budget_ms": 7.0, "within_budget": False},
        "baselines": {"generate_single_tokens_per_s": 120.0, "generate_static_batch_4_tokens_per_s": 400.0},
        "ratios": {
            "1_session_vs_generate_single": 0.83,
            "4_sessions_vs_static_batch": 0.9,
            "4_sessions_vs_generate_single": 3.0,
        },
    }
    text = format_report(report)
    assert "TTFT ms p50/p90/p99" in text and "5.0 / 6.0 / 7.0" in text and "4 sessions" in text
    assert "late joiner: 9.0 ms to first token, budget 7.0 ms: OVER budget" in text
    assert text.count("good:") == 3 and "{" not in text


def test_bench_history_report_is_a_table_by_turn() -> None:
    """`bench --history` prints TTFT by turn with and without KV reuse, and what the ratios should be."""
    report = {
        "model": "/m",
        "history_turns": 2,
        "prompt_words": 48,
        "reuse": {"ttft_ms_by_turn": [5.0, 6.0], "late_over_early": 1.2},
        "no_reuse": {"ttft_ms_by_turn": [5.0, 9.0], "late_over_early": 1.8},
        "speedup_late_turns": 1.5,
    }
    text = format_report(report)
    assert "   2                 6.0       9.0" in text and text.count("good:") == 2 and "{" not in text


def test_bench_history_report_with_many_sessions_gives_tokens_per_s_and_load() -> None:
    """`bench --history N --sessions S` adds aggregate tokens/s with and without reuse, and the load average."""
    report = {
        "model": "/m",
        "history_turns": 2,
        "sessions": 16,
        "prompt_words": 48,
        "reuse": {"ttft_ms_by_turn": [5.0, 6.0], "late_over_early": 1.2, "tokens_per_s": 300.0},
        "no_reuse": {"ttft_ms_by_turn": [5.0, 9.0], "late_over_early": 1.8, "tokens_per_s": 200.0},
        "speedup_late_turns": 1.5,
        "tokens_per_s_ratio": 1.5,
        "load_average_before": [1.0, 1.0, 1.0],
        "load_average_after": [2.0, 1.0, 1.0],
    }
    text = format_report(report)
    assert "16 conversation(s) of 2 turns" in text and "300.0 with reuse, 200.0 without, ratio 1.50" in text
    assert "load average" in text and text.count("good:") == 3


def test_scripted_single_session_report_names_the_engine_and_has_one_row() -> None:
    """The scripted engine has no model: the header says what it measures (no "None"), and one session
    is one row, "1 session" (no "1 sessions")."""
    run = {
        "sessions": 1,
        "turns": 2,
        "errors": 0,
        "wall_s": 0.1,
        "tokens_per_s": 1300.0,
        "frames_per_s": 450.0,
        "ttft_ms": {"p50": 50.0, "p90": 50.0, "p99": 50.0},
        "itl_ms": {"p50": 0.0, "p90": 0.0, "p99": 0.1},
        "session_tokens_per_s": {"p50": 1400.0, "p90": 1400.0, "p99": 1400.0},
    }
    header = {"model": None, "engine": "scripted", "turns_per_session": 2, "max_tokens": 64, "prompt_words": 48, "images": 0}
    text = format_report({**header, "sessions": 1, "gateway_1_session": run})
    assert "None" not in text and "1 sessions" not in text and "the scripted engine (no model" in text
    rows = [line for line in text.splitlines() if line.startswith("1 session ") and "turns each" not in line]
    assert len(rows) == 1 and "1 session of 2 turns each" in text


def test_each_ratio_has_a_verdict_against_its_range() -> None:
    """Ratios print a verdict: "fine" inside their range, "MISSED" with the floor when under it."""
    run = {
        "sessions": 4,
        "turns": 8,
        "errors": 0,
        "wall_s": 1.0,
        "tokens_per_s": 100.0,
        "frames_per_s": 90.0,
        "ttft_ms": {"p50": 5.0, "p90": 6.0, "p99": 7.0},
        "itl_ms": {"p50": 1.0, "p90": 1.5, "p99": 2.0},
        "session_tokens_per_s": {"p50": 99.0, "p90": 99.0, "p99": 99.0},
    }
    report = {
        "model": "/m",
        "engine": "real",
        "sessions": 4,
        "turns_per_session": 2,
        "max_tokens": 64,
        "prompt_words": 48,
        "images": 0,
        "gateway_1_session": {**run, "sessions": 1},
        "gateway_4_sessions": run,
        "baselines": {"generate_single_tokens_per_s": 120.0, "generate_static_batch_4_tokens_per_s": 400.0},
        "ratios": {"1_session_vs_generate_single": 0.83, "4_sessions_vs_static_batch": 0.5, "4_sessions_vs_generate_single": 0.9},
    }
    ratios = {line.split("  ")[1].strip(): line for line in format_report(report).splitlines() if " / " in line[:40]}
    assert "fine" in ratios["1 session / generate, 1 stream"]
    assert "MISSED (under 0.8)" in ratios["4 sessions / static batch of 4"]
    assert "MISSED (under 1)" in ratios["4 sessions / generate, 1 stream"]


def test_the_text_report_prints_the_engine_profile_largest_share_first() -> None:
    """The N-session load's engine profile is in the text report too: each phase's and thread's share,
    the largest first, with the busy and CPU seconds."""
    report = {
        "model": "/m",
        "engine": "real",
        "sessions": 16,
        "turns_per_session": 2,
        "max_tokens": 64,
        "prompt_words": 48,
        "images": 0,
        "engine_profile": {
            "engine_busy_s": 12.5,
            "engine_waiting_s": 0.75,
            "engine_phase_share": {"chunks": 0.02, "decode": 0.9, "prefill": 0.08},
            "gateway_cpu_s": 20.0,
            "gateway_cpu_share_by_thread": {"MainThread": 0.05, "gateway-engine": 0.95},
        },
    }
    text = format_report(report)
    assert "engine profile, 16 sessions: busy 12.50 s, waiting for work 0.75 s" in text
    assert "busy time by phase: decode 90.0%  prefill 8.0%  chunks 2.0%" in text
    assert "gateway CPU 20.00 s by thread: gateway-engine 95.0%  MainThread 5.0%" in text
