"""The conversation tree's prompts on the real engine (demo model): regenerate, edit, switch and fork reuse
held KV up to the first changed item, and greedy replies match an engine that holds none."""

from __future__ import annotations

from gateway.core.conversation import Conversation
from gateway.core.conversation_prompt import prompt_messages
from gateway.core.items import Content, Item
from gateway.engine.contract import ChatMessage, GenerationResult, SamplingParams
from gateway.engine.local.engine import LocalEngine
from tests.conversation_support import ROOMY, counting_ids
from tests.unit.engine.test_prefix_cache import engines, generate

__all__ = ["engines"]  # the warm (reuse on) and cold (reuse off) engines on the demo model

SYSTEM = ChatMessage("system", "You are terse.")
SAMPLED = SamplingParams(temperature=1.0, max_tokens=10, ignore_eos=True, seed=7)
Engines = tuple[LocalEngine, LocalEngine]


def prompt(path: list[Item], question: str | None = None) -> list[ChatMessage]:
    """The system prompt, the path's messages, and a new user message where one is asked."""
    return [SYSTEM, *prompt_messages(path), *([ChatMessage("user", question)] if question is not None else [])]


async def turn(engine: LocalEngine, tree: Conversation, question: str) -> GenerationResult:
    """One turn as the wiring will run it: the prompt from the active path, then message and reply join."""
    result = await generate(engine, prompt(tree.path, question))
    tree.append(Content.user(question))
    tree.append(Content.reply(result.text))
    return result


async def talk(engine: LocalEngine, turns: int) -> tuple[Conversation, list[GenerationResult]]:
    tree = Conversation(ROOMY, counting_ids())
    return tree, [await turn(engine, tree, f"question number {n} about the sea") for n in range(turns)]


async def test_regenerate_prefills_one_token(engines: Engines) -> None:
    """A regenerated reply's prompt is the last turn's: all of it but the one token left to prefill is held."""
    warm, cold = engines
    tree, _ = await talk(warm, 4)
    messages = prompt(tree.path_to(tree.regenerate().id))
    again, fresh = await generate(warm, messages), await generate(cold, messages)
    assert again.token_ids == fresh.token_ids and again.cached_tokens == again.prompt_tokens - 1


async def test_an_edit_reuses_what_came_before_it(engines: Engines) -> None:
    """An edit two turns back reuses at least what that turn reused when it first ran, and no more than
    its prompt."""
    warm, cold = engines
    tree, results = await talk(warm, 4)
    edited = tree.edit(tree.path[4].id, "question number 2 about the sky")
    messages = prompt(tree.path)
    again, fresh = await generate(warm, messages), await generate(cold, messages)
    assert again.token_ids == fresh.token_ids
    assert results[2].cached_tokens <= again.cached_tokens < again.prompt_tokens and edited.parent == tree.path[3].id


async def test_switching_back_reuses_the_old_branch(engines: Engines) -> None:
    """After a sampled regenerate and a turn on the new branch, a turn on the old branch reuses its held KV."""
    warm, cold = engines
    tree, results = await talk(warm, 3)
    old_reply = tree.path[-1].id
    other = await generate(warm, prompt(tree.path_to(tree.regenerate().id)), SAMPLED)
    tree.attach(tree.path[-2].id, Content.reply(other.text))
    await turn(warm, tree, "and on this branch?")
    tree.switch(old_reply)
    messages = prompt(tree.path, "and on the old one?")
    again, fresh = await generate(warm, messages), await generate(cold, messages)
    assert again.token_ids == fresh.token_ids and again.cached_tokens >= results[-1].prompt_tokens


async def test_a_fork_reuses_the_path_it_holds(engines: Engines) -> None:
    """A fork's first turn reuses the KV its source's turns left, whatever the fork's ids."""
    warm, cold = engines
    tree, results = await talk(warm, 3)
    fork = tree.fork()
    messages = prompt(fork.path, "a question in the fork")
    again, fresh = await generate(warm, messages), await generate(cold, messages)
    assert again.token_ids == fresh.token_ids and again.cached_tokens >= results[-1].prompt_tokens
