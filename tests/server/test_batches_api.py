"""The Batch API on the tiny model, through the openai SDK: files in, results out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from distill_server import LocalServer
from distill_shapes.batch import BatchRequest, BatchResult, read_results, write_requests

from .conftest import Api, OpenApi

FINAL = {"completed", "failed", "cancelled", "expired"}


def chat_body(i: int, **changes: Any) -> dict[str, Any]:
    question = {"role": "user", "content": f"Which code goes with item {i}?"}
    return {"model": "tiny", "messages": [question], "temperature": 0, "max_tokens": 8, **changes}


def input_file(bodies: dict[str, dict[str, Any]]) -> bytes:
    return write_requests(BatchRequest(cid, body) for cid, body in bodies.items())


@pytest.fixture
def sdk(server: Any, openapi: OpenApi) -> Iterator[Api]:
    client = Api("sync", server.base_url, openapi)
    yield client
    client.close()


def upload(client: Any, data: bytes) -> str:
    return str(client.files.create(file=("batch.jsonl", data), purpose="batch").id)


def wait(client: Any, batch_id: str, until: set[str] = FINAL, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while (batch := client.batches.retrieve(batch_id)).status not in until:
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        time.sleep(0.1)
    return batch


def results(client: Any, file_id: str | None) -> dict[str, BatchResult]:
    if file_id is None:
        return {}
    assert client.files.retrieve(file_id).purpose == "batch_output"
    lines = client.files.content(file_id).content.splitlines()
    found = {r.custom_id: r for r in read_results(lines)}
    assert len(found) == len(lines), "a custom_id answered twice"
    return found


def test_batch_answers_equal_live_calls_and_a_bad_body_is_an_error_line(sdk: Api) -> None:
    client = sdk.client
    bodies = {f"case-{i}": chat_body(i) for i in range(6)}
    bodies["hot"] = chat_body(9, temperature=5)  # a 400 when called live
    bodies["streamed"] = chat_body(8, stream=True)  # a batch's answers are whole
    bodies["case-5"]["store"] = True
    bodies["case-5"]["metadata"] = {"suite": "batch"}
    file_id = upload(client, input_file(bodies))
    created = sdk.call(
        "createBatch",
        "batches.create",
        input_file_id=file_id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "equal"},
    )
    assert created.status == "validating" and created.metadata == {"run": "equal"}
    assert created.expires_at == created.created_at + 24 * 3600
    done = wait(client, created.id)
    sdk.call("retrieveBatch", "batches.retrieve", batch_id=created.id)
    assert done.status == "completed", done.errors
    assert done.model == "tiny"
    assert done.request_counts.model_dump() == {"total": 8, "completed": 6, "failed": 2}
    assert done.in_progress_at and done.finalizing_at and done.completed_at
    assert done.created_at <= done.in_progress_at <= done.finalizing_at <= done.completed_at
    assert done.usage and done.usage.output_tokens > 0
    output, errors = results(client, done.output_file_id), results(client, done.error_file_id)
    assert set(output) == {f"case-{i}" for i in range(6)} and set(errors) == {"hot", "streamed"}
    for custom_id, result in output.items():
        live = client.chat.completions.create(**{**bodies[custom_id], "store": False})
        assert result.ok and result.response and result.response.request_id.startswith("req_")
        sdk.spec.validate("createChatCompletion", result.body)
        assert result.body is not None
        assert result.body["choices"][0]["message"]["content"] == live.choices[0].message.content
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(**bodies["hot"])
    bad = errors["hot"]
    assert bad.response and bad.response.status_code == 400 and bad.error is None
    assert bad.body == info.value.response.json()
    streamed = errors["streamed"]
    assert streamed.response and streamed.response.status_code == 400
    assert streamed.body and streamed.body["error"]["param"] == "stream"
    stored = client.chat.completions.list(metadata={"suite": "batch"}).data
    assert [c.id for c in stored] == [output["case-5"].body["id"]]  # type: ignore[index]
    # The input file is the batch's to read until it is final; then it may go.
    client.files.delete(file_id)


def test_batches_list_pages_and_bad_requests_are_400s(sdk: Api) -> None:
    client = sdk.client
    file_id = upload(client, input_file({"only": chat_body(1)}))
    made = [
        client.batches.create(
            input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    page = sdk.call("listBatches", "batches.list", limit=2)
    assert [b.id for b in page.data] == made[::-1][:2] and page.has_more
    rest = client.batches.list(limit=2, after=page.data[-1].id)
    assert [b.id for b in rest.data][:1] == [made[0]]
    for batch_id in made:
        assert wait(client, batch_id).status == "completed"
    fine_tune = client.files.create(file=("t.jsonl", b"{}\n"), purpose="fine-tune").id
    cases = [
        ({"input_file_id": fine_tune}, "input_file_id", "upload the batch's input file"),
        ({"input_file_id": "file-nope"}, "input_file_id", "does not exist"),
        ({"endpoint": "/v1/embeddings"}, "endpoint", "/v1/chat/completions"),
        ({"completion_window": "1h"}, "completion_window", "'24h'"),
    ]
    for change, param, words in cases:
        request = {
            "input_file_id": file_id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            **change,
        }
        error = sdk.error(400, "batches.create", **request)
        assert error["param"] == param and words in error["message"], error
    assert sdk.error(404, "batches.retrieve", batch_id="batch_nope")["param"] == "batch_id"
    error = sdk.error(400, "batches.cancel", batch_id=made[0])
    assert "already completed" in error["message"]


@pytest.mark.parametrize(
    ("second", "code", "words"),
    [
        ("{not json", "invalid_json", "one JSON object per line"),
        (
            json.dumps({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions"})[:-1]
            + ', "body": {"model": "tiny"}}',
            "duplicate_custom_id",
            "custom_id 'a' is used by an earlier line",
        ),
        (
            json.dumps({"custom_id": "b", "method": "POST", "url": "/v1/embeddings", "body": {}}),
            "invalid_url",
            "which this batch does not run",
        ),
    ],
)
def test_a_malformed_input_file_fails_the_batch_naming_the_line(
    sdk: Api, second: str, code: str, words: str
) -> None:
    client = sdk.client
    data = input_file({"a": chat_body(1)}) + second.encode() + b"\n"
    batch = client.batches.create(
        input_file_id=upload(client, data),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    failed = wait(client, batch.id)
    sdk.call("retrieveBatch", "batches.retrieve", batch_id=batch.id)
    assert failed.status == "failed" and failed.failed_at
    assert failed.errors and failed.errors.data
    error = failed.errors.data[0]
    assert (error.code, error.line) == (code, 2)
    assert error.message and "line 2: " in error.message and words in error.message
    assert failed.output_file_id is None and failed.error_file_id is None


def test_a_batch_for_an_unknown_model_fails_naming_it(sdk: Api) -> None:
    client = sdk.client
    data = input_file({"a": {**chat_body(1), "model": "nope"}})
    batch = client.batches.create(
        input_file_id=upload(client, data),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    failed = wait(client, batch.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    assert failed.errors.data[0].code == "model_not_found"
    assert "'nope' does not exist" in (failed.errors.data[0].message or "")
    empty = client.batches.create(
        input_file_id=upload(client, b"\n"),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    failed = wait(client, empty.id)
    assert failed.status == "failed" and failed.errors and failed.errors.data
    assert failed.errors.data[0].code == "empty_file"


def test_cancel_keeps_what_ran_and_answers_the_rest_as_cancelled(sdk: Api) -> None:
    client = sdk.client
    bodies = {f"c{i}": chat_body(i, max_tokens=32) for i in range(400)}
    file_id = upload(client, input_file(bodies))
    batch = client.batches.create(
        input_file_id=file_id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    wait(client, batch.id, {"in_progress", *FINAL})
    error = sdk.error(409, "files.delete", file_id=file_id)
    assert error["code"] == "file_in_use" and batch.id in error["message"]
    cancelling = sdk.call("cancelBatch", "batches.cancel", batch_id=batch.id)
    assert cancelling.status in ("cancelling", "cancelled") and cancelling.cancelling_at
    done = wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at
    output, errors = results(client, done.output_file_id), results(client, done.error_file_id)
    assert set(output) | set(errors) == set(bodies) and not set(output) & set(errors)
    never = [r for r in errors.values() if r.error is not None]
    assert never and all(r.error and r.error.code == "batch_cancelled" for r in never)
    counts = done.request_counts
    assert (counts.total, counts.completed) == (400, len(output)) and counts.completed < 400


def _client(srv: LocalServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0)


def _progressed(client: openai.OpenAI, batch_id: str) -> int:
    deadline = time.monotonic() + 120
    while True:
        batch = client.batches.retrieve(batch_id)
        assert batch.status == "in_progress" or time.monotonic() < deadline, batch.status
        if batch.request_counts and batch.request_counts.completed:
            return batch.request_counts.completed
        assert time.monotonic() < deadline, "no request finished"
        time.sleep(0.05)


def _stored_bodies(n: int, tag: str) -> dict[str, Any]:
    return {
        f"r{i}": chat_body(i, max_tokens=24, store=True, metadata={"run": tag}) for i in range(n)
    }


def _create(client: openai.OpenAI, bodies: dict[str, Any]) -> str:
    batch = client.batches.create(
        input_file_id=upload(client, input_file(bodies)),
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    return batch.id


def _stored(client: openai.OpenAI, tag: str) -> set[str]:
    return {c.id for c in client.chat.completions.list(metadata={"run": tag}, limit=10_000).data}


def _left(data_dir: Path, batch_id: str) -> int:
    """How many requests the stopped server had answered (read from its store): some, not
    all, or the test did not stop it mid-batch."""
    from distill_server.store import Store

    store = Store(data_dir / "state.sqlite3")
    try:
        record = store.get("batch", batch_id)
    finally:
        store.close()
    assert record is not None and record.body["status"] == "in_progress", record
    done = int(record.body["request_counts"]["completed"])
    assert 0 < done < record.body["request_counts"]["total"]
    return done


def _completed(client: openai.OpenAI, batch_id: str, bodies: dict[str, Any]) -> set[str]:
    """Wait for the batch; check it answered every request once; its completions' ids."""
    done = wait(client, batch_id, timeout=300)
    assert done.status == "completed" and done.request_counts, done.errors
    assert done.request_counts.completed == len(bodies) and done.error_file_id is None
    output = results(client, done.output_file_id)
    assert set(output) == set(bodies)
    return {str((r.body or {})["id"]) for r in output.values()}


