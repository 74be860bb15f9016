"""Replies to a changed path (a regenerated reply, an edited message's): the prompt is the path, so held KV is reused."""

from __future__ import annotations

from dataclasses import dataclass, replace

from gateway.core.events import Listener
from gateway.core.grammar_pool import CompileQuota
from gateway.core.prompts import engine_failures
from gateway.core.request import TurnRequest
from gateway.core.session import PromptPlan, Session, UserTurn
from gateway.core.turn_types import SessionKeeper, StartedTurn
from gateway.core.turns import TurnService
from gateway.engine.contract import ChatImage, ChatMessage, GenerationRequest, TurnHandle
from gateway.errors import ErrorCode, GatewayError


async def regenerate(  # a turn of the service, apart only to keep its module small
    turns: TurnService,
    session: Session,
    request: TurnRequest,
    item_id: str | None,
    listener: Listener,
    quota: CompileQuota,
    keeper: SessionKeeper,
) -> StartedTurn:
    """A new reply to what reply `item_id` (default: the last) answers. It joins as the old one's sibling when it
    ends (as a turn's exchange does); a failed one joins nothing. Its prompt is fixed, so nothing is trimmed."""
    turns.check_open()
    turns.check_turn(request)
    await turns.compile_grammars(session.defaults, request.options, quota)
    answers, messages = session.regenerating(item_id)
    turn = UserTurn(id=request.id, text="", continues=True)  # it adds no user message
    return await _respond(turns, session, request, turn, messages, listener, keeper, answers=answers)


@dataclass(frozen=True)
class Revision:
    """What an edit changes of user message `item_id`: its text and its images (each kept where None)."""

    item_id: str
    text: str | None = None
    images: list[bytes] | None = None


async def edit(
    turns: TurnService,
    session: Session,
    request: TurnRequest,
    revision: Revision,
    listener: Listener,
    quota: CompileQuota,
    keeper: SessionKeeper,
) -> StartedTurn:
    """A new version of a user message, answered by a reply. Both join when the reply ends, the message as the
    old one's sibling; a failed reply leaves no trace. Its prompt is the path above the old message, then the
    new one: nothing is trimmed."""
    turns.check_open()
    turns.check_turn(replace(request, text=revision.text or "", images=revision.images or []))
    await turns.compile_grammars(session.defaults, request.options, quota)
    messages = session.editing(revision.item_id)
    old = session.conversation.get(revision.item_id).content
    images = old.images if revision.images is None else await load_images(turns, session, revision.images)
    turn = UserTurn(id=request.id, text=old.text if revision.text is None else revision.text, images=images)
    with engine_failures(bool(turn.images)):
        await turns.engine.prepare(turn.images)
    messages.append(ChatMessage("user", turn.text, turn.images))
    return await _respond(turns, session, request, turn, messages, listener, keeper, edits=revision.item_id)


async def _respond(
    turns: TurnService,
    session: Session,
    request: TurnRequest,
    turn: UserTurn,
    messages: list[ChatMessage],
    listener: Listener,
    keeper: SessionKeeper,
    answers: str | None = None,
    edits: str | None = None,
) -> StartedTurn:
    """Submit a reply to `messages` as `session`'s turn; it joins below `answers`, or with `edits`'s new version."""
    params, model = turns.resolve(session.defaults, request.options)
    tools = turns.tools_for(session.defaults, request.options)
    params = tools.params(params)
    with engine_failures(any(m.images for m in messages)):
        prompt_tokens = await turns.engine.count_prompt_tokens(messages, tools=tools.tools)
    window = turns.engine.context_tokens
    if prompt_tokens + params.max_tokens > window:
        message = f"the path to the reply needs more than the {window}-token context window allows"
        raise GatewayError(ErrorCode.CONTEXT_OVERFLOW, message + f" with max_tokens={params.max_tokens}")
    turns.check_open()
    plan = PromptPlan(messages=messages, prompt_tokens=prompt_tokens, dropped_turns=0)
    item_id, reply_id = session.fresh_ids(turn)
    item_id = item_id or answers  # a regenerate's `accepted` names the item it answers
    started = StartedTurn(turn, plan, TurnHandle(), session.epoch, model, item_id=item_id, reply_id=reply_id, answers=answers)
    started.edits = edits
    generation = GenerationRequest(messages, params, started.handle, adapter=model, affinity=session.id, tools=tools.tools)
    turns.launch(session, started, generation, tools, listener, keeper)
    return started


async def load_images(turns: TurnService, session: Session, blobs: list[bytes]) -> tuple[ChatImage, ...]:
    """New pictures for a path that is not trimmed for them (an edit's, an insert's), checked and decoded on the
    pool: they fit beside what the session holds, or `too_large` (past the session's bound) or `overloaded`
    (past what the other sessions leave)."""
    turns.check_images(len(blobs))
    added = UserTurn(id="", text="", images=await turns.attachments.load(blobs, ()))
    room = turns.image_room(session, added)
    session.make_image_room(room - added.image_bytes)  # inactive branches' images go first
    if session.held_image_bytes + added.image_bytes > room:
        message = f"the history's images and these pass the {room} bytes this session may hold now"
        raise GatewayError(ErrorCode.TOO_LARGE, message, field="images")
    return added.images
