"""`gateway bench --live` against a real server: every session streams, asks live and text questions, and reports them."""

from __future__ import annotations

from itertools import pairwise

import pytest

from gateway.bench.live import LiveConfig, camera_frame, question_offsets, run_live, ttft_target
from gateway.bench.report import format_report
from tests.conftest import RunningServer


async def test_a_short_live_bench_reports_its_turns_and_frames(server: RunningServer) -> None:
    """Two sessions for one round: a live turn each (reading the frames streamed so far) and a text turn each; then
    a still scene's three live turns, which cost one vision-tower pass in all."""
    config = LiveConfig(url=server.ws_url, sessions=2, seconds=0.5, ask_every_s=1.0, max_tokens=2, size=(64, 48), floor_rounds=1)
    report = await run_live(config)
    assert report["live_turns"] == 2 and report["text_turns"] == 2 and report["errors"] == 0
    assert report["frames_sent"] >= 2 and report["live_frames_read_mean"] >= 1
    # The windows' own counts: each session's first frame at least is a distinct one; none is counted twice.
    taken = [report[f"frames_{outcome}"] for outcome in ("accepted", "merged", "dropped")]
    assert report["frames_accepted"] >= 2 and sum(taken) <= report["frames_sent"]
    assert report["live_turn_ttft_ms"]["p50"] > 0 and report["live_vs_text_ttft_p50"] is not None
    live = report["live_turn_prefill"]
    assert live["prompt_tokens_mean"] > 0
    assert live["prompt_tokens_mean"] == pytest.approx(live["cached_tokens_mean"] + live["prefilled_tokens_mean"], abs=0.2)
    assert report["live_turn_engine_ttft_ms"]["p50"] > 0 and report["text_turn_engine_ttft_ms"]["p50"] > 0
    assert report["live_turn_gateway_ms"]["p50"] > 0 and report["text_turn_gateway_ms"]["p50"] > 0
    assert report["encoder_passes"] >= 2 and 0 < report["encoding_share_of_engine_busy"] < 1  # each session's first
    assert report["still_scene"] == {"live_turns": 3, "encoder_passes": 1}  # the same frame again and again


async def test_the_live_bench_states_the_ttft_target_and_whether_it_is_met(server: RunningServer) -> None:
    """The target is 1.5x the text turns' TTFT (p50, and p99) plus the vision tower's time per live turn, which
    counts only the frames a live turn encodes; `meets_target` compares the live turns' TTFT with it, and the
    text report says it."""
    # Not the other test's size: its frames' encoder outputs are held, and these must be encoded.
    config = LiveConfig(url=server.ws_url, sessions=2, seconds=0.5, ask_every_s=1.0, max_tokens=2, size=(80, 60), floor_rounds=1)
    report = await run_live(config)
    encoding = report["encoding_ms_per_live_turn"]
    assert encoding > 0 and report["ttft_target_ratio"] == 1.5
    for q in ("p50", "p99"):
        assert report["ttft_target_ms"][q] == pytest.approx(1.5 * report["text_turn_ttft_ms"][q] + encoding, abs=0.1)
    assert report["meets_target"] == (report["live_turn_ttft_ms"]["p50"] <= report["ttft_target_ms"]["p50"])
    assert report["meets_target_p99"] == (report["live_turn_ttft_ms"]["p99"] <= report["ttft_target_ms"]["p99"])
    assert report["meets_target_without_encoding"] == (
        report["live_turn_ttft_ms"]["p50"] <= 1.5 * report["text_turn_ttft_ms"]["p50"]
    )
    verdict = "met" if report["meets_target"] else "MISSED"
    without = "met" if report["meets_target_without_encoding"] else "MISSED"
    assert f"per live turn): {verdict} ({without} without the encoding)" in format_report(report).splitlines()[-1]


async def test_the_live_bench_measures_the_floor_under_a_live_turn(server: RunningServer) -> None:
    """After the run, one session alone asks a live question over new frames and a text one: the difference of
    their TTFTs, added to the run's text p50, is the floor under the live turns' p50, and the report says how far
    above it they are."""
    config = LiveConfig(url=server.ws_url, sessions=1, seconds=0.5, ask_every_s=1.0, max_tokens=2, size=(72, 54), floor_rounds=2)
    report = await run_live(config)
    floor, idle = report["live_floor"], report["live_floor"]["idle"]
    assert idle["rounds"] == 2 and idle["new_frames"] == 4 and idle["live_ms"] > 0 and idle["text_ms"] > 0
    assert idle["extra_ms"] == pytest.approx(idle["live_ms"] - idle["text_ms"], abs=0.2)
    assert floor["p50_ms"] == pytest.approx(report["text_turn_ttft_ms"]["p50"] + idle["extra_ms"], abs=0.2)
    assert floor["live_p50_above_ms"] == pytest.approx(report["live_turn_ttft_ms"]["p50"] - floor["p50_ms"], abs=0.2)
    warm = report["warm_ups"]
    line = format_report(report).splitlines()[-1]
    assert f"live p50 is {floor['live_p50_above_ms']:.0f} ms above it." in line
    expected = f"{warm['expected']} of all these started ahead of a question due on a session's clock; "
    assert f"Warm-ups: {warm['prefilled']} prefilled ahead, {warm['dropped']} dropped, {expected}" in line
    # Far from the context's edge: nothing trimmed ahead, no turn after a session's first prefilled its prompt again.
    assert report["trims_ahead"] == 0 and "histories trimmed ahead; turns that prefilled their prompt again: 0 live" in line


def test_the_target_adds_the_encoding_to_one_and_a_half_text_turns() -> None:
    """A live turn 10 ms over 1.5x the text turn's TTFT meets the target when its frames took 10 ms to encode."""
    live, text = {"p50": 160.0, "p99": 400.0}, {"p50": 100.0, "p99": 200.0}
    assert ttft_target(live, text, 10.0) == {
        "ttft_target_ratio": 1.5,
        "ttft_target_ms": {"p50": 160.0, "p99": 310.0},
        "meets_target": True,
        "meets_target_p99": False,
        "meets_target_without_encoding": False,
    }
    assert not ttft_target(live, text, 9.0)["meets_target"]


def test_sessions_ask_out_of_step_unless_told() -> None:
    """Sessions' first questions are spread evenly over half a question cycle, so no two sessions' questions land
    together (live turns not at one instant, nor with another session's text turn); in step, all at once."""
    config = LiveConfig(url="ws://unused", sessions=4, ask_every_s=5.0)
    offsets = question_offsets(config)
    assert offsets == [0.0, 0.625, 1.25, 1.875]
    questions = sorted(offset + half for offset in offsets for half in (0.0, 2.5))  # live, then text
    assert len(set(questions)) == 8 and all(b - a == 0.625 for a, b in pairwise(questions))
    assert question_offsets(LiveConfig(url="ws://unused", sessions=4, stagger=False)) == [0.0] * 4


def test_the_camera_scene_is_still_between_its_moves() -> None:
    """Frames come in fours of the same picture, so a window merges three of every four; two cameras never
    send the same picture (sessions share no encoder output)."""
    assert camera_frame(0, (64, 48)) == camera_frame(3, (64, 48)) != camera_frame(4, (64, 48))
    assert camera_frame(0, (64, 48), camera=1) != camera_frame(0, (64, 48))


def test_the_camera_sends_no_frame_twice_over_a_long_run() -> None:
    """The box's laps run on different rows, so frames 64 apart differ (a repeated frame's encoding would be held)."""
    assert len({camera_frame(i, (64, 48)) for i in range(0, 512, 4)}) == 128
