"""``--distill-batch``: a role's data-file cases as Batch API batches, against a loopback
OpenAI-shaped server (files of purpose batch, batches created, listed and retrieved, their
output and error files), graded as the live path grades them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CAPITALS, SUITE
from scripted_server import ScriptedServer

from pytest_distill import batches

FAST = ("-o", "distill_poll_interval=0")
GRADED = ("nodeid", "role", "passed", "error", "score", "grades", "reply", "messages", "model")


def _run(project: pytest.Pytester, *args: str) -> tuple[pytest.RunResult, dict[str, Any]]:
    result = project.runpytest("--distill-report=report.json", *FAST, *args)
    report = json.loads((project.path / "report.json").read_text())
    return result, report


def _items(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {i["nodeid"]: {k: i[k] for k in GRADED} for i in report["items"]}


def _input_lines(server: ScriptedServer, batch: dict[str, Any]) -> list[dict[str, Any]]:
    data = server.api.contents[batch["input_file_id"]]
    return [json.loads(line) for line in data.splitlines()]


def _state(project: pytest.Pytester) -> dict[str, Any]:
    return dict(json.loads((project.path / ".distill" / "state.json").read_text())["batches"])


def test_the_teacher_runs_as_one_batch_with_the_live_grades_and_no_live_call(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    live, live_report = _run(project)
    live.assert_outcomes(passed=6, failed=4)
    live_bodies = [b for b in server.chat_requests() if b["model"] == "big"]
    server.requests.clear()

    result, report = _run(project, "--distill-batch=teacher")
    result.assert_outcomes(passed=6, failed=4)
    assert [b["model"] for b in server.chat_requests()] == ["small"] * 5  # no live teacher call
    (batch,) = server.api.batches.values()
    assert batch["status"] == "completed" and batch["completion_window"] == "24h"
    assert batch["endpoint"] == "/v1/chat/completions"
    assert batch["metadata"]["distill_role"] == "teacher" and batch["metadata"]["distill_run"]
    assert server.api.files[batch["input_file_id"]]["purpose"] == "batch"
    lines = _input_lines(server, batch)
    assert {line["method"] for line in lines} == {"POST"}
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    # Each request's body is the very body the live call sent.
    assert sorted(json.dumps(x["body"], sort_keys=True) for x in lines) == sorted(
        json.dumps(b, sort_keys=True) for b in live_bodies
    )
    assert _items(report) == _items(live_report)
    teacher = [i for i in report["items"] if i["role"] == "teacher"]
    assert all(i["completion_id"] and i["prompt_tokens"] for i in teacher)
    assert any(f"distill: started batch {batch['id']}" in line for line in result.outlines)
    assert any(
        line.startswith(f"distill: batch {batch['id']} of role teacher completed, 5/5")
        for line in result.outlines
    ), result.outlines
    (entry,) = _state(project).values()
    assert entry["batch_id"] == batch["id"] and entry["done"] is True


def test_output_lines_in_any_order_reach_their_own_items(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.api.batch_reversed = True
    project.makefile(".eval.yaml", capitals=SUITE)
    result, report = _run(project, "--distill-batch=teacher")
    result.assert_outcomes(passed=6, failed=4)
    replies = {i["case_id"]: i["reply"] for i in report["items"] if i["role"] == "teacher"}
    assert replies == {"fr": "Paris", "it": "Rome", "es": "Madrid", "jp": "Tokyo", "pe": "Lima"}


def test_a_failed_line_is_an_errored_item_with_its_reason(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.api.batch_line_fails = {"Capital of Spain?": 500}
    project.makefile(".eval.yaml", capitals=SUITE)
    result, report = _run(project, "--distill-batch=teacher")
    result.assert_outcomes(passed=5, failed=5)
    (errored,) = [i for i in report["items"] if i["error"]]
    assert errored["nodeid"].endswith("es[teacher]") and errored["score"] is None
    assert "request failed: HTTP 500: scripted 500" in errored["error"]
    assert "HTTP 500: scripted 500" in result.stdout.str()


def test_an_expired_batch_gives_its_answered_lines_and_errors_for_the_rest(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.api.batch_final = "expired"
    server.api.batch_ran = 2
    project.makefile(".eval.yaml", capitals=SUITE)
    result, report = _run(project, "--distill-batch=teacher")
    result.assert_outcomes(passed=3, failed=7)
    teacher = {i["case_id"]: i for i in report["items"] if i["role"] == "teacher"}
    assert [c for c, i in teacher.items() if i["passed"]] == ["fr", "it"]
    for case in ("es", "jp", "pe"):
        assert "expired before it ran this request" in teacher[case]["error"]


def test_a_failed_batch_errors_every_item_of_its_role(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.api.batch_final = "failed"
    server.api.batch_ran = 0
    project.makefile(".eval.yaml", capitals=SUITE)
    result, report = _run(project, "--distill-batch=teacher")
    result.assert_outcomes(passed=1, failed=9)
    errors = [i["error"] for i in report["items"] if i["role"] == "teacher"]
    assert all("failed: scripted failure" in e for e in errors), errors


def test_a_create_that_answers_5xx_after_creating_makes_no_second_batch(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.api.batch_create_fails = [500]
    project.makefile(".eval.yaml", capitals=SUITE)
    result, _ = _run(project, "--distill-batch=teacher")
    result.assert_outcomes(passed=6, failed=4)
    assert len(server.api.batches) == len(server.api.batch_creates) == 1


def test_a_rerun_after_an_interruption_follows_the_same_batch(
    project: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    follow = batches.follow

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(batches, "follow", interrupted)
        first = project.runpytest("--distill-batch=teacher", *FAST, no_reraise_ctrlc=True)
    assert first.ret == pytest.ExitCode.INTERRUPTED
    (batch_id,) = server.api.batches
    said = [line for line in first.outlines if "interrupted; batch" in line]
    assert said, first.outlines
    assert f"batch {batch_id} of role teacher keeps running" in said[0]
    assert "Run the same command again to collect it" in said[0]
    assert f"/batches/{batch_id}/cancel" in said[0]
    (entry,) = _state(project).values()
    assert entry["batch_id"] == batch_id and entry["done"] is False
    assert batches.follow is follow

    again, _ = _run(project, "--distill-batch=teacher")
    again.assert_outcomes(passed=6, failed=4)
    assert list(server.api.batches) == [batch_id]
    assert sum(f["purpose"] == "batch" for f in server.api.files.values()) == 1
    assert any(f"distill: resuming batch {batch_id}" in line for line in again.outlines)
    assert _state(project)[next(iter(_state(project)))]["done"] is True

    # Its answers were taken: the next session sends its own batch.
    third, _ = _run(project, "--distill-batch=teacher")
    third.assert_outcomes(passed=6, failed=4)
    assert len(server.api.batches) == 2


def test_a_rerun_whose_state_lost_the_batch_id_finds_it_by_its_metadata(
    project: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(batches, "follow", interrupted)
        project.runpytest("--distill-batch=teacher", *FAST, no_reraise_ctrlc=True)
    state_file = project.path / ".distill" / "state.json"
    state = json.loads(state_file.read_text())
    for entry in state["batches"].values():
        entry["batch_id"] = None  # as if the create's answer never came back
    state_file.write_text(json.dumps(state))
    again, _ = _run(project, "--distill-batch=teacher")
    again.assert_outcomes(passed=6, failed=4)
    assert len(server.api.batches) == 1
    assert any("distill: found batch" in line for line in again.outlines)


def test_repeats_send_one_request_each(project: pytest.Pytester, server: ScriptedServer) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result, report = _run(project, "--distill-batch=teacher,student", "--distill-repeats=2")
    result.assert_outcomes(passed=6, failed=4)
    assert not server.chat_requests()
    assert len(server.api.batches) == 2  # one per model
    for batch in server.api.batches.values():
        assert len(_input_lines(server, batch)) == 10
    assert all(len(i["attempts"]) == 2 for i in report["items"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--distill-batch=teacher,judge"], "unknown role 'judge'"),
        (["--distill-batch=teacher", "-n", "2"], "run it without -n (xdist)"),
    ],
)
def test_bad_batch_options_stop_before_any_call(
    project: pytest.Pytester, server: ScriptedServer, args: list[str], message: str
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()
    assert not server.requests


def test_the_input_key_leaves_out_a_stored_completions_metadata() -> None:
    from distill_shapes.batch import BatchRequest

    def request(run: str) -> BatchRequest:
        body = {"model": "m", "messages": [], "metadata": {"distill_run": run}}
        return BatchRequest("a#1", body)

    assert batches.input_key("openai", [request("1")]) == batches.input_key(
        "openai", [request("2")]
    )
    assert batches.input_key("openai", [request("1")]) != batches.input_key("local", [request("1")])


def test_state_keeps_the_other_entries(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.write_text(json.dumps({"jobs": {"k": {"job_id": "j"}}}))
    state = batches.BatchState(path)
    state.save("b", run="r")
    state.save("b", batch_id="x")
    data = json.loads(path.read_text())
    assert data["jobs"] == {"k": {"job_id": "j"}}
    assert data["batches"] == {"b": {"run": "r", "batch_id": "x"}}


def test_a_batch_on_the_embedded_server(
    pytester: pytest.Pytester, server: ScriptedServer, tiny_model: Path
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = big
        distill_teacher_endpoint = {server.base_url}
        distill_student_model = tiny
        distill_student_endpoint = local
        distill_local_models = tiny = {tiny_model}
        distill_student_params = temperature=0 max_tokens=4
        distill_poll_interval = 0.1
        """
    )
    pytester.makefile(".eval.yaml", capitals=SUITE)
    live = pytester.runpytest("--distill-report=live.json")
    live.assert_outcomes(passed=5, failed=5)
    result = pytester.runpytest("--distill-batch=student", "--distill-report=batch.json")
    result.assert_outcomes(passed=5, failed=5)
    (entry,) = _state(pytester).values()
    assert entry["role"] == "student" and entry["model"] == "tiny" and entry["done"] is True
    assert any(
        line.startswith(f"distill: batch {entry['batch_id']} of role student completed, 5/5")
        for line in result.outlines
    ), result.outlines
    reports = [json.loads((pytester.path / f"{n}.json").read_text()) for n in ("live", "batch")]
    students = [
        {
            i["case_id"]: (i["error"], i["model"], i["reply"])
            for i in r["items"]
            if i["role"] == "student"
        }
        for r in reports
    ]
    assert students[0] == students[1]  # temperature 0: the batch answers as the live calls did


