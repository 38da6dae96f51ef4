"""The option table: every declared option is registered, shown and read; nothing else is read."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import pytest_distill
from pytest_distill.options import settings
from pytest_distill.options.option import Values
from pytest_distill.options.table import OPTIONS

FLAGS = [o.flag for o in OPTIONS if o.flag]
INI_KEYS = [(o.ini_key(role), o.ini_type) for o in OPTIONS for role in o.roles() if o.ini_key(role)]


def test_every_declared_flag_and_ini_key_is_in_help(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--help")
    shown = result.stdout.str()
    for flag in FLAGS:
        assert re.search(rf"^  {re.escape(flag)}\b(?!-)", shown, re.MULTILINE), flag
    for key, ini_type in INI_KEYS:
        assert f"\n  {key} ({ini_type}):" in shown, key
    assert len(set(FLAGS)) == len(FLAGS) and len({k for k, _ in INI_KEYS}) == len(INI_KEYS)


def test_every_declared_option_is_read_once_for_each_role(pytester: pytest.Pytester) -> None:
    config = pytester.parseconfig()
    read = Values(config, OPTIONS)
    settings(read)
    assert read.unread() == set()


def test_an_undeclared_option_cannot_be_read(pytester: pytest.Pytester) -> None:
    read = Values(pytester.parseconfig(), OPTIONS)
    with pytest.raises(KeyError):
        read("undeclared")
    with pytest.raises(TypeError):
        read("model")  # a per-role option needs its role


def test_nothing_outside_the_table_reads_an_option_of_the_plugin() -> None:
    """Options are read through :class:`Values` only, so the table is the whole list."""
    package = Path(pytest_distill.__file__).parent
    direct = re.compile(r"""get(ini|option)\(\s*f?["']distill""")
    readers = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if direct.search(path.read_text(encoding="utf-8"))
    ]
    assert readers == []


def test_cli_beats_ini_which_beats_the_default(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndistill_concurrency = 3\n")
    assert Values(pytester.parseconfig(), OPTIONS)("concurrency") == 3
    given = pytester.parseconfig("--distill-concurrency=5")
    assert Values(given, OPTIONS)("concurrency") == 5
    pytester.makeini("[pytest]\n")
    assert Values(pytester.parseconfig(), OPTIONS)("concurrency") == 8


def test_environment_beats_ini_and_cli_beats_environment(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini("[pytest]\ndistill_student_model = from-ini\n")
    assert Values(pytester.parseconfig(), OPTIONS)("model", "student") == "from-ini"
    monkeypatch.setenv("DISTILL_STUDENT_MODEL", "from-env")
    assert Values(pytester.parseconfig(), OPTIONS)("model", "student") == "from-env"
    given = pytester.parseconfig("--distill-model=student=from-cli")
    assert Values(given, OPTIONS)("model", "student") == "from-cli"


def test_path_options_are_marked() -> None:
    marked = {o.name for o in OPTIONS if o.path}
    assert {"report", "html"} <= marked
    assert not marked & {"gate", "roles", "concurrency"}
