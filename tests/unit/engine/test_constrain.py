"""Constrained decoding in the batched step: grammar rows always valid, free rows untouched."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator

import jsonschema
import pytest
import torch

from gateway.core.structured import DEFAULT_LIMITS, json_grammar, response_grammar
from gateway.engine.contract import ChatMessage, GenerationRequest, GenerationResult, SamplingParams
from gateway.engine.local.constrain import unpack
from gateway.engine.local.engine import LocalEngine
from gateway.engine.local.loader import load_model
from gateway.ws.protocol import JsonObjectFormat, RegexFormat
from tests.conftest import DemoDirs
from tests.unit.engine.test_engine import Collector

PET_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "kind": {"enum": ["cat", "dog", "bird"]},
        "age": {"type": "integer", "minimum": 0, "maximum": 30},
        "weight": {"type": "number", "minimum": 0.5, "maximum": 99.5},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 6}, "maxItems": 3},
        "owner": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 10}, "vip": {"type": "boolean"}},
            "required": ["city", "vip"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "kind", "age", "weight", "tags", "owner"],
    "additionalProperties": False,
}


@pytest.fixture
async def engine(demo_dirs: DemoDirs) -> AsyncIterator[LocalEngine]:
    running = LocalEngine(load_model(demo_dirs.model), max_batch=16, queue_size=128)
    running.start()
    yield running
    await asyncio.to_thread(running.stop)


def submit(engine: LocalEngine, text: str, params: SamplingParams) -> Collector:
    sink = Collector()
    engine.submit(GenerationRequest([ChatMessage("user", text)], params), sink)
    return sink


async def results(sinks: list[Collector]) -> list[GenerationResult]:
    return [await asyncio.wait_for(sink.done, 120) for sink in sinks]


async def test_hundred_sampled_replies_validate_against_the_schema(engine: LocalEngine) -> None:
    """Temperature 1 on random weights, and still every reply parses and validates, ending by itself."""
    grammar = json_grammar(PET_SCHEMA)
    sinks = [
        submit(engine, f"pet {i}", SamplingParams(temperature=1.0, max_tokens=256, seed=i, grammar=grammar)) for i in range(100)
    ]
    for result in await results(sinks):
        assert result.finish_reason == "stop" and result.structured is True
        jsonschema.validate(json.loads(result.text), PET_SCHEMA)


async def test_free_rows_keep_their_solo_greedy_output_beside_constrained_rows(engine: LocalEngine) -> None:
    """json_object, json_schema and regex rows in the batch change nothing for the free rows."""
    free = [SamplingParams(temperature=0, max_tokens=30 + i) for i in range(4)]
    solo = [(await results([submit(engine, f"free {i}", p)]))[0].token_ids for i, p in enumerate(free)]
    grammars = [
        response_grammar(JsonObjectFormat()),
        json_grammar(PET_SCHEMA),
        response_grammar(RegexFormat(regex=r"[a-z]{3,8}-[0-9]{2,4}")),
    ]
    constrained = [
        submit(engine, f"c {i}", SamplingParams(temperature=1.0, max_tokens=256, seed=i, grammar=g))
        for i, g in enumerate(grammars)
    ]
    mixed = [submit(engine, f"free {i}", p) for i, p in enumerate(free)]
    assert [r.token_ids for r in await results(mixed)] == solo
    obj, pet, code = await results(constrained)
    assert isinstance(json.loads(obj.text), dict)
    jsonschema.validate(json.loads(pet.text), PET_SCHEMA)
    assert re.fullmatch(r"[a-z]{3,8}-[0-9]{2,4}", code.text)
    assert free and all(r.structured is True for r in (obj, pet, code))


async def test_reply_cut_by_max_tokens_is_not_structured(engine: LocalEngine) -> None:
    """A constrained reply that runs out of tokens ends with `length`, and says it is incomplete."""
    result = (
        await results([submit(engine, "x", SamplingParams(temperature=0, max_tokens=3, grammar=json_grammar(PET_SCHEMA)))])
    )[0]
    assert result.finish_reason == "length" and result.structured is False
    assert result.text.startswith("{")


async def test_free_replies_carry_no_structured_flag(engine: LocalEngine) -> None:
    """Without a grammar, `structured` stays None."""
    result = (await results([submit(engine, "x", SamplingParams(temperature=0, max_tokens=3))]))[0]
    assert result.structured is None


async def test_stop_strings_do_not_cut_a_constrained_reply(engine: LocalEngine) -> None:
    """A stop string inside the JSON would break it: constrained rows ignore stop strings."""
    params = SamplingParams(temperature=1.0, seed=3, max_tokens=256, stop=('"',), grammar=json_grammar(PET_SCHEMA))
    result = (await results([submit(engine, "x", params)]))[0]
    jsonschema.validate(json.loads(result.text), PET_SCHEMA)


def test_unpack_reads_bits_little_endian_and_cuts_to_the_vocabulary() -> None:
    """Bit i of word w allows token 32*w + i; ids past the bitmask are never allowed."""
    bitmask = torch.tensor([[0b101, -(2**31)]], dtype=torch.int32)  # bit 31 is the sign bit
    allowed = unpack(bitmask, 70)
    assert allowed.nonzero()[:, 1].tolist() == [0, 2, 63]
    assert allowed.shape == (1, 70)


async def test_turns_copy_a_grammar_compiled_once_and_stay_independent(engine: LocalEngine) -> None:
    """A grammar checked by the vocabulary (as the compile pool does) is not compiled again for its turns:
    twenty sampled turns copy it, each copy parses its own reply (all valid), and the count stays one."""
    vocabulary = engine.grammars
    assert vocabulary is not None
    schema = PET_SCHEMA | {"title": "copied"}  # a source no other test compiled
    grammar = json_grammar(schema)
    assert vocabulary.check(grammar.source, DEFAULT_LIMITS) == ""
    compiled = vocabulary.compiles
    params = [SamplingParams(temperature=1.0, max_tokens=256, seed=i, grammar=grammar) for i in range(20)]
    sinks = [submit(engine, f"pet {i}", p) for i, p in enumerate(params)]
    for result in await results(sinks):
        assert result.finish_reason == "stop" and result.structured is True
        jsonschema.validate(json.loads(result.text), PET_SCHEMA)
    assert vocabulary.compiles == compiled and vocabulary.holds(grammar.source)
