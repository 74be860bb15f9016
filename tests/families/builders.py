"""Tiny random builds of each supported family: the family's real config, model, image processor and
processor classes, a byte-level BPE tokenizer trained on the spot with the family's special tokens,
and a chat template with the family's layout. Built once and cached on disk."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.engine.demo import cache_root, tokenizer as demo_tokenizer
from gateway.engine.local.families.processors import tolerant
from tests.conftest import utf8_corpus

FAMILIES_VERSION = "2"


def layout(prefix: str, open_: str, close: str, image: str, generation: str, roles: dict[str, str] | None = None) -> str:
    """A chat template: `prefix`, then per message `open_` (ROLE replaced), its images then text, `close`."""
    role = "{{ " + json.dumps(roles or {}) + ".get(m['role'], m['role']) }}"
    return (
        prefix + "{% for m in messages %}" + open_.replace("ROLE", role) + "{% if m['content'] is string %}{{ m['content'] }}"
        "{% else %}{% for c in m['content'] if c['type'] == 'image' %}" + image + "{% endfor %}"
        "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
        + close
        + "{% endfor %}{% if add_generation_prompt %}"
        + generation
        + "{% endif %}"
    )


CHATML = ("", "<|im_start|>ROLE\n", "<|im_end|>\n", "<|im_start|>assistant\n")
QWEN_VL_TEMPLATE = layout(CHATML[0], CHATML[1], CHATML[2], "<|vision_start|><|image_pad|><|vision_end|>", CHATML[3])
QWEN_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# LLaVA-1.5's own template (llava-hf): images first, then each text followed by a space.
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}"
    "{% endfor %}{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)
LLAMA2_TOKENS = ["<s>", "</s>", "<unk>", "<pad>", "<image>"]


@dataclass(frozen=True)
class Spec:
    """How to build one family's fixture."""

    name: str
    tokens: list[str]  # special tokens; the first is end of text, the pad token is `pad`
    template: str
    build: Callable[[Any, Path], None]  # (tokenizer, out_dir): writes config, weights, processors
    eos: tuple[str, ...] = ("<|endoftext|>",)
    pad: str = "<|endoftext|>"
    bos: str | None = None
    vision: bool = True
    named_tokens: dict[str, str] = field(default_factory=dict)  # tokenizer attributes: image_token, boi_token, ...
    ships_template: bool = True  # False: the checkpoint has none; it is served with --chat-template (PaliGemma)


def train_tokenizer(spec: Spec, out_dir: Path, vocab_size: int = 600) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec.tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = utf8_corpus() + ["USER: ASSISTANT: User: Assistant: what is this picture? Describe it."] * 20
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        eos_token=spec.eos[0],
        pad_token=spec.pad,
        bos_token=spec.bos,
        extra_special_tokens=spec.named_tokens,
    )
    fast.chat_template = spec.template if spec.ships_template else None
    fast.save_pretrained(out_dir)
    return fast


def ids(tok: Any, *tokens: str) -> list[int]:
    return [int(tok.convert_tokens_to_ids(t)) for t in tokens]


def save_model(model_cls: Any, config: Any, tok: Any, spec: Spec, out_dir: Path) -> None:
    import torch
    from transformers import GenerationConfig

    torch.manual_seed(0)
    model = model_cls(config)
    eos = ids(tok, *spec.eos)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=ids(tok, spec.pad)[0])  # type: ignore[no-untyped-call]
    model.save_pretrained(out_dir)


def save_processor(processor_cls: Any, images: Any, tok: Any, out_dir: Path, **kwargs: Any) -> None:
    """The processor's config and its image processor, as a checkpoint ships them (the processor is built
    once first, so a fixture its class refuses fails here)."""
    tolerant(processor_cls)(image_processor=images, tokenizer=tok, **kwargs)
    images.save_pretrained(out_dir)
    kwargs = {k: v for k, v in kwargs.items() if not k.endswith("_processor") and k != "chat_template"}
    (out_dir / "processor_config.json").write_text(json.dumps({"processor_class": processor_cls.__name__, **kwargs}))


