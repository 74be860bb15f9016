"""A scoped token's restrictions on client frames, without a socket: what passes, what is bound, what is refused."""

from __future__ import annotations

import pytest

from gateway.core.request import FunctionSpec, ToolSpec
from gateway.core.session import Session
from gateway.edge.tokens import TokenClaims
from gateway.errors import ErrorCode, GatewayError
from gateway.ws import protocol as p
from gateway.ws.token_scope import TokenScope


def scope(**restrictions: object) -> TokenScope:
    return TokenScope(TokenClaims(id="t", issued_at=0, expires_at=60, session_s=60, **restrictions))  # type: ignore[arg-type]


def session(session_id: str = "fresh", **defaults: object) -> Session:
    return Session(max_history_turns=8, id=session_id, defaults=p.SamplingOptions(**defaults))  # type: ignore[arg-type]


def refused(token_scope: TokenScope, frame: p.ClientFrame, session_id: str = "fresh", **defaults: object) -> GatewayError:
    with pytest.raises(GatewayError) as refusal:
        token_scope.admit(frame, session(session_id, **defaults))
    assert refusal.value.code is ErrorCode.TOKEN_LIMIT
    return refusal.value


def test_a_turn_runs_on_the_token_model_with_max_tokens_capped() -> None:
    """A turn naming no model gets the token's, and its max_tokens is at most the token's."""
    bounded = scope(model="m", max_tokens=8).admit(
        p.TurnFrame(id="t1", text="hi", options=p.SamplingOptions(max_tokens=100)), session()
    )
    assert isinstance(bounded, p.TurnFrame) and bounded.options is not None
    assert (bounded.options.model, bounded.options.max_tokens) == ("m", 8)


def test_another_model_is_refused_in_a_turn_and_in_configure() -> None:
    """Naming another model is `token_limit` on the `model` field, wherever it is named."""
    token_scope = scope(model="m")
    assert refused(token_scope, p.TurnFrame(id="t1", text="hi", options=p.SamplingOptions(model="other"))).field == "model"
    assert refused(token_scope, p.ConfigureFrame(model="other")).field == "model"


def test_a_session_bound_token_allows_only_its_resume_first() -> None:
    """Before its session is resumed only ping and a resume of that session pass; forget and fork never do."""
    token_scope = scope(session="mine")
    assert token_scope.admit(p.PingFrame(), session()) == p.PingFrame()
    refused(token_scope, p.TurnFrame(id="t1", text="hi"))
    refused(token_scope, p.ResumeFrame(session="other", token="x"))
    token_scope.admit(p.ResumeFrame(session="mine", token="x"), session())
    token_scope.admit(p.TurnFrame(id="t1", text="hi"), session("mine"))
    refused(token_scope, p.ForgetFrame(), "mine")
    refused(token_scope, p.ForkFrame(id="f1"), "mine")


def test_the_turn_budget_and_the_end_of_time_refuse_turns() -> None:
    """Past the turn budget, or once the token's time is up, a turn is `token_limit`."""
    token_scope = scope(turns=1)
    token_scope.admit(p.TurnFrame(id="t1", text="hi"), session())
    refused(token_scope, p.TurnFrame(id="t2", text="hi"), "s")
    ended = scope()
    ended.expired = True
    refused(ended, p.TurnFrame(id="t1", text="hi"), "s")


def test_a_resumed_sessions_defaults_do_not_escape_the_token() -> None:
    """Tools in a session's stored defaults are refused like a turn's own; its max_tokens is capped too."""
    tool = ToolSpec(type="function", function=FunctionSpec(name="f", parameters={"type": "object"}))
    refused(scope(tools=False), p.TurnFrame(id="t1", text="hi"), tools=[tool])
    bounded = scope(max_tokens=8).admit(p.TurnFrame(id="t1", text="hi"), session(max_tokens=4))
    assert isinstance(bounded, p.TurnFrame) and bounded.options is not None and bounded.options.max_tokens == 4


def test_a_regenerate_and_an_edit_that_replies_are_turns_of_the_budget() -> None:
    """Each makes a reply: it spends the turn budget and its max_tokens is capped; an edit without one spends none."""
    token_scope = scope(turns=2, max_tokens=8)
    regenerated = token_scope.admit(p.RegenerateFrame(id="r1", options=p.SamplingOptions(max_tokens=100)), session())
    token_scope.admit(p.EditFrame(item_id="a", text="x", respond=False), session())
    edited = token_scope.admit(p.EditFrame(item_id="a", id="e1", text="x"), session())
    assert isinstance(regenerated, p.RegenerateFrame) and regenerated.options and regenerated.options.max_tokens == 8
    assert isinstance(edited, p.EditFrame) and edited.options and edited.options.max_tokens == 8
    refused(token_scope, p.RegenerateFrame(id="r2"))
