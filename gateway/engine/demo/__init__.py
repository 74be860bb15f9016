"""The built-in demo model: a tiny GLM-4V with random weights and a word-level tokenizer, built on the spot."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

from gateway.engine.demo.tokenizer import SPECIAL_TOKENS, build_tokenizer

DEMO_VERSION = "4"  # bump whenever the files change: cached copies of older versions are rebuilt
DemoSize = Literal["tiny", "small"]

# One `<|image|>` token stands for merge_size**2 patches; the pixel cap keeps demo prompts short.
# GLM-4V counts two temporal frames per still image, hence the factor 2: at most 112x112, 16 tokens.
IMAGE_MIN_PIXELS = 2 * 56 * 56
IMAGE_MAX_PIXELS = 2 * 112 * 112


def _model_config(tokenizer_dir: Path, size: DemoSize) -> object:
    from transformers import AutoTokenizer, Glm4vConfig

    tok: Any = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids: dict[str, int] = {t: int(tok.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS}
    hidden, layers, heads, inter = (64, 2, 4, 128) if size == "tiny" else (512, 10, 8, 1536)  # small: ~30M
    head_dim = hidden // heads
    rotary_half = head_dim // 4  # head_dim * partial_rotary_factor(0.5) / 2
    mrope = [rotary_half - 2 * (rotary_half // 3), rotary_half // 3, rotary_half // 3]
    text = {
        "vocab_size": len(tok),
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 4),
        "max_position_embeddings": 2048,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": mrope,
            "partial_rotary_factor": 0.5,
        },
        "pad_token_id": ids["<pad>"],
        "eos_token_id": [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]],
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "num_heads": 2,
        "intermediate_size": 64,
        "out_hidden_size": hidden,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "image_size": 112,
    }
    return Glm4vConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image|>"],
        video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"],
        image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"],
        video_end_token_id=ids["<|end_of_video|>"],
    )


def _save_image_processor(out_dir: Path) -> None:
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil

    processor = Glm4vImageProcessorPil(size={"shortest_edge": IMAGE_MIN_PIXELS, "longest_edge": IMAGE_MAX_PIXELS})
    processor.save_pretrained(out_dir)


def write_demo_model(out_dir: Path, size: DemoSize = "tiny", seed: int = 0) -> Path:
    """Write the demo model (config, weights, tokenizer, image processor) to `out_dir`."""
    import torch
    from transformers import GenerationConfig, Glm4vForConditionalGeneration

    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir)
    config = _model_config(out_dir, size)
    torch.manual_seed(seed)
    model = Glm4vForConditionalGeneration(config)  # type: ignore[arg-type]
    model.generation_config = GenerationConfig(  # type: ignore[no-untyped-call]
        eos_token_id=config.text_config.eos_token_id,  # type: ignore[attr-defined]
        pad_token_id=config.text_config.pad_token_id,  # type: ignore[attr-defined]
    )
    model.save_pretrained(out_dir)
    _save_image_processor(out_dir)
    (out_dir / "gateway_demo.json").write_text(json.dumps({"version": DEMO_VERSION, "size": size}))
    return out_dir


def write_demo_adapter(model_dir: Path, out_dir: Path, seed: int = 1, rank: int = 4) -> Path:
    """Write a LoRA adapter for the demo model whose random B matrices change its greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Glm4vForConditionalGeneration

    base = Glm4vForConditionalGeneration.from_pretrained(model_dir)
    lora = LoraConfig(r=rank, lora_alpha=4 * rank, target_modules=["q_proj", "v_proj", "o_proj"])
    with warnings.catch_warnings():  # peft asks for a property transformers deprecated; nothing the user can change
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        peft_model = get_peft_model(base, lora)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # peft zero-initialises B, which would make the adapter a no-op
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(str(out_dir))
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = str(model_dir.resolve())
    config_path.write_text(json.dumps(config, indent=2))
    return out_dir


def cache_root() -> Path:
    base = os.environ.get("GATEWAY_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "gateway"
    )
    return Path(base)


def cached_demo_model(size: DemoSize = "tiny") -> Path:
    """The demo model's directory, built on first use and reused after (atomic rename, so races are safe)."""
    target = cache_root() / f"demo-{size}-v{DEMO_VERSION}"
    if (target / "gateway_demo.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        write_demo_model(scratch, size)
        try:
            scratch.rename(target)
        except OSError:  # another process finished first; its copy is identical
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


# (hidden, layers, heads, KV heads, MLP) of the text-only Llama: "tiny" for tests, "small" the bench model,
# the 27.6M-parameter shape with vLLM-compatible heads of 64 (vLLM's CPU attention wants 64 or more).
TEXT_SHAPES = {"tiny": (64, 2, 4, 2, 128), "small": (512, 8, 8, 2, 1792)}


def write_text_model(out_dir: Path, seed: int = 0, size: DemoSize = "tiny") -> Path:
    """A text-only Llama sharing the demo tokenizer: for serving and testing the text-only path, and (small)
    for comparing the local engine with vLLM on one model, each token a whole word so TTFT means what it says."""
    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    build_tokenizer(out_dir)
    tok: Any = AutoTokenizer.from_pretrained(out_dir)
    tok.chat_template = TEXT_CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    eos = [int(tok.convert_tokens_to_ids(t)) for t in ("<|endoftext|>", "<|user|>")]
    hidden, layers, heads, kv_heads, inter = TEXT_SHAPES[size]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=2048,
        eos_token_id=eos,
        pad_token_id=int(tok.convert_tokens_to_ids("<pad>")),
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=config.pad_token_id)  # type: ignore[no-untyped-call]
    model.save_pretrained(out_dir)
    return out_dir


TEXT_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