def test_distill_with_the_teacher_and_the_finetuned_student_in_batches(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    from test_distill import _teacher, ini, suite

    with ScriptedServer(_teacher) as teacher:
        pytester.makeini(ini(teacher.base_url, tiny_model))
        pytester.makefile(".eval.yaml", codes=suite())
        result = pytester.runpytest(
            "--distill", "--distill-batch=teacher,finetuned", "--distill-report=report.json"
        )
        assert not teacher.chat_requests()  # the teacher answered through its batch only
        assert len(teacher.api.batches) == 1
    result.stdout.fnmatch_lines(
        [
            "distill: batch * of role teacher completed, 30/30 requests done*",
            "distill: wrote * examples to *train.jsonl*",
            "distill: fine-tuned model ft:tiny:local:distill:*",
            "distill: batch * of role finetuned completed, */* requests done*",
        ]
    )
    report = json.loads((pytester.path / "report.json").read_text())
    finetuned = [i for i in report["items"] if i["role"] == "finetuned"]
    assert finetuned and not any(i["error"] for i in finetuned)
    assert {e["role"] for e in _state(pytester).values()} == {"teacher", "finetuned"}
    # Lineage: each training line names the batch and the request line that answered it.
    (batch_id,) = teacher.api.batches
    requests = {x["custom_id"] for x in _input_lines(teacher, teacher.api.batches[batch_id])}
    (manifest,) = (pytester.path / ".distill" / "datasets").glob("*/manifest.json")
    lines = json.loads(manifest.read_text())["lines"]
    assert lines and all(line["batch"]["id"] == batch_id for line in lines)
    for line in lines:
        case = line["case"].split("::")[1]
        assert line["batch"]["custom_id"] in requests
        assert line["batch"]["custom_id"].endswith(f"::{case}[teacher]#1")


def test_no_wait_submits_skips_the_batch_items_then_the_same_command_collects(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.api.batch_polls = 0  # final at its first retrieve: the rerun's
    project.makefile(".eval.yaml", capitals=SUITE)
    args = (
        "--distill-batch=teacher",
        "--distill-no-wait",
        "-rs",
        "--distill-gate",
        "teacher >= 0.5",
    )
    first, report = _run(project, *args)
    assert first.ret == pytest.ExitCode.OK
    outcomes = first.parseoutcomes()  # the student ran live
    assert (outcomes["passed"], outcomes["skipped"], outcomes["below"]) == (1, 5, 4)
    (batch_id,) = server.api.batches
    assert server.api.batches[batch_id]["status"] == "validating"  # never retrieved
    assert not [i for i in report["items"] if i["role"] == "teacher"]
    assert report["gate"]["status"] == "not evaluated"
    assert batch_id in report["deferred"] and "run the same command again" in report["deferred"]
    out = first.stdout.str()
    assert f"batch {batch_id} still validating; run again to collect" in out  # -rs reasons
    assert f"distill: batch {batch_id} of role teacher (validating) still running" in out
    assert "pytest --distill-report=report.json" in out  # the command to run again
    assert first.outlines[-2].startswith("gate not evaluated: batches are still running")
    (entry,) = _state(project).values()
    assert entry["batch_id"] == batch_id and entry["done"] is False

    again, report = _run(project, *args)
    assert again.ret == pytest.ExitCode.OK
    assert again.parseoutcomes()["passed"] == 6
    assert list(server.api.batches) == [batch_id]  # nothing new
    assert sum(f["purpose"] == "batch" for f in server.api.files.values()) == 1
    assert any(f"distill: resuming batch {batch_id}" in line for line in again.outlines)
    assert report["deferred"] is None and report["gate"]["status"] == "passed"
    assert _state(project)[next(iter(_state(project)))]["done"] is True


def test_no_wait_never_trains_on_the_answers_of_a_partial_set(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(".eval.yaml", capitals=SUITE)
    result = project.runpytest(
        *FAST,
        "--distill",
        "--distill-batch=teacher",
        "--distill-no-wait",
        "-o",
        "distill_holdout=0.4",
    )
    assert result.ret == pytest.ExitCode.OK
    result.stdout.fnmatch_lines(["distill: not training: batches are still running*"])
    assert "distill: wrote" not in result.stdout.str()
    assert not server.api.jobs


def test_a_batch_run_recorded_replays_offline_with_its_secrets_scrubbed(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-batch-cassette-secret-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    pytester.makefile(".eval.yaml", capitals=SUITE)
    args = ("--distill-batch=teacher", "--distill-repeats=2")
    with ScriptedServer() as server:
        server.script("big", CAPITALS)
        server.script("small", {"Capital of France?": "Paris", "Capital of Italy?": "Milan"})
        server.api.batch_reversed = True
        server.api.batch_line_fails = {"Capital of Spain?": 500}
        pytester.makeini(
            f"""
            [pytest]
            distill_teacher_model = big
            distill_teacher_endpoint = {server.base_url}
            distill_student_model = small
            distill_student_endpoint = {server.base_url}
            """
        )
        recorded, recorded_report = _run(pytester, *args, "--distill-record-mode=new_episodes")
        recorded.assert_outcomes(passed=5, failed=5)
        assert len(server.api.batches) == 1
    cassettes = pytester.path / "cassettes"
    (batch_cassette,) = (cassettes / "batches").glob("teacher-*.json")
    recorded_calls = [
        (i["request"]["method"], i["request"]["uri"].partition("/v1/")[2])
        for i in json.loads(batch_cassette.read_text())["interactions"]
    ]
    assert recorded_calls[:3] == [
        ("POST", "files"),
        ("POST", "batches"),
        ("GET", "batches/batch_2"),
    ]
    assert [call for call in recorded_calls if call[1].endswith("/content")]
    assert not any(secret in p.read_text() for p in cassettes.rglob("*.json"))

    # The server is gone: the replay answers from the cassettes alone, and waits for nothing.
    (pytester.path / ".distill" / "state.json").unlink()
    replayed, report = _run(pytester, *args, "--distill-record-mode=none")
    replayed.assert_outcomes(passed=5, failed=5)
    assert _items(report) == _items(recorded_report)
    errored = [i for i in report["items"] if i["error"]]
    assert [i["case_id"] for i in errored] == ["es"]
    assert "HTTP 500: scripted 500" in errored[0]["error"]
    assert "no recording" not in replayed.stdout.str()


def test_a_batch_upload_matches_its_recording_whatever_the_run_id() -> None:
    from pytest_distill.cassettes import matching

    def upload(run: str, answer: str = "x") -> str:
        line = {
            "custom_id": "a#1",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "m", "messages": [answer], "metadata": {"distill_run": run}},
        }
        boundary = "b0"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            f'filename="in.jsonl"\r\n\r\n{json.dumps(line)}\n\r\n--{boundary}--\r\n'
        ).encode()
        return matching.shape(
            "POST", "/v1/files", body, {"content-type": f"multipart/form-data; boundary={boundary}"}
        ).body

    assert upload("run-1") == upload("run-2")
    assert upload("run-1") != upload("run-1", "y")


def test_a_batch_that_failed_while_nobody_waited_errors_its_items_on_the_rerun(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.api.batch_polls = 0
    server.api.batch_final = "failed"
    server.api.batch_ran = 0
    project.makefile(".eval.yaml", capitals=SUITE)
    first, _ = _run(project, "--distill-batch=teacher", "--distill-no-wait")
    assert first.ret == pytest.ExitCode.OK
    (batch_id,) = server.api.batches

    again, report = _run(project, "--distill-batch=teacher", "--distill-no-wait")
    assert again.ret == pytest.ExitCode.TESTS_FAILED  # never a quiet pass, nor a silent redo
    again.assert_outcomes(passed=1, failed=9)
    assert list(server.api.batches) == [batch_id]
    errors = [i["error"] for i in report["items"] if i["role"] == "teacher"]
    assert all(f"batch {batch_id} failed: scripted failure" in e for e in errors), errors
    assert any(f"batch {batch_id} of role teacher ended failed" in x for x in again.outlines)
    assert report["deferred"] is None

    server.api.batch_final, server.api.batch_ran = "completed", None
    third, _ = _run(project, "--distill-batch=teacher")  # done with: a new batch
    third.assert_outcomes(passed=6, failed=4)
    assert len(server.api.batches) == 2
