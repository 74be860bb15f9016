"""The built-in demo model: a tiny GLM-4V with random weights and a word-level tokenizer, built on the spot."""

from __future__ import annotations

import json
import os
import shutil
import string
import tempfile
import warnings
from pathlib import Path
from typing import Any, Literal

DEMO_VERSION = "4"  # bump whenever the files change: cached copies of older versions are rebuilt
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

# The demo vocabulary: whole English words (each with its leading space, SentencePiece-style), a few
# capitalised sentence starters, digits and punctuation. Random weights pick among them, so a reply is
# a random string of readable words: nothing that looks like an encoding bug.
_WORDS = """
    the a an and or but so if then than that this these those there here it its is are was were be been being
    have has had do does did will would can could should may might must shall not no yes all any some many much
    more most few less each every both either neither one two three four five six seven eight nine ten hundred
    first second third last next other another same different new old good bad great small large big little long
    short high low early late young right left top bottom middle inside outside above below near far up down in
    on at by for with about against between into through during before after over under again once only also
    very just still even too quite rather almost always never often sometimes usually soon now today tomorrow
    yesterday tonight morning evening night day week month year time moment hour minute while until since
    because i you he she we they me him her us them my your his our their mine yours what which who whom whose
    when where why how whether as like such own way thing things something nothing everything anything someone
    everyone people person man woman child children friend family team group world country city town place home
    house room door window wall floor roof garden street road bridge river lake sea ocean mountain hill forest
    tree flower grass leaf stone rock sand water fire air earth sky sun moon star cloud rain snow wind storm
    light shadow dark colour color red orange yellow green blue purple pink brown black white grey gray gold
    silver bright pale soft warm cold hot cool dry wet clean quiet loud calm gentle strong weak heavy fast slow
    easy hard simple clear open closed full empty round square flat sharp smooth rough sweet bitter fresh ripe
    happy sad glad curious careful kind brave proud tired busy free ready sure true false real possible
    important useful beautiful strange familiar common rare whole half part piece side edge corner center
    surface picture image photo photograph drawing painting frame scene view shape pattern line circle dot point
    detail background foreground object objects cat cats dog dogs bird birds fish horse cow sheep mouse rabbit
    fox bear lion animal animals car bus train boat plane bicycle wheel table chair bed lamp book books paper
    pen letter word words sentence story question answer idea reason example problem result fact truth name
    number list page screen phone computer model models token tokens message reply chat gateway stream socket
    server client browser network data file files code text language voice sound music song game see look looks
    looked seeing show shows showed watch find found think thought know knew known feel felt say said tell told
    ask asked speak spoke talk write wrote read make made take took give gave get got go went come came run ran
    walk walked sit sat stand stood move moved turn turned hold held keep kept begin began start started stop
    stopped end ended opened close bring brought carry carried build built grow grew draw drew paint play played
    work worked help helped try tried use used need needed want wanted liked love loved hope hoped wait waited
    call called leave stay stayed live lived happen happened change changed seem seemed appear appeared remain
    remained follow followed learn learned explain describe notice compare count measure imagine remember forget
    understand believe agree quickly slowly carefully gently clearly nearly simply probably perhaps certainly
    really actually together alone away back forward around across along behind beside beyond toward towards
    within without hello thanks thank please sorry okay well indeed maybe
""".split()
_STARTERS = "The A An It This That There Here We You I In On At What How Why Yes No Some Each".split()
_PUNCTUATION = [".", ",", "!", "?", ":", ";", "'", ")", "▁(", "▁-", '▁"']
# Single characters with no space before them: enough to spell any JSON (keys, braces, numbers) and the
# tool-call syntaxes, which constrained decoding (gateway/engine/local/constrain.py) can only build from tokens.
_CHARACTERS = [*string.ascii_letters, *string.digits, *'{}[]"_-<>/', "\n"]
UNK_TOKEN = "<unk>"
SPACE = "▁"  # stands for the space before a word in the vocabulary and in pre-tokenized text
# Pre-tokenized text: a space-led run of up to 8 letters or digits, or one other character. Words the
# vocabulary lacks become <unk> per chunk, so prompt lengths still grow with the text (no one-token novels).
_PIECES = r"▁?[\p{L}\p{N}\p{M}]{1,8}|▁?[^\p{L}\p{N}\p{M}▁]|▁"


def _vocabulary() -> dict[str, int]:
    """Special tokens first (ids 0-16, as before), then <unk>, words, digits, punctuation and single characters."""
    words = [SPACE + w for w in [*_WORDS, *_STARTERS, *"0123456789"]]
    tokens = dict.fromkeys([*SPECIAL_TOKENS, UNK_TOKEN, *words, *_PUNCTUATION, *_CHARACTERS])
    return {token: i for i, token in enumerate(tokens)}


def _build_tokenizer(out_dir: Path) -> None:
    """A word-level tokenizer: every token decodes to whole characters, so replies never hold U+FFFD."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(vocab=_vocabulary(), unk_token=UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="always", split=True),
            pre_tokenizers.Split(Regex(_PIECES), behavior="isolated"),
        ]
    )
    tokenizer.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)
    tokenizer.add_special_tokens([*SPECIAL_TOKENS, UNK_TOKEN])  # matched whole in the chat template's text
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,  # its rewrites (" ." -> ".") would break incremental decoding
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
    _build_tokenizer(out_dir)
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
    _build_tokenizer(out_dir)
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
