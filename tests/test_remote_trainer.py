"""A remote trainer that takes OpenAI's job API with extra fields (Azure OpenAI's v1
fine-tuning): the ini's extra body and key variable reach the job create, and only it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from scripted_server import ScriptedServer

from pytest_distill.training.jobs import merge_body

CASES = 30


def _suite() -> str:
    lines = [
        "name: codes",
        "prompt:",
        "  system: Reply with the code.",
        '  user: "Which code goes with item {{ n }}?"',
        "graders:",
        "  - {type: string_check, operation: eq}",
        "cases:",
    ]
    lines += [f"  - {{id: i{n:02d}, vars: {{n: {n}}}, reference: ZEBRA-7}}" for n in range(CASES)]
    return "\n".join(lines) + "\n"


@pytest.fixture
def remote() -> Iterator[ScriptedServer]:
    with ScriptedServer(lambda model, messages: "ZEBRA-7") as srv:
        srv.trained_model = "gpt-4.1-mini-2025-04-14.ft-0123456789abcdef"
        yield srv


def _project(pytester: pytest.Pytester, remote: ScriptedServer, *extra: str) -> pytest.Pytester:
    # An Azure resource's v1 base URL ends in /openai/v1; the scripted server answers there too.
    azure = remote.base_url.replace("/v1", "/openai/v1")
    lines = [
        "[pytest]",
        "distill_teacher_model = big",
        f"distill_teacher_endpoint = {remote.base_url}",
        "distill_student_model = gpt-4.1-mini",
        f"distill_student_endpoint = {remote.base_url}",
        f"distill_trainer_endpoint = {azure}",
        *extra,
    ]
    pytester.makeini("\n".join(lines) + "\n")
    pytester.makefile(".eval.yaml", codes=_suite())
    return pytester


def test_extra_body_and_key_variable_reach_the_azure_style_job_create(
    pytester: pytest.Pytester, remote: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-key")
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "azure-secret-key")
    project = _project(
        pytester,
        remote,
        'distill_trainer_extra_body = {"trainingType": "GlobalStandard", '
        '"method": {"supervised": {"hyperparameters": {"n_epochs": 2}}}}',
        "distill_trainer_api_key_env = AZURE_OPENAI_API_KEY",
        "distill_batch_size = 4",
    )
    result = project.runpytest("--distill")
    assert result.ret == 0, result.stdout.str()
    [(body, headers)] = remote.job_creates
    assert body["trainingType"] == "GlobalStandard"
    # Objects merge key by key: the ini's epochs join the configured batch size.
    assert body["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": {"batch_size": 4, "n_epochs": 2}},
    }
    assert body["model"] == "gpt-4.1-mini" and body["metadata"]["distill_key"]
    assert headers["authorization"] == "Bearer azure-secret-key"
    assert remote.uploads[0]["authorization"] == "Bearer azure-secret-key"
    keys = {(path.startswith("/openai/"), key) for path, key in remote.auth}
    # The teacher and student keep their own key; the trainer's calls carry Azure's, and so
    # do the fine-tuned model's, served where it trained.
    assert keys == {(False, "Bearer sk-openai-key"), (True, "Bearer azure-secret-key")}
    assert any(p == "/openai/v1/chat/completions" for p, _ in remote.auth)
    state = (project.path / ".distill" / "state.json").read_text()
    assert "azure-secret-key" not in state and remote.trained_model in state
    # The remote model is not the embedded server's: no export command is offered.
    assert "distill-server export" not in result.stdout.str()


def test_the_extra_body_is_part_of_the_job_key(
    pytester: pytest.Pytester, remote: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-key")
    project = _project(
        pytester, remote, 'distill_trainer_extra_body = {"trainingType": "Standard"}'
    )
    assert project.runpytest("--distill").ret == 0
    state = json.loads((project.path / ".distill" / "state.json").read_text())
    first_keys = set(state["jobs"])
    ini = project.path / "tox.ini"
    ini.write_text(ini.read_text().replace('"Standard"', '"GlobalStandard"'))
    assert project.runpytest("--distill").ret == 0
    state = json.loads((project.path / ".distill" / "state.json").read_text())
    assert len(set(state["jobs"]) - first_keys) == 1 and len(remote.job_creates) == 2


def test_a_trainer_extra_body_that_is_not_a_json_object_is_a_usage_error(
    pytester: pytest.Pytester, remote: ScriptedServer
) -> None:
    project = _project(pytester, remote, "distill_trainer_extra_body = trainingType=Standard")
    result = project.runpytest("--distill")
    result.stderr.fnmatch_lines(
        ["*ini distill_trainer_extra_body: 'trainingType=Standard' is not a JSON object*"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR


def test_merge_body_merges_objects_and_replaces_the_rest() -> None:
    body = {"model": "m", "method": {"type": "supervised", "supervised": {"h": {"a": 1}}}}
    extra = {"method": {"supervised": {"h": {"b": 2}}}, "model": "n", "x": [1]}
    assert merge_body(body, extra) == {
        "model": "n",
        "method": {"type": "supervised", "supervised": {"h": {"a": 1, "b": 2}}},
        "x": [1],
    }
    assert body["method"]["supervised"]["h"] == {"a": 1}  # the original is untouched
