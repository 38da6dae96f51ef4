"""The fine-tuned model is the student after training: it is called as the student is (its
parameters, its suite prompt and params), and what each role is sent shows in the header and
the reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

from pytest_distill.verdict import html


def _ini(server: ScriptedServer, *extra: str) -> str:
    lines = [
        "[pytest]",
        "distill_student_model = small",
        f"distill_student_endpoint = {server.base_url}",
        "distill_finetuned_model = ft",
        f"distill_finetuned_endpoint = {server.base_url}",
        *extra,
    ]
    return "\n".join(lines) + "\n"


def _bodies(server: ScriptedServer, model: str) -> list[dict[str, Any]]:
    bodies = [b for b in server.chat_requests() if b["model"] == model]
    assert bodies, f"{model} was not called"
    return bodies


def _sent(body: dict[str, Any]) -> dict[str, Any]:
    """What a request sends besides its model and messages."""
    return {k: v for k, v in body.items() if k not in ("model", "messages")}


def test_finetuned_is_sent_the_student_params_when_it_sets_none(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    server.script("ft", {"Capital of France?": "Paris"})
    pytester.makeini(_ini(server, "distill_student_params = temperature=0 max_tokens=48"))
    pytester.makefile(".eval.yaml", capitals=SUITE)
    pytester.runpytest("-k", "fr").assert_outcomes(passed=2)
    student, finetuned = _bodies(server, "small")[0], _bodies(server, "ft")[0]
    assert _sent(finetuned) == _sent(student) == {"temperature": 0, "max_tokens": 48}
    assert finetuned["messages"] == student["messages"]


def test_finetuned_params_go_over_the_student_params_key_by_key(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    pytester.makeini(
        _ini(
            server,
            "distill_student_params = temperature=0 max_tokens=48",
            "distill_finetuned_params = max_tokens=64",
        )
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    pytester.runpytest("-k", "fr")
    assert _sent(_bodies(server, "ft")[0]) == {"temperature": 0, "max_tokens": 64}
    assert _sent(_bodies(server, "small")[0]) == {"temperature": 0, "max_tokens": 48}


def test_a_python_eval_calls_finetuned_with_the_student_params(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    pytester.makeini(_ini(server, "distill_student_params = temperature=0 seed=7"))
    pytester.makepyfile(
        test_summary="""
        def test_reply(finetuned):
            finetuned.complete("Capital of France?")
        """
    )
    pytester.runpytest().assert_outcomes(passed=1)
    assert _sent(_bodies(server, "ft")[0]) == {"temperature": 0, "seed": 7}


def test_finetuned_takes_the_suite_student_prompt_and_params_unless_it_sets_its_own(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    roles = (
        "roles:\n"
        "  student:\n"
        "    prompt: {system: Be brief.}\n"
        "    params: {temperature: 0, max_tokens: 8}\n"
        "  finetuned:\n"
        "    params: {max_tokens: 16}\n"
        "graders:"
    )
    pytester.makeini(_ini(server))
    pytester.makefile(".eval.yaml", capitals=SUITE.replace("graders:", roles))
    pytester.runpytest("-k", "fr")
    student, finetuned = _bodies(server, "small")[0], _bodies(server, "ft")[0]
    assert student["messages"][0] == {"role": "system", "content": "Be brief."}
    assert finetuned["messages"] == student["messages"]
    assert _sent(finetuned) == {"temperature": 0, "max_tokens": 16}


def test_header_json_and_html_show_each_role_as_it_is_called(
    pytester: pytest.Pytester, server: ScriptedServer, tmp_path: Path
) -> None:
    pytester.makeini(
        _ini(
            server,
            "distill_student_params = temperature=0 max_tokens=48",
            "distill_finetuned_params = max_tokens=64",
        )
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    report = tmp_path / "report.json"
    result = pytester.runpytest("-k", "fr", f"--distill-report={report}")
    result.stdout.fnmatch_lines(
        [
            "distill: holdout *; roles (model @ endpoint: parameters):",
            f"  student    small @ {server.base_url}: temperature=0 max_tokens=48",
            f"  finetuned  ft @ {server.base_url}: temperature=0 max_tokens=64",
        ]
    )
    data = json.loads(report.read_text())
    assert data["roles"]["finetuned"] == {
        "model": "ft",
        "endpoint": server.base_url,
        "params": {"temperature": 0, "max_tokens": 64},
    }
    assert data["roles"]["student"]["params"] == {"temperature": 0, "max_tokens": 48}
    page = html.render(data)
    table = page[
        page.index('id="role-settings"') : page.index("</table>", page.index("role-settings"))
    ]
    assert "<code>max_tokens=64</code>" in table and "<code>temperature=0</code>" in table
    assert f"<td>{server.base_url}</td>" in table


def test_a_role_without_params_says_the_endpoint_chooses(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    pytester.makeini(_ini(server))
    pytester.makefile(".eval.yaml", capitals=SUITE)
    result = pytester.runpytest("-k", "fr")
    result.stdout.fnmatch_lines(["  finetuned  ft @ *: none (the endpoint's defaults)"])


def test_the_header_never_shows_a_password_in_an_endpoint(
    pytester: pytest.Pytester, server: ScriptedServer
) -> None:
    secret_url = server.base_url.replace("http://", "http://user:hunter2hunter2@")
    pytester.makeini(
        _ini(server, f"distill_teacher_model = big\ndistill_teacher_endpoint = {secret_url}")
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    result = pytester.runpytest("--co")
    assert "hunter2" not in result.stdout.str()
    result.stdout.fnmatch_lines(["  teacher    big @ http://[[]redacted]@*"])


def test_a_replay_ignores_the_fine_tuned_model_a_live_distill_left_in_the_folder(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    project.makepyfile(
        test_summary="""
        def test_reply(distill_client):
            distill_client.complete("Capital of France?")
        """
    )
    project.runpytest("--distill-record-mode=once").assert_outcomes(passed=8, failed=4)
    # What a later live `pytest --distill` leaves behind: a fine-tuned model, on this folder.
    state = project.path / ".distill" / "state.json"
    state.parent.mkdir(exist_ok=True)
    finetuned = {"model": "ft:small:distill", "endpoint": server.base_url, "job_id": "ftjob-1"}
    state.write_text(json.dumps({"finetuned": finetuned}))
    sent = len(server.requests)
    replay = project.runpytest("--distill-record-mode=none", "-p", "no:randomly")
    replay.assert_outcomes(passed=8, failed=4)  # as recorded: no finetuned item, no miss
    assert "finetuned" not in replay.stdout.str()
    assert len(server.requests) == sent
    # Live, the fine-tuned model is a role again.
    live = project.runpytest("--distill-record-mode=off", "--co", "-q")
    live.stdout.fnmatch_lines(["*test_reply[[]finetuned[]]*"])
