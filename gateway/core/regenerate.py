"""A regenerated reply: its prompt is the path down to the item the old reply answers, so the held KV is reused."""

from __future__ import annotations

from gateway.core.events import Listener
from gateway.core.grammar_pool import CompileQuota
from gateway.core.prompts import engine_failures
from gateway.core.request import TurnRequest
from gateway.core.session import PromptPlan, Session, UserTurn
from gateway.core.turn_types import SessionKeeper, StartedTurn
from gateway.core.turns import TurnService
from gateway.engine.contract import GenerationRequest, TurnHandle
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
    turn = UserTurn(id=request.id, text="", continues=True)  # it adds no user message
    plan = PromptPlan(messages=messages, prompt_tokens=prompt_tokens, dropped_turns=0)
    _, reply_id = session.fresh_ids(turn)
    started = StartedTurn(turn, plan, TurnHandle(), session.epoch, model, item_id=answers, reply_id=reply_id, answers=answers)
    generation = GenerationRequest(messages, params, started.handle, adapter=model, affinity=session.id, tools=tools.tools)
    turns.launch(session, started, generation, tools, listener, keeper)
    return started