TEXT = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
SLIDING = {"sliding_window": 8}  # shorter than every prompt, so batching is proven across the window
SIGLIP_56 = {
    "model_type": "siglip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 56,
    "patch_size": 14,
}


def sliding_text(tok: Any, **extra: Any) -> dict[str, Any]:
    """A tiny text config whose layers alternate a sliding window and full attention (Gemma, Cohere 2)."""
    layers = ["sliding_attention", "full_attention"]
    return {
        **TEXT,
        "head_dim": 16,
        "vocab_size": len(tok),
        "max_position_embeddings": 2048,
        "layer_types": layers,
        **SLIDING,
        **extra,
    }


def save_qwen_vl(config_cls: Any, model_cls: Any, spec: Spec, tok: Any, out: Path, text: Any, vision: Any) -> None:
    """A Qwen-VL family's model: its config from `text` and `vision` with the tokenizer's vision tokens."""
    image_pad, video_pad, start, end = ids(tok, "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")
    config = config_cls(
        text_config=text,
        vision_config=vision,
        image_token_id=image_pad,
        video_token_id=video_pad,
        vision_start_token_id=start,
        vision_end_token_id=end,
    )
    save_model(model_cls, config, tok, spec, out)


def _qwen2_vl(tok: Any, out: Path) -> None:
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    text = {
        **TEXT,
        "vocab_size": len(tok),
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    }
    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": 64,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    save_qwen_vl(Qwen2VLConfig, Qwen2VLForConditionalGeneration, QWEN2_VL, tok, out, text, vision)
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112})
    save_processor(Qwen2VLProcessor, images, tok, out, video_processor=None)


def _llava(tok: Any, out: Path) -> None:
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    text = {"model_type": "llama", **TEXT, "vocab_size": len(tok), "max_position_embeddings": 2048}
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        projection_dim=32,
    )
    config = LlavaConfig(
        text_config=text, vision_config=vision.to_dict(), image_token_id=ids(tok, "<image>")[0], vision_feature_layer=-1
    )
    save_model(LlavaForConditionalGeneration, config, tok, LLAVA, out)
    images = CLIPImageProcessorPil(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
    save_processor(
        LlavaProcessor, images, tok, out, patch_size=14, vision_feature_select_strategy="default", num_additional_image_tokens=1
    )


def _qwen2_5_vl(tok: Any, out: Path) -> None:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    text = {
        **TEXT,
        "vocab_size": len(tok),
        "max_position_embeddings": 2048,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    }
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "window_size": 56,
        "fullatt_block_indexes": [1],
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    save_qwen_vl(Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, QWEN2_5_VL, tok, out, text, vision)
    images = Qwen2VLImageProcessorPil(size={"shortest_edge": 56 * 56, "longest_edge": 112 * 112})
    save_processor(Qwen2_5_VLProcessor, images, tok, out, video_processor=None)


def _qwen3_vl(tok: Any, out: Path) -> None:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], "mrope_interleaved": True}
    text = {**TEXT, "head_dim": 16, "vocab_size": len(tok), "max_position_embeddings": 2048, "rope_parameters": rope}
    vision = {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": 64,
        "patch_size": 16,
        "num_position_embeddings": 16,
        "deepstack_visual_indexes": [0],
    }
    save_qwen_vl(Qwen3VLConfig, Qwen3VLForConditionalGeneration, QWEN3_VL, tok, out, text, vision)
    images = Qwen2VLImageProcessorPil(
        patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3, size={"shortest_edge": 64 * 64, "longest_edge": 128 * 128}
    )
    save_processor(Qwen3VLProcessor, images, tok, out, video_processor=None)


