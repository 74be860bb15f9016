"""The command line: failing fast with one line, argument errors, help and defaults, model ids, demo models, bench runs."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway import __version__
from gateway.cli import main, make_parser
from gateway.config import Settings
from gateway.startup import build_engine, model_dir, model_id_of
from tests.conftest import DemoDirs, free_port


def gateway(*args: str, timeout_s: float = 60) -> tuple[int, str, float]:
    """Run `gateway ARGS` in a process of its own: exit status, stderr, seconds taken."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True, timeout=timeout_s)
    return done.returncode, done.stderr, time.monotonic() - started


def test_missing_model_exits_at_once_with_one_line() -> None:
    """`serve --model /nonexistent` exits non-zero with one line naming the path (the path is checked
    before anything loads, so it is the only line)."""
    status, err, _ = gateway("serve", "--model", "/nonexistent", "--port", str(free_port()))
    assert status != 0
    assert err.strip().splitlines() == ["gateway serve: cannot load the model: /nonexistent is not a directory"]


def test_directory_without_a_model_exits_with_one_line(tmp_path: Path) -> None:
    """A directory that holds no model: one line on stderr, no traceback, and nothing served."""
    status, err, _ = gateway("serve", "--model", str(tmp_path), "--port", str(free_port()), "--log-level", "warning")
    lines = err.strip().splitlines()
    assert status != 0 and len(lines) == 1 and str(tmp_path) in lines[0] and "Traceback" not in err


def test_broken_adapter_exits_with_one_line(demo_dirs: DemoDirs) -> None:
    """An extra adapter that cannot load stops the server before it serves; --log-level debug adds the traceback."""
    args = ["serve", "--model", str(demo_dirs.model), "--adapter", "x=/nonexistent", "--port", str(free_port())]
    status, err, _ = gateway(*args, "--log-level", "warning")
    assert status != 0 and err.strip().splitlines()[-1].endswith("adapter 'x': /nonexistent is not a directory")
    assert "Traceback" not in err
    status, err, _ = gateway(*args, "--log-level", "debug")
    assert status != 0 and "Traceback" in err


@pytest.mark.parametrize(
    "args,complaint",
    [
        (["serve", "--adapter", "bogus"], "argument --adapter: expected NAME=DIR"),
        (["serve", "--port", "70000"], "argument --port"),
        (["serve", "--max-batch", "0"], "argument --max-batch"),
        (["bench", "--url", "http://127.0.0.1:8000/ws"], "argument --url"),
        (["bench", "--sessions", "-1"], "argument --sessions"),
    ],
)
def test_bad_arguments_are_argparse_errors(args: list[str], complaint: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Malformed arguments are usage errors (exit status 2) that name the argument."""
    with pytest.raises(SystemExit) as caught:
        main(args)
    assert caught.value.code == 2 and complaint in capsys.readouterr().err


def test_malformed_environment_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A GATEWAY_* variable that does not parse is one line, not a traceback."""
    monkeypatch.setenv("GATEWAY_PORT", "eighty")
    with pytest.raises(SystemExit) as caught:
        main(["serve"])
    assert "GATEWAY_* variable is malformed" in str(caught.value.code)


def test_bench_connection_error_is_one_line() -> None:
    """`gateway bench --url` at a port nobody listens on: one line naming the URL."""
    url = f"ws://127.0.0.1:{free_port()}/ws"
    with pytest.raises(SystemExit) as caught:
        main(["bench", "--url", url, "--sessions", "1", "--turns", "1", "--json"])
    message = str(caught.value.code)
    assert message.startswith(f"gateway bench: cannot talk to the gateway at {url}") and "\n" not in message


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway --version` prints the package version."""
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"gateway {__version__}"


def test_every_option_has_help_and_shows_its_default() -> None:
    """Each option of each command has help text, and each that takes a value says its default."""
    commands: Any = next(a for a in make_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in commands.choices.items():
        formatter = parser.formatter_class(prog=name)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, (name, action.dest)
            if action.nargs != 0 and action.option_strings:
                assert "(default: " in (formatter._get_help_string(action) or ""), (name, action.dest)


def test_model_ids(demo_dirs: DemoDirs, tmp_path: Path) -> None:
    """The demo model is `gateway-demo`, an adapter BASE:ADAPTER, any other model its directory's name."""
    assert model_id_of(demo_dirs.model) == "gateway-demo"
    assert model_id_of(demo_dirs.adapter) == "gateway-demo:adapter"
    assert model_id_of(demo_dirs.adapter, base_model=str(demo_dirs.text_model)) == "text-model:adapter"
    assert model_id_of(demo_dirs.text_model) == "text-model"


def test_serving_an_adapter_directory_names_it(demo_dirs: DemoDirs) -> None:
    """`serve --model ADAPTER_DIR` serves it as `gateway-demo:adapter`, not `adapter`."""
    assert build_engine(Settings(model=str(demo_dirs.adapter))).model_id == "gateway-demo:adapter"


def test_demo_model_root_stands_for_its_model(demo_dirs: DemoDirs) -> None:
    """The directory `gateway demo-model DIR` writes can be given as --model (bench and serve): DIR/model."""
    root = demo_dirs.model.parent
    assert model_dir(str(root)) == demo_dirs.model
    assert model_dir(str(demo_dirs.adapter)) == demo_dirs.adapter


def test_demo_model_arch_llama_writes_a_text_llama_with_the_word_tokenizer(tmp_path: Path) -> None:
    """`demo-model --arch llama` writes a Llama (no adapter) whose tokens are whole words, as vLLM can serve."""
    code, err, _ = gateway("demo-model", "--arch", "llama", str(tmp_path))
    assert code == 0, err
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    assert config["model_type"] == "llama" and config["hidden_size"] // config["num_attention_heads"] == 16
    assert not (tmp_path / "adapter").exists() and (tmp_path / "model" / "tokenizer.json").exists()


def test_bench_direct_rounds_alternate_which_side_goes_first(tmp_path: Path) -> None:
    """`bench --direct-url`: each side goes first in every other round, and the report says what the idle
    gateway (pinned with --gateway-cpus) took from the machine while the direct side ran."""
    from tests.upstream_fake import FakeUpstream

    upstream, out = FakeUpstream(), tmp_path / "report.json"
    cpu = str(min(os.sched_getaffinity(0)))
    args = ["--engine", "scripted", "--direct-url", upstream.url, "--gateway-cpus", cpu, "--sessions", "2", "--max-tokens", "4"]
    code, err, _ = gateway("bench", *args, "--port", str(free_port()), "--json", "--out", str(out), timeout_s=120)
    assert code == 0, err
    report = json.loads(out.read_text())["vs_direct"]
    assert [r["first"] for r in report["rounds"]] == ["gateway", "direct", "gateway"]
    assert 0 <= report["gateway_idle_cpu_share"] < 1


def test_demo_model_writes_both_without_warnings(tmp_path: Path) -> None:
    """`gateway demo-model DIR` prints the two directories it wrote, and nothing on stderr: no Python
    warning, no progress bar."""
    done = subprocess.run(
        [sys.executable, "-W", "default", "-m", "gateway.cli", "demo-model", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout.splitlines() == [f"model:   {tmp_path / 'model'}", f"adapter: {tmp_path / 'adapter'}"]
