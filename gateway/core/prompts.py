"""A turn before it is submitted: images and videos loaded, max_tokens fitted to the window, engine failures made clear."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import replace

from gateway.core.attachments import Attachments
from gateway.core.live_timeline import ClipsShown, LiveFramesShown, Shown
from gateway.core.live_turn import clip_entry, live_turns, timeline_entry
from gateway.core.request import ConversationRequest, TurnRequest
from gateway.core.session import Session, UserTurn
from gateway.core.tool_plan import ToolPlan
from gateway.core.video_frames import only_frames, read_videos
from gateway.engine.contract import ChatImage, ChatMessage, Engine, SamplingParams
from gateway.errors import ErrorCode, GatewayError, naming
from gateway.media.video import DecodedVideo

log = logging.getLogger("gateway.core.turns")


async def session_turns(
    attachments: Attachments, session: Session, request: TurnRequest, keep_last_frame: bool, reads_video: bool = False
) -> tuple[UserTurn, UserTurn]:
    """A session's turn with its images and videos loaded, as the prompt reads it and as the history keeps it:
    video attachments are read as clips where the engine `reads_video` and join the history as their frames (later
    prompts show the clips again while the session's timeline knows them); a live turn's window frames are read now
    (as a clip where the engine `reads_video`) and never kept (history holds their summary; the turn's own videos
    are read as frames there)."""
    images = await attachments.load(request.images, request.image_urls)
    videos = await attachments.load_videos(request.videos)
    text, frames, _ = read_videos(request.text, images, videos, as_clip=False)
    turn = session.check_turn(UserTurn(id=request.id, text=text, images=frames))
    live = request.live
    # The layout later prompts repeat (the session's timeline): a live window's frames as images, only those its
    # history has not shown, or its clip as it was read; a turn's own videos read as clips, as clips again. Any
    # other turn says so too (None), so a turn id used again never reads an earlier turn's layout.
    entry: Shown | None
    if live is not None:
        prompted, recorded = live_turns(turn, live, keep_last_frame, reads_video)
        entry = clip_entry(prompted, recorded) if reads_video else timeline_entry(turn, live, recorded)
    else:
        text, images, clips = read_videos(request.text, images, videos, reads_video)
        prompted, recorded = replace(turn, text=text, images=images, videos=clips), turn
        entry = ClipsShown(text, images, clips, turn.text) if clips else None
    adds = session.timeline.begin(turn.id, entry)
    if isinstance(entry, LiveFramesShown):  # its images: what it adds to the session's (the timeline's frames count already)
        prompted = replace(prompted, images=turn.images + adds)
    elif live is not None and reads_video:  # likewise its clip: the timeline's message shows it, this counts it
        prompted = replace(prompted, videos=tuple(only_frames(clip, adds) for clip in prompted.videos))
    return prompted, recorded


async def conversation_messages(
    attachments: Attachments, request: ConversationRequest, reads_video: bool = False
) -> list[ChatMessage]:
    """Every image and video fetched and checked on the service's pools (its fetch slots), errors naming their
    message; a video reads as a clip where the engine `reads_video`, else as its frames, named in the text."""

    async def load(url: str, index: int, field: str) -> ChatImage:
        with naming(field):
            return await attachments.load_url(url, index)

    async def load_video(url: str, index: int, field: str) -> DecodedVideo:
        with naming(field):
            return await attachments.load_video_url(url, index)

    urls = [(url, message.field) for message in request.messages for url in message.image_urls]
    images = iter(await asyncio.gather(*(load(url, i, field) for i, (url, field) in enumerate(urls))))
    video_urls = [(url, message.field) for message in request.messages for url in message.video_urls]
    videos = iter(await asyncio.gather(*(load_video(url, i, f) for i, (url, f) in enumerate(video_urls, 1))))
    messages = []
    for m in request.messages:
        clips = tuple(next(videos) for _ in m.video_urls)
        pictures = tuple(next(images) for _ in m.image_urls)
        text, pictures, read = read_videos(m.text, pictures, clips, reads_video)
        messages.append(ChatMessage(m.role, text, pictures, m.tool_calls, m.tool_call_id, read))
    return messages


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
