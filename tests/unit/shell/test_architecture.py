"""README's architecture section is what scripts/architecture writes from the tree's docstrings."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_readme_architecture_matches_the_tree() -> None:
    """A module added, moved or redescribed without `scripts/architecture --write` fails here."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "architecture"), "--check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_module_opens_with_a_docstring() -> None:
    """The map names each module by its docstring, so none may lack one."""
    missing = [str(p) for p in (ROOT / "gateway").rglob("*.py") if not ast.get_docstring(ast.parse(p.read_text()))]
    assert missing == []
