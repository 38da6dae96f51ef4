"""A collection error stops the session before any item runs: the gate is not evaluated, and
the summary says so, with pytest's exit code, under no header that claims cases were read."""

from __future__ import annotations

import json

import pytest
from conftest import SUITE


@pytest.mark.parametrize("gate", ["teacher >= 0.5", "finetuned >= 0.95 * teacher"])
def test_a_collection_error_leaves_the_gate_not_evaluated(
    project: pytest.Pytester, gate: str
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makepyfile(test_broken="import no_such_module_here\n")
    result = project.runpytest(f"--distill-gate={gate}", "--distill-report=r.json")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    summary = result.stdout.str().split("distill summary")[1].splitlines()[1:3]
    assert summary == [
        f"gate: {gate}",
        "gate not evaluated: collection failed (1 error), no item ran; the gate fails closed "
        "(exit code 2)",
    ]
    assert "gate skipped" not in result.stdout.str()
    report = json.loads((project.path / "r.json").read_text())
    assert report["gate"]["status"] == "not evaluated" and report["exit_code"] == 2


def test_with_continue_on_collection_errors_the_gate_reads_the_items_that_ran(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makepyfile(test_broken="import no_such_module_here\n")
    result = project.runpytest("--distill-gate=teacher >= 0.5", "--continue-on-collection-errors")
    result.stdout.fnmatch_lines(["gate on * cases: teacher >= 0.5", "  ok   teacher*"])
    assert "collection failed" not in result.stdout.str()
