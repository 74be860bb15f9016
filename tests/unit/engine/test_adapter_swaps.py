"""Adapters at run time on the local engine: read on a worker thread, swapped in between steps, gone after their turns."""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.engine.contract import GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.demo import write_demo_adapter
from gateway.engine.local import adapter_swaps
from gateway.engine.local.adapter_splice import Splice
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.errors import ErrorCode, GatewayError
from tests.conftest import DemoDirs
from tests.unit.engine.test_engine import MESSAGES, Collector

GREEDY = SamplingParams(temperature=0, max_tokens=16)


@pytest.fixture
async def engine(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    running = LocalEngine(load_model(demo_dirs.model), max_batch=4, max_adapters=2)
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


async def tokens(engine: LocalEngine, adapter: str | None = None, params: SamplingParams = GREEDY) -> tuple[int, ...]:
    return (await finished(engine, Collector(), adapter, params)).token_ids


async def finished(engine: LocalEngine, sink: Collector, adapter: str | None, params: SamplingParams) -> GenerationResult:
    engine.submit(GenerationRequest(messages=MESSAGES, params=params, adapter=adapter), sink)
    return await asyncio.wait_for(sink.done, 60)


async def test_a_runtime_adapter_serves_as_a_start_up_one_does(engine: LocalEngine, demo_dirs: DemoDirs) -> None:
    """Loaded while serving, an adapter is listed and gives exactly the greedy tokens it gives loaded at start."""
    base = await tokens(engine)
    await engine.load_adapter("tuned", str(demo_dirs.adapter))
    assert engine.adapters == ("tuned",)
    at_start = LocalEngine(load_model(demo_dirs.model, adapters={"tuned": str(demo_dirs.adapter)}))
    at_start.start()
    try:
        expected = await tokens(at_start, "tuned")
    finally:
        await asyncio.to_thread(at_start.stop)
    assert await tokens(engine, "tuned") == expected != base
    assert await tokens(engine) == base


async def test_layers_are_built_on_the_worker_and_the_generation_thread_only_splices(
    engine: LocalEngine, demo_dirs: DemoDirs, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The worker reads the files and builds every LoRA layer (a first adapter over a copy of the model's tree, a
    second beside the first); the generation thread only splices them in and cuts them out, never running peft's
    own add or delete; the last unload serves the very model served before the first load."""
    from peft.tuners.lora import LoraLayer

    other = write_demo_adapter(demo_dirs.model, tmp_path / "other", seed=7)
    threads: dict[str, list[str]] = {}

    def spy(name: str, real: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads.setdefault(name, []).append(threading.current_thread().name)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(adapter_swaps, "read_adapter", spy("read", adapter_swaps.read_adapter))
    monkeypatch.setattr(LoraLayer, "update_layer", spy("build", LoraLayer.update_layer))
    monkeypatch.setattr(Splice, "apply", spy("splice", Splice.apply))
    for name in ("attach", "detach", "cut"):
        monkeypatch.setattr(adapter_swaps, name, spy(name, getattr(adapter_swaps, name)))
    served = engine.loaded.model
    await engine.load_adapter("tuned", str(demo_dirs.adapter))
    await engine.load_adapter("other", str(other))
    await engine.unload_adapter("other")
    await engine.unload_adapter("tuned")
    assert engine.loaded.model is served
    assert {name: set(names) for name, names in threads.items()} == {
        "read": {"gateway-adapters_0"},
        "build": {"gateway-adapters_0"},
        "splice": {"gateway-generation"},
        "cut": {"gateway-generation"},
    }
    assert (len(threads["read"]), len(threads["splice"]), len(threads["cut"])) == (2, 2, 1)


async def test_unloading_lets_running_turns_finish_and_refuses_new_ones(engine: LocalEngine, demo_dirs: DemoDirs) -> None:
    """A turn running on the adapter finishes whole; from the unload's start a new turn naming it is `not_found`;
    the unload returns after that turn's `done`, and the base model's replies are as before the load."""
    base = await tokens(engine)
    await engine.load_adapter("tuned", str(demo_dirs.adapter))
    long = SamplingParams(temperature=0, max_tokens=48, ignore_eos=True)
    running = Collector()
    engine.submit(GenerationRequest(messages=MESSAGES, params=long, adapter="tuned"), running)
    while not running.deltas:
        await asyncio.sleep(0.005)
    unloading = asyncio.create_task(engine.unload_adapter("tuned"))
    await asyncio.sleep(0)
    assert engine.unloading("tuned") and engine.adapters == ()
    with pytest.raises(GatewayError) as refused:
        engine.submit(GenerationRequest(messages=MESSAGES, params=GREEDY, adapter="tuned"), Collector())
    await unloading
    assert running.done.done()
    result = running.done.result()
    assert (result.finish_reason, result.completion_tokens) == ("length", 48)
    assert refused.value.code is ErrorCode.NOT_FOUND
    assert not engine.unloading("tuned") and engine.loaded.adapter_names == ()
    assert await tokens(engine) == base


async def test_a_name_loaded_again_serves_its_new_weights(engine: LocalEngine, demo_dirs: DemoDirs, tmp_path: Path) -> None:
    """After an unload, a new adapter under the same name gets its own replies, never the held KV of the one before."""
    other = write_demo_adapter(demo_dirs.model, tmp_path / "other", seed=7)
    await engine.load_adapter("tuned", str(demo_dirs.adapter))
    first = await tokens(engine, "tuned")
    assert await tokens(engine, "tuned") == first  # its KV is held now
    await engine.unload_adapter("tuned")
    await engine.load_adapter("tuned", str(other))
    assert await tokens(engine, "tuned") != first


async def test_bad_adapters_are_one_clear_error(engine: LocalEngine, demo_dirs: DemoDirs, tmp_path: Path) -> None:
    """A missing path, a model that is no adapter, and an adapter for other layers are each `bad_adapter` naming
    `path`; the name stays free and the engine serves on."""
    foreign = tmp_path / "foreign"
    shutil.copytree(demo_dirs.adapter, foreign)
    config = json.loads((foreign / "adapter_config.json").read_text())
    (foreign / "adapter_config.json").write_text(json.dumps({**config, "target_modules": ["no_such_proj"]}))
    base = await tokens(engine)
    for path in (tmp_path / "missing", demo_dirs.model, foreign):
        with pytest.raises(GatewayError) as refused:
            await engine.load_adapter("tuned", str(path))
        assert (refused.value.code, refused.value.field) == (ErrorCode.BAD_ADAPTER, "path"), refused.value.message
    assert engine.adapters == () and engine.loaded.adapter_names == ()
    assert await tokens(engine) == base
    await engine.load_adapter("tuned", str(demo_dirs.adapter))


async def test_adapters_loaded_at_run_time_are_bounded_in_bytes(demo_dirs: DemoDirs) -> None:
    """Past max_adapter_bytes a load is `too_large` naming `path`, refused before anything is read; an unload
    gives its bytes back."""
    size = (demo_dirs.adapter / "adapter_model.safetensors").stat().st_size
    engine = LocalEngine(load_model(demo_dirs.model), max_adapters=4, max_adapter_bytes=size + size // 2)
    engine.start()
    try:
        await engine.load_adapter("one", str(demo_dirs.adapter))
        with pytest.raises(GatewayError) as too_big:
            await engine.load_adapter("two", str(demo_dirs.adapter))
        await engine.unload_adapter("one")
        await engine.load_adapter("two", str(demo_dirs.adapter))
        assert engine.adapters == ("two",)
    finally:
        await asyncio.to_thread(engine.stop)
    assert (too_big.value.code, too_big.value.field) == (ErrorCode.TOO_LARGE, "path")


def test_weights_placed_directly_are_those_peft_loads(demo_dirs: DemoDirs) -> None:
    """The quick placement of an adapter's tensors gives every LoRA parameter peft's own loading gives."""
    from peft import PeftModel

    from gateway.engine.local.adapter_weights import attach, read_adapter

    ours = load_model(demo_dirs.model)
    model = attach(ours.model, "tuned", read_adapter(demo_dirs.adapter, ours.device, ours.dtype))
    reference = PeftModel.from_pretrained(load_model(demo_dirs.model).model, str(demo_dirs.adapter), adapter_name="tuned")
    mine = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in reference.state_dict().items() if "lora_" in k}
    assert mine.keys() == theirs.keys() and mine
    assert all(mine[k].equal(theirs[k]) for k in mine)
    assert not any(module.training for module in model.modules())
