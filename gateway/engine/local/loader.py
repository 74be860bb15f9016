"""Model loading: a local directory (vision-language or text-only) or a LoRA adapter over its base."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gateway.engine.adapters import check_adapter_name
from gateway.engine.local.adapter_weights import AdapterError, attach, read_adapter
from gateway.engine.local.families import family_for
from gateway.engine.local.families.processors import load_processor
from gateway.engine.local.glm_clips import separate_clip_tokens
from gateway.engine.local.prompt import PromptBuilder
from gateway.engine.local.video_prompt import video_processing
from gateway.errors import GatewayError

log = logging.getLogger("gateway.loader")

PRIMARY_ADAPTER = "default"  # peft's name for the first adapter loaded
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class ModelLoadError(Exception):
    """The directory could not be loaded as a model or adapter; the message says why."""


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    prompt: PromptBuilder
    device: torch.device
    dtype: torch.dtype
    model_id: str
    context_tokens: int
    eos_token_ids: frozenset[int]
    adapter: str | None = None  # the adapter directory `model` pointed at, if any
    adapter_names: tuple[str, ...] = ()  # extra adapters a request may select by name

    @property
    def default_adapter(self) -> str | None:
        """What a request without an adapter runs: the served adapter, or the bare base model."""
        if self.adapter is not None:
            return PRIMARY_ADAPTER
        return BASE_ADAPTER if self.adapter_names else None


def pick_device(requested: str | None) -> torch.device:
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: torch.device, requested: str | None) -> torch.dtype:
    """bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU, unless told otherwise."""
    if requested:
        if requested not in _DTYPES:
            raise ModelLoadError(f"unknown dtype {requested!r}; choose one of {', '.join(_DTYPES)}")
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(
    path: str | Path,
    *,
    base_model: str | None = None,
    device: str | None = None,
    dtype: str | None = None,
    trust_remote_code: bool = False,
    model_id: str | None = None,
    adapters: dict[str, str] | None = None,
    chat_template: str | None = None,
) -> LoadedModel:
    """Load a model directory, or an adapter directory (one holding adapter_config.json) over its base."""
    source = Path(path)
    if not source.is_dir():
        raise ModelLoadError(f"{source} is not a directory")
    adapter_dir: Path | None = None
    if (source / "adapter_config.json").exists():
        adapter_dir = source
        config = json.loads((source / "adapter_config.json").read_text())
        base = base_model or config.get("base_model_name_or_path")
        if not base:
            raise ModelLoadError(f"{source}/adapter_config.json names no base_model_name_or_path; pass --base-model")
        source = Path(base)
        if not source.is_dir():
            raise ModelLoadError(f"the adapter's base model {base} is not a local directory (nothing is downloaded)")
    torch_device = pick_device(device)
    torch_dtype = pick_dtype(torch_device, dtype)
    model, vision = _load_weights(source, torch_dtype, trust_remote_code)
    template = Path(chat_template).read_text() if chat_template else None
    if adapter_dir is not None or adapters:
        model = _apply_adapters(model, adapter_dir, adapters or {}, torch_dtype)
    model.to(torch_device).eval()
    tokenizer, prompt = _load_prompt_builder(source, model, vision, trust_remote_code, template)
    if prompt.video is not None and prompt.family.video == "glm4v":  # clips reach this model: it must tell them apart
        separate_clip_tokens(model)
    name = model_id or (adapter_dir or source).resolve().name
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        prompt=prompt,
        device=torch_device,
        dtype=torch_dtype,
        model_id=name,
        context_tokens=_context_tokens(model),
        eos_token_ids=_eos_ids(model, tokenizer),
        adapter=str(adapter_dir) if adapter_dir else None,
        adapter_names=tuple(adapters or {}),
    )


def _apply_adapters(model: Any, primary: Path | None, extra: dict[str, str], dtype: torch.dtype) -> Any:
    """Wrap the base in peft with the primary adapter (if any) and each named extra adapter, as adapters loaded at
    run time are (engine/local/adapter_weights.py); a batch then picks one per row (peft's `adapter_names`)."""
    for name in extra:
        try:
            check_adapter_name(name)
        except GatewayError as exc:
            raise ModelLoadError(exc.message) from None
    named = ([(PRIMARY_ADAPTER, str(primary))] if primary is not None else []) + list(extra.items())
    for name, directory in named:
        try:
            model = attach(model, name, read_adapter(directory, torch.device("cpu"), dtype))
        except AdapterError as exc:
            raise ModelLoadError(f"adapter {name!r}: {exc}") from None
    return model


def _load_weights(source: Path, dtype: torch.dtype, trust_remote_code: bool) -> tuple[Any, bool]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{source} holds no loadable config.json: {exc}") from None
    vision = config.model_type in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
    auto = AutoModelForImageTextToText if vision else AutoModelForCausalLM
    log.info("loading %s (%s, %s) from %s", auto.__name__, config.model_type, dtype, source)
    model = auto.from_pretrained(source, dtype=dtype, trust_remote_code=trust_remote_code)
    return model, vision


def _load_prompt_builder(
    source: Path, model: Any, vision: bool, trust_remote_code: bool, template: str | None
) -> tuple[Any, PromptBuilder]:
    """The model's processor (vision) or tokenizer (text-only), with its family and chat template."""
    from transformers import AutoTokenizer

    model_type = str(model.config.model_type)
    processor = None
    if vision:
        try:
            processor = load_processor(source, model_type, trust_remote_code)
        except Exception as exc:  # the model still serves text; the reason goes to the log
            log.warning("images disabled: no processor for %s could be built (%s: %s)", model_type, type(exc).__name__, exc)
    tokenizer: Any = (
        processor.tokenizer
        if processor is not None
        else AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    )
    if template is None and getattr(processor, "chat_template", None) is None and tokenizer.chat_template is None:
        if (source / "chat_template.jinja").exists():
            template = (source / "chat_template.jinja").read_text()
        else:
            raise ModelLoadError(f"{source} has no chat template; a chat gateway needs one (--chat-template FILE)")
    family = family_for(model_type)
    return tokenizer, PromptBuilder(tokenizer, processor, family, template, video=video_processing(source, family))


def _context_tokens(model: Any) -> int:
    config = model.config
    text_config = getattr(config, "text_config", None) or config
    return int(getattr(text_config, "max_position_embeddings", 2048))


def _eos_ids(model: Any, tokenizer: Any) -> frozenset[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), getattr(model.config, "text_config", None), model.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return frozenset(ids)
