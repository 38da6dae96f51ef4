"""Scores, the JSON report, JUnit properties and the gate, with and without xdist."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from typing import Any

import pytest
from conftest import SUITE


def _report(pytester: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = pytester.runpytest("--distill-report=out/report.json", *args)
    return result, json.loads((pytester.path / "out" / "report.json").read_text())


def test_summary_shows_per_role_scores_tokens_latency_and_cost(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makeini(
        project.path.joinpath("tox.ini").read_text()
        + "\ndistill_prices =\n    big = 10 30\n    small = 1 3\n"
    )
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "*= distill summary =*",
            "all cases, by role:",
            "*cases*pass*score*prompt tok*compl tok*p50 ms*p95 ms*cost*",
            "*teacher*5*100.0%*1.000*$0.000*",
            "*student*5*20.0%*0.200*",
        ]
    )


def test_json_report_has_schema_scores_and_items(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    _, report = _report(project)
    assert report["schema"] == "pytest-distill/report/2"
    assert report["scores"]["teacher"]["all"]["pass_rate"] == 1.0
    assert report["scores"]["student"]["all"]["passed"] == 1
    assert report["roles"]["teacher"]["model"] == "big"
    items = {(i["case_id"], i["role"]): i for i in report["items"]}
    assert items[("it", "student")]["reply"] == "Milan"
    assert items[("it", "student")]["grades"][0]["passed"] is False
    assert items[("it", "teacher")]["completion_id"].startswith("chatcmpl-")
    assert report["suites"]["capitals"]["student"]["all"]["cases"] == 5


def test_report_is_the_same_under_xdist(project: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    project.makefile(".eval.yaml", capitals=SUITE)
    _, serial = _report(project, "-p", "no:randomly")
    result, parallel = _report(project, "-n", "2")
    result.assert_outcomes(passed=6, failed=4)
    result.stdout.fnmatch_lines(["*= distill summary =*", "*student*5*20.0%*0.200*"])

    def comparable(report: dict[str, Any]) -> Any:
        scores = {
            role: {
                split: {k: v for k, v in agg.items() if not k.startswith("latency")}
                for split, agg in by_split.items()
            }
            for role, by_split in report["scores"].items()
        }
        items = sorted((i["nodeid"], i["passed"], i["score"], i["reply"]) for i in report["items"])
        return scores, items

    assert comparable(parallel) == comparable(serial)


def test_junit_xml_carries_scores_as_properties_but_not_the_bulky_record(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.runpytest("--junitxml=junit.xml", "-k", "fr")
    tree = ET.parse(project.path / "junit.xml")
    props = {
        (case.get("name"), p.get("name")): p.get("value")
        for case in tree.iter("testcase")
        for p in case.iter("property")
    }
    assert props[("fr[teacher]", "distill_score")] == "1.0000"
    assert props[("fr[student]", "distill_role")] == "student"
    assert not any(name == "distill_record" for _, name in props)


def test_failing_gate_exits_with_its_code_and_names_the_clause(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "student >= 0.9 * teacher", "-k", "fr or it")
    assert result.ret == 6
    result.stdout.fnmatch_lines(
        ["*gate failed: student >= 0.9 * teacher: 0.500 >= 0.9 * 1.000 = 0.900*(exit code 6)"]
    )


def test_with_a_gate_cases_graded_below_passing_do_not_fail_the_session(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "teacher >= student + 0.5")
    assert "= 6 passed, 4 below passing in " in result.stdout.lines[-1]
    assert result.ret == pytest.ExitCode.OK


def test_a_failing_ordinary_test_still_fails_a_gated_session(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makepyfile("def test_broken():\n    assert 1 == 2\n")
    result = project.runpytest("--distill-gate", "teacher >= student")
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_passing_gate_keeps_exit_code_zero(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "teacher >= 0.9", "--distill-roles=teacher")
    assert result.ret == 0
    result.stdout.fnmatch_lines(
        ["gate on * cases: teacher >= 0.9", "*ok   teacher >= 0.9: *", "gate passed on *"]
    )


def test_gate_reads_the_holdout_split_when_there_is_one(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    _, report = _report(project, "--distill-holdout=0.5", "--distill-gate", "teacher >= 0")
    assert report["gate"]["split"] == "holdout"
    holdout = {i["case_id"] for i in report["items"] if i["split"] == "holdout"}
    assert 0 < len(holdout) < 5
    assert report["scores"]["teacher"]["holdout"]["cases"] == len(holdout)


def test_gate_naming_a_role_that_did_not_run_is_not_evaluated(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-gate", "student >= teacher", "--distill-roles=teacher")
    assert result.ret == 6
    result.stdout.fnmatch_lines(["gate not evaluated: no results for student *(exit code 6)"])
