"""`gateway serve` before it listens: the port claimed first, upstream URLs as people paste them, a calm log."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest

from gateway.cli import _settings, make_parser
from gateway.startup import StartupError, claim_port, upstream_base_url
from tests.conftest import DemoDirs, free_port


def serve_until_listening(*args: str) -> tuple[int, list[str]]:
    """`gateway serve ARGS` in a process of its own, stopped (SIGTERM) once it listens: exit status, stderr lines."""
    command = [sys.executable, "-m", "gateway.cli", "serve", *args]
    with subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True) as process:
        assert process.stderr is not None
        lines = []
        for line in process.stderr:
            lines.append(line.rstrip("\n"))
            if "Uvicorn running on" in line:
                process.send_signal(signal.SIGTERM)
        status = process.wait(60)
    return status, lines


def test_a_busy_port_is_one_line_before_the_model_loads(demo_dirs: DemoDirs) -> None:
    """A port another server holds: exit non-zero with one line naming it, and nothing loaded (the loader
    logs its first line at INFO, before the weights)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        status, lines = serve_until_listening("--model", str(demo_dirs.model), "--port", str(port))
    assert status != 0
    busy = f"cannot listen on 127.0.0.1:{port}: Address already in use"
    assert lines == [f"gateway serve: {busy} (is another server running? pick another with --port)"]


def test_claim_port_binds_what_uvicorn_then_serves() -> None:
    """The claimed socket is bound to the address asked for; a second claim of it is a StartupError."""
    port = free_port()
    with claim_port("127.0.0.1", port) as sock:
        sock.listen()
        assert sock.getsockname() == ("127.0.0.1", port)
        with pytest.raises(StartupError, match=f"cannot listen on 127.0.0.1:{port}"):
            claim_port("127.0.0.1", port)


def test_serving_the_demo_logs_no_torchvision_story(demo_dirs: DemoDirs) -> None:
    """Serving the demo without torchvision: at most one calm line about it, no multi-line notice."""
    status, lines = serve_until_listening("--model", str(demo_dirs.model), "--port", str(free_port()))
    assert status in (0, -signal.SIGTERM) and any("Finished server process" in line for line in lines), lines
    about = [line for line in lines if "torchvision" in line.lower()]
    assert len(about) <= 1, about
    assert not any("restart your runtime" in line or "installation page" in line for line in lines), lines


def test_serving_the_demo_draws_no_progress_bar(demo_dirs: DemoDirs) -> None:
    """Loading the weights is the loader's one "loading" line, not transformers' bar redrawn on stderr
    (a log file keeps every redraw as a line of its own)."""
    status, lines = serve_until_listening("--model", str(demo_dirs.model), "--port", str(free_port()))
    assert status in (0, -signal.SIGTERM) and any("Finished server process" in line for line in lines), lines
    assert not any("Loading weights" in line or "it/s]" in line for line in lines), lines
    assert [line for line in lines if "gateway.loader: loading" in line] == [lines[0]], lines


@pytest.mark.parametrize(
    "given,base",
    [
        ("http://10.0.0.5:8000", "http://10.0.0.5:8000"),
        ("http://10.0.0.5:8000/", "http://10.0.0.5:8000"),
        ("http://10.0.0.5:8000/v1", "http://10.0.0.5:8000"),
        ("https://llm.example.com/v1/", "https://llm.example.com"),
        ("http://proxy:8080/vllm/v1", "http://proxy:8080/vllm"),
    ],
)
def test_upstream_base_urls_with_or_without_v1_are_taken(given: str, base: str) -> None:
    """The base URL as vLLM and the OpenAI SDK print it (`.../v1`) is the same upstream as without."""
    assert upstream_base_url(given) == base


@pytest.mark.parametrize(
    "given,told",
    [
        ("http://10.0.0.5:8000/v1/chat/completions", "such as http://10.0.0.5:8000 or http://10.0.0.5:8000/v1"),
        ("10.0.0.5:8000", "such as http://HOST:8000 or http://HOST:8000/v1"),
        ("ws://10.0.0.5:8000", "such as http://HOST:8000 or http://HOST:8000/v1"),
    ],
)
def test_an_upstream_that_is_no_base_url_says_what_to_pass(given: str, told: str) -> None:
    """An endpoint's URL, a bare host or another scheme: one line saying exactly what to pass."""
    with pytest.raises(ValueError, match="pass the server's base URL") as caught:
        upstream_base_url(given)
    assert told in str(caught.value) and "\n" not in str(caught.value)


def test_serve_takes_the_v1_url_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--upstream http://HOST:8000/v1` and GATEWAY_UPSTREAMS reach the engine as base URLs; a bad one exits with one line."""
    monkeypatch.setenv("GATEWAY_UPSTREAMS", "http://a:8000/v1/")
    assert _settings(make_parser().parse_args(["serve"])).upstreams == "http://a:8000"
    args = make_parser().parse_args(["serve", "--upstream", "http://b:8000/v1", "--upstream", "http://c:8000"])
    assert _settings(args).upstreams == "http://b:8000,http://c:8000"
    with pytest.raises(SystemExit) as caught:
        _settings(make_parser().parse_args(["serve", "--upstream", "http://b:8000/v1/models"]))
    assert str(caught.value.code).startswith("gateway serve: --upstream 'http://b:8000/v1/models': pass the server's base URL")
