"""Eval files become pytest items that run against real HTTP endpoints on loopback."""

from __future__ import annotations

import json

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer


def test_yaml_suite_of_five_cases_gives_ten_items_with_the_right_outcomes(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("-v")
    result.assert_outcomes(passed=6, failed=4)
    result.stdout.fnmatch_lines(
        [
            "*capitals.eval.yaml::fr?teacher? PASSED*",
            "*capitals.eval.yaml::fr?student? PASSED*",
            "*capitals.eval.yaml::it?student? FAILED*",
        ]
    )


def test_failed_item_shows_grader_verdict_and_reply_without_traceback(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("capitals.eval.yaml::it[student]")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FAIL string_check: score 0.00*", "*reply: 'Milan'*"])
    result.stdout.no_fnmatch_line("*Traceback*")
    result.stdout.no_fnmatch_line("*def runtest*")


def test_calls_are_sent_with_each_roles_prompt_and_model(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    suite = SUITE.replace(
        "graders:",
        "roles:\n  teacher:\n    prompt:\n      few_shot:\n"
        "        - {user: 'Capital of Chile?', assistant: Santiago}\ngraders:",
    )
    project.makefile(".eval.yaml", capitals=suite)
    project.runpytest("-k", "fr")
    bodies = {b["model"]: b for b in server.chat_requests()}
    assert [m["content"] for m in bodies["big"]["messages"]] == [
        "Answer with the capital only.",
        "Capital of Chile?",
        "Santiago",
        "Capital of France?",
    ]
    assert [m["content"] for m in bodies["small"]["messages"]] == [
        "Answer with the capital only.",
        "Capital of France?",
    ]


def test_reportinfo_points_at_the_case_line(project: pytest.Pytester) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("capitals.eval.yaml::it[student]", "-rf")
    # The "it" case starts on line 12 of the suite (0-based 11 in reportinfo).
    items = project.inline_genitems("capitals.eval.yaml::it[student]")[0]
    path, line, _ = items[0].reportinfo()
    assert (path.name, line + 1) == ("capitals.eval.yaml", 12)
    result.stdout.fnmatch_lines(["FAILED capitals.eval.yaml::it?student?*"])


def test_jsonl_case_files_in_evals_and_chat_formats(project: pytest.Pytester) -> None:
    lines = [
        {"input": [{"role": "user", "content": "Capital of Japan?"}], "ideal": "Tokyo"},
        {
            "id": "pe",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Capital of Peru?"},
                {"role": "assistant", "content": "Lima"},
            ],
        },
    ]
    project.makefile(".eval.jsonl", mixed="\n".join(json.dumps(x) for x in lines))
    result = project.runpytest("-v", "--distill-roles=teacher")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*mixed.eval.jsonl::pe?teacher? PASSED*"])


def test_yaml_suite_reads_cases_from_a_jsonl_file(project: pytest.Pytester) -> None:
    project.makefile(
        ".jsonl",
        cases='{"id": "fr", "vars": {"country": "France"}, "reference": "Paris"}\n'
        '{"id": "it", "vars": {"country": "Italy"}, "reference": "Rome"}\n',
    )
    suite = SUITE[: SUITE.index("cases:")] + "cases_file: cases.jsonl\n"
    project.makefile(".eval.yaml", capitals=suite)
    project.runpytest("--distill-roles=teacher").assert_outcomes(passed=2)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (
            SUITE.replace(
                "    vars: {country: Italy}\n", "    vars: {country: Italy}\n    colour: 1\n"
            ),
            "capitals.eval.yaml:14: unknown case key 'colour'; allowed: *",
        ),
        (
            SUITE.replace("  - id: es\n", "  - id: fr\n"),
            "*capitals.eval.yaml:15: duplicate case id 'fr' (first on line 9)*",
        ),
        (
            SUITE.replace("{country: Peru}", "{land: Peru}"),
            "*capitals.eval.yaml:21: case 'pe' has no variable 'country' used by the teacher prompt*",
        ),
        (
            SUITE.replace("    operation: eq\n", "    operation: equals\n"),
            "capitals.eval.yaml:6: grader 'string_check' has operation='equals'; allowed: eq, ne, *",
        ),
        (SUITE.replace("{country: France}", "{country: France"), "*capitals.eval.yaml:*"),
    ],
    ids=["unknown-key", "duplicate-id", "missing-variable", "bad-grader", "yaml-syntax"],
)
def test_malformed_suite_is_a_one_line_collection_error_with_path_and_line(
    project: pytest.Pytester, content: str, expected: str
) -> None:
    project.makefile(".eval.yaml", capitals=content)
    result = project.runpytest()
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*ERROR collecting capitals.eval.yaml*", expected])
    result.stdout.no_fnmatch_line("*Traceback*")


def test_malformed_jsonl_line_names_the_line(project: pytest.Pytester) -> None:
    project.makefile(
        ".eval.jsonl",
        broken='{"input": [{"role": "user", "content": "hi"}], "ideal": "x"}\n{"input": [\n',
    )
    result = project.runpytest()
    result.stdout.fnmatch_lines(["*broken.eval.jsonl:2: not valid JSON*"])


def test_roles_without_a_model_make_eval_files_a_clear_error(pytester: pytest.Pytester) -> None:
    pytester.makefile(".eval.yaml", capitals=SUITE)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*capitals.eval.yaml:1: no role has a model; set ini*"])


def test_unreachable_endpoint_fails_the_item_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makeini(
        "[pytest]\ndistill_teacher_model = big\n"
        "distill_teacher_endpoint = http://127.0.0.1:9/v1\ndistill_max_retries = 0\n"
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    result = pytester.runpytest("-k", "fr")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        ["*teacher model call failed: APIConnectionError: Connection error.*"]
    )


def test_retry_after_429_is_honoured_by_the_sdk(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.fail(429, retry_after="0")
    project.makefile(".eval.yaml", capitals=SUITE)
    project.runpytest("--distill-roles=teacher", "-k", "fr").assert_outcomes(passed=1)
    assert len(server.chat_requests()) == 2


def test_insufficient_quota_is_not_retried(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.fail(429, code="insufficient_quota", retry_after="0")
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest("--distill-roles=teacher", "-k", "fr")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*RateLimitError*insufficient_quota*"])
    assert len(server.chat_requests()) == 1


def test_model_near_shutdown_date_draws_a_warning(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    import time

    server.model_info["big"] = {"shutdown_date": int(time.time()) + 10 * 86400}
    project.makefile(".eval.yaml", capitals=SUITE)
    # This project runs with warnings as errors; the inner run shows them instead.
    result = project.runpytest("--distill-roles=teacher", "-W", "default::pytest.PytestWarning")
    result.assert_outcomes(passed=5, warnings=1)
    result.stdout.fnmatch_lines(["*DistillWarning: model 'big' of role 'teacher' shuts down on *"])
