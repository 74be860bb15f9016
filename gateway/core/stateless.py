"""A stateless turn (the OpenAI API): a whole conversation checked, its images loaded, fitted and submitted."""

from __future__ import annotations

from gateway.core.events import Ended, Listener
from gateway.core.grammar_pool import CompileQuota
from gateway.core.prompts import conversation_messages, engine_failures, fit_context
from gateway.core.relay import EventSink
from gateway.core.request import ConversationRequest, SamplingOptions
from gateway.core.tracing import NO_TRACE, TurnTrace
from gateway.core.turns import TurnService
from gateway.engine.contract import GenerationRequest, GenerationResult, TurnHandle
from gateway.errors import naming


async def start_conversation(  # a turn of the service, apart only to keep its module small
    turns: TurnService, request: ConversationRequest, listener: Listener, quota: CompileQuota, trace: TurnTrace = NO_TRACE
) -> TurnHandle:
    """Check, load and submit a whole conversation; `listener` hears its events, `Ended` last. The caller opened
    `trace` (its admission phase began with the body)."""
    turns.check_open()
    turns.check_conversation(request.messages, request.options)
    options = request.options
    await turns.compile_grammars(SamplingOptions(), options, quota)
    tools = turns.tools_for(SamplingOptions(), options)
    trace.phase("images")
    messages = await conversation_messages(turns.attachments, request, turns.engine.reads_video)
    trace.phase("planning")
    params, model = turns.resolve(SamplingOptions(), options)
    with naming("messages"):
        params = await fit_context(turns.engine, turns.settings.default_max_tokens, messages, params, options.max_tokens, tools)
    images = [image for message in messages for image in message.images]
    with engine_failures(bool(images)):
        await turns.engine.prepare(images)
    generation = GenerationRequest(messages=messages, params=tools.params(params), adapter=model, tools=tools.tools)
    turns.check_open()

    def end(result: GenerationResult) -> None:
        listener(Ended(result))
        trace.end()

    turns.submit(generation, tools.sink(EventSink(listener, end)), trace, tools.syntax is not None)
    return generation.handle
