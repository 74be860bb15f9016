"""`gateway bench`'s report for people: a table with units, and what each ratio means and what good looks like."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COLUMNS = (
    ("turns", 6),
    ("errors", 7),
    ("wall s", 8),
    ("tokens/s", 10),
    ("frames/s", 10),
    ("TTFT ms p50/p90/p99", 23),
    ("ITL ms p50/p90/p99", 22),
    ("tokens/s per turn p50", 23),
)


def format_report(report: dict[str, Any], as_json: bool = False) -> str:
    if as_json:
        return json.dumps(report, indent=2)
    if "live_turn_ttft_ms" in report:  # --live: its figures as they are, and the target's verdict
        return f"{json.dumps(report, indent=2)}\n\n{_live_target(report)}"
    if "window_tokens" in report:
        return _window(report)
    if "history_turns" in report:
        return _history(report)
    parts = [_header(report), _table(report), _legend()]
    if "late_joiner" in report:
        parts.append(_late_joiner(report))
    if report.get("engine_profile", {}).get("engine_busy_s"):
        parts.append(_engine_profile(report))
    if "ratios" in report:
        parts.append(_ratios(report))
    if "vs_direct" in report:
        parts.append(_direct(report))
    return "\n\n".join(parts)


def write_report(report: dict[str, Any], path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(report, indent=2))


def sessions(n: int) -> str:
    return f"{n} session" if n == 1 else f"{n} sessions"


def verdict(value: float, low: float) -> str:
    """A ratio's verdict against its fine range, `low` and up: fine, or that it missed the range."""
    return "fine" if value >= low else f"MISSED (under {low:g})"


def _header(report: dict[str, Any]) -> str:
    served = f"{report['model']} ({report['engine']} engine)"
    if not report["model"]:
        served = "the scripted engine (no model: instant replies, so what is measured is the WebSocket layer)"
    return (
        f"gateway bench: {served}\n"
        f"{sessions(report['sessions'])} of {report['turns_per_session']} turns each; per turn a {report['prompt_words']}-word "
        f"prompt, {report['images']} images and {report['max_tokens']} generated tokens"
    )


def _table(report: dict[str, Any]) -> str:
    rows = [f"{'':<14}" + "".join(f"{title:>{width}}" for title, width in COLUMNS)]
    runs = [report[key] for key in ("gateway_1_session", f"gateway_{report['sessions']}_sessions") if key in report]
    for run in runs:
        cells = (
            run["turns"],
            run["errors"],
            f"{run['wall_s']:.2f}",
            f"{run['tokens_per_s']:.1f}",
            f"{run['frames_per_s']:.1f}",
            _spread(run["ttft_ms"]),
            _spread(run["itl_ms"]),
            f"{run['session_tokens_per_s']['p50']:.1f}",
        )
        name = sessions(run["sessions"])
        rows.append(f"{name:<14}" + "".join(f"{cell:>{width}}" for cell, (_, width) in zip(cells, COLUMNS)))
    return "\n".join(rows)


def _spread(percentiles: dict[str, float]) -> str:
    return " / ".join(f"{percentiles[p]:.1f}" for p in ("p50", "p90", "p99"))


def _legend() -> str:
    return (
        "TTFT: time to first token, from sending a turn to its first token. ITL: inter-token latency, the time\n"
        "between two tokens of one turn. tokens/s: all completion tokens over the wall time; per turn: one turn's\n"
        "tokens over its own duration. frames/s: token frames received (several tokens can share a frame)."
    )


def _late_joiner(report: dict[str, Any]) -> str:
    joiner = report["late_joiner"]
    verdict = "within budget" if joiner["within_budget"] else "OVER budget"
    return (
        f"late joiner: {joiner['ttft_ms']:.1f} ms to first token, budget {joiner['budget_ms']:.1f} ms: {verdict}\n"
        f"  One turn sent while the other {report['sessions'] - 1} sessions are mid-stream. The budget is a lone turn's\n"
        "  TTFT plus two decode steps of the full batch: within it (good), the running batch takes the newcomer in\n"
        "  at once instead of making it wait for the others to finish."
    )


def _engine_profile(report: dict[str, Any]) -> str:
    """Where the engine's time and the gateway's CPU went during the N-session load, largest share first."""
    profile = report["engine_profile"]
    phases = "  ".join(f"{name} {share:.1%}" for name, share in _largest(profile["engine_phase_share"]))
    lines = [
        f"engine profile, {sessions(report['sessions'])}: busy {profile['engine_busy_s']:.2f} s, "
        f"waiting for work {profile['engine_waiting_s']:.2f} s",
        f"  busy time by phase: {phases}",
    ]
    if profile.get("gateway_cpu_s"):
        threads = "  ".join(f"{name} {share:.1%}" for name, share in _largest(profile["gateway_cpu_share_by_thread"]))
        lines.append(f"  gateway CPU {profile['gateway_cpu_s']:.2f} s by thread: {threads}")
    return "\n".join(lines)


