"""The server's data directory is its own: 0700, and what it writes there 0600, whatever the
umask, so other users of the machine read neither the stored prompts nor the uploads."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: Path) -> Path:
    """``path`` created if missing (parents as the umask says), and made 0700."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)
    return path


def private_file(path: Path) -> Path:
    """``path`` created if missing, and made 0600."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, FILE_MODE))
    os.chmod(path, FILE_MODE)
    return path


def private_tree(root: Path) -> None:
    """Every folder under ``root`` (and itself) made 0700, every file 0600."""
    with contextlib.suppress(OSError):
        os.chmod(root, DIR_MODE if root.is_dir() else FILE_MODE)
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(folder, name), DIR_MODE)
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(folder, name), FILE_MODE)
