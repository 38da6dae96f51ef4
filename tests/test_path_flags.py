"""Path flags given after a space: refused when pytest took the path for a test path and so chose
another rootdir and ini file; the ``=`` form and harmless space forms run as before."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_distill.options.table import OPTIONS

INI = """\
[pytest]
distill_teacher_model = big
distill_teacher_endpoint = http://127.0.0.1:9/v1
"""


@pytest.fixture
def project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``project/`` with its pytest.ini and a test, run from inside it; ``reports/run.json``
    beside it, as a CI job's first run leaves it."""
    root = pytester.mkdir("project")
    (root / "pytest.ini").write_text(INI)
    (root / "test_plain.py").write_text("def test_plain():\n    pass\n")
    reports = pytester.mkdir("reports")
    (reports / "run.json").write_text("{}")
    monkeypatch.chdir(root)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return root


def test_the_path_flags_are_the_ones_marked_path() -> None:
    flags = {o.flag for o in OPTIONS if o.path and o.flag}
    assert flags == {"--distill-report", "--distill-html"}


@pytest.mark.parametrize("flag", ["--distill-report", "--distill-html"])
def test_a_space_form_that_moved_the_rootdir_is_a_usage_error(
    pytester: pytest.Pytester, project: Path, flag: str
) -> None:
    result = pytester.runpytest(flag, "../reports/run.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            f"ERROR: {flag} ../reports/run.json: give path options as {flag}=../reports/run.json; "
            "with a space pytest reads the path as a test path before it knows *, and chose "
            f"rootdir {project.parent} (inifile: none) instead of rootdir {project} "
            f"(inifile: {project / 'pytest.ini'})"
        ]
    )


def test_a_path_not_there_yet_is_refused_as_it_will_be_once_it_exists(
    pytester: pytest.Pytester, project: Path
) -> None:
    """The first run of a CI job fails as its second would, not silently differently."""
    result = pytester.runpytest("--distill-report", "../out/run.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--distill-report=../out/run.json*will choose, once the file exists, rootdir*"]
    )


def test_pytest_addopts_counts_too(
    pytester: pytest.Pytester, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTEST_ADDOPTS", "--distill-html ../reports/run.json")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*give path options as --distill-html=../reports/run.json*"])


def test_the_equals_form_keeps_the_project_configuration(
    pytester: pytest.Pytester, project: Path
) -> None:
    result = pytester.runpytest("--distill-report=../reports/run.json", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"rootdir: {project}", "configfile: pytest.ini", "*1 passed*"])
    assert "pytest-distill/report" in (project.parent / "reports" / "run.json").read_text()


@pytest.mark.parametrize(
    "args",
    [
        ["--distill-report", "out.json"],  # inside the project: the rootdir stays
        ["--rootdir", ".", "-c", "pytest.ini", "--distill-report", "../reports/run.json"],
    ],
)
def test_a_harmless_space_form_still_runs(
    pytester: pytest.Pytester, project: Path, args: list[str]
) -> None:
    result = pytester.runpytest(*args, "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines([f"rootdir: {project}", "*1 passed*"])
