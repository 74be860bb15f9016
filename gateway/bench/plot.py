"""`gateway bench --plot FILE`: the report's figures drawn as a PNG or SVG chart (matplotlib, the `plot` extra)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = (".png", ".svg")
INSTALL_HINT = "pip install -e '.[plot]' (scripts/install installs it)"
GATEWAY_RUN = re.compile(r"gateway_\d+_sessions?")  # the report's keys of the gateway's load runs


class PlotError(Exception):
    """--plot cannot be drawn: a file type other than PNG or SVG, no matplotlib, or a report with no chart."""


@dataclass(frozen=True)
class Series:
    """One line of a chart: its label in the legend, its points, and an id the SVG keeps (gid)."""

    label: str
    x: list[float]
    y: list[float]
    gid: str
    dashed: bool = False


@dataclass(frozen=True)
class Chart:
    title: str
    x_label: str
    y_label: str
    series: list[Series]


def check_plot_target(path: str) -> None:
    """Refuse a --plot FILE that cannot be drawn: another file type, or no matplotlib to draw with."""
    if Path(path).suffix.lower() not in FORMATS:
        raise PlotError(f"--plot draws a .png or .svg file, not {path!r}")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise PlotError(f"--plot needs matplotlib: {INSTALL_HINT}") from None


def chart_of(report: dict[str, Any]) -> Chart:
    """The chart that shows at a glance what the report's table says."""
    if "window_tokens" in report:
        return _window_chart(report)
    if "history_turns" in report:
        return _history_chart(report)
    if "gateway_1_session" in report:
        return _batching_chart(report)
    raise PlotError("--plot draws `gateway bench`, `--history` and `--context-tokens` runs; this report has no chart")


def write_plot(report: dict[str, Any], path: str) -> None:
    """Draw the report's chart into `path`, as PNG or SVG by its suffix (SVG text stays text, so it can be searched)."""
    check_plot_target(path)
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    from matplotlib import pyplot
    from matplotlib.ticker import MaxNLocator

    chart = chart_of(report)
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "gateway-bench"}):
        figure, axes = pyplot.subplots(figsize=(8, 4.5), layout="constrained")
        try:
            for series in chart.series:
                style = "--" if series.dashed else "-"
                axes.plot(series.x, series.y, style, marker="o", markersize=3, label=series.label, gid=series.gid)
            axes.set(title=chart.title, xlabel=chart.x_label, ylabel=chart.y_label)
            axes.set_ylim(bottom=0)
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))  # turns and session counts are whole numbers
            axes.grid(alpha=0.3)
            axes.legend()
            figure.savefig(path, metadata=_metadata(path))
        finally:
            pyplot.close(figure)


def _metadata(path: str) -> dict[str, Any]:
    # no creation date in an SVG, so the same report draws the same file
    return {"Date": None} if path.lower().endswith(".svg") else {}


def _turns(values: list[float]) -> list[float]:
    return [float(turn) for turn in range(1, len(values) + 1)]


def _ttft_chart(title: str, runs: list[tuple[str, list[float], str]]) -> Chart:
    series = [Series(label, _turns(ttft), ttft, gid, dashed=index > 0) for index, (label, ttft, gid) in enumerate(runs)]
    return Chart(title, "turn of the conversation", "time to first token, ms (mean over conversations)", series)


def _history_chart(report: dict[str, Any]) -> Chart:
    return _ttft_chart(
        f"Time to first token by turn: {report.get('sessions', 1)} conversation(s), {report['prompt_words']}-word turns",
        [
            ("with KV reuse", report["reuse"]["ttft_ms_by_turn"], "ttft-kv-reuse"),
            ("without KV reuse", report["no_reuse"]["ttft_ms_by_turn"], "ttft-no-kv-reuse"),
        ],
    )


def _window_chart(report: dict[str, Any]) -> Chart:
    kept = report["headroom"]
    return _ttft_chart(
        f"Time to first token by turn, trimmed to a {report['window_tokens']}-token window (KV reuse on)",
        [
            (f"trim_headroom {kept['trim_headroom']}", kept["ttft_ms_by_turn"], "ttft-headroom"),
            ("trim_headroom 0", report["no_headroom"]["ttft_ms_by_turn"], "ttft-no-headroom"),
        ],
    )


def _batching_chart(report: dict[str, Any]) -> Chart:
    by_count = {run["sessions"]: run["tokens_per_s"] for key, run in report.items() if GATEWAY_RUN.fullmatch(key)}
    runs = sorted(by_count.items())
    series = [Series("gateway", [float(n) for n, _ in runs], [rate for _, rate in runs], "tokens-per-s-gateway")]
    base = report.get("baselines")
    if base:
        n = report["sessions"]
        static = base[f"generate_static_batch_{n}_tokens_per_s"]
        series.append(
            Series("raw generate (1 stream; a static batch)", [1.0, float(n)], [base["generate_single_tokens_per_s"], static],
                   "tokens-per-s-generate", dashed=True)
        )  # fmt: skip
    return Chart(
        f"Tokens/s by concurrent sessions ({report['engine']} engine, {report['max_tokens']} tokens a turn)",
        "concurrent sessions",
        "completion tokens/s, all sessions",
        series,
    )
