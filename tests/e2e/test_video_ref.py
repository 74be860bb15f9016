"""The video reference environment (scripts/install-video-ref): the registry's torch and torchvision run on
the CPU, and a clip decoded by gateway.media.video goes through a Qwen2-VL checkpoint's own video processor
and greedy `generate` there."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import announce
from tests.families.builders import cached_family
from tests.vllm_support import vllm_python

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.video_ref, pytest.mark.timeout(900)]  # the first run also installs the environment


@pytest.fixture(scope="module")
def reference(pytestconfig: pytest.Config) -> dict[str, Any]:
    """What scripts/video_ref_check.py reports in the reference environment, on the tiny Qwen2-VL."""
    say = lambda line: announce(pytestconfig, line)  # noqa: E731
    python = vllm_python(say=say, script=ROOT / "scripts" / "install-video-ref")
    model = cached_family("qwen2_vl")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [python, str(ROOT / "scripts" / "video_ref_check.py"), str(model)], capture_output=True, text=True, env=env, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return report


def test_torchvision_ops_run_on_the_cpu(reference: dict[str, Any]) -> None:
    """The registry's CUDA builds of torch and torchvision run torchvision.ops.nms without a GPU."""
    assert reference["nms_kept"] == [0, 2]


def test_the_video_processor_lays_out_the_decoded_frames(reference: dict[str, Any]) -> None:
    """Four frames of 112x84 become 2 temporal patches of a 6x8 grid: one video token per 2x2 merged patch."""
    assert reference["frames"] == 4 and reference["video_grid_thw"] == [[2, 6, 8]]
    assert reference["video_tokens"] == 2 * 6 * 8 // 4


def test_greedy_generate_over_a_video_repeats_itself(reference: dict[str, Any]) -> None:
    """The model's own greedy `generate` over the clip gives the same eight tokens twice."""
    first, second = reference["greedy_replies"]
    assert len(first) == 8 and first == second
