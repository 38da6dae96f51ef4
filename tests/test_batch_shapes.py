"""The Batch API's file lines (distill_shapes.batch): reading, writing, splitting."""

from __future__ import annotations

import json
from typing import Any

import pytest

from distill_shapes.batch import (
    MAX_FILE_BYTES,
    MAX_REQUESTS,
    BatchRequest,
    BatchResult,
    InvalidBatchFile,
    check_requests,
    read_requests,
    read_results,
    results_by_id,
    split_requests,
    write_requests,
    write_results,
)


def body(text: str = "hi", model: str = "tiny") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def line(custom_id: Any = "a", **changes: Any) -> str:
    record = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions"}
    record["body"] = body()
    record.update(changes)
    return json.dumps(record)


def fault(lines: list[str]) -> InvalidBatchFile:
    with pytest.raises(InvalidBatchFile) as info:
        list(read_requests(lines))
    return info.value


def test_limits_are_the_apis() -> None:
    assert MAX_REQUESTS == 50_000
    assert MAX_FILE_BYTES == 200_000_000


def test_written_requests_read_back_equal() -> None:
    requests = [BatchRequest(f"case-{i}", body(f"q{i}")) for i in range(3)]
    data = write_requests(requests)
    assert data.count(b"\n") == 3
    back = list(read_requests(data.splitlines()))
    assert back == requests
    assert [r.line for r in back] == [1, 2, 3]
    assert check_requests(data.splitlines()) == "tiny"


def test_blank_lines_are_skipped_and_numbers_kept() -> None:
    back = list(read_requests([line("a"), "", "  ", line("b")]))
    assert [(r.custom_id, r.line) for r in back] == [("a", 1), ("b", 4)]


@pytest.mark.parametrize(
    ("bad", "code", "words"),
    [
        ("{not json", "invalid_json", "one JSON object per line"),
        ("[1, 2]", "invalid_request", "not an object"),
        (line(None), "missing_custom_id", "non-empty string custom_id"),
        (line(""), "invalid_custom_id", "non-empty string custom_id"),
        (line(7), "invalid_custom_id", "non-empty string custom_id"),
        (line("b", method="GET"), "invalid_method", 'must be "POST"'),
        (line("b", url="/v1/embeddings"), "invalid_url", "'/v1/chat/completions'"),
        (line("b", body="hello"), "invalid_body", "must be a JSON object"),
        (line("b", body=None), "invalid_body", "missing"),
        (line("b", body={"messages": []}), "missing_model", "names its model"),
        (line("a"), "duplicate_custom_id", "used by an earlier line"),
        (line("b", body=body(model="other")), "mismatched_model", "line 1 uses 'tiny'"),
    ],
)
def test_a_bad_line_is_named_with_its_fix(bad: str, code: str, words: str) -> None:
    error = fault([line("a"), bad])
    assert error.line == 2 and error.code == code
    assert str(error).startswith("Invalid batch file: line 2: ")
    assert words in str(error)
    assert error.to_error() == {
        "code": code,
        "message": str(error),
        "param": error.param,
        "line": 2,
    }


def test_invalid_utf8_is_a_json_fault() -> None:
    with pytest.raises(InvalidBatchFile) as info:
        list(read_requests([b'{"custom_id": "\xff"}']))
    assert info.value.code == "invalid_json" and "UTF-8" in str(info.value)


def test_other_endpoints_can_be_allowed() -> None:
    urls = frozenset({"/v1/chat/completions", "/v1/responses"})
    assert len(list(read_requests([line("a", url="/v1/responses")], urls))) == 1


def test_the_writer_refuses_what_the_reader_would() -> None:
    with pytest.raises(InvalidBatchFile, match="line 2: custom_id 'a'"):
        write_requests([BatchRequest("a", body()), BatchRequest("a", body())])


def test_the_reader_stops_past_the_request_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import distill_shapes.batch as batch

    monkeypatch.setattr(batch, "MAX_REQUESTS", 2)
    error = fault([line("a"), line("b"), line("c")])
    assert error.line == 3 and error.code == "too_many_requests"
    monkeypatch.setattr(batch, "MAX_FILE_BYTES", len(line("a")) + 10)
    error = fault([line("a") + "\n", line("b") + "\n"])
    assert error.line == 2 and error.code == "file_too_large"


def test_results_round_trip() -> None:
    ok = BatchResult.answered("a", 200, {"object": "chat.completion", "choices": []})
    bad = BatchResult.answered("b", 400, {"error": {"message": "Bad temperature", "code": None}})
    cancelled = BatchResult.not_run("c", "batch_cancelled", "The batch was cancelled.")
    assert ok.ok and not bad.ok and not cancelled.ok
    assert ok.id.startswith("batch_req_") and ok.response and ok.response.request_id
    assert bad.message() == "HTTP 400: Bad temperature"
    assert cancelled.message() == "batch_cancelled: The batch was cancelled."
    data = write_results([ok, bad, cancelled])
    assert json.loads(data.splitlines()[2]) == {
        "id": cancelled.id,
        "custom_id": "c",
        "response": None,
        "error": {"code": "batch_cancelled", "message": "The batch was cancelled."},
    }
    assert list(read_results(data.splitlines())) == [ok, bad, cancelled]
    found = results_by_id([write_results([bad]), write_results([ok, cancelled])])
    assert set(found) == {"a", "b", "c"} and found["b"].body == bad.body


@pytest.mark.parametrize(
    "bad",
    [
        "nope",
        "[]",
        '{"response": null, "error": {"code": "x", "message": "y"}}',
        '{"custom_id": "a", "response": {"status_code": "200", "body": {}}, "error": null}',
        '{"custom_id": "a", "response": null, "error": null}',
    ],
)
def test_a_bad_result_line_is_named(bad: str) -> None:
    with pytest.raises(InvalidBatchFile, match="line 2"):
        list(read_results(["", bad]))


def test_split_keeps_each_file_within_the_limits_and_to_one_model() -> None:
    requests = [BatchRequest(f"t{i}", body(f"q{i}")) for i in range(7)]
    requests.insert(3, BatchRequest("s0", body("q", model="small")))
    files = split_requests(requests, max_requests=3)
    assert [len(f.splitlines()) for f in files] == [3, 3, 1, 1]
    ids = [[r.custom_id for r in read_requests(f.splitlines())] for f in files]
    assert ids == [["t0", "t1", "t2"], ["t3", "t4", "t5"], ["t6"], ["s0"]]
    size = len(requests[0].to_line())
    by_bytes = split_requests(requests[:3], max_bytes=2 * size + 1)
    assert [len(f.splitlines()) for f in by_bytes] == [2, 1]
    assert all(len(f) <= 2 * size + 1 for f in by_bytes)
    assert split_requests([]) == []


def test_split_refuses_a_request_no_file_can_hold() -> None:
    requests = [BatchRequest("a", body()), BatchRequest("b", body("x" * 500))]
    with pytest.raises(InvalidBatchFile, match="line 2: the request's line has"):
        split_requests(requests, max_bytes=300)
    with pytest.raises(InvalidBatchFile, match="line 2: custom_id 'a'"):
        split_requests([BatchRequest("a", body()), BatchRequest("a", body())])
    with pytest.raises(InvalidBatchFile, match="line 1: method"):
        split_requests([BatchRequest("a", body(), method="GET")])