def _largest(shares: dict[str, float]) -> list[tuple[str, float]]:
    return sorted(shares.items(), key=lambda item: -item[1])


def _ratios(report: dict[str, Any]) -> str:
    base, ratios, n = report["baselines"], report["ratios"], report["sessions"]
    single, static = base["generate_single_tokens_per_s"], base[f"generate_static_batch_{n}_tokens_per_s"]
    explained = (  # each ratio: its key, what it divides, the floor of its fine range, what good looks like
        (
            "1_session_vs_generate_single",
            "1 session / generate, 1 stream",
            0.8,
            "the gateway's overhead on one stream; good: close to 1 (0.8 and up is fine)",
        ),
        (
            f"{n}_sessions_vs_static_batch",
            f"{sessions(n)} / static batch of {n}",
            0.8,
            "continuous batching against one ideal static batch; good: close to 1 (0.8 and up is fine)",
        ),
        (
            f"{n}_sessions_vs_generate_single",
            f"{sessions(n)} / generate, 1 stream",
            1.0 if n > 1 else 0.8,
            f"throughput gained by batching; good: well above 1, up to the static batch's own {static / single:.1f}",
        ),
    )
    lines = [
        f"raw transformers generate, same model and prompt: 1 stream {single:.1f} tokens/s; static batch of {n}: "
        f"{static:.1f} tokens/s",
        "ratios are the gateway's tokens/s over these (compare ratios, not absolute numbers: machines are noisy):",
    ]
    for key, label, low, meaning in explained:
        lines.append(f"  {label:<34}{ratios[key]:>7.2f}  {verdict(ratios[key], low):<18}{meaning}")
    return "\n".join(lines)


def _direct(report: dict[str, Any]) -> str:
    direct, versus = report[f"direct_{report['sessions']}_sessions"], report["vs_direct"]
    ratio = versus["tokens_per_s_ratio"]
    load = versus.get("load_average", [])
    return (
        f"straight to the upstream, same load and sampling, alternated with the gateway {len(versus.get('rounds', []))} times: "
        f"{direct['tokens_per_s']:.1f} tokens/s, per-token ITL p50 {direct['tpot_ms']['p50']:.2f} ms\n"
        f"  gateway / direct tokens/s {'n/a' if ratio is None else f'{ratio:.2f}'} (median of the rounds; good: close to 1); "
        f"ITL the gateway adds at p50 {versus['added_itl_p50_ms']:.2f} ms (good: near 0)\n"
        "  ITL here is per token on both sides, each turn's decode time over its tokens: the gateway merges the\n"
        "  deltas a client has not taken yet into one frame, so gaps between frames would not compare.\n"
        f"  load average before and after (1, 5, 15 min): {load}" + _idle_share(versus.get("gateway_idle_cpu_share"))
    )


def _idle_share(share: float | None) -> str:
    if share is None:
        return ""
    return f"\n  CPU the idle gateway used while the direct side ran: {share:.1%} of one core (good: near 0)"


def _history(report: dict[str, Any]) -> str:
    reuse, cold = report["reuse"], report["no_reuse"]
    rows = [
        f"gateway bench --history: {report['model']}, {report.get('sessions', 1)} conversation(s) of "
        f"{report['history_turns']} turns at once, {report['prompt_words']}-word user turns",
        "",
        f"{'turn':>4}{'TTFT ms, KV reuse':>20}{'without':>10}",
    ]
    for turn, (warm_ms, cold_ms) in enumerate(zip(reuse["ttft_ms_by_turn"], cold["ttft_ms_by_turn"]), 1):
        rows.append(f"{turn:>4}{warm_ms:>20.1f}{cold_ms:>10.1f}")
    rows += [
        "",
        f"late turns' TTFT over early turns': {reuse['late_over_early']:.2f} with reuse, {cold['late_over_early']:.2f} without"
        " (good: close to 1 with reuse, where a turn costs only its new tokens)",
        f"reuse's speed-up on late turns: {report['speedup_late_turns']:.2f}x (good: above 1, growing with the history): "
        + verdict(report["speedup_late_turns"], 1.0),
    ]
    if "tokens_per_s_ratio" in report:
        rows.append(
            f"aggregate tokens/s: {reuse['tokens_per_s']:.1f} with reuse, {cold['tokens_per_s']:.1f} without, ratio "
            f"{report['tokens_per_s_ratio']:.2f} (good: 1 or above): {verdict(report['tokens_per_s_ratio'], 1.0)}"
        )
    rows += _edit_mix(report["edit_mix"]) if "edit_mix" in report else []
    if "load_average_before" in report:
        rows.append(f"load average (1, 5, 15 min): {report['load_average_before']} before, {report['load_average_after']} after")
    return "\n".join(rows)


