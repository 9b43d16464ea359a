"""The check that a generated document kept in docs/ is what the code makes now."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest


def assert_current(document: Path, expected: str, regenerate: str) -> None:
    """Fail with the first lines of the diff and the command that regenerates ``document``."""
    current = document.read_text(encoding="utf-8") if document.exists() else ""
    if current != expected:
        name = f"docs/{document.name}"
        diff = difflib.unified_diff(
            current.splitlines(), expected.splitlines(), name, "build_document()"
        )
        shown = "\n".join(list(diff)[:60])
        pytest.fail(
            f"{name} is not what build_document() makes: regenerate it with\n"
            f"    {regenerate}\n{shown}"
        )
