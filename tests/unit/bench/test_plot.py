"""`gateway bench --plot FILE`: the report's figures as a valid PNG or SVG with one line per series."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from gateway.bench.plot import PlotError, check_plot_target, write_plot

SVG = "{http://www.w3.org/2000/svg}"


def load_run(sessions: int, tokens_per_s: float) -> dict[str, Any]:
    return {"sessions": sessions, "tokens_per_s": tokens_per_s}


HISTORY = {
    "model": "/m",
    "history_turns": 5,
    "sessions": 2,
    "prompt_words": 48,
    "reuse": {"ttft_ms_by_turn": [5.0, 5.5, 5.2, 5.4, 5.3]},
    "no_reuse": {"ttft_ms_by_turn": [5.0, 9.0, 14.0, 19.0, 25.0]},
}
BATCHING = {
    "model": "/m",
    "engine": "real",
    "sessions": 16,
    "max_tokens": 64,
    "gateway_1_session": load_run(1, 90.0),
    "gateway_16_sessions": load_run(16, 600.0),
    "baselines": {"generate_single_tokens_per_s": 100.0, "generate_static_batch_16_tokens_per_s": 700.0},
}


def series_points(svg: Path) -> dict[str, int]:
    """Each named series (its gid) in a drawn SVG, with the count of points its line passes through."""
    root = ET.parse(svg).getroot()
    lines = {}
    for group in root.iter(f"{SVG}g"):
        path = group.find(f"{SVG}path")
        if path is not None and not group.get("id", "").startswith(("line2d", "patch", "axes", "figure", "legend")):
            lines[group.get("id", "")] = len(re.findall(r"[ML] ", path.get("d", "")))
    return {gid: points for gid, points in lines.items() if gid.startswith(("ttft", "tokens"))}


def texts(svg: Path) -> list[str]:
    return [(text.text or "").strip() for text in ET.parse(svg).getroot().iter(f"{SVG}text")]


def test_history_svg_has_a_line_per_run_with_a_point_per_turn(tmp_path: Path) -> None:
    """`--history --plot F.svg`: time to first token by turn, one line with KV reuse and one without, each
    through every turn, with both in the legend and the axes named with units."""
    out = tmp_path / "history.svg"
    write_plot(HISTORY, str(out))
    assert series_points(out) == {"ttft-kv-reuse": 5, "ttft-no-kv-reuse": 5}
    labels = texts(out)
    assert {"with KV reuse", "without KV reuse", "turn of the conversation"} <= set(labels)
    assert any(label.startswith("time to first token, ms") for label in labels)


def test_batching_svg_shows_tokens_per_s_by_session_count_beside_generate(tmp_path: Path) -> None:
    """The batching run's chart: the gateway's tokens/s at 1 and N sessions, and raw generate's (one
    stream, one static batch) where --baseline measured it."""
    out = tmp_path / "batching.svg"
    write_plot(BATCHING, str(out))
    assert series_points(out) == {"tokens-per-s-gateway": 2, "tokens-per-s-generate": 2}
    assert {"gateway", "raw generate (1 stream; a static batch)", "concurrent sessions"} <= set(texts(out))
    bare = {key: value for key, value in BATCHING.items() if key != "baselines"}
    write_plot(bare, str(out))
    assert series_points(out) == {"tokens-per-s-gateway": 2}


def test_window_report_plots_with_and_without_headroom(tmp_path: Path) -> None:
    """`--history --context-tokens` draws TTFT by turn with trim_headroom and without."""
    window = {
        **HISTORY,
        "window_tokens": 300,
        "headroom": {"trim_headroom": 0.25, "ttft_ms_by_turn": [4.0, 5.0, 6.0]},
        "no_headroom": {"trim_headroom": 0.0, "ttft_ms_by_turn": [4.0, 9.0, 9.5]},
    }
    out = tmp_path / "window.svg"
    write_plot(window, str(out))
    assert series_points(out) == {"ttft-headroom": 3, "ttft-no-headroom": 3}


def test_png_is_a_valid_image(tmp_path: Path) -> None:
    """`--plot F.png` writes a PNG that decodes, of the chart's size."""
    out = tmp_path / "history.png"
    write_plot(HISTORY, str(out))
    with Image.open(out) as image:
        image.verify()
        assert image.format == "PNG" and image.size == (800, 450)


def test_the_same_report_draws_the_same_svg(tmp_path: Path) -> None:
    """An SVG carries no date or random ids: the same report gives the same bytes (charts can be compared)."""
    first, second = tmp_path / "a.svg", tmp_path / "b.svg"
    write_plot(BATCHING, str(first))
    write_plot(BATCHING, str(second))
    assert first.read_bytes() == second.read_bytes()


@pytest.mark.parametrize("name", ["chart.pdf", "chart", "chart.svg.txt"])
def test_a_file_type_other_than_png_or_svg_is_refused_before_running(name: str) -> None:
    """--plot with another file type is refused before the benchmark runs, naming the file."""
    with pytest.raises(PlotError, match=re.escape(repr(name))):
        check_plot_target(name)


def test_a_report_with_no_chart_is_refused(tmp_path: Path) -> None:
    """A report kind that has no chart (--live) is said in a line, and no file is written."""
    out = tmp_path / "live.svg"
    with pytest.raises(PlotError, match="no chart"):
        write_plot({"live_turn_ttft_ms": {"p50": 1.0}}, str(out))
    assert not out.exists()