EDITS = {
    "warm_turn": "a warm turn (the last)",
    "regenerate": "regenerate the last reply",
    "edit": "edit the message {back} turns back",
    "switch_then_turn": "switch back, then a turn",
    "fork_then_turn": "fork, then a turn",
}


def _edit_mix(mix: dict[str, Any]) -> list[str]:
    rows = ["", f"{'at the end':<36}{'TTFT ms':>9}{'cached/prompt':>16}{'x warm':>8}{'cold ms':>9}{'cold x':>8}"]
    for label, name in EDITS.items():
        r = mix[label]
        held = f"{r['cached_tokens']}/{r['prompt_tokens']}"
        row = f"{name.format(back=mix['edit_back_turns']):<36}{r['ttft_ms']:>9.1f}{held:>16}{r['over_warm_turn'] or 0:>8.2f}"
        rows.append(row + f"{r['cold_ttft_ms']:>9.1f}{r['cold_over_this'] or 0:>8.2f}")
    rows.append("(good: regenerate and fork within 1.2x a warm turn; an edit prefills only the tokens after it)")
    return rows


def _window(report: dict[str, Any]) -> str:
    kept, bare = report["headroom"], report["no_headroom"]
    rows = [
        f"gateway bench --history --context-tokens: {report['model']}, {report.get('sessions', 1)} conversation(s) of "
        f"{report['history_turns']} turns at once, {report['prompt_words']}-word user turns, trimmed to a "
        f"{report['window_tokens']}-token window, KV reuse on",
        "",
        f"{'turn':>4}{'TTFT ms, trim_headroom ' + str(kept['trim_headroom']):>32}{'0':>10}",
    ]
    for turn, (warm_ms, cold_ms) in enumerate(zip(kept["ttft_ms_by_turn"], bare["ttft_ms_by_turn"]), 1):
        rows.append(f"{turn:>4}{warm_ms:>32.1f}{cold_ms:>10.1f}")
    edge = (
        f"mean TTFT at the window's edge (from each conversation's first trim): {kept['edge_ttft_ms']} ms with headroom, "
        f"{bare['edge_ttft_ms']} ms without, speed-up {report['edge_speedup']}x (good: above 1): "
        + verdict(report["edge_speedup"], 1.0)
        if report["edge_speedup"] is not None
        else "no conversation outgrew the window: give --history more turns or --context-tokens fewer"
    )
    rows += [
        "",
        f"turns that dropped old exchanges: {kept['trims']} with headroom, {bare['trims']} without",
        edge,
        f"load average (1, 5, 15 min): {report['load_average_before']} before, {report['load_average_after']} after",
    ]
    return "\n".join(rows)


def _live_target(report: dict[str, Any]) -> str:
    """--live's target (gateway/bench/live.py `ttft_target`): live turns' TTFT against a text turn's, met or not."""
    target, live, text = report["ttft_target_ms"], report["live_turn_ttft_ms"], report["text_turn_ttft_ms"]
    encoding, floor = report["encoding_ms_per_live_turn"] or 0, report["live_floor"]
    met = {True: "met", False: "MISSED"}
    return (
        f"Live-turn TTFT p50 {live['p50']:.0f} ms against the target {target['p50']:.0f} ms "
        f"({report['ttft_target_ratio']:g} x text p50 {text['p50']:.0f} ms + encoding {encoding:.0f} ms per live turn): "
        f"{met[report['meets_target']]} ({met[report['meets_target_without_encoding']]} without the encoding); "
        f"p99 {live['p99']:.0f} ms against {target['p99']:.0f} ms: {met[report['meets_target_p99']]}. "
        f"Floor p50 {floor['p50_ms']:.0f} ms (text p50 + a live turn's own "
        f"extra cost alone on the engine, {floor['idle']['extra_ms']:.0f} ms): "
        f"live p50 is {floor['live_p50_above_ms']:.0f} ms above it. Warm-ups: {report['warm_ups']['prefilled']} "
        f"prefilled ahead, {report['warm_ups']['dropped']} dropped, {report['warm_ups'].get('expected', 0)} of all "
        f"these started ahead of a question due on a session's clock; {report['trims_ahead']} histories trimmed ahead; "
        f"turns that prefilled their prompt again: {report['live_turn_prefill']['whole_prefills']} live, "
        f"{report['text_turn_prefill']['whole_prefills']} text."
    )
