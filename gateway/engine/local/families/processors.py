"""Loading a model's combined processor, with torchvision or without it."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import sys
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.loader")


@functools.cache
def tolerant(cls: type) -> type:
    """`cls` accepting None for a sub-processor: a video processor cannot be built without torchvision,
    and a chat gateway never needs one."""

    def check_argument_for_proper_class(self: Any, name: str, argument: Any) -> Any:
        if argument is None:
            return type(None)
        return cls.check_argument_for_proper_class(self, name, argument)  # type: ignore[attr-defined]

    return type(cls.__name__, (cls,), {"check_argument_for_proper_class": check_argument_for_proper_class})


def load_processor(source: Path, model_type: str, trust_remote_code: bool) -> Any:
    """The model's combined processor: AutoProcessor where it loads (torchvision installed), else the
    processor class built from the PIL image processor and the tokenizer, with no video processor."""
    from transformers import AutoProcessor

    try:
        return AutoProcessor.from_pretrained(source, trust_remote_code=trust_remote_code)  # type: ignore[no-untyped-call]
    except Exception as exc:  # without torchvision, every processor with a video processor fails here
        log.debug("AutoProcessor failed; building the processor from its PIL image processor", exc_info=exc)
        if "torchvision" in str(exc).lower():  # expected without torchvision, and harmless: one calm line
            log.info("torchvision is not installed: images go through the PIL image processor (video is not served)")
        else:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            log.info("AutoProcessor failed (%s); building the processor from its PIL image processor", reason)
    return _build_processor(source, model_type, trust_remote_code)


def _build_processor(source: Path, model_type: str, trust_remote_code: bool) -> Any:
    from transformers import AutoImageProcessor, AutoTokenizer
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES  # type: ignore[attr-defined]

    config = _read_json(source / "processor_config.json")
    name = config.pop("processor_class", None) or _read_json(source / "preprocessor_config.json").get("processor_class")
    name = name or PROCESSOR_MAPPING_NAMES.get(model_type)
    cls = processor_class(str(name))
    if cls is None:
        raise ValueError(f"no processor class for model type {model_type!r}")
    parts: dict[str, Any] = {attribute: None for attribute in cls.get_attributes()}
    parts["tokenizer"] = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    parts["image_processor"] = AutoImageProcessor.from_pretrained(source, backend="pil")  # type: ignore[no-untyped-call,unused-ignore]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k not in parts and k in accepted and k != "chat_template"}
    template = source / "chat_template.jinja"
    return tolerant(cls)(**parts, **kwargs, chat_template=template.read_text() if template.exists() else None)


def processor_class(name: str) -> Any:
    """The processor class called `name`. Without torchvision, transformers hands out a placeholder for a
    processor whose module imports from its torchvision image processor (Pixtral); that module is then
    imported with the PIL image processor's module, which defines the same helpers, standing in."""
    import transformers
    from transformers.models.auto.configuration_auto import model_type_to_module_name
    from transformers.models.auto.processing_auto import PROCESSOR_MAPPING_NAMES  # type: ignore[attr-defined]
    from transformers.utils.import_utils import DummyObject

    cls = getattr(transformers, name, None)
    if not isinstance(cls, DummyObject):
        return cls
    for model_type, mapped in PROCESSOR_MAPPING_NAMES.items():
        if mapped == name:
            found = getattr(_import_with_pil_images(model_type_to_module_name(model_type)), name, None)
            if found is not None and not isinstance(found, DummyObject):
                return found
    return None


def _import_with_pil_images(module: str) -> Any:
    base = f"transformers.models.{module}"
    try:
        return importlib.import_module(f"{base}.processing_{module}")
    except ModuleNotFoundError as exc:
        if exc.name != "torchvision":
            return None
    try:
        sys.modules[f"{base}.image_processing_{module}"] = importlib.import_module(f"{base}.image_processing_pil_{module}")
        return importlib.import_module(f"{base}.processing_{module}")
    except ImportError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}
