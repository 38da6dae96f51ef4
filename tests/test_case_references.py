"""A case's reference: required only by graders that use it, several accepted answers, and
where a case is written shown beside its id."""

from __future__ import annotations

import json
from typing import Any

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

from pytest_distill.grading.references import uses_reference
from pytest_distill.grading.registry import make_grader


def _jsonl(*lines: dict[str, Any]) -> str:
    return "\n".join(json.dumps(line) for line in lines) + "\n"


def test_yaml_case_without_reference_is_a_one_line_collection_error_before_any_call(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE.replace("    reference: Rome\n", ""))
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "capitals.eval.yaml:12: case 'it' has no reference; its grader(s) string_check "
            "compare with {{item.reference}}; add 'reference: ...' to the case*"
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*GraderConfigError*")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    assert server.chat_requests() == []


def test_cases_file_line_without_reference_names_the_cases_file_and_line(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(
        ".jsonl",
        cases=_jsonl(
            {"id": "fr", "vars": {"country": "France"}, "reference": "Paris"},
            {"id": "t-5", "vars": {"country": "Italy"}},
        ),
    )
    project.makefile(
        ".eval.yaml", capitals=SUITE[: SUITE.index("cases:")] + "cases_file: cases.jsonl\n"
    )
    result = project.runpytest()
    result.stdout.fnmatch_lines(["cases.jsonl:2: case 't-5' has no reference; *"])
    result.stdout.no_fnmatch_line("*Traceback*")
    assert server.chat_requests() == []


def test_case_without_reference_runs_when_no_grader_uses_the_reference(
    project: pytest.Pytester,
) -> None:
    suite = SUITE.replace(
        "  - type: string_check\n    operation: eq\n",
        "  - type: python\n    source: |\n"
        "      def grade(sample, item):\n"
        "          return sample['output_text'] == {'France': 'Paris'}.get(item['country'])\n",
    )
    suite = suite.replace("    reference: Paris\n", "")
    project.makefile(".eval.yaml", capitals=suite)
    result = project.runpytest("--distill-roles=teacher", "-k", "fr")
    result.assert_outcomes(passed=1)


def test_graders_use_the_reference_when_their_templates_name_it() -> None:
    def judge(messages: list[dict[str, str]]) -> str:
        raise AssertionError("not called while building")

    prompt = [{"role": "user", "content": "Grade {{sample.output_text}}"}]
    with_ref = [{"role": "user", "content": "{{sample.output_text}} vs {{item.reference}}"}]
    uses = {
        "string_check": {"type": "string_check"},
        "contains": {"type": "contains"},
        "json": {"type": "json"},
        "similarity": {"type": "text_similarity", "pass_threshold": 0.5},
        "judge with reference": {"type": "score_model", "input": with_ref, "pass_threshold": 0.5},
    }
    not_uses = {
        "python": {"type": "python", "source": "def grade(sample, item):\n    return 1.0\n"},
        "judge": {"type": "score_model", "input": prompt, "pass_threshold": 0.5},
        "fixed reference": {"type": "string_check", "reference": "Paris"},
        "regex": {"type": "regex", "pattern": "P"},
    }
    for name, spec in uses.items():
        assert uses_reference(make_grader(spec, judge=judge)), name
    for name, spec in not_uses.items():
        assert not uses_reference(make_grader(spec, judge=judge)), name


def test_openai_evals_ideal_list_passes_when_any_ideal_matches(
    project: pytest.Pytester,
) -> None:
    question = [{"role": "user", "content": "Capital of Japan?"}]
    project.makefile(
        ".eval.jsonl",
        japan=_jsonl(
            {"id": "second", "input": question, "ideal": ["Tokio", "Tokyo"]},
            {"id": "none", "input": question, "ideal": ["Kyoto", "Osaka"]},
        ),
    )
    result = project.runpytest("-v", "--distill-roles=teacher")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*japan.eval.jsonl::second?teacher? PASSED*",
            "*japan.eval.jsonl::none?teacher? FAILED*",
            "*FAIL string_check: score 0.00 - expected 'Kyoto', got 'Tokyo'*",
        ]
    )


def test_jsonl_case_without_id_shows_its_file_and_line_in_header_report_and_reportinfo(
    project: pytest.Pytester,
) -> None:
    project.makefile(
        ".jsonl",
        cases=_jsonl(
            {"vars": {"country": "France"}, "reference": "Paris", "id": "fr"},
            {"input": [{"role": "user", "content": "Capital of Italy?"}], "ideal": "Roma"},
        ),
    )
    project.makefile(
        ".eval.yaml", capitals=SUITE[: SUITE.index("cases:")] + "cases_file: cases.jsonl\n"
    )
    items = project.inline_genitems("--distill-roles=teacher")[0]
    hashed = next(i for i in items if not i.name.startswith("fr"))
    path, line, domain = hashed.reportinfo()
    assert (path.name, line + 1) == ("cases.jsonl", 2)
    case_id = hashed.case.id  # type: ignore[attr-defined]
    assert case_id.startswith("c") and domain.endswith(f"::{case_id}[teacher] (cases.jsonl:2)")

    result = project.runpytest("--distill-roles=teacher", "--distill-report=r.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [f"*_ capitals::{case_id}?teacher? (cases.jsonl:2) _*", f"case {case_id} at cases.jsonl:2"]
    )
    for args in ((), ("-n", "2")):
        if args:
            pytest.importorskip("xdist")
            project.runpytest("--distill-roles=teacher", "--distill-report=r.json", *args)
        report = json.loads((project.path / "r.json").read_text())
        locations = {i["case_id"]: i["location"] for i in report["items"]}
        assert locations == {"fr": "cases.jsonl:1", case_id: "cases.jsonl:2"}