def _llava_next(tok: Any, out: Path) -> None:
    from transformers import CLIPVisionConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    pinpoints = [[56, 56], [56, 112], [112, 56], [112, 112]]
    text = {"model_type": "llama", **TEXT, "vocab_size": len(tok), "max_position_embeddings": 2048}
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=56,
        patch_size=14,
        projection_dim=32,
    )
    config = LlavaNextConfig(
        text_config=text,
        vision_config=vision.to_dict(),
        image_token_id=ids(tok, "<image>")[0],
        vision_feature_layer=-1,
        image_grid_pinpoints=pinpoints,
    )
    save_model(LlavaNextForConditionalGeneration, config, tok, LLAVA_NEXT, out)
    images = LlavaNextImageProcessorPil(
        size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56}, image_grid_pinpoints=pinpoints
    )
    save_processor(
        LlavaNextProcessor,
        images,
        tok,
        out,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )


def _gemma3(tok: Any, out: Path) -> None:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    boi, eoi, image = ids(tok, "<start_of_image>", "<end_of_image>", "<image_soft_token>")
    text = sliding_text(tok)
    vision = SIGLIP_56
    config = Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        boi_token_index=boi,
        eoi_token_index=eoi,
        image_token_index=image,
    )
    save_model(Gemma3ForConditionalGeneration, config, tok, GEMMA3, out)
    images = Gemma3ImageProcessorPil(size={"height": 56, "width": 56})
    save_processor(Gemma3Processor, images, tok, out, image_seq_length=4)


def _idefics(kind: str) -> Callable[[Any, Path], None]:
    def build(tok: Any, out: Path) -> None:
        import transformers

        prefix = "Idefics3" if kind == "idefics3" else "SmolVLM"
        text = {"model_type": "llama", **TEXT, "vocab_size": len(tok), "max_position_embeddings": 2048}
        vision = {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 56,
            "patch_size": 14,
        }
        config = getattr(transformers, f"{prefix}Config")(
            text_config=text, vision_config=vision, scale_factor=2, image_token_id=ids(tok, "<image>")[0]
        )
        save_model(getattr(transformers, f"{prefix}ForConditionalGeneration"), config, tok, SPECS[kind], out)
        module = getattr(transformers.models, kind)
        images = getattr(getattr(module, f"image_processing_pil_{kind}"), f"{prefix}ImageProcessorPil")(
            size={"longest_edge": 112}, max_image_size={"longest_edge": 56}
        )
        extra = {"video_processor": None} if kind == "smolvlm" else {}
        save_processor(getattr(transformers, f"{prefix}Processor"), images, tok, out, image_seq_len=4, **extra)

    return build


def _glm4v(tok: Any, out: Path) -> None:
    from transformers import Glm4vForConditionalGeneration

    from gateway.engine.demo import _model_config, _save_image_processor

    save_model(Glm4vForConditionalGeneration, _model_config(out, "tiny"), tok, GLM4V, out)
    _save_image_processor(out)


def _glm4v_moe(tok: Any, out: Path) -> None:
    """GLM-4.5V's architecture: GLM-4.1V's vision tower (the demo's tiny one) before a mixture-of-experts text model."""
    from transformers import Glm4vMoeConfig, Glm4vMoeForConditionalGeneration

    from gateway.engine.demo import _model_config, _save_image_processor

    dense: Any = _model_config(out, "tiny")
    experts = {"moe_intermediate_size": 32, "n_routed_experts": 4, "num_experts_per_tok": 2, "first_k_dense_replace": 1}
    tokens = {k: getattr(dense, k) for k in ("image_token_id", "video_token_id", "image_start_token_id", "image_end_token_id")}
    tokens |= {k: getattr(dense, k) for k in ("video_start_token_id", "video_end_token_id")}
    config = Glm4vMoeConfig(
        text_config={**dense.text_config.to_dict(), **experts}, vision_config=dense.vision_config.to_dict(), **tokens
    )
    save_model(Glm4vMoeForConditionalGeneration, config, tok, GLM4V_MOE, out)
    _save_image_processor(out)


