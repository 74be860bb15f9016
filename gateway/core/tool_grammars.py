"""A turn's tools as one forced-call grammar, checked on the grammar pool with the event loop never held long."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.core import request as req
from gateway.core.format_keys import json_size_sliced
from gateway.core.grammar_pool import CompileQuota, GrammarPool
from gateway.core.tool_plan import plan_tools
from gateway.engine.contract import Grammar
from gateway.errors import ErrorCode, GatewayError
from gateway.tools.formats import ToolFormat


async def checked_tools(
    pool: GrammarPool, tools: Sequence[req.ToolSpec], syntax: ToolFormat, quota: CompileQuota
) -> Grammar | None:
    """The grammar forcing one call to any of `tools`, checked (`invalid_field`, `rate_limited` or `overloaded`).
    Their parameters' JSON is measured first, a slice at a time, and a grammar that would be past
    max_grammar_bytes (its text holds that JSON) is refused unbuilt: building it is one json.dumps of it
    all, and 500k values took 226 ms of one event-loop callback."""
    limit, size = pool.limits.max_bytes, 0
    for tool in tools:
        if tool.function.parameters is not None:
            size += await json_size_sliced(tool.function.parameters, limit - size)
        if size > limit:
            message = f"the tools' parameters are over {limit} bytes of JSON; max_grammar_bytes is {limit}"
            raise GatewayError(ErrorCode.INVALID_FIELD, message)
    forced = plan_tools(tools, "required", syntax).grammar
    return await pool.checked(forced, "tools", quota, [tool.function.parameters for tool in tools])
