"""What a scoped token lets its connection do: each client frame checked against the token's claims."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from gateway.core.request import SamplingOptions
from gateway.core.session import Session
from gateway.edge.tokens import TokenClaims
from gateway.errors import ErrorCode, GatewayError
from gateway.ws import protocol as p

Replying = TypeVar("Replying", bound=p.TurnFrame | p.RegenerateFrame | p.EditFrame)  # frames that start a turn

# Frames a connection bound to one session may send before it has resumed that session.
BEFORE_RESUME = (p.ResumeFrame, p.PingFrame)


class TokenScope:
    """A token's restrictions on one connection: a model, a session, capped `max_tokens`, no tools, a turn
    budget, and the end of its time. A refusal is `token_limit`; the connection stays usable."""

    def __init__(self, claims: TokenClaims) -> None:
        self.claims = claims
        self.turns_started = 0
        self.expired = False  # the connection's time is up: it is closing, no new turn starts

    def admit(self, frame: p.ClientFrame, session: Session) -> p.ClientFrame:
        """`frame` as it may run on `session` (a turn's options bound to the token's), or a refusal."""
        bound = self.claims.session
        if bound is not None and session.id != bound and not isinstance(frame, BEFORE_RESUME):
            raise _refused("this token opens only a resume of its own session: send resume first")
        if bound is not None and isinstance(frame, p.ResumeFrame) and frame.session != bound:
            raise _refused("this token resumes only its own session", "session")
        if bound is not None and isinstance(frame, p.ForgetFrame):
            raise _refused("this token may not leave its session")
        if bound is not None and isinstance(frame, p.ForkFrame):  # a fork is a new session with its own resume token
            raise _refused("this token may not start another session")
        if isinstance(frame, p.ConfigureFrame):
            self._check(frame.model, frame.tools)
        if isinstance(frame, (p.TurnFrame, p.RegenerateFrame)) or (isinstance(frame, p.EditFrame) and frame.respond):
            return self._turn(frame, session.defaults)  # a regenerate and an edit's reply are turns too
        return frame

    def _turn(self, frame: Replying, defaults: SamplingOptions) -> Replying:
        claims = self.claims
        if self.expired:
            raise _refused("this token's session time is up; the connection is closing")
        if claims.turns is not None and self.turns_started >= claims.turns:
            raise _refused(f"this token's budget of {claims.turns} turns is spent")
        options = frame.options or p.SamplingOptions()
        # A resumed session's defaults were set before this token: a turn inherits them, so they count too.
        self._check(options.model, options.tools or defaults.tools)
        model = claims.model or options.model  # the token's model even where the session's defaults name another
        cap, asked = claims.max_tokens, options.max_tokens or defaults.max_tokens
        max_tokens = options.max_tokens if cap is None else min(asked or cap, cap)
        self.turns_started += 1
        bounded = msgspec.structs.replace(options, model=model, max_tokens=max_tokens)
        return msgspec.structs.replace(frame, options=bounded)

    def _check(self, model: str | None, tools: object) -> None:
        if self.claims.model is not None and model is not None and model != self.claims.model:
            raise _refused(f"this token allows only model {self.claims.model!r}", "model")
        if not self.claims.tools and tools:
            raise _refused("this token allows no tools", "tools")


def _refused(message: str, field: str | None = None) -> GatewayError:
    return GatewayError(ErrorCode.TOKEN_LIMIT, message, field=field)
