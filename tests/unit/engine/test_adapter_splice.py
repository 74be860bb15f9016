"""An adapter built off the generation thread and spliced in leaves the model as peft's own loading and deleting do."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from gateway.engine.demo import write_demo_adapter
from gateway.engine.local.adapter_splice import build, cut
from gateway.engine.local.adapter_weights import AdapterWeights, attach, read_adapter
from gateway.engine.local.loader import load_model
from tests.conftest import DemoDirs

TABLES = ("r", "lora_alpha", "scaling", "use_rslora", "use_dora", "lora_bias")


@pytest.fixture(scope="module")
def other(demo_dirs: DemoDirs, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_adapter(demo_dirs.model, tmp_path_factory.mktemp("other") / "adapter", seed=7, rank=8)


def read(path: Path) -> AdapterWeights:
    return read_adapter(path, torch.device("cpu"), torch.float32)


def bare(demo_dirs: DemoDirs) -> Any:
    return load_model(demo_dirs.model).model


def peft_loaded(demo_dirs: DemoDirs, *adapters: tuple[str, Path]) -> Any:
    """The bare model with the adapters loaded by peft itself (`from_pretrained`, then `load_adapter`)."""
    from peft import PeftModel

    (first, path), *rest = adapters
    model = PeftModel.from_pretrained(bare(demo_dirs), str(path), adapter_name=first)
    for name, more in rest:
        model.load_adapter(str(more), adapter_name=name)
    return model


def state(model: Any) -> dict[str, Any]:
    """Everything peft keeps per adapter: tensors, per-layer tables, dropout kinds, configs, bookkeeping."""
    from peft.tuners.lora import LoraLayer

    layers = {path: module for path, module in model.named_modules() if isinstance(module, LoraLayer)}
    return {
        "tensors": {key: value for key, value in model.state_dict().items() if "lora_" in key},
        "tables": {path: {t: dict(getattr(layer, t)) for t in TABLES} for path, layer in layers.items()},
        "dropouts": {path: {k: type(v) for k, v in layer.lora_dropout.items()} for path, layer in layers.items()},
        "modules": {path: (sorted(layer.lora_A), sorted(layer.lora_B)) for path, layer in layers.items()},
        "active": {path: layer.active_adapters for path, layer in layers.items()} | {"": model.active_adapters},
        "configs": {name: config.to_dict() for name, config in model.peft_config.items()},
        "targeted": sorted(model.base_model.targeted_module_names),
        "training": sorted(path for path, module in model.named_modules() if module.training),
    }


def assert_same(ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert ours["tensors"].keys() == theirs["tensors"].keys() and ours["tensors"]
    assert all(ours["tensors"][key].equal(theirs["tensors"][key]) for key in ours["tensors"])
    assert {k: v for k, v in ours.items() if k != "tensors"} == {k: v for k, v in theirs.items() if k != "tensors"}


def test_a_first_adapter_is_peft_over_a_copy_and_the_served_tree_stays_bare(demo_dirs: DemoDirs) -> None:
    """Over a bare model, the built model equals peft's own loading, and the model served meanwhile is unchanged."""
    served = bare(demo_dirs)
    before = [(path, id(module)) for path, module in served.named_modules()]
    splice = build(served, "tuned", read(demo_dirs.adapter))
    assert splice is not None
    model = splice.apply()
    assert [(path, id(module)) for path, module in served.named_modules()] == before
    assert_same(state(model), state(peft_loaded(demo_dirs, ("tuned", demo_dirs.adapter))))
    assert splice.layers and all("tuned" in layer.lora_A for layer in splice.layers)


def test_a_second_adapter_is_spliced_into_the_layers_peft_made(demo_dirs: DemoDirs, other: Path) -> None:
    """Beside an adapter, building touches no served layer until the splice; after it, the model equals peft's
    own `load_adapter` of the same weights."""
    served = attach(bare(demo_dirs), "tuned", read(demo_dirs.adapter))
    untouched = state(served)
    splice = build(served, "other", read(other))
    assert splice is not None and splice.model is served
    assert_same(state(served), untouched)
    ours = splice.apply()
    assert_same(state(ours), state(peft_loaded(demo_dirs, ("tuned", demo_dirs.adapter), ("other", other))))


def test_cutting_an_adapter_leaves_what_peft_delete_leaves(demo_dirs: DemoDirs, other: Path) -> None:
    """Taken out of the layers it was spliced into, an adapter leaves the model as peft's `delete_adapter` does,
    whichever of the two goes first."""
    for leaving in ("tuned", "other"):
        first = build(bare(demo_dirs), "tuned", read(demo_dirs.adapter))
        assert first is not None
        second = build(first.apply(), "other", read(other))
        assert second is not None
        ours = second.apply()
        cut(ours, leaving, (first if leaving == "tuned" else second).layers)
        theirs = peft_loaded(demo_dirs, ("tuned", demo_dirs.adapter), ("other", other))
        theirs.delete_adapter(leaving)
        assert_same(state(ours), state(theirs))


def test_an_adapter_that_is_no_plain_lora_is_left_to_peft(demo_dirs: DemoDirs, tmp_path: Path) -> None:
    """DoRA, extra trainable modules or an all-linear target build nothing here (peft's path adds them)."""
    for change in ({"use_dora": True}, {"modules_to_save": ["lm_head"]}, {"target_modules": "all-linear"}):
        changed = tmp_path / "changed"
        shutil.rmtree(changed, ignore_errors=True)
        shutil.copytree(demo_dirs.adapter, changed)
        config = json.loads((changed / "adapter_config.json").read_text())
        (changed / "adapter_config.json").write_text(json.dumps({**config, **change}))
        assert build(bare(demo_dirs), "tuned", read(changed)) is None, change
