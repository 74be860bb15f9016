"""PROTOCOL.md and gateway/ws/protocol.py describe the same frames, fields and error codes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.errors import ErrorCode
from gateway.ws import protocol

DOC = (Path(__file__).resolve().parents[3] / "PROTOCOL.md").read_text()


def part(title: str) -> str:
    start = DOC.index(f"## {title}")
    following = DOC.find("\n## ", start + 1)
    return DOC[start : following if following != -1 else None]


def sections(text: str) -> dict[str, str]:
    found = re.split(r"^### `?([A-Za-z_ ]+)`?\n", text, flags=re.M)
    return dict(zip(found[1::2], found[2::2]))


def documented_fields(section: str) -> list[str]:
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    return [re.match(r"\| `([a-z_]+)`", row).group(1) for row in rows]  # type: ignore[union-attr]


def frame_classes(union: Any) -> dict[str, type[msgspec.Struct]]:
    return {cls.__struct_config__.tag: cls for cls in union.__args__}


@pytest.mark.parametrize(("title", "union"), [("Client frames", protocol.ClientFrame), ("Server frames", protocol.ServerFrame)])
def test_every_frame_is_documented_with_its_fields(title: str, union: Any) -> None:
    """Each frame type has a section whose field table lists exactly the struct's fields."""
    documented = sections(part(title))
    classes = frame_classes(union)
    assert set(classes) <= set(documented)
    for tag, cls in classes.items():
        assert sorted(documented_fields(documented[tag])) == sorted(["type", *cls.__struct_fields__]), tag


@pytest.mark.parametrize(("title", "union"), [("Client frames", protocol.ClientFrame), ("Server frames", protocol.ServerFrame)])
def test_every_example_decodes_as_its_frame(title: str, union: Any) -> None:
    """Each section's JSON example is a valid frame of that type."""
    for tag, section in sections(part(title)).items():
        if tag not in frame_classes(union):
            continue
        example = re.search(r"```json\n(.*?)\n```", section, flags=re.S)
        assert example, tag
        frame = msgspec.json.decode(example.group(1), type=union)
        assert json.loads(example.group(1))["type"] == tag == frame.__struct_config__.tag


def test_error_codes_table_matches_the_code() -> None:
    """The error code table lists every ErrorCode and nothing else."""
    assert set(documented_fields(part("Error codes"))) == {code.value for code in ErrorCode}


def test_sampling_options_are_documented() -> None:
    """Every sampling option is in the sampling options table."""
    table = sections(part("Client frames"))["Sampling options"]
    assert set(protocol.SamplingOptions.__struct_fields__) <= set(documented_fields(table))
