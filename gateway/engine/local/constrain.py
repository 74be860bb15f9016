"""Grammar-constrained decoding: a per-row token bitmask from llguidance, applied to the batch's logits."""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

import llguidance
import llguidance.hf
import llguidance.torch
import torch

from gateway.engine.contract import Grammar


class CompileBudget(Protocol):
    """What a checker needs of a compile's budget (the core's `GrammarLimits`): llguidance's parser limits."""

    def parser_limits(self) -> llguidance.LLParserLimits: ...


_BITS = torch.arange(32, dtype=torch.int32)


class GrammarVocabulary:
    """The model's vocabulary as llguidance sees it, built once from the tokenizer at start-up (about a
    second for a 150k vocabulary), and the matchers compiled from it: the compile pool's workers build each
    distinct grammar's once (`check`), and the generation thread copies it per turn (`matcher`)."""

    capacity = 16  # compiled matchers kept, up to tens of MB each (the compile pool sets grammar_matchers_kept)

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        self.vocab_size = vocab_size
        eos = sorted(eos_token_ids) or None
        try:
            self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size, eos_token=eos)
        except ValueError:  # a decoder llguidance does not read (a word-level Metaspace one, say)
            wrapper = llguidance.TokenizerWrapper(DecodedVocabulary(tokenizer))
            self.tokenizer = llguidance.LLTokenizer(wrapper, n_vocab=vocab_size, eos_token=eos)
        self.words = (vocab_size + 31) // 32  # int32 words per row of the bitmask
        self.compiles = 0  # grammars compiled against this vocabulary, ever
        self.compiled_on: Counter[str] = Counter()  # compiles by thread name: the generation thread's must stay 0
        self._limits: llguidance.LLParserLimits | None = None  # the compile pool's, once it has checked one
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, source: str, limits: CompileBudget) -> str:
        """Compile `source` within `limits` (on a compile worker: llguidance drops the GIL meanwhile) and
        keep the matcher for its turns; llguidance's complaint, or "" when usable."""
        self._limits = limits.parser_limits()
        matcher = self._compile(source, self._limits)
        if matcher.is_error():
            return matcher.get_error() or "the grammar is unusable"
        with self._lock:
            self._compiled[source] = matcher
            while len(self._compiled) > self.capacity:
                self._compiled.popitem(last=False)
        return ""

    def holds(self, source: str) -> bool:
        """Whether `source`'s compiled matcher is kept (a turn using it copies it, compiling nothing)."""
        with self._lock:
            return source in self._compiled

    def matcher(self, grammar: Grammar) -> RowGrammar:
        """A fresh parser for one turn: a copy of the compiled matcher (microseconds), compiled here only
        when no worker has (a grammar built by hand, or one evicted since)."""
        with self._lock:
            compiled = self._compiled.get(grammar.source)
            if compiled is not None:
                self._compiled.move_to_end(grammar.source)
        return RowGrammar(compiled.deep_copy() if compiled is not None else self._compile(grammar.source, self._limits))

    def _compile(self, source: str, limits: llguidance.LLParserLimits | None) -> llguidance.LLMatcher:
        with self._lock:
            self.compiles += 1
            self.compiled_on[threading.current_thread().name] += 1
        return llguidance.LLMatcher(self.tokenizer, source, limits=limits)


class DecodedVocabulary:
    """Each token's bytes, read by decoding it after an anchor token (so a leading space survives the
    decoder's start-of-text rules); special tokens get llguidance's 0xFF prefix, so no text can match them."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id
        self.bos_token_id = tokenizer.bos_token_id
        special = {int(i) for i, token in tokenizer.added_tokens_decoder.items() if token.special}
        self.special_token_ids = sorted(special | set(tokenizer.all_special_ids))
        anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
        prefix = tokenizer.decode([anchor])
        self.tokens = [
            b"\xff" + str(tokenizer.convert_ids_to_tokens(i)).encode()
            if i in special
            else tokenizer.decode([anchor, i]).removeprefix(prefix).encode()
            for i in range(len(tokenizer))
        ]

        self._ids = {token: i for i, token in enumerate(self.tokens) if i not in special and token}
        self._longest = max(map(len, self._ids), default=1)

    def __call__(self, text: str) -> list[int]:
        """Some tokenization of `text` by these tokens (greedy longest match): llguidance only needs a valid
        one, and the tokenizer's own may not exist (a word-level one writes unknown pieces as <unk>)."""
        data, ids, at = text.encode(), [], 0
        while at < len(data):
            for end in range(min(len(data), at + self._longest), at, -1):
                if (token := self._ids.get(data[at:end])) is not None:
                    ids.append(token)
                    at = end
                    break
            else:
                return ids  # bytes no token spells: a grammar needing them cannot be followed anyway
        return ids


class RowGrammar:
    """One turn's parser state: which tokens may come next, and whether the reply is complete."""

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher
        self.failed = matcher.is_error()

    def fill(self, bitmask: torch.Tensor, index: int) -> None:
        """Write the allowed-token bitmask into row `index` of `bitmask` (int32 words, on the CPU); a
        failed parser allows everything, so the row can still be sampled and then ends with an error."""
        if self.failed:
            bitmask[index].fill_(-1)
            return
        llguidance.torch.fill_next_token_bitmask(self._matcher, bitmask, index)

    def accept(self, token: int) -> bool:
        if not self.failed and not self._matcher.consume_token(token):
            self.failed = True
        return not self.failed

    @property
    def complete(self) -> bool:
        """No token can follow: the grammar has been matched to its end (an end-of-turn token included)."""
        return self._matcher.is_stopped() and not self.failed

    @property
    def accepting(self) -> bool:
        """The reply so far is a whole match (it could stop here)."""
        return self._matcher.is_accepting() and not self.failed

    @property
    def error(self) -> str:
        return self._matcher.get_error() or "the reply left its grammar"


@torch.inference_mode()
def mask_logits(logits: torch.Tensor, grammars: Sequence[RowGrammar | None]) -> None:
    """Mask, in place, each constrained row of `logits` [rows, vocab] to the tokens its grammar allows;
    free rows are left untouched (not even read)."""
    rows = [i for i, grammar in enumerate(grammars) if grammar is not None]
    if not rows:
        return
    bitmask = torch.empty(len(rows), (logits.shape[-1] + 31) // 32, dtype=torch.int32)
    for slot, row in enumerate(rows):
        grammar = grammars[row]
        assert grammar is not None
        grammar.fill(bitmask, slot)
    allowed = unpack(bitmask.to(logits.device, non_blocking=True), logits.shape[-1])
    index = torch.tensor(rows, device=logits.device)
    logits[index] = logits[index].masked_fill(~allowed, float("-inf"))


def unpack(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """[rows, words] int32 bitmask -> [rows, vocab] bool; ids beyond the bitmask are never allowed."""
    bits = (bitmask.unsqueeze(-1) >> _BITS.to(bitmask.device)) & 1
    allowed = bits.view(bitmask.shape[0], -1).bool()
    if allowed.shape[1] >= vocab:
        return allowed[:, :vocab]
    return torch.cat([allowed, allowed.new_zeros(allowed.shape[0], vocab - allowed.shape[1])], dim=1)


def logits_width(model: Any, tokenizer: Any) -> int:
    """How many token ids the model scores (often padded above the tokenizer's length)."""
    try:
        return int(model.get_output_embeddings().weight.shape[0])
    except AttributeError:
        return len(tokenizer)