def _text_model(config_name: str, model_name: str, **extra: Any) -> Callable[[Any, Path], None]:
    def build(tok: Any, out: Path) -> None:
        import transformers

        spec = next(s for s in SPECS.values() if s.build is build)
        eos = ids(tok, *spec.eos)
        config = getattr(transformers, config_name)(
            **{
                **TEXT,
                "vocab_size": len(tok),
                "max_position_embeddings": 2048,
                "eos_token_id": eos,
                "pad_token_id": ids(tok, spec.pad)[0],
                "bos_token_id": None,
                **extra,
            }
        )
        save_model(getattr(transformers, model_name), config, tok, spec, out)

    return build


LLAMA3_TOKENS = ["<|end_of_text|>", "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
LLAMA3_TEMPLATE = layout(
    "<|begin_of_text|>",
    "<|start_header_id|>ROLE<|end_header_id|>\n\n",
    "<|eot_id|>",
    "",
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
)
GEMMA_TOKENS = ["<eos>", "<bos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
GEMMA_TEMPLATE = layout("<bos>", "<start_of_turn>ROLE\n", "<end_of_turn>\n", "", "<start_of_turn>model\n", {"assistant": "model"})
MISTRAL_TOKENS = ["</s>", "<s>", "<unk>", "[INST]", "[/INST]"]
MISTRAL_TEMPLATE = (
    "<s>{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}</s>"
    "{% else %}[INST] {{ m['content'] }} [/INST]{% endif %}{% endfor %}"
)
PHI3_TOKENS = ["<|endoftext|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
PHI3_TEMPLATE = layout("", "<|ROLE|>\n", "<|end|>\n", "", "<|assistant|>\n")

QWEN2_VL = Spec("qwen2_vl", QWEN_TOKENS, QWEN_VL_TEMPLATE, _qwen2_vl, eos=("<|im_end|>", "<|endoftext|>"))
QWEN2_5_VL = Spec("qwen2_5_vl", QWEN_TOKENS, QWEN_VL_TEMPLATE, _qwen2_5_vl, eos=("<|im_end|>", "<|endoftext|>"))
QWEN3_VL = Spec("qwen3_vl", QWEN_TOKENS, QWEN_VL_TEMPLATE, _qwen3_vl, eos=("<|im_end|>", "<|endoftext|>"))
GEMMA3_TOKENS = [*GEMMA_TOKENS, "<start_of_image>", "<end_of_image>", "<image_soft_token>"]
GEMMA3_NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
GEMMA3_TEMPLATE = layout(
    "<bos>", "<start_of_turn>ROLE\n", "<end_of_turn>\n", "<start_of_image>", "<start_of_turn>model\n", {"assistant": "model"}
)
GEMMA3 = Spec(
    "gemma3", GEMMA3_TOKENS, GEMMA3_TEMPLATE, _gemma3, eos=("<end_of_turn>", "<eos>"), pad="<pad>", named_tokens=GEMMA3_NAMED
)
LLAVA_NEXT = Spec("llava_next", LLAMA2_TOKENS, LLAVA_TEMPLATE, _llava_next, eos=("</s>",), pad="<pad>", bos="<s>")
# Idefics3's own template: "User:" before an image, "User: " before text.
IDEFICS_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{message['role'] | capitalize}}"
    "{% if message['content'][0]['type'] == 'image' %}{{':'}}{% else %}{{': '}}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{line['text']}}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)
IDEFICS_TOKENS = [
    "<|end_of_text|>",
    "<|begin_of_text|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<image>",
    "<global-img>",
]
IDEFICS_TOKENS += [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
IDEFICS3 = Spec(
    "idefics3",
    IDEFICS_TOKENS,
    IDEFICS_TEMPLATE,
    _idefics("idefics3"),
    eos=("<end_of_utterance>", "<|end_of_text|>"),
    pad="<|end_of_text|>",
)
SMOLVLM = Spec(
    "smolvlm",
    IDEFICS_TOKENS,
    IDEFICS_TEMPLATE,
    _idefics("smolvlm"),
    eos=("<end_of_utterance>", "<|end_of_text|>"),
    pad="<|end_of_text|>",
)
GLM4V = Spec(
    "glm4v",
    demo_tokenizer.SPECIAL_TOKENS,
    demo_tokenizer.CHAT_TEMPLATE,
    _glm4v,
    eos=("<|endoftext|>", "<|user|>", "<|observation|>"),
    pad="<pad>",
)
GLM4V_MOE = Spec(
    "glm4v_moe",
    demo_tokenizer.SPECIAL_TOKENS,
    demo_tokenizer.CHAT_TEMPLATE,
    _glm4v_moe,
    eos=("<|endoftext|>", "<|user|>", "<|observation|>"),
    pad="<pad>",
)
LLAVA = Spec("llava", LLAMA2_TOKENS, LLAVA_TEMPLATE, _llava, eos=("</s>",), pad="<pad>", bos="<s>")
QWEN_TEXT_TEMPLATE = layout(*CHATML[:3], "", CHATML[3])
TEXT_SPECS = [
    Spec(
        "llama",
        LLAMA3_TOKENS,
        LLAMA3_TEMPLATE,
        _text_model("LlamaConfig", "LlamaForCausalLM"),
        eos=("<|eot_id|>", "<|end_of_text|>"),
        pad="<|end_of_text|>",
        vision=False,
    ),
    Spec(
        "qwen2",
        QWEN_TOKENS,
        QWEN_TEXT_TEMPLATE,
        _text_model("Qwen2Config", "Qwen2ForCausalLM"),
        eos=("<|im_end|>", "<|endoftext|>"),
        vision=False,
    ),
    Spec(
        "qwen3",
        QWEN_TOKENS,
        QWEN_TEXT_TEMPLATE,
        _text_model("Qwen3Config", "Qwen3ForCausalLM", head_dim=16),
        eos=("<|im_end|>", "<|endoftext|>"),
        vision=False,
    ),
    Spec(
        "gemma2",
        GEMMA_TOKENS,
        GEMMA_TEMPLATE,
        _text_model(
            "Gemma2Config", "Gemma2ForCausalLM", head_dim=16, layer_types=["sliding_attention", "full_attention"], **SLIDING
        ),
        eos=("<end_of_turn>", "<eos>"),
        pad="<pad>",
        vision=False,
    ),
    Spec(
        "gemma3_text",
        GEMMA_TOKENS,
        GEMMA_TEMPLATE,
        _text_model(
            "Gemma3TextConfig", "Gemma3ForCausalLM", head_dim=16, layer_types=["sliding_attention", "full_attention"], **SLIDING
        ),
        eos=("<end_of_turn>", "<eos>"),
        pad="<pad>",
        vision=False,
    ),
    Spec(
        "mistral",
        MISTRAL_TOKENS,
        MISTRAL_TEMPLATE,
        _text_model("MistralConfig", "MistralForCausalLM", **SLIDING),
        eos=("</s>",),
        pad="<unk>",
        vision=False,
    ),
    Spec(
        "phi3",
        PHI3_TOKENS,
        PHI3_TEMPLATE,
        _text_model("Phi3Config", "Phi3ForCausalLM"),
        eos=("<|end|>", "<|endoftext|>"),
        vision=False,
    ),
]

# ---- Mistral 3 (Pixtral), PaliGemma, Llama 3.2 Vision (mllama) ------------------------------------------

# Mistral Small 3.1's layout: BOS, a system prompt in its own tags, images before the text inside [INST].
MISTRAL3_TOKENS = [
    "</s>",
    "<s>",
    "<unk>",
    "<pad>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG]",
    "[IMG_BREAK]",
    "[IMG_END]",
]
_TEXT_OF = (
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] if c['type'] == 'text' %}{{ c['text'] }}{% endfor %}{% endif %}"
)
_IMAGES_OF = "{% if m['content'] is not string %}{% for c in m['content'] if c['type'] == 'image' %}IMAGE{% endfor %}{% endif %}"
MISTRAL3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'system' %}[SYSTEM_PROMPT]" + _TEXT_OF + "[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]" + _IMAGES_OF.replace("IMAGE", "[IMG]") + _TEXT_OF + "[/INST]"
    "{% else %}" + _TEXT_OF + "</s>{% endif %}{% endfor %}"
)


