"""Shared fixtures: the demo model on disk, and real uvicorn servers on free loopback ports."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import uvicorn
from PIL import Image

from gateway.app import create_app
from gateway.cli import parse_adapters
from gateway.config import Settings
from gateway.engine.contract import ChatImage, GenerationRequest, TurnHandle, TurnSink
from gateway.engine.demo import write_demo_adapter, write_demo_model, write_text_model
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.media.images import ImageLimits, check_image
from gateway.server import DrainingServer, make_server
from gateway.startup import local_engine

pytest_plugins = ["tests.vllm_fixtures"]


@pytest.fixture(scope="session", autouse=True)
def own_data_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Every server the tests start (in-process or not) keeps its sessions in a temporary data home,
    never in the user's ~/.local/share."""
    previous = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("data-home"))
    yield
    if previous is None:
        os.environ.pop("XDG_DATA_HOME", None)
    else:
        os.environ["XDG_DATA_HOME"] = previous


@dataclass(frozen=True)
class DemoDirs:
    model: Path
    adapter: Path
    text_model: Path


@pytest.fixture(scope="session")
def demo_dirs(tmp_path_factory: pytest.TempPathFactory) -> DemoDirs:
    root = tmp_path_factory.mktemp("demo")
    model = write_demo_model(root / "model")
    adapter = write_demo_adapter(model, root / "adapter")
    text_model = write_text_model(root / "text-model")
    return DemoDirs(model=model, adapter=adapter, text_model=text_model)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningServer:
    """A real uvicorn server in a background thread, serving the real engine."""

    settings: Settings
    engine: LocalEngine
    server: DrainingServer
    thread: threading.Thread
    port: int

    @property
    def app(self) -> Any:
        return self.server.config.app

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


def record_submissions(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> list[GenerationRequest]:
    """Every request `server`'s engine is handed from now to the test's end, in order (each still submitted)."""
    seen: list[GenerationRequest] = []
    submit = server.engine.submit

    def recording(request: GenerationRequest, sink: TurnSink) -> TurnHandle:
        seen.append(request)
        return submit(request, sink)

    monkeypatch.setattr(server.engine, "submit", recording)
    return seen


def start_server(model_dir: Path, settings: Settings | None = None, **uvicorn_kwargs: Any) -> RunningServer:
    port = free_port()
    settings = (settings or Settings()).replace(port=port)
    if settings.data_dir is None:  # each server its own store, never the user's data directory
        settings = settings.replace(data_dir=tempfile.mkdtemp(prefix="gateway-test-"))
    loaded = load_model(
        model_dir, model_id="gateway-demo", adapters=parse_adapters(settings.adapters), chat_template=settings.chat_template
    )
    engine = local_engine(settings, loaded)  # as `gateway serve` builds it, the engine settings honoured
    app = create_app(settings, engine=engine)
    server = make_server(app, settings, host="127.0.0.1", port=port, log_level="warning", **uvicorn_kwargs)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    # Start-up compiles every bucket of a compiled decode step (engine_compile): minutes from a cold inductor cache.
    deadline = time.monotonic() + (60 if settings.engine_compile == "off" else 600)
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    return RunningServer(settings=settings, engine=engine, server=server, thread=thread, port=port)


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (64, 48), color: Any = (200, 30, 30), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, fmt)
    return buffer.getvalue()


async def wait_until(predicate: Any, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def chat_image(color: Any = (200, 30, 30), size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> ChatImage:
    """An attachment as the turn service hands it to the engine: checked, with its bytes."""
    return check_image(image_bytes(fmt, size, color), ImageLimits(max_bytes=1 << 26, max_pixels=1 << 26))


def announce(config: pytest.Config, line: str) -> None:
    """A line on the terminal at once, even while pytest captures a test's output: slow set-up steps say
    what they are doing instead of looking hung."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is None:
        print(f"[setup] {line}", file=sys.stderr)
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.ensure_newline()
        reporter.write_line(f"[setup] {line}")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the vLLM servers carry the `vllm` marker: `-m "not vllm"` leaves them (and vLLM's
    3.5 GB install) out."""
    for item in items:
        if "vllm_pair" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.vllm)


def ensure_program(name: str, package: str, config: pytest.Config) -> str:
    """The path of a Debian program the tests need, installed on first use (as CI installs chromium)."""
    found = shutil.which(name)
    if found is None:
        announce(config, f"installing {package} with apt-get (once; about 30 s)")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", package], check=True, env=env, capture_output=True)
        found = shutil.which(name)
    assert found is not None, f"{name} could not be installed"
    return found


@contextlib.contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """An app built by a test, on a real uvicorn on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


CORPUS_WORDS = (
    "the a an of to and in is it that for on with as was by this be are from at or image picture "
    "colour color red green blue yellow cat dog house tree sky sun model token chat reply question "
    "answer hello world please thank you what where when why how see look shows photo small large "
    "left right top bottom one two three four five six seven eight nine ten gateway stream socket "
    "bonjour café naïve über straße ñandú 你好 世界 图片 模型 こんにちは 画像 😀 🚀 🌍 ✨"
).split()


def utf8_corpus() -> list[str]:
    """A deterministic corpus with ASCII and multi-byte words, for tokenizers trained on the spot:
    their merges split UTF-8 characters, as real tokenizers' do."""
    n = len(CORPUS_WORDS)
    return [" ".join(CORPUS_WORDS[(i * 7 + j * 13) % n] for j in range(12)) + "." for i in range(400)]


@contextlib.contextmanager
def logged_serve(model: Path, tmp_path: Path, *args: str) -> Iterator[tuple[str, Path, subprocess.Popen[bytes]]]:
    """`python -m gateway.cli serve --model MODEL ARGS` in a process of its own, its stdout and stderr in a
    file; yields its URL, the log file and the process once /healthz answers (a hang guard of 120 s)."""
    port, log_path = free_port(), tmp_path / "serve.log"
    command = [sys.executable, "-m", "gateway.cli", "serve", "--model", str(model), "--port", str(port)]
    command += [*args, "--data-dir", str(tmp_path / "data")]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not _healthy(url):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()[-2000:]
            time.sleep(0.2)
        yield url, log_path, process
    finally:
        process.terminate()
        process.wait(30)


def _healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/healthz", timeout=1).status_code == 200
    except requests.RequestException:  # not up yet, or slow to answer on a loaded machine: ask again
        return False
