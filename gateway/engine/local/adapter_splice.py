"""An adapter's LoRA layers built by peft on the worker thread, then spliced into the served model by its owner."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from gateway.engine.local.adapter_weights import AdapterWeights, place

# Config fields that make an adapter more than plain LoRA on linear layers (DoRA, extra trainable modules, tied
# or parameter targets, replicated layers): such an adapter takes peft's own path on the generation thread.
_NOT_PLAIN = (
    "use_dora",
    "modules_to_save",
    "trainable_token_indices",
    "target_parameters",
    "layer_replication",
    "target_modules_to_tie",
)


@dataclass
class Splice:
    """A built adapter, for the generation thread to serve between two steps, if the model is still `base`:
    either `base` (already in peft) with each built layer's entries put into its served twin (a few dict inserts
    each), or a peft model made over a copy of `base`'s module tree (one assignment). `layers` hold the adapter
    once served, for an unload to take it out of them."""

    name: str
    config: Any  # peft's LoraConfig
    base: Any
    model: Any
    built: list[tuple[Any, Any]]  # (served LoRA layer, the layer built beside it holding the new adapter)
    layers: list[Any]
    keys: tuple[str, ...] = ()  # the targets' module paths, for peft's bookkeeping

    def apply(self) -> Any:
        """Generation thread: the model that serves the adapter from the next step on."""
        for served, built in self.built:
            for table in (*served.adapter_layer_names, *served.other_param_names):
                if self.name in getattr(built, table):
                    getattr(served, table)[self.name] = getattr(built, table)[self.name]
        if self.built:
            self.model.peft_config[self.name] = self.config
            targeted = self.model.base_model.targeted_module_names
            targeted.extend(key for key in self.keys if key not in targeted)
        return self.model


def build(model: Any, name: str, adapter: AdapterWeights) -> Splice | None:
    """Worker thread, while the model serves: the adapter's layers made and filled, the served model untouched;
    None when it is no plain LoRA on linear layers this model's peft layers take as they are (left to peft's path)."""
    from peft import PeftModel

    config = adapter.config
    if config.target_modules in (None, "all-linear") or any(getattr(config, field, None) for field in _NOT_PLAIN):
        return None
    if isinstance(model, PeftModel):
        return _beside(model, name, adapter)
    return _over_copy(model, name, adapter)


def cut(model: Any, name: str, layers: list[Any]) -> None:
    """Generation thread: the adapter out of the layers holding it and out of the model's configs, as peft's
    `delete_adapter` leaves them, without its walk of the whole model."""
    for layer in layers:
        layer.delete_adapter(name)
    del model.peft_config[name]
    if layers:
        model.base_model.active_adapter = layers[-1].active_adapters[:] or []


def _beside(model: Any, name: str, adapter: AdapterWeights) -> Splice | None:
    """Each target already a peft linear layer: a twin made beside it on the same base layer takes the adapter."""
    from peft.tuners.lora import Linear
    from peft.utils.other import get_pattern_key

    config = adapter.config
    targets = list(_targets(model.base_model.model, config))
    if not targets or any(type(layer) is not Linear or name in layer.lora_A for _, layer in targets):
        return None
    quiet = copy.copy(config)
    quiet.init_lora_weights = False  # the read weights replace whatever peft would draw
    built = []
    with torch.device("meta"):  # this thread's only: the served model's tensors stay where they are
        for key, served in targets:
            r = config.rank_pattern.get(get_pattern_key(config.rank_pattern.keys(), key), config.r)
            alpha = config.alpha_pattern.get(get_pattern_key(config.alpha_pattern.keys(), key), config.lora_alpha)
            twin = Linear(served.get_base_layer(), name, quiet, r=r, lora_alpha=alpha, target_name=key)
            if twin.lora_variant:
                return None
            built.append((served, twin))
    twins = {f"base_model.model.{key}": twin for (key, _), (_, twin) in zip(targets, built, strict=True)}
    if place(twins, name, adapter.weights) is None:
        return None
    layers = [served for served, _ in built]
    return Splice(name, config, model, model, built, layers, tuple(key for key, _ in targets))


def _over_copy(model: Any, name: str, adapter: AdapterWeights) -> Splice | None:
    """A bare model: peft wraps a copy of its module tree (the containers on the way to each target copied, every
    other module and every tensor shared), so the served tree runs on untouched until the swap."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    keys = [key for key, _ in _targets(model, adapter.config)]
    if not keys:
        return None
    with torch.device("meta"):
        wrapped: Any = PeftModel(_skeleton(model, keys), adapter.config, adapter_name=name, autocast_adapter_dtype=False)
    if sorted(wrapped.base_model.targeted_module_names) != sorted(keys):
        return None
    wrapped.training = wrapped.base_model.training = False  # the new wrappers; the model within is in eval already
    lora = {path: module for path, module in wrapped.named_modules() if isinstance(module, LoraLayer)}
    layers = place(lora, name, adapter.weights)
    if layers is None:
        return None
    return Splice(name, adapter.config, model, wrapped, [], layers)


def _targets(root: Any, config: Any) -> Iterator[tuple[str, Any]]:
    """The modules peft would give the adapter, in its order, not looking inside LoRA layers (whose tables an
    unload may change meanwhile on the generation thread)."""
    from peft.tuners.lora import LoraLayer
    from peft.tuners.tuners_utils import check_target_module_exists

    def walk(prefix: str, module: Any) -> Iterator[tuple[str, Any]]:
        if prefix and check_target_module_exists(config, prefix):
            yield prefix, module
        if isinstance(module, LoraLayer):
            return
        for child_name, child in list(module._modules.items()):
            if child is not None:
                yield from walk(f"{prefix}.{child_name}" if prefix else child_name, child)

    yield from walk("", root)


def _skeleton(model: Any, keys: list[str]) -> Any:
    """`model` with the modules on the way to each key copied, each with a child table of its own."""
    copies: set[int] = set()

    def own(module: Any) -> Any:
        twin = copy.copy(module)
        twin.__dict__["_modules"] = dict(module._modules)
        copies.add(id(twin))
        return twin

    root = own(model)
    for key in keys:
        node = root
        for part in key.split(".")[:-1]:
            child = node._modules[part]
            if id(child) not in copies:
                child = node._modules[part] = own(child)
            node = child
    return root