def _mistral3(tok: Any, out: Path) -> None:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil

    from gateway.engine.local.families.processors import processor_class

    text = {
        "model_type": "mistral",
        **TEXT,
        "head_dim": 16,
        "vocab_size": len(tok),
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
    }
    vision = {
        "model_type": "pixtral",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 112,
        "patch_size": 14,
    }
    # Untied, as Mistral Small 3.1 ships: a tiny random model with tied embeddings only repeats its last token.
    config = Mistral3Config(
        text_config=text,
        vision_config=vision,
        image_token_index=ids(tok, "[IMG]")[0],
        spatial_merge_size=2,
        tie_word_embeddings=False,
    )
    save_model(Mistral3ForConditionalGeneration, config, tok, MISTRAL3, out)
    images = PixtralImageProcessorPil(size={"longest_edge": 112}, patch_size={"height": 14, "width": 14})
    save_processor(processor_class("PixtralProcessor"), images, tok, out, patch_size=14, spatial_merge_size=2)


MISTRAL3 = Spec("mistral3", MISTRAL3_TOKENS, MISTRAL3_TEMPLATE, _mistral3, eos=("</s>",), pad="<pad>", bos="<s>")

# PaliGemma ships no chat template: this one (served with --chat-template) lays turns out as the processor
# expects, images first; the processor itself puts BOS after the last image and "\n" after the prompt, so
# the template does both only for prompts without images.
PALIGEMMA_TEMPLATE = (
    "{% set ns = namespace(images=false) %}{% for m in messages %}{% if m['content'] is not string %}"
    "{% for c in m['content'] if c['type'] == 'image' %}{% set ns.images = true %}{% endfor %}{% endif %}{% endfor %}"
    "{% if not ns.images %}<bos>{% endif %}{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}\n"
    + _TEXT_OF
    + "\n{% else %}"
    + _IMAGES_OF.replace("IMAGE", "<image>")
    + _TEXT_OF
    + "{% if m['role'] == 'system' %}\n{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt and not ns.images %}\n{% endif %}"
)


