"""Text stays text on a real server: control tokens a client writes in tool definitions (parameter names
included) never become the model's control tokens, with a template that renders `tools | tojson`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.client import GatewayClient
from gateway.config import Settings
from gateway.engine.demo.tokenizer import CHAT_TEMPLATE
from tests.conftest import DemoDirs, RunningServer, start_server

# Qwen's way of offering tools, in front of the demo model's own layout.
TOOLS_TEMPLATE = "{% if tools %}<|system|>\n{% for tool in tools %}{{ tool | tojson }}\n{% endfor %}{% endif %}" + CHAT_TEMPLATE


@pytest.fixture(scope="module")
def tojson_server(demo_dirs: DemoDirs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    template = tmp_path_factory.mktemp("template") / "tools.jinja"
    template.write_text(TOOLS_TEMPLATE)
    running = start_server(demo_dirs.model, Settings(chat_template=str(Path(template))))
    yield running
    running.stop()


def tool_with_parameter(name: str) -> list[dict[str, Any]]:
    parameters = {"type": "object", "properties": {name: {"type": "string"}}}
    return [{"type": "function", "function": {"name": "f", "parameters": parameters}}]


async def test_control_tokens_in_parameter_names_are_text(tojson_server: RunningServer) -> None:
    """A parameter named '<|user|>' (a JSON object key) is several text tokens, where the role tag it spells
    would be one: it is text, not the tag."""
    counts = {}
    for name in ("x", "<|user|>", "<|endoftext|>"):
        async with GatewayClient(tojson_server.ws_url) as client:
            result = await client.turn("t", "hi", tools=tool_with_parameter(name), max_tokens=1, temperature=0)
            assert result.accepted is not None, result.errors
            counts[name] = result.accepted["prompt_tokens"]
    assert all(counts[name] - counts["x"] > 1 for name in counts if name != "x"), counts
