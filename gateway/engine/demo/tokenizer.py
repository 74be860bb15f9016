"""The demo's word-level tokenizer: GLM-4V's special tokens and chat layout over a vocabulary of whole words."""

from __future__ import annotations

import string
from pathlib import Path

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


def build_tokenizer(out_dir: Path) -> None:
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