def _paligemma(tok: Any, out: Path) -> None:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    images = SiglipImageProcessorPil(size={"height": 56, "width": 56}, image_seq_length=16)
    PaliGemmaProcessor(image_processor=images, tokenizer=tok)  # adds its <loc>/<seg> tokens, as checkpoints hold them
    tok.save_pretrained(out)
    text = sliding_text(tok, model_type="gemma2")
    vision = SIGLIP_56
    config = PaliGemmaConfig(
        text_config=text,
        vision_config=vision,
        image_token_index=ids(tok, "<image>")[0],
        vocab_size=len(tok),
        projection_dim=64,
        hidden_size=64,
    )
    save_model(PaliGemmaForConditionalGeneration, config, tok, PALIGEMMA, out)
    save_processor(PaliGemmaProcessor, images, tok, out)


PALIGEMMA = Spec(
    "paligemma",
    ["<eos>", "<bos>", "<pad>", "<image>"],
    PALIGEMMA_TEMPLATE,
    _paligemma,
    eos=("<eos>",),
    pad="<pad>",
    bos="<bos>",
    named_tokens={"image_token": "<image>"},
    ships_template=False,
)

MLLAMA_TOKENS = [*LLAMA3_TOKENS, "<|image|>", "<|finetune_right_pad_id|>"]
MLLAMA_TEMPLATE = layout(
    "<|begin_of_text|>",
    "<|start_header_id|>ROLE<|end_header_id|>\n\n",
    "<|eot_id|>",
    "<|image|>",
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
)


