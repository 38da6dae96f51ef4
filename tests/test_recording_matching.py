"""Request matching, scrubbing and in-order replay, without a pytest run around them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from pytest_distill.cassettes import files as cassettes
from pytest_distill.cassettes import matching
from pytest_distill.cassettes import recorder as recording

CHAT = "http://127.0.0.1:41234/v1/chat/completions"
JSON = {"content-type": "application/json"}


def key(body: bytes, uri: str = CHAT, headers: dict[str, str] = JSON) -> tuple[object, ...]:
    return matching.shape("POST", uri, body, headers).key


def test_json_body_with_reordered_keys_and_other_whitespace_matches() -> None:
    a = b'{"model": "big", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}'
    b = b'{"temperature":0,"messages":[{"content":"hi","role":"user"}],\n "model":"big"}'
    assert key(a) == key(b)


def test_json_numbers_and_booleans_keep_their_types() -> None:
    keys = {key(b'{"temperature": %s}' % v) for v in (b"1", b"1.0", b"true")}
    assert len(keys) == 3
    sent = matching.shape("POST", CHAT, b'{"temperature": 1.0}', JSON)
    recorded = matching.shape("POST", CHAT, b'{"temperature": 1}', JSON)
    assert matching.difference(recorded, sent) == (
        "body.temperature: recorded 1 (int), sent 1.0 (float)"
    )


def test_host_and_port_are_not_part_of_the_key() -> None:
    body = b'{"model": "big"}'
    assert key(body) == key(body, uri="http://local.invalid/v1/chat/completions")
    assert key(body) != key(body, uri="http://local.invalid/v1/completions")


def test_query_order_does_not_matter_but_values_do() -> None:
    a = matching.shape("GET", "http://x/v1/fine_tuning/jobs?limit=20&after=a", None, {})
    b = matching.shape("GET", "http://x/v1/fine_tuning/jobs?after=a&limit=20", None, {})
    c = matching.shape("GET", "http://x/v1/fine_tuning/jobs?after=b&limit=20", None, {})
    assert a.key == b.key != c.key
    assert matching.difference(a, c) == "query.after: recorded 'a' (str), sent 'b' (str)"


def test_run_id_in_stored_completion_metadata_does_not_break_matching() -> None:
    a = b'{"store": true, "metadata": {"distill_case": "c1", "distill_run": "aaaa"}}'
    b = b'{"store": true, "metadata": {"distill_case": "c1", "distill_run": "bbbb"}}'
    c = b'{"store": true, "metadata": {"distill_case": "c2", "distill_run": "bbbb"}}'
    assert key(a) == key(b) != key(c)


def _upload(content: bytes) -> httpx2.Request:
    request = httpx2.Request(
        "POST",
        "http://x/v1/files",
        data={"purpose": "fine-tune"},
        files={"file": ("train.jsonl", content, "application/octet-stream")},
    )
    request.read()
    return request


def _multipart_key(request: httpx2.Request) -> tuple[object, ...]:
    return matching.shape("POST", str(request.url), request.content, dict(request.headers)).key


def test_multipart_upload_matches_across_runs_whatever_the_boundary() -> None:
    first, second = _upload(b'{"messages": []}\n'), _upload(b'{"messages": []}\n')
    assert first.headers["content-type"] != second.headers["content-type"]
    assert _multipart_key(first) == _multipart_key(second)
    assert _multipart_key(first) != _multipart_key(_upload(b'{"messages": [1]}\n'))


def test_scrubbing_removes_secrets_both_ways_and_is_idempotent() -> None:
    interaction = {
        "request": {
            "method": "POST",
            "uri": CHAT,
            "headers": {
                "Authorization": ["Bearer sk-distill-FAKE-0123456789"],
                "api-key": ["k"],
                "OpenAI-Organization": ["org-1"],
                "OpenAI-Project": ["proj-1"],
                "Cookie": ["a=b"],
                "X-Stainless-Lang": ["python"],
                "Content-Type": ["application/json"],
            },
            "body": {"json": {}},
        },
        "response": {
            "status": {"code": 200, "message": "OK"},
            "headers": {
                "Set-Cookie": ["s=1"],
                "openai-organization": ["org-1"],
                "openai-project": ["proj-1"],
                "x-request-id": ["req_1"],
            },
            "body": {"json": {}},
        },
    }
    once = cassettes.scrub(interaction)
    assert once["request"]["headers"] == {"content-type": ["application/json"]}
    assert once["response"]["headers"] == {"x-request-id": ["req_1"]}
    assert cassettes.scrub(once) == once


def test_scrubbing_runs_again_when_a_cassette_is_loaded(tmp_path: Path) -> None:
    path = tmp_path / "c.json"
    leaked = {"authorization": ["Bearer sk-distill-FAKE-0123456789"]}
    path.write_text(
        json.dumps(
            {
                "format": cassettes.FORMAT,
                "interactions": [
                    {
                        "request": {"method": "GET", "uri": CHAT, "headers": leaked},
                        "response": {"status": {"code": 200}, "headers": {"set-cookie": ["x"]}},
                    }
                ],
            }
        )
    )
    [loaded], _ = cassettes.load(path)
    assert loaded["request"]["headers"] == {} and loaded["response"]["headers"] == {}


def test_cassette_names_follow_the_node_id() -> None:
    assert recording.cassette_name("evals/codes.eval.yaml::i03[teacher]") == (
        "evals/codes.eval.yaml/i03[teacher]"
    )
    assert recording.cassette_name("tests/test_a.py::TestX::test_y[a b]").startswith(
        "tests/test_a.py/TestX/test_y[a_b]-"
    )


def _job(status: str) -> dict[str, Any]:
    return {
        "id": "ftjob-1",
        "object": "fine_tuning.job",
        "created_at": 0,
        "model": "tiny",
        "organization_id": "org",
        "status": status,
        "training_file": "file-1",
        "hyperparameters": {},
        "result_files": [],
        "seed": 0,
        "fine_tuned_model": None,
        "finished_at": None,
        "error": None,
        "trained_tokens": None,
        "validation_file": None,
    }


@pytest.fixture
def polls(tmp_path: Path) -> Iterator[openai.OpenAI]:
    """A replaying session whose cassette holds three polls of one job."""
    interactions = [
        {
            "request": {"method": "GET", "uri": "http://x/v1/fine_tuning/jobs/ftjob-1"},
            "response": {"status": {"code": 200}, "headers": {}, "body": {"json": _job(s)}},
        }
        for s in ("queued", "running", "succeeded")
    ]
    cassettes.dump(tmp_path / "cassettes" / "poll.json", interactions, {})
    import vcr  # noqa: F401

    recorder = recording.Recorder(
        recording.SessionCassette(tmp_path / "cassettes", "none", tmp_path)
    )
    client = openai.OpenAI(
        base_url="http://local.invalid/v1",
        api_key="x",
        max_retries=0,
        http_client=openai.DefaultHttpx2Client(transport=recorder.transport()),
    )
    try:
        with recording.route(recording.Route("poll", "pytest --distill-record-mode=all")):
            yield client
    finally:
        client.close()


def test_identical_requests_replay_in_recorded_order_then_miss(polls: openai.OpenAI) -> None:
    statuses = [polls.fine_tuning.jobs.retrieve("ftjob-1").status for _ in range(3)]
    assert statuses == ["queued", "running", "succeeded"]
    with pytest.raises(recording.CassetteMiss, match="its 3 recorded response"):
        polls.fine_tuning.jobs.retrieve("ftjob-1")


def test_a_miss_is_not_retried_or_wrapped_by_the_sdk(polls: openai.OpenAI) -> None:
    with pytest.raises(recording.CassetteMiss) as caught:
        polls.with_options(max_retries=2).fine_tuning.jobs.retrieve("ftjob-2")
    assert str(caught.value) == (
        "GET /v1/fine_tuning/jobs/ftjob-2 has no recorded response; cassettes/poll.json: "
        "closest recorded GET /v1/fine_tuning/jobs/ftjob-1 differs in its path; "
        "record it with: pytest --distill-record-mode=all"
    )
