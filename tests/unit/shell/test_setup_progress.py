"""The test set-up on a fresh machine: slow installs say what they do, and the vLLM tests can be left out."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

from tests.vllm_support import ROOT, vllm_python


def pytest_run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """pytest in a process of its own, with the default options (output captured as usual)."""
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=cwd, capture_output=True, text=True, timeout=240)


def test_vllm_install_progress_reaches_the_caller_line_by_line(tmp_path: Path) -> None:
    """scripts/install-vllm's `==>` lines go to the caller as they come; pip's own chatter does not."""
    script = tmp_path / "install-vllm"
    lines = ["echo '==> [1/2] torch' >&2", "echo 'pip noise' >&2", "echo '==> [2/2] vllm' >&2", "echo /v/bin/python"]
    script.write_text("#!/bin/sh\n" + "\n".join(lines) + "\n")
    script.chmod(0o755)
    said: list[str] = []
    assert vllm_python(said.append, script) == "/v/bin/python"
    assert said == ["[1/2] torch", "[2/2] vllm"]


def test_install_vllm_once_installed_prints_only_the_path(tmp_path: Path) -> None:
    """With vLLM's environment in place the script installs nothing, says nothing, and prints its python."""
    (tmp_path / ".complete").touch()
    env = {**os.environ, "GATEWAY_VLLM_VENV": str(tmp_path)}
    done = subprocess.run([str(ROOT / "scripts" / "install-vllm")], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 0 and done.stderr == "" and done.stdout == f"{tmp_path}/bin/python\n"


def test_setup_lines_show_with_the_default_options(tmp_path: Path) -> None:
    """A set-up step's `announce` reaches the terminal though pytest captures the test's output."""
    (tmp_path / "test_slow_setup.py").write_text(
        "import pytest\nfrom tests.conftest import announce\n\n"
        "@pytest.fixture\ndef slow(pytestconfig):\n    announce(pytestconfig, 'installing something big')\n\n"
        "def test_it(slow):\n    print('captured, not shown')\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True, text=True, timeout=240, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[setup] installing something big" in done.stdout and "captured, not shown" not in done.stdout


def test_not_vllm_leaves_out_exactly_the_vllm_tests() -> None:
    """`-m "not vllm"` deselects the tests that use the vLLM servers and keeps the others; with no `-m`
    nothing is deselected."""
    files = ["tests/e2e/test_upstream_vllm.py", "tests/unit/engine/test_upstream_engine.py"]
    everything = pytest_run("--collect-only", "-q", *files)
    without = pytest_run("--collect-only", "-q", "-m", "not vllm", *files)
    collected = [line for line in everything.stdout.splitlines() if "::" in line]
    kept = [line for line in without.stdout.splitlines() if "::" in line]
    assert everything.returncode == 0 and "deselected" not in everything.stdout, everything.stdout
    assert any("test_upstream_vllm.py" in line for line in collected)
    assert kept == [line for line in collected if "test_upstream_vllm.py" not in line] and kept


def test_install_says_it_is_still_working_while_pip_is_quiet(tmp_path: Path) -> None:
    """scripts/install prints a line every few seconds while pip says nothing, and ends with `done`."""
    (tmp_path / "scripts").mkdir()
    script = tmp_path / "scripts" / "install"
    script.write_text((ROOT / "scripts" / "install").read_text())
    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    for name, body in (("python", "exit 0"), ("pip", "sleep 3")):  # a pip that is silent for 3 s a step
        (tmp_path / ".venv" / "bin" / name).write_text(f"#!/bin/sh\n{body}\n")
    for path in (script, tmp_path / ".venv" / "bin" / "python", tmp_path / ".venv" / "bin" / "pip"):
        path.chmod(0o755)
    env = {**os.environ, "GATEWAY_INSTALL_TICK_S": "1"}
    done = subprocess.run([str(script)], capture_output=True, text=True, env=env, timeout=60)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    steps = [i for i, line in enumerate(lines) if line.startswith("==> ")]
    assert len(steps) == 4 and lines[steps[-1]].startswith("==> done")
    for start, end in itertools.pairwise(steps):  # every step's silent pip shows up as progress lines
        assert any("still working" in line for line in lines[start:end]), lines
