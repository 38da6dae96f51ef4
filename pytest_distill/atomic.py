"""Atomic file writes: a temporary file beside the target, then a rename.

A crash or a full disk never leaves a half-written report, training set or state file. The file
gets the mode a plain ``open`` would give it (``0666`` less the umask), not the owner-only mode
of a ``mkstemp`` file: reports and datasets are shared like any other output.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _create_beside(path: Path) -> tuple[int, Path]:
    """A new file ``.NAME.XXXXXXXX`` beside ``path``, created with mode 0666 (the umask applies)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        try:
            return os.open(tmp, _FLAGS, 0o666), tmp
        except FileExistsError:  # pragma: no cover - a name already taken: draw another
            continue
