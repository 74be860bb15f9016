"""LoRA adapters' weights: read from a directory (any thread), then attached to or detached from the model (its owner)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gateway.errors import one_line

# peft's PeftModel reads a property transformers deprecated, on every model it wraps: nothing a caller can change
# (gateway/engine/demo's writer says the same), so this one FutureWarning is not shown.
warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")  # peft's names; nothing is downloaded


class AdapterError(Exception):
    """The directory holds no LoRA adapter this model can take; the message says why, in one line."""


@dataclass(frozen=True)
class AdapterWeights:
    """An adapter read and converted, ready to attach: peft's config and the state dict on the model's device."""

    config: Any  # peft's LoraConfig
    weights: dict[str, torch.Tensor]

    @property
    def nbytes(self) -> int:
        return sum(tensor.numel() * tensor.element_size() for tensor in self.weights.values())


def weights_file(path: str | Path) -> Path:
    """The adapter's weights file, after checking the directory is a LoRA adapter's; else AdapterError."""
    directory = Path(path)
    if not directory.is_dir():
        raise AdapterError(f"{path} is not a directory")
    config = directory / "adapter_config.json"
    if not config.is_file():
        raise AdapterError(f"{path} holds no adapter_config.json")
    try:
        peft_type = json.loads(config.read_text()).get("peft_type")
    except (OSError, ValueError, AttributeError) as exc:
        raise AdapterError(f"{config} is not a JSON object: {exc}") from None
    if peft_type != "LORA":
        raise AdapterError(f"{config} describes a {peft_type or 'typeless'} adapter; only LoRA adapters are served")
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise AdapterError(f"{path} holds no {' or '.join(WEIGHT_FILES)}")


def read_adapter(path: str | Path, device: torch.device, dtype: torch.dtype) -> AdapterWeights:
    """Read an adapter's config and weights, floating ones in the model's dtype, on its device: the slow part of a
    load, done away from the generation thread."""
    from peft import LoraConfig
    from peft.utils import load_peft_weights

    weights_file(path)
    try:
        config = LoraConfig.from_pretrained(str(path))
        raw = load_peft_weights(str(path), device="cpu")
    except Exception as exc:  # a broken file is the client's problem, said in one line
        raise AdapterError(f"{path}: cannot read the adapter ({type(exc).__name__}: {one_line(exc)[:300]})") from None
    config.inference_mode = True
    weights = {key: value.to(device, dtype) if value.is_floating_point() else value.to(device) for key, value in raw.items()}
    return AdapterWeights(config, weights)


def attach(model: Any, name: str, adapter: AdapterWeights) -> Any:
    """The model with the adapter added under `name` (the bare model is wrapped in peft by its first one). Layers
    are made empty and take the read tensors as they are, so this costs little beyond swapping modules in."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import set_peft_model_state_dict

    try:
        if isinstance(model, PeftModel):
            model.add_adapter(name, adapter.config, low_cpu_mem_usage=True, autocast_adapter_dtype=False)
        else:
            model = PeftModel(model, adapter.config, adapter_name=name, low_cpu_mem_usage=True, autocast_adapter_dtype=False)
            model.training = model.base_model.training = False  # the new wrappers; the model within is in eval already
    except (ValueError, KeyError, TypeError) as exc:  # peft's "target modules not found in the base model"
        raise AdapterError(f"the adapter does not fit this model: {one_line(exc)[:300]}") from None
    lora = {path: module for path, module in model.named_modules() if isinstance(module, LoraLayer)}
    if place(lora, name, adapter.weights) is not None:
        return model
    try:
        result: Any = set_peft_model_state_dict(model, adapter.weights, adapter_name=name, low_cpu_mem_usage=True)
        missing = [key for key in result.missing_keys if "lora_" in key and f".{name}." in key]
        if missing:
            raise AdapterError(f"the adapter's weights lack {len(missing)} of its layers' tensors ({missing[0]})")
    except Exception as exc:
        model.delete_adapter(name)
        if isinstance(exc, AdapterError):
            raise
        raise AdapterError(f"the adapter's weights do not fit this model: {one_line(exc)[:300]}") from None
    return model.eval()


def place(layers: dict[str, Any], name: str, weights: dict[str, torch.Tensor]) -> list[Any] | None:
    """Put the read tensors straight into the adapter's empty layers (peft's LoRA layers by module path), a look-up
    each, when every one of them finds its layer under peft's saved name with its shape, and no tensor is left over
    (plain LoRA on linear layers): the layers holding the adapter. None leaves the rest to peft's general path
    (which walks the whole model: about ten times the time)."""
    placed: dict[str, Any] = {}
    holding: list[Any] = []
    for path, module in layers.items():
        if name in module.lora_A:
            holding.append(module)
            for part in ("lora_A", "lora_B"):
                placed[f"{path}.{part}.weight"] = getattr(module, part)[name]
    if placed.keys() != weights.keys() or any(placed[k].weight.shape != weights[k].shape for k in placed):
        return None
    for key, layer in placed.items():
        layer.weight = torch.nn.Parameter(weights[key], requires_grad=False)
    for module in holding:
        module.eval()  # its new dropout, made in training mode
    return holding


def detach(model: Any, name: str) -> Any:
    """The model without the adapter's layers: its other adapters untouched, or, for the last one, the bare model
    again (peft would keep the deleted adapter as its active one, and fail on the next pass)."""
    if set(model.peft_config) == {name}:
        return model.unload()
    model.delete_adapter(name)
    return model
