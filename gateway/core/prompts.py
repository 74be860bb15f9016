"""A stateless conversation's turn, before it is submitted: its images loaded, max_tokens fitted to the window; and
how an engine's unexpected failure to read a prompt becomes a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace

from gateway.core.attachments import Attachments
from gateway.core.request import ConversationRequest
from gateway.core.tool_plan import ToolPlan
from gateway.engine.contract import ChatImage, ChatMessage, Engine, SamplingParams
from gateway.errors import ErrorCode, GatewayError, naming

log = logging.getLogger("gateway.core.turns")


async def conversation_messages(attachments: Attachments, request: ConversationRequest) -> list[ChatMessage]:
    """Every image fetched and checked on the service's pools (its fetch slots), errors naming their message."""

    async def load(url: str, index: int, field: str) -> ChatImage:
        with naming(field):
            return await attachments.load_url(url, index)

    urls = [(url, message.field) for message in request.messages for url in message.image_urls]
    images = iter(await asyncio.gather(*(load(url, i, field) for i, (url, field) in enumerate(urls))))
    return [
        ChatMessage(m.role, m.text, tuple(next(images) for _ in m.image_urls), m.tool_calls, m.tool_call_id)
        for m in request.messages
    ]


async def fit_context(
    engine: Engine,
    default_max_tokens: int,
    messages: list[ChatMessage],
    params: SamplingParams,
    requested: int | None,
    tools: ToolPlan,
) -> SamplingParams:
    """max_tokens within what the context window leaves after the prompt; unset, the server's default at most."""
    with engine_failures(any(m.images for m in messages)):
        prompt_tokens = await engine.count_prompt_tokens(messages, tools=tools.tools)
    window = engine.context_tokens
    room = window - prompt_tokens
    max_tokens = requested if requested is not None else min(default_max_tokens, room)
    if max_tokens > room or max_tokens < 1:
        message = (
            f"This model's maximum context length is {window} tokens. However, you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion)."
        )
        raise GatewayError(ErrorCode.CONTEXT_OVERFLOW, message)
    return replace(params, max_tokens=max_tokens)


@contextlib.contextmanager
def engine_failures(with_images: bool) -> Iterator[None]:
    """An unexpected failure while the engine reads a prompt (another family's image processor, say)
    fails this turn with an `error`, never the connection; the details go to the log only."""
    try:
        yield
    except GatewayError:
        raise
    except Exception:
        log.exception("the engine could not read a prompt")
        if with_images:
            raise GatewayError(ErrorCode.BAD_IMAGE, "the served model could not take this turn's images") from None
        raise GatewayError(ErrorCode.INTERNAL, "the served model could not read this prompt") from None
