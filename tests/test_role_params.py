"""Sampling parameters reach the API as JSON, from the ini and from a suite's ``params``."""

from __future__ import annotations

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

from pytest_distill.options.role_options import params


def _teacher_body(server: ScriptedServer) -> dict[str, object]:
    bodies = [b for b in server.chat_requests() if b["model"] == "big"]
    assert bodies, "the teacher was not called"
    return bodies[0]  # type: ignore[no-any-return]


def test_json_values_one_a_line_reach_the_request_body_as_objects_and_arrays(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = big
        distill_teacher_endpoint = {server.base_url}
        distill_teacher_params =
            temperature=0 max_tokens=64
            response_format={{"type": "json_object"}}
            stop=["END", "STOP NOW"]
            logit_bias={{"50256": -100, "11": 5}}
        """
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    pytester.runpytest("-k", "fr").assert_outcomes(passed=1)
    body = _teacher_body(server)
    assert body["response_format"] == {"type": "json_object"}
    assert body["stop"] == ["END", "STOP NOW"]
    assert body["logit_bias"] == {"50256": -100, "11": 5}
    assert (body["temperature"], body["max_tokens"]) == (0, 64)


def test_json_values_among_pairs_on_one_line(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = big
        distill_teacher_endpoint = {server.base_url}
        distill_teacher_params = temperature=0 response_format={{"type": "json_object"}} stop=["END"]
        """
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    pytester.runpytest("-k", "fr").assert_outcomes(passed=1)
    body = _teacher_body(server)
    assert body["response_format"] == {"type": "json_object"}
    assert (body["stop"], body["temperature"]) == (["END"], 0)


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (["temperature=0.5 max_tokens=64"], {"temperature": 0.5, "max_tokens": 64}),
        (["stop=END seed=7"], {"stop": "END", "seed": 7}),
        (['stop="two words"'], {"stop": "two words"}),
        (["stop='two words' n=2"], {"stop": "two words", "n": 2}),
        (['stop=[ "a", "b" ]  top_p=1'], {"stop": ["a", "b"], "top_p": 1}),
        (["stop=0.5x"], {"stop": "0.5x"}),
        (["reasoning_effort=low", "seed=1"], {"reasoning_effort": "low", "seed": 1}),
    ],
)
def test_params_lines_parse_json_values_and_plain_words(
    lines: list[str], expected: dict[str, object]
) -> None:
    assert params(lines, "distill_teacher_params") == expected


@pytest.mark.parametrize("line", ["temperature", "=1", "temperature=0 max_tokens"])
def test_params_item_without_key_is_a_usage_error(line: str) -> None:
    with pytest.raises(pytest.UsageError, match="is not KEY=VALUE"):
        params([line], "distill_teacher_params")


def test_unknown_parameter_in_a_suite_is_a_collection_error_naming_file_and_line(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    suite = SUITE.replace("graders:", "params:\n  temperature: 0\n  max_token: 5\ngraders:")
    project.makefile(".eval.yaml", capitals=suite)
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [
            "capitals.eval.yaml:7: 'params': unknown sampling parameter 'max_token'; "
            "did you mean 'max_tokens'? allowed: *"
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    assert server.chat_requests() == []


def test_unknown_parameter_in_a_suite_role_is_a_collection_error(
    project: pytest.Pytester,
) -> None:
    suite = SUITE.replace(
        "graders:", "roles:\n  student:\n    params:\n      temprature: 0\ngraders:"
    )
    project.makefile(".eval.yaml", capitals=suite)
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        ["capitals.eval.yaml:8: 'params': unknown sampling parameter 'temprature'; *"]
    )


def test_suite_params_reach_the_request_as_json(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    suite = SUITE.replace(
        "graders:", "params:\n  response_format: {type: json_object}\n  stop: [END]\ngraders:"
    )
    project.makefile(".eval.yaml", capitals=suite)
    project.runpytest("-k", "fr", "--distill-roles=teacher").assert_outcomes(passed=1)
    body = _teacher_body(server)
    assert (body["response_format"], body["stop"]) == ({"type": "json_object"}, ["END"])
