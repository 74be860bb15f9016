"""The registry: which family's tool-call syntax a chat template writes, and whether it renders tools at all."""

from __future__ import annotations

from gateway.tools.formats import ToolFormat
from gateway.tools.glm import GlmFormat
from gateway.tools.hermes import HermesFormat
from gateway.tools.llama3 import Llama3Format
from gateway.tools.mistral import MistralFormat


def detect(chat_template: str | None) -> ToolFormat:
    """The family's syntax, read from what its chat template writes; Hermes (Qwen's) by default, which the
    gateway also uses itself for templates that do not render tools."""
    template = chat_template or ""
    if "<arg_key>" in template:
        return GlmFormat()
    if "[TOOL_CALLS]" in template:
        return MistralFormat()
    if "<|python_tag|>" in template or ("ipython" in template and "<|eot_id|>" in template):
        return Llama3Format()
    return HermesFormat()


def renders_tools(chat_template: str | None) -> bool:
    """Whether the template does anything with `tools` (otherwise the gateway describes them itself)."""
    return "tools" in (chat_template or "")