def _mllama(tok: Any, out: Path) -> None:
    import torch
    from transformers import GenerationConfig, MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil

    text = {
        **TEXT,
        "num_hidden_layers": 3,
        "cross_attention_layers": [1],
        "vocab_size": len(tok),
        "max_position_embeddings": 2048,
        "bos_token_id": ids(tok, "<|begin_of_text|>")[0],
        "eos_token_id": ids(tok, *MLLAMA.eos),
        "pad_token_id": ids(tok, MLLAMA.pad)[0],
    }
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_global_layers": 1,
        "attention_heads": 2,
        "image_size": 56,
        "patch_size": 14,
        "intermediate_layers_indices": [0],
        "vision_output_dim": 64,
    }
    config = MllamaConfig(text_config=text, vision_config=vision, image_token_index=ids(tok, "<|image|>")[0])
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(config)
    with torch.no_grad():  # the gates start closed (tanh(0)): opened, the images reach the text
        for name, parameter in model.named_parameters():
            if name.endswith("_gate") and "language_model" in name:
                parameter.fill_(1.0)
    eos = ids(tok, *MLLAMA.eos)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=ids(tok, MLLAMA.pad)[0])  # type: ignore[no-untyped-call]
    model.save_pretrained(out)
    images = MllamaImageProcessorPil(size={"height": 56, "width": 56}, max_image_tiles=4)
    save_processor(MllamaProcessor, images, tok, out)


MLLAMA = Spec(
    "mllama",
    MLLAMA_TOKENS,
    MLLAMA_TEMPLATE,
    _mllama,
    eos=("<|eot_id|>", "<|end_of_text|>"),
    pad="<|finetune_right_pad_id|>",
    bos="<|begin_of_text|>",
)
FAMILIES_B = [MISTRAL3, PALIGEMMA, MLLAMA]


SPECS: dict[str, Spec] = {
    s.name: s for s in (GLM4V, GLM4V_MOE, QWEN2_VL, QWEN2_5_VL, QWEN3_VL, LLAVA, LLAVA_NEXT, GEMMA3, IDEFICS3, *TEXT_SPECS)
}
SPECS.update({s.name: s for s in FAMILIES_B})


# ---- SmolVLM, LLaVA-OneVision, Aya Vision, InternVL --------------------------------------------------

SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2}
SIGLIP |= {"num_attention_heads": 2, "patch_size": 14, "vision_use_head": False}


def _llava_onevision(tok: Any, out: Path) -> None:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import LlavaOnevisionImageProcessorPil

    pinpoints = [[28, 28], [28, 56], [56, 28], [56, 56]]
    text = {**TEXT, "model_type": "qwen2", "vocab_size": len(tok), "max_position_embeddings": 2048}
    config = LlavaOnevisionConfig(
        text_config=text,
        vision_config={**SIGLIP, "image_size": 28},
        image_token_index=ids(tok, "<image>")[0],
        video_token_index=ids(tok, "<video>")[0],
        image_grid_pinpoints=pinpoints,
    )
    save_model(LlavaOnevisionForConditionalGeneration, config, tok, LLAVA_ONEVISION, out)
    images = LlavaOnevisionImageProcessorPil(size={"height": 28, "width": 28}, image_grid_pinpoints=pinpoints)
    save_processor(
        LlavaOnevisionProcessor,
        images,
        tok,
        out,
        video_processor=None,
        num_image_tokens=4,
        vision_feature_select_strategy="full",
        vision_aspect_ratio="anyres_max_9",
    )


# llava-hf/llava-onevision-qwen2-*-ov-hf's template: a space after the role, images, then "\n" + text.
ONEVISION_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + ' '}}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>' }}{% endfor %}"
    "{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ '\n' + content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ '\n' + content['text'] }}{% endgeneration %}{% endfor %}{% endif %}"
    "{{'<|im_end|>'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAVA_ONEVISION = Spec(
    "llava_onevision",
    [*QWEN_TOKENS, "<image>", "<video>"],
    ONEVISION_TEMPLATE,
    _llava_onevision,
    eos=("<|im_end|>", "<|endoftext|>"),
)