def test_a_batch_a_stopped_server_left_resumes_without_running_a_line_twice(
    tmp_path: Path, tiny_model: Path
) -> None:
    models = {"tiny": tiny_model}
    bodies = _stored_bodies(300, "stopped")
    with LocalServer(tmp_path, models=models) as first, _client(first) as client:
        batch_id = _create(client, bodies)
        _progressed(client, batch_id)
    before = _left(tmp_path, batch_id)
    with LocalServer(tmp_path, models=models) as second, _client(second) as client:
        assert len(_stored(client, "stopped")) >= before
        answered = _completed(client, batch_id, bodies)
        # Every request stored once: what ran before the stop did not run again.
        assert _stored(client, "stopped") == answered


def test_a_batch_a_killed_server_left_resumes(tmp_path: Path, tiny_model: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    command = [sys.executable, "-m", "distill_server", "--port", "0"]
    command += ["--data-dir", str(tmp_path), "--model", f"tiny={tiny_model}"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    bodies = _stored_bodies(300, "killed")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        base_url = proc.stdout.readline().split("serving on ")[1].split()[0]
        with openai.OpenAI(base_url=base_url, api_key="local", max_retries=0) as client:
            batch_id = _create(client, bodies)
            _progressed(client, batch_id)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    _left(tmp_path, batch_id)
    with LocalServer(tmp_path, models={"tiny": tiny_model}) as srv, _client(srv) as client:
        answered = _completed(client, batch_id, bodies)
        stored = _stored(client, "killed")
        # A completion stored in the instant between its answer and its line runs again.
        assert answered <= stored and len(stored) <= len(answered) + 1
