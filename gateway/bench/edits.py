"""`gateway bench --history`'s edit mix: at a conversation's end, regenerate, an edit k turns back, switch and fork."""

from __future__ import annotations

import asyncio
from typing import Any

from gateway.bench.history import _engine_turn, _uncounted
from gateway.bench.run import prompt_text

EDIT_BACK = 5  # the edit changes the message this many turns back


def run_edit_mix(model_dir: str, turns: int, prompt_words: int, max_tokens: int) -> dict[str, Any]:
    """One conversation of `turns` turns with KV reuse, then a regenerate of the last reply, an edit of the
    message `EDIT_BACK` turns back, a switch back to the old branch with a turn on it, and a fork with a turn:
    each one's time to first token and cached tokens, against the last warm turn's, and against a cold prefill
    of the same prompt (an engine that reuses nothing)."""
    from gateway.config import Settings

    prompts: dict[str, list[Any]] = {}
    warm = _with_engine(model_dir, Settings().kv_cache_bytes, lambda e: _mix(e, turns, prompt_words, max_tokens, prompts))
    cold = _with_engine(model_dir, 0, lambda e: _replay(e, prompts, max_tokens))
    report: dict[str, Any] = {"edit_back_turns": EDIT_BACK}
    for label, result in warm.items():
        ttft, cold_ttft = result.ttft_ms or 0.0, cold[label].ttft_ms or 0.0
        report[label] = {"ttft_ms": round(ttft, 2), "prompt_tokens": result.prompt_tokens, "cached_tokens": result.cached_tokens}
        report[label] |= {"cold_ttft_ms": round(cold_ttft, 2), "cold_over_this": round(cold_ttft / ttft, 2) if ttft else None}
    base = report["warm_turn"]["ttft_ms"]
    for label in warm:
        report[label]["over_warm_turn"] = round(report[label]["ttft_ms"] / base, 2) if base else None
    return report


def _with_engine(model_dir: str, kv: int | None, work: Any) -> dict[str, Any]:
    from gateway.engine.local.engine import LocalEngine
    from gateway.engine.local.loader import load_model

    engine = LocalEngine(load_model(model_dir), max_batch=1, kv_cache_bytes=kv)
    engine.start()
    try:
        return asyncio.run(work(engine))
    finally:
        engine.stop()


async def _mix(engine: Any, turns: int, prompt_words: int, max_tokens: int, prompts: dict[str, list[Any]]) -> dict[str, Any]:
    """The conversation, then each edit as the gateway's session makes it; `prompts` gets each one's messages."""
    from gateway.core.session import Session, UserTurn
    from gateway.engine.contract import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    session = Session(max_history_turns=turns + 8)
    results: dict[str, Any] = {}

    async def run(label: str, messages: list[Any]) -> Any:
        prompts[label] = messages
        results[label] = await _engine_turn(engine, messages, params)
        return results[label]

    async def turn(label: str, on: Session, n: int) -> None:
        user = UserTurn(f"t{n}", f"turn {n} " + prompt_text(prompt_words))
        plan = await on.plan(user, max_tokens, 1 << 62, _uncounted)
        on.record(user, (await run(label, plan.messages)).text, False, on.epoch)

    for n in range(turns):
        await turn("warm_turn", session, n)
    answers, messages = session.regenerating(None)
    regenerated = await run("regenerate", messages)
    session.record(UserTurn("r", "", continues=True), regenerated.text, False, session.epoch, answers=answers)
    users = [item for item in session.conversation.path if item.role.value == "user"]
    old = users[-EDIT_BACK]
    edited = UserTurn("e", "an edited question: " + prompt_text(prompt_words))
    messages = session.editing(old.id)
    reply = await run("edit", [*messages, *_user(edited)])
    session.record(edited, reply.text, False, session.epoch, edits=old.id)
    session.switch(old.id)
    await turn("switch_then_turn", session, turns)
    forked = Session(max_history_turns=turns + 8)
    forked.adopt(session.conversation.fork(), session)
    await turn("fork_then_turn", forked, turns + 1)
    return results


async def _replay(engine: Any, prompts: dict[str, list[Any]], max_tokens: int) -> dict[str, Any]:
    from gateway.engine.contract import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    await _engine_turn(engine, prompts["warm_turn"][:1], params)  # warm up
    return {label: await _engine_turn(engine, messages, params) for label, messages in prompts.items()}


def _user(turn: Any) -> list[Any]:
    from gateway.engine.contract import ChatMessage

    return [ChatMessage("user", turn.text, turn.images)]
