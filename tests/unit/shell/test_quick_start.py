"""README's first screen against the project's files: what the two commands need, and a laptop command that works."""

from __future__ import annotations

import re
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[3]


def quick_start() -> str:
    readme = (ROOT / "README.md").read_text()
    return readme[readme.index("## Quick start") : readme.index("### On a GPU machine")]


def test_quick_start_says_what_the_test_command_needs_and_costs() -> None:
    """The first screen names each thing the suite needs beyond .venv, with its disk and time."""
    text = quick_start()
    for needed in ("chromium", "redis-server", "vLLM", "video reference", "GB", "minutes", "`[setup]`"):
        assert needed in text, needed


def test_the_laptop_command_leaves_out_only_declared_markers() -> None:
    """The quick start's laptop command deselects markers pyproject declares (a typo would select nothing
    under --strict-markers), and the default command deselects none."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    declared = {marker.split(":")[0] for marker in config["markers"]}
    [laptop] = re.findall(r'pytest -m "([^"]+)"', quick_start())
    assert set(re.findall(r"not (\w+)", laptop)) == {"vllm", "video_ref"} <= declared
    assert "-m" not in config["addopts"].split()


def test_scripts_install_installs_every_extra() -> None:
    """scripts/install installs each optional extra (plot included), so the README's test command covers
    every test, `bench --plot`'s among them."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    [installed] = re.findall(r'-e "\.\[([\w,]+)\]"', (ROOT / "scripts" / "install").read_text())
    assert set(installed.split(",")) == set(extras)
