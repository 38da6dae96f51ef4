"""Text shown to people in one line: reasons, errors, diffs."""

from __future__ import annotations


def shorten(text: str, limit: int = 80) -> str:
    """``text`` on one line (white space folded), cut to at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."
