"""The conversation tree's edits on held KV, per family that reuses image KV: with an image item and a tool
call and result on the path, regenerate, an edit, a switch back and a fork reuse held KV past the image, and
greedy replies equal an engine that holds none given the same active path."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gateway.core.conversation import Conversation
from gateway.core.conversation_prompt import prompt_messages
from gateway.core.items import Content
from gateway.engine.contract import ChatMessage, GenerationResult, ToolCall
from tests.conversation_support import ROOMY, counting_ids
from tests.families.test_image_reuse import REUSING, Served, serve
from tests.unit.core.test_conversation_kv import SYSTEM, prompt
from tests.unit.engine.test_prefix_cache import generate, picture

CALL = ToolCall("call_1", "weather", '{"city": "Oslo"}')


@pytest.fixture(scope="module", params=REUSING)
def served(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    yield from serve(request.param, tmp_path_factory)


async def same(served: Served, messages: list[ChatMessage]) -> GenerationResult:
    """The warm engine's greedy reply to `messages`, checked equal to the cold engine's."""
    warm, cold = await generate(served.warm, messages), await generate(served.cold, messages)
    assert warm.error is None and warm.token_ids == cold.token_ids and cold.cached_tokens == 0
    return warm


def image_end(served: Served, messages: list[ChatMessage]) -> int:
    """Where the prompt's (last) image ends: held KV past it proves the image was not prefilled again."""
    layout = served.prompt.build(messages).layout
    assert layout is not None
    return int(layout.spans[-1][1])


async def turn(served: Served, tree: Conversation, question: str, pictures: tuple[int, ...] = ()) -> GenerationResult:
    """One turn as the wiring runs it: the prompt from the active path, then the message and reply join."""
    images = tuple(picture(n) for n in pictures)
    messages = [SYSTEM, *prompt_messages(tree.path), ChatMessage("user", question, images)]
    result = await same(served, messages)
    tree.append(Content.user(question, images))
    tree.append(Content.reply(result.text))
    return result


async def opening(served: Served) -> tuple[Conversation, list[GenerationResult]]:
    """An image turn, its reply's tool call and result, the reply to them, and a text turn."""
    tree = Conversation(ROOMY, counting_ids())
    first = await turn(served, tree, "what is in picture one", (1,))
    tree.append(Content.tool_call(CALL))
    tree.append(Content.tool_result(CALL.id, '{"sky": "grey"}'))
    after_tool = await same(served, prompt(tree.path))
    tree.append(Content.reply(after_tool.text))
    return tree, [first, after_tool, await turn(served, tree, "and the weather there?")]


async def test_regenerate_after_an_image_and_a_tool_call_prefills_one_token(served: Served) -> None:
    """A regenerated reply's prompt is the last turn's: all of it but the one token left is held."""
    tree, _ = await opening(served)
    again = await same(served, prompt(tree.path_to(tree.regenerate().id)))
    assert again.cached_tokens == again.prompt_tokens - 1


async def test_an_edit_after_the_image_and_tool_items_reuses_them(served: Served) -> None:
    """Editing the text turn after the image and the tool exchange holds all of the prompt that answered
    the tool result, image included."""
    tree, results = await opening(served)
    old = tree.path[-2]
    edited = tree.edit(old.id, "and the wind there?")
    messages = prompt(tree.path)
    again = await same(served, messages)
    assert results[1].prompt_tokens <= again.cached_tokens < again.prompt_tokens  # the tool exchange is held
    assert results[1].prompt_tokens > image_end(served, messages) and edited.parent == old.parent


async def test_switching_back_and_forking_reuse_the_old_branch(served: Served) -> None:
    """After an edit and a turn on its branch, a turn back on the old branch, and a fork's first turn, hold
    the old branch's KV: the image and the tool exchange are not prefilled again."""
    tree, results = await opening(served)
    old_reply = tree.path[-1].id
    tree.edit(tree.path[-2].id, "and the wind there?")
    tree.append(Content.reply((await same(served, prompt(tree.path))).text))
    tree.switch(old_reply)
    # All of the old branch's last prompt but its last token: LLaVA-OneVision's template writes that token
    # (the generation prompt's newline) differently once a reply follows it.
    held = results[-1].prompt_tokens - 1
    back = await same(served, prompt(tree.path, "and on the old branch?"))
    assert back.cached_tokens >= held
    fork = tree.fork()
    forked = await same(served, prompt(fork.path, "a question in the fork"))
    assert forked.cached_tokens >= held > image_end(served, prompt(fork.path))
