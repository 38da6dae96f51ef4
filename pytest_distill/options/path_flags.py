"""Path flags given after a space (``--distill-report ../reports/run.json``), refused when pytest
read the path as a test path and so chose another rootdir or ini file.

pytest picks the rootdir and ini file before it loads installed plugins, so it does not yet know
that ``--distill-report`` takes a value: the value counts as a test path, and a path outside the
project makes a folder above it the rootdir. The project's ini file is then never read (no models,
wrong endpoints). Builtin options such as ``--junitxml`` are known that early; a plugin's are
not. The ``=`` form (``--distill-report=../reports/run.json``) is one argument and always safe.

A space form is refused when its path moves the rootdir or ini file, or would once the file
exists: a path that is not there yet counts as its nearest existing folder, so the first run of
a CI job fails as its second would. A space form that changes nothing (``--distill-report
out.json`` inside the project) is left alone.
"""

from __future__ import annotations

import inspect
import os
import shlex
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_distill.options.option import Option


def check(config: pytest.Config, options: Iterable[Option]) -> None:
    """Raise UsageError for the first path flag given after a space that moves the rootdir."""
    flags = {str(o.flag) for o in options if o.path and o.flag is not None}
    if not flags or hasattr(config, "workerinput"):  # an xdist worker: its controller checked
        return
    args = [*shlex.split(os.environ.get("PYTEST_ADDOPTS", "")), *config.invocation_params.args]
    for flag, value in spaced(args, flags):
        moved = rootdir_moved(config, value)
        if moved is not None:
            raise pytest.UsageError(
                f"{flag} {value}: give path options as {flag}={value}; with a space pytest "
                f"reads the path as a test path before it knows {flag}, and {moved}"
            )


def spaced(args: Sequence[str], flags: set[str]) -> Iterator[tuple[str, str]]:
    """``(flag, value)`` for each path flag followed by its value as a separate argument."""
    for i, arg in enumerate(args[:-1]):
        if arg == "--":
            return
        if arg in flags and not args[i + 1].startswith("-"):
            yield arg, args[i + 1]


def rootdir_moved(config: pytest.Config, value: str) -> str | None:
    """What the path changes (``chose rootdir X (inifile: Y) instead of ...``), or None."""
    invocation_dir = config.invocation_params.dir
    target = Path(invocation_dir, value)
    exists = target.exists()
    while not target.exists() and target != target.parent:
        target = target.parent
    namespace = config.known_args_namespace
    given: list[str] = [str(a) for a in getattr(namespace, "file_or_dir", None) or ()]
    without = setup(config, given)
    with_it = setup(config, [*given, str(target)])
    if without is None or with_it is None:  # pytest's detection was not there to ask
        return "pytest may choose another rootdir and ini file than the project's"
    if with_it == without:
        return None
    chose = "chose" if exists else "will choose, once the file exists,"
    return f"{chose} {describe(*with_it)} instead of {describe(*without)}"


def describe(rootdir: Path, inifile: Path | None) -> str:
    return f"rootdir {rootdir} (inifile: {inifile or 'none'})"


def setup(config: pytest.Config, args: list[str]) -> tuple[Path, Path | None] | None:
    """The rootdir and ini file pytest picks for these test paths, the rest of the command line
    as given; None when this pytest's detection cannot be asked."""
    try:
        from _pytest.config.findpaths import determine_setup
    except ImportError:  # pragma: no cover - every pytest this plugin supports has it
        return None
    namespace = config.known_args_namespace
    offered: dict[str, Any] = {
        "inifile": getattr(namespace, "inifilename", None),
        "override_ini": getattr(namespace, "override_ini", None),
        "args": args,
        "rootdir_cmd_arg": getattr(namespace, "rootdir", None) or None,
        "invocation_dir": config.invocation_params.dir,
    }
    try:
        accepted = inspect.signature(determine_setup).parameters
        found = determine_setup(**{k: v for k, v in offered.items() if k in accepted})
    except (TypeError, ValueError):  # pragma: no cover - a pytest whose signature differs
        return None
    rootdir, inifile = found[0], found[1]
    return Path(rootdir), (Path(inifile) if inifile else None)
