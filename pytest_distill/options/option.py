"""What declaring an option means: its flag, ini key and variable, how pytest learns of them
and how a value is read from them.

An :class:`Option` is one row of :data:`pytest_distill.options.table.OPTIONS`, the only place an
option is declared. :func:`register` gives pytest its flags and ini keys; :class:`Values` reads
them, with one precedence for all: the flag when given, else the environment variable when set
and not empty, else the ini key (which answers the option's default when not set). CLI defaults
are ``None`` so that "not given" stays visible.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest

from pytest_distill.roles import ROLES

IniType = Literal["string", "bool", "args", "linelist"]
Parse = Callable[["Given"], Any]

GROUP = ("distill", "eval-driven model distillation (pytest-distill)")


@dataclass(frozen=True, slots=True)
class Option:
    """One option. ``name`` makes its keys: flag ``--distill-NAME`` (``_`` written ``-``), ini key
    ``distill_NAME``; with ``per_role``, ini key ``distill_ROLE_NAME`` and variable
    ``DISTILL_ROLE_NAME`` for each role, and a repeatable flag taking ``ROLE=VALUE``."""

    name: str
    parse: Parse  # the value as given -> the setting; a bad value raises pytest.UsageError
    flag_help: str | None = None  # None: no command-line flag
    ini_help: str | None = None  # None: no ini key
    ini_type: IniType = "string"
    default: Any = ""  # what the ini key answers when it is not set
    metavar: str | None = None
    switch: bool = False  # the flag takes no value
    choices: tuple[str, ...] | None = None  # the values allowed: the flag's, and the parser's
    env: bool = False  # DISTILL_ROLE_NAME is read (only per_role options have variables)
    per_role: bool = False
    # The value is a path: its flag given after a space (``--distill-report ../x.json``) is
    # refused when pytest took the value for a test path and moved the rootdir (path_flags).
    path: bool = False

    @property
    def dest(self) -> str:
        return "distill" if self.name == "distill" else f"distill_{self.name}"

    @property
    def flag(self) -> str | None:
        if self.flag_help is None:
            return None
        return "--" + self.dest.replace("_", "-")

    def ini_key(self, role: str | None = None) -> str | None:
        if self.ini_help is None:
            return None
        return f"distill_{role}_{self.name}" if role else self.dest

    def env_var(self, role: str | None = None) -> str | None:
        return f"DISTILL_{role}_{self.name}".upper() if self.env and role else None

    def roles(self) -> tuple[str | None, ...]:
        """The roles it is read for: each role, or ``None`` for an option that is not per role."""
        return ROLES if self.per_role else (None,)


@dataclass(frozen=True, slots=True)
class Given:
    """An option's value as given (a str, bool or list of str; ``None`` when only a flag was
    possible and it was not given) and what a message names to fix it."""

    value: Any
    option: Option
    role: str | None
    rootpath: Path
    invocation_dir: Path

    @property
    def text(self) -> str:
        return str(self.value).strip()

    @property
    def flag(self) -> str | None:
        flag = self.option.flag
        return f"{flag} {self.role}=..." if flag and self.role else flag

    @property
    def env(self) -> str | None:
        return self.option.env_var(self.role)

    @property
    def ini_key(self) -> str | None:
        return self.option.ini_key(self.role)

    @property
    def where(self) -> str:
        """``--distill-NAME / ini distill_NAME``: the flag, variable and ini key that set it."""
        key = self.ini_key
        return " / ".join(w for w in (self.flag, self.env, key and f"ini {key}") if w)


def register(parser: pytest.Parser, options: Iterable[Option]) -> None:
    """The flags, in one ``distill`` group, then the ini keys: each role's last, role by role."""
    options = tuple(options)
    group = parser.getgroup(*GROUP)
    for option in options:
        flag = option.flag
        if flag is None:
            continue
        kwargs: dict[str, Any] = {"default": None, "help": option.flag_help}
        if option.switch:
            kwargs["action"] = "store_true"
        elif option.per_role:
            kwargs["action"] = "append"
        if option.metavar:
            kwargs["metavar"] = option.metavar
        if option.choices:
            kwargs["choices"] = option.choices
        group.addoption(flag, dest=option.dest, **kwargs)
    declared = [o for o in options if o.ini_help is not None]
    rows: list[tuple[Option, str | None]] = [(o, None) for o in declared if not o.per_role]
    rows += [(o, role) for role in ROLES for o in declared if o.per_role]
    for option, role in rows:
        help_text = str(option.ini_help)
        parser.addini(
            str(option.ini_key(role)),
            help_text.format(role=role) if role else help_text,
            type=option.ini_type,
            default=option.default,
        )


class Values:
    """Reads and parses declared options, each when asked; remembers which were asked for."""

    def __init__(self, config: pytest.Config, options: Iterable[Option]) -> None:
        self._config = config
        self._options = {option.name: option for option in options}
        self._role_flags: dict[str, dict[str, str]] = {}
        self.read: set[tuple[str, str | None]] = set()
        self.rootpath = config.rootpath

    def __call__(self, name: str, role: str | None = None) -> Any:
        option = self._options[name]  # a KeyError: the option is not declared
        if option.per_role != (role is not None):
            how = "per role" if option.per_role else "without a role"
            raise TypeError(f"option {name!r} is read {how}")
        self.read.add((name, role))
        return option.parse(
            Given(
                self._given(option, role),
                option,
                role,
                self._config.rootpath,
                self._config.invocation_params.dir,
            )
        )

    def unread(self) -> set[tuple[str, str | None]]:
        """The declared options (and roles) nothing has asked for."""
        every = {(o.name, role) for o in self._options.values() for role in o.roles()}
        return every - self.read

    def _given(self, option: Option, role: str | None) -> Any:
        if option.flag:
            cli = self._config.getoption(option.dest)
            if role:
                cli = self._per_role_flag(option).get(role)
            if cli is not None:
                return cli
        variable = option.env_var(role)
        if variable and os.environ.get(variable):
            return os.environ[variable]
        key = option.ini_key(role)
        return self._config.getini(key) if key else None

    def _per_role_flag(self, option: Option) -> dict[str, str]:
        if option.name not in self._role_flags:
            shape = option.metavar or "ROLE=VALUE"
            given = self._config.getoption(option.dest)
            self._role_flags[option.name] = pairs(given, str(option.flag), shape)
        return self._role_flags[option.name]


def pairs(values: Sequence[str] | None, flag: str, shape: str) -> dict[str, str]:
    """A per-role flag's ``ROLE=VALUE`` values, by role."""
    pairs: dict[str, str] = {}
    for value in values or ():
        role, sep, rest = value.partition("=")
        if not sep or role not in ROLES or not rest:
            close = difflib.get_close_matches(role, ROLES, n=1) if role not in ROLES else []
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise pytest.UsageError(
                f"{flag} {value!r}: {hint}expected {shape} with ROLE one of {', '.join(ROLES)}; "
                f"for example {flag} {close[0] if close else 'teacher'}=..."
            )
        pairs[role] = rest
    return pairs
