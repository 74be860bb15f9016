"""The native video layout against the models' own processors in the video reference environment
(scripts/install-video-ref, where torchvision runs): tiny Qwen2-VL, Qwen2.5-VL, Qwen3-VL, GLM-4.1V, GLM-4.5V (glm4v_moe)
and LLaVA-OneVision checkpoints, a prompt with a photo and two clips (one landscape of five frames, one portrait of three;
of five for LLaVA-OneVision, whose model stacks a prompt's clips), through the gateway's PromptBuilder (PIL and NumPy) and through
AutoProcessor with its torchvision video processor. Qwen3-VL's checkpoint carries its video processor's config, as
real ones do."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import announce
from tests.families.video import VIDEO_FAMILIES, video_checkpoint, video_template
from tests.vllm_support import vllm_python

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = VIDEO_FAMILIES
# Each clip's grid: a landscape clip of five frames of 150x100, a portrait one of three of 100x150.
GRIDS = {
    "qwen2_vl": [[3, 6, 8], [2, 8, 6]],
    "qwen2_5_vl": [[3, 6, 8], [2, 8, 6]],
    "qwen3_vl": [[3, 6, 10], [2, 10, 6]],
    "glm4v": [[3, 4, 6], [2, 6, 4]],
    "glm4v_moe": [[3, 4, 6], [2, 6, 4]],  # GLM-4.5V: GLM-4.1V's vision tower and processor
    "llava_onevision": None,  # no grid: each frame is resized whole
}
# Qwen2.5-VL has no video processor of its own: it shares Qwen2-VL's.
VIDEO_PROCESSORS = {name: "Qwen2VLVideoProcessor" for name in ("qwen2_vl", "qwen2_5_vl")} | {
    "qwen3_vl": "Qwen3VLVideoProcessor",
    "glm4v": "Glm4vVideoProcessor",
    "glm4v_moe": "Glm4vVideoProcessor",
    "llava_onevision": "LlavaOnevisionVideoProcessor",
}
pytestmark = [pytest.mark.video_ref, pytest.mark.timeout(900)]  # the first run also installs the environment


@pytest.fixture(scope="module")
def report(pytestconfig: pytest.Config, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What scripts/video_layout_check.py reports in the reference environment, per family."""
    python = vllm_python(say=lambda line: announce(pytestconfig, line), script=ROOT / "scripts" / "install-video-ref")
    templates = tmp_path_factory.mktemp("video-templates")
    scratch = tmp_path_factory.mktemp("checkpoints")
    pairs = []
    for name in FAMILIES:
        (templates / f"{name}.jinja").write_text(video_template(name))
        pairs.append(f"{video_checkpoint(name, scratch)}:{templates / f'{name}.jinja'}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    script = str(ROOT / "scripts" / "video_layout_check.py")
    done = subprocess.run([python, script, *pairs], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    found: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return found


@pytest.mark.parametrize("family", FAMILIES)
def test_the_reference_is_the_models_torchvision_video_processor(report: dict[str, Any], family: str) -> None:
    """The reference side is the checkpoint's own video processor, which needs torchvision."""
    assert report[family]["video_processor"] == VIDEO_PROCESSORS[family]


@pytest.mark.parametrize("family", FAMILIES)
def test_prompt_ids_and_token_types_are_equal(report: dict[str, Any], family: str) -> None:
    """Token for token the same prompt (Qwen3-VL's and GLM-4.1V's with each temporal patch's time), video tokens typed
    as video in the same places."""
    assert report[family]["input_ids_equal"] and report[family]["mm_token_type_ids_equal"]


@pytest.mark.parametrize("family", FAMILIES)
def test_grids_and_seconds_are_equal(report: dict[str, Any], family: str) -> None:
    """Each clip's temporal patches and grid (an odd frame count padded), and Qwen2.5-VL's seconds per patch."""
    found = report[family]
    assert found["video_grid_thw_equal"] and found["video_grid_thw"] == GRIDS[family]
    assert found["second_per_grid_ts_equal"]
    assert found["second_per_grid_ts"] == ([1.0, 1.0] if family == "qwen2_5_vl" else None)


@pytest.mark.parametrize("family", FAMILIES)
def test_pixels_agree_within_one_level(report: dict[str, Any], family: str) -> None:
    """PIL's bicubic passes and torchvision's round a few values apart, never by more than one uint8 level."""
    found = report[family]
    assert found["image_pixels_equal"] and found["video_pixels_shape_equal"]
    assert found["video_pixels_max_apart_levels"] <= 1.0 + 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_replies_are_equal(report: dict[str, Any], family: str) -> None:
    """The model's own `generate` gives the same eight tokens over our layout as over its processor's."""
    assert report[family]["greedy_ours"] == report[family]["greedy_reference"]
    assert len(report[family]["greedy_ours"]) == 8


@pytest.mark.parametrize("family", FAMILIES)
def test_a_single_frame_clip_is_laid_out_as_the_processor_pads_it(report: dict[str, Any], family: str) -> None:
    """A one-frame clip: Qwen2-VL's video processor takes it; Qwen3-VL's and GLM-4.1V's refuse a clip shorter than a
    temporal patch, and ours equals theirs given the frame twice (the patch they pad a frame to): the same prompt
    ids, one temporal patch, pixels within one level."""
    found = report[family]
    twice = family in ("qwen3_vl", "glm4v", "glm4v_moe")
    assert found["single_frame_reference_takes"] == ("the frame twice" if twice else "one frame")
    assert found["single_frame_input_ids_equal"] and found["single_frame_video_grid_thw_equal"]
    assert family == "llava_onevision" or found["single_frame_video_grid_thw"][0][0] == 1
    assert found["single_frame_pixels_max_apart_levels"] <= 1.0 + 1e-4
