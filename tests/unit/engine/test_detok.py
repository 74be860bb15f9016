"""Tests for gateway.engine.local.detok: UTF-8-safe deltas and stop strings, on a byte-level BPE tokenizer
like real models use (the demo model's word-level tokenizer never splits a character, so it cannot
exercise the UTF-8 paths)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from transformers import AutoTokenizer

from gateway.engine.demo.tokenizer import SPECIAL_TOKENS
from gateway.engine.local.detok import TextStream
from tests.conftest import utf8_corpus

MULTIBYTE_TEXTS = [
    "café naïve é",
    "你好 世界 图片",
    "😀 🚀 🌍 ✨",
    "abc 😀😀😀 xyz",
    "你好😀é",
    "straße über ñandú こんにちは 画像 the end.",
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A byte-level BPE of 1024 tokens trained on the corpus, saved and loaded as transformers does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=1024, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False)
    bpe.train_from_iterator(utf8_corpus(), trainer=trainer)
    directory = tmp_path_factory.mktemp("tokenizer")
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<pad>").save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def ids_of(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer.encode(text, add_special_tokens=False))


def stream_all(tokenizer: Any, ids: Sequence[int], stop: Sequence[str] = ()) -> tuple[TextStream, list[str]]:
    """Push ids one at a time (stopping like the engine does), then finish; return every delta."""
    stream = TextStream(tokenizer, stop)
    deltas = []
    for token_id in ids:
        deltas.append(stream.push(token_id))
        if stream.stopped:
            break
    deltas.append(stream.finish())
    return stream, deltas


# ---- UTF-8 safety ------------------------------------------------------------------------------


def test_tokenizer_splits_characters_across_tokens(tokenizer: Any) -> None:
    """The sample texts really do split multi-byte characters across tokens (else the tests prove nothing)."""
    split = [i for text in MULTIBYTE_TEXTS for i in ids_of(tokenizer, text) if "\ufffd" in tokenizer.decode([i])]
    assert split


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_deltas_never_contain_replacement_characters(tokenizer: Any, text: str) -> None:
    """No delta holds U+FFFD: a character split over tokens is sent only once complete."""
    _, deltas = stream_all(tokenizer, ids_of(tokenizer, text))
    assert all("\ufffd" not in delta for delta in deltas)


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_deltas_concatenate_to_the_full_decode(tokenizer: Any, text: str) -> None:
    """The deltas joined equal the tokenizer's decode of all ids."""
    ids = ids_of(tokenizer, text)
    _, deltas = stream_all(tokenizer, ids)
    assert "".join(deltas) == tokenizer.decode(ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_text_property_equals_what_was_emitted(tokenizer: Any, text: str) -> None:
    """After finish(), `text` is exactly the concatenation of the deltas."""
    stream, deltas = stream_all(tokenizer, ids_of(tokenizer, text))
    assert stream.text == "".join(deltas)


def test_incomplete_character_is_held_until_complete(tokenizer: Any) -> None:
    """A token holding only part of a character yields an empty delta; the next completes it."""
    ids = ids_of(tokenizer, "你好")
    stream = TextStream(tokenizer)
    deltas = [stream.push(i) for i in ids]
    assert deltas[0] == "" and "".join(deltas) == "你好"


def test_finish_flushes_an_unfinished_character(tokenizer: Any) -> None:
    """Ids ending mid-character are released at finish() exactly as the tokenizer decodes them."""
    ids = ids_of(tokenizer, "你好")
    partial = ids[:1]
    _, deltas = stream_all(tokenizer, partial)
    assert "".join(deltas) == tokenizer.decode(partial)


def test_special_tokens_are_skipped(tokenizer: Any) -> None:
    """Special tokens (like <|endoftext|>) produce no text."""
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    _, deltas = stream_all(tokenizer, [*ids_of(tokenizer, "hello"), eos])
    assert "".join(deltas) == "hello"


def test_long_stream_matches_full_decode(tokenizer: Any) -> None:
    """Far past the decode window, the deltas still join to the full decode."""
    text = " ".join(MULTIBYTE_TEXTS * 5)
    ids = ids_of(tokenizer, text)
    _, deltas = stream_all(tokenizer, ids)
    assert "".join(deltas) == text


# ---- stop strings ------------------------------------------------------------------------------


def test_stop_string_is_cut_and_not_emitted(tokenizer: Any) -> None:
    """Text from the stop string on is never emitted, and `stopped` becomes True."""
    stream, deltas = stream_all(tokenizer, ids_of(tokenizer, "hello world STOP more text"), stop=["STOP"])
    assert stream.stopped is True
    assert "".join(deltas) == stream.text == "hello world "


def test_stop_string_inside_a_token_is_cut(tokenizer: Any) -> None:
    """A stop string that is part of one token's text cuts the reply mid-token."""
    ids = ids_of(tokenizer, "hello world")
    assert tokenizer.decode(ids[-1:]) == " world"
    stream, deltas = stream_all(tokenizer, ids, stop=["orl"])
    assert stream.stopped and "".join(deltas) == "hello w"


def test_multibyte_stop_string_is_cut(tokenizer: Any) -> None:
    """A stop string made of multi-byte characters is recognised and cut."""
    stream, deltas = stream_all(tokenizer, ids_of(tokenizer, "hello 你好 world"), stop=["你好"])
    assert stream.stopped and "".join(deltas) == "hello "


def test_stop_string_spanning_tokens_is_held_back(tokenizer: Any) -> None:
    """While the tokens seen so far could still be the start of a stop string, nothing of it is sent."""
    ids = ids_of(tokenizer, "hello STOP")
    pieces = [tokenizer.decode([i]) for i in ids]
    assert pieces[-4:] == ["S", "T", "O", "P"]  # one character per token
    stream = TextStream(tokenizer, ["STOP"])
    deltas = [stream.push(i) for i in ids]
    assert deltas[:2] == ["hello", " "]
    assert deltas[2:] == ["", "", "", ""]
    assert stream.stopped and stream.finish() == ""


def test_text_that_merely_starts_like_a_stop_string_is_released_at_finish(tokenizer: Any) -> None:
    """A tail that begins like a stop string but ends there is sent by finish(), not lost."""
    stream = TextStream(tokenizer, ["STOP"])
    sent = "".join(stream.push(i) for i in ids_of(tokenizer, "hello STO"))
    assert sent == "hello "
    assert stream.finish() == "STO"
    assert stream.stopped is False and stream.text == "hello STO"


def test_false_start_of_stop_string_is_released_when_it_diverges(tokenizer: Any) -> None:
    """Held text that stops matching the stop string is released at once, before finish()."""
    stream, deltas = stream_all(tokenizer, ids_of(tokenizer, "hello STOX more"), stop=["STOP"])
    assert not stream.stopped
    assert "".join(deltas[:-1]) == "hello STOX more"


def test_no_stop_strings_holds_nothing_back(tokenizer: Any) -> None:
    """Without stop strings, every completed character is released by push()."""
    stream = TextStream(tokenizer)
    sent = "".join(stream.push(i) for i in ids_of(tokenizer, "hello STO"))
    assert sent == "hello STO" and stream.finish() == ""


def test_empty_stop_strings_are_ignored(tokenizer: Any) -> None:
    """An empty stop string never matches (it would otherwise stop at once)."""
    stream, deltas = stream_all(tokenizer, ids_of(tokenizer, "hello"), stop=[""])
    assert not stream.stopped and "".join(deltas) == "hello"


def test_first_matching_stop_string_in_the_text_wins(tokenizer: Any) -> None:
    """Of two stop strings, the one that appears first in the text decides the cut."""
    stream, deltas = stream_all(tokenizer, ids_of(tokenizer, "hello world STOP more"), stop=["more", "STOP"])
    assert stream.stopped and "".join(deltas) == "hello world "


def test_earliest_stop_string_in_one_token_wins(tokenizer: Any) -> None:
    """When one token holds two stop strings, the reply is cut at the earlier one, whatever the list order."""
    ids = ids_of(tokenizer, "hello naïve")
    assert tokenizer.decode(ids[-1:]) == " naïve"  # both stop strings arrive in one token
    stream, deltas = stream_all(tokenizer, ids, stop=["ve", "na"])
    assert stream.stopped and "".join(deltas) == "hello "
