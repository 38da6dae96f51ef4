"""The one template syntax of eval files and grader specs: ``{{ name }}``, ``{{ a.b[0] }}``.

Prompts fill placeholders from a case's variables (``evals``); grader templates from the
sample and the case (``grading``). Both use this module: the placeholder pattern, how a
placeholder reads as a path, and how a value becomes text (strings as they are, anything else
as JSON).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_]\w*(?:\.\w+|\[\d+\])*)\s*\}\}")

Path = tuple[str, ...]


def parse_path(reference: str) -> Path:
    """``sample.output_json.items[0]`` -> ``("sample", "output_json", "items", "0")``."""
    return tuple(re.sub(r"\[(\d+)\]", r".\1", reference).split("."))


def paths(text: str) -> list[Path]:
    """Every placeholder of ``text``, in order."""
    return [parse_path(found) for found in PLACEHOLDER.findall(text)]


def sole_path(text: str) -> Path | None:
    """The path when ``text`` is exactly one placeholder (its raw value is then used)."""
    whole = PLACEHOLDER.fullmatch(text.strip())
    return parse_path(whole.group(1)) if whole else None


def render(text: str, lookup: Callable[[Path], Any]) -> str:
    """Replace each placeholder by ``lookup(path)``; values that are not strings become JSON."""

    def substitute(found: re.Match[str]) -> str:
        value = lookup(parse_path(found.group(1)))
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return PLACEHOLDER.sub(substitute, text)