def _aya_vision(tok: Any, out: Path) -> None:
    from transformers import AyaVisionConfig, AyaVisionForConditionalGeneration, AyaVisionProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    text = sliding_text(
        tok,
        model_type="cohere2",
        pad_token_id=ids(tok, "<PAD>")[0],
        bos_token_id=ids(tok, "<BOS_TOKEN>")[0],
        eos_token_id=ids(tok, "<|END_OF_TURN_TOKEN|>")[0],
    )
    config = AyaVisionConfig(
        text_config=text,
        vision_config={**SIGLIP, "image_size": 56},
        downsample_factor=2,
        image_token_index=ids(tok, "<|IMG_PATCH|>")[0],
    )
    save_model(AyaVisionForConditionalGeneration, config, tok, AYA_VISION, out)
    images = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, max_patches=4)
    save_processor(AyaVisionProcessor, images, tok, out, patch_size=28, img_size=56, downsample_factor=1)


# Cohere's turn tokens (CohereForAI/aya-vision-8b): images as <image>, expanded into tiles by the processor.
AYA_ROLES = {"user": "<|USER_TOKEN|>", "assistant": "<|CHATBOT_TOKEN|>", "system": "<|SYSTEM_TOKEN|>"}
AYA_TEMPLATE = layout(
    "<BOS_TOKEN>",
    "<|START_OF_TURN_TOKEN|>ROLE",
    "<|END_OF_TURN_TOKEN|>",
    "<image>",
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>",
    AYA_ROLES,
)
AYA_TOKENS = ["<|END_OF_TURN_TOKEN|>", "<BOS_TOKEN>", "<PAD>", "<|START_OF_TURN_TOKEN|>", *AYA_ROLES.values()]
AYA_TOKENS += ["<image>", "<|START_OF_IMG|>", "<|END_OF_IMG|>", "<|IMG_PATCH|>", "<|IMG_LINE_BREAK|>"]
AYA_VISION = Spec(
    "aya_vision", AYA_TOKENS, AYA_TEMPLATE, _aya_vision, eos=("<|END_OF_TURN_TOKEN|>",), pad="<PAD>", bos="<BOS_TOKEN>"
)


def _internvl(tok: Any, out: Path) -> None:
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil

    text = {**TEXT, "model_type": "qwen2", "vocab_size": len(tok), "max_position_embeddings": 2048}
    vision = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": [56, 56],
        "patch_size": [14, 14],
    }
    config = InternVLConfig(
        text_config=text, vision_config=vision, image_token_id=ids(tok, "<IMG_CONTEXT>")[0], image_seq_length=4
    )
    save_model(InternVLForConditionalGeneration, config, tok, INTERNVL, out)
    images = GotOcr2ImageProcessorPil(size={"height": 56, "width": 56}, crop_to_patches=True, max_patches=4)
    save_processor(InternVLProcessor, images, tok, out, video_processor=None, image_seq_length=4)


# OpenGVLab/InternVL3-*-hf: ChatML, each image as <IMG_CONTEXT> on a line of its own.
INTERNVL_NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
INTERNVL = Spec(
    "internvl",
    [*QWEN_TOKENS, *INTERNVL_NAMED.values()],
    layout(CHATML[0], CHATML[1], CHATML[2], "<IMG_CONTEXT>\n", CHATML[3]),
    _internvl,
    eos=("<|im_end|>", "<|endoftext|>"),
    named_tokens=INTERNVL_NAMED,
)

SPECS.update({s.name: s for s in (SMOLVLM, LLAVA_ONEVISION, AYA_VISION, INTERNVL)})


def write_family(spec: Spec, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer(spec, out_dir)
    spec.build(tok, out_dir)
    (out_dir / "gateway_family.json").write_text(json.dumps({"family": spec.name, "version": FAMILIES_VERSION}))
    return out_dir


def cached_family(name: str) -> Path:
    """The family's fixture directory, built on first use; keyed by this file's version and transformers'."""
    import transformers

    target = cache_root() / "families" / f"{name}-v{FAMILIES_VERSION}-tf{transformers.__version__}"
    if (target / "gateway_family.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        write_family(SPECS[name], scratch)
        try:
            os.rename(scratch, target)
        except OSError:  # another process finished first
            pass
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
