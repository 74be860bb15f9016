"""The built-in demo model: a tiny GLM-4V with random weights and a tokenizer trained on the spot."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Literal

DEMO_VERSION = "2"
DemoSize = Literal["tiny", "small"]

# One `<|image|>` token stands for merge_size**2 patches; the pixel cap keeps demo prompts short.
# GLM-4V counts two temporal frames per still image, hence the factor 2: at most 112x112, 16 tokens.
IMAGE_MIN_PIXELS = 2 * 56 * 56
IMAGE_MAX_PIXELS = 2 * 112 * 112

SPECIAL_TOKENS = [
    "<|endoftext|>",
    "[MASK]",
    "[gMASK]",
    "[sMASK]",
    "<sop>",
    "<eop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|observation|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
    "<|image|>",
    "<|video|>",
    "<pad>",
]

# GLM-4V's chat layout: "[gMASK]<sop>" then one role tag per message; images sit in their own turn.
CHAT_TEMPLATE = (
    "[gMASK]<sop>"
    "{% for m in messages %}"
    "<|{{ m['role'] }}|>\n"
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|begin_of_image|><|image|><|end_of_image|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

_CORPUS_WORDS = (
    "the a an of to and in is it that for on with as was by this be are from at or image picture "
    "colour color red green blue yellow cat dog house tree sky sun model token chat reply question "
    "answer hello world please thank you what where when why how see look shows photo small large "
    "left right top bottom one two three four five six seven eight nine ten gateway stream socket "
    "bonjour café naïve über straße ñandú 你好 世界 图片 模型 こんにちは 画像 😀 🚀 🌍 ✨"
).split()


def _corpus() -> list[str]:
    """A deterministic corpus with ASCII and multi-byte words, so replies exercise UTF-8 splitting."""
    lines = []
    n = len(_CORPUS_WORDS)
    for i in range(400):
        words = [_CORPUS_WORDS[(i * 7 + j * 13) % n] for j in range(12)]
        lines.append(" ".join(words) + ".")
    return lines


def _build_tokenizer(out_dir: Path, vocab_size: int) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        extra_special_tokens={},
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)


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
    _build_tokenizer(out_dir, vocab_size=1024 if size == "tiny" else 4096)
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


def write_demo_adapter(model_dir: Path, out_dir: Path, seed: int = 1) -> Path:
    """Write a LoRA adapter for the demo model whose random B matrices change its greedy output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Glm4vForConditionalGeneration

    base = Glm4vForConditionalGeneration.from_pretrained(model_dir)
    lora = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "o_proj"])
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


def write_text_model(out_dir: Path, seed: int = 0) -> Path:
    """A tiny text-only Llama sharing the demo tokenizer: for serving and testing the text-only path."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    _build_tokenizer(out_dir, vocab_size=1024)
    tok: Any = AutoTokenizer.from_pretrained(out_dir)
    tok.chat_template = TEXT_CHAT_TEMPLATE
    tok.save_pretrained(out_dir)
    eos = [int(tok.convert_tokens_to_ids(t)) for t in ("<|endoftext|>", "<|user|>")]
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        eos_token_id=eos,
        pad_token_id=int(tok.convert_tokens_to_ids("<pad>")),
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    return out_dir


TEXT_CHAT_TEMPLATE = (
    "[gMASK]<sop>{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
