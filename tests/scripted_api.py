"""The fine-tuning, batch and stored-completions parts of the scripted server, in the real
API's shapes (``openapi.yaml``): files (their content kept), fine-tuning jobs (created, listed
by metadata, retrieved, their events), batches (created, listed, retrieved: each retrieve
moves one step on, ``batch_polls`` of them ``in_progress`` before ``batch_final``) and stored
chat completions listed page by page.

``create_fails`` makes job creation do its work and *then* answer an error status, as a real
server that fails after committing does (``jobs_lost_on_fail``: one that fails before).
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, Any]
"""A status and a JSON body (bytes: sent as they are)."""


def _error(status: int, message: str) -> Reply:
    return status, {"error": {"message": message, "type": "server_error", "code": None}}


@dataclass
class ScriptedApi:
    job_status: str = "succeeded"
    create_fails: list[int] = field(default_factory=list)
    jobs_lost_on_fail: bool = False  # a failed create keeps no job (else it does)
    stored: list[dict[str, Any]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    # Batches: how each ends, and what its lines answer.
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)
    batch_creates: list[dict[str, Any]] = field(default_factory=list)
    batch_create_fails: list[int] = field(default_factory=list)  # after creating, as jobs
    batch_polls: int = 1  # retrieves answered in_progress before the batch is final
    batch_final: str = "completed"  # or expired, failed, cancelled
    batch_ran: int | None = None  # lines run before an expiry or cancel (None: all)
    batch_line_fails: dict[str, int] = field(default_factory=dict)  # user text: status
    batch_reversed: bool = False  # output lines in the reverse order of the input
    chat: Callable[[dict[str, Any]], dict[str, Any]] | None = None  # a body's completion
    _ids: Any = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def store(
        self,
        model: str,
        user: str,
        reply: str | None,
        tool_calls: list[dict[str, Any]] | None = None,
        **metadata: str,
    ) -> None:
        """A completion stored with ``store: true``: its request and its reply (its text, or
        ``tool_calls`` in the API's shape and no text)."""
        number = len(self.stored) + 1
        message: dict[str, Any] = {"role": "assistant", "content": reply, "refusal": None}
        if tool_calls:
            message["tool_calls"] = tool_calls
        self.stored.append(
            {
                "id": f"chatcmpl-stored{number:04d}",
                "object": "chat.completion",
                "created": 1_700_000_000 + number,
                "model": model,
                "metadata": metadata,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "tool_calls" if tool_calls else "stop",
                        "logprobs": None,
                        "message": message,
                    }
                ],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                "_messages": [{"id": f"msg-{number}-0", "role": "user", "content": user}],
            }
        )

    # --- routing ------------------------------------------------------------------------------

    def get(self, path: str) -> Reply | None:
        url = urlsplit(path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        parts = url.path.strip("/").split("/")
        if parts[:2] == ["v1", "chat"] and parts[2:3] == ["completions"]:
            if len(parts) == 3:
                return self._list_stored(query)
            if len(parts) == 5 and parts[4] == "messages":
                return self._stored_messages(parts[3])
        if parts[:2] == ["v1", "batches"]:
            if len(parts) == 2:
                return self._list_batches(query)
            return self._retrieve_batch(parts[2])
        if parts[:2] == ["v1", "files"] and parts[3:] == ["content"]:
            content = self.contents.get(parts[2])
            return (200, content) if content is not None else _error(404, f"no file {parts[2]}")
        if parts[:3] == ["v1", "fine_tuning", "jobs"]:
            if len(parts) == 3:
                return self._list_jobs(query)
            job = self.jobs.get(parts[3])
            if job is None:
                return _error(404, f"no job {parts[3]}")
            if len(parts) == 4:
                return 200, job
            if parts[4:] == ["events"]:
                return 200, {"object": "list", "data": [], "has_more": False}
        return None

    def post(self, path: str, body: Any, raw: bytes = b"", content_type: str = "") -> Reply | None:
        if path == "/v1/files":
            return self._upload(raw, content_type)
        if path == "/v1/batches":
            return self._create_batch(body)
        if path == "/v1/fine_tuning/jobs":
            return self._create(body)
        return None

    # --- stored completions -------------------------------------------------------------------

    def _list_stored(self, query: dict[str, str]) -> Reply:
        chosen = [
            s
            for s in self.stored
            if query.get("model") in (None, s["model"])
            and all(
                s["metadata"].get(k[9:-1]) == v for k, v in query.items() if k[:9] == "metadata["
            )
        ]
        if query.get("order") == "desc":
            chosen.reverse()
        ids = [s["id"] for s in chosen]
        start = ids.index(query["after"]) + 1 if query.get("after") in ids else 0
        limit = int(query.get("limit", 20))
        page = chosen[start : start + limit]
        return 200, {
            "object": "list",
            "data": [{k: v for k, v in s.items() if k != "_messages"} for s in page],
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": start + limit < len(chosen),
        }

    def _stored_messages(self, completion_id: str) -> Reply:
        found = next((s for s in self.stored if s["id"] == completion_id), None)
        if found is None:
            return _error(404, f"no stored completion {completion_id}")
        data = [{**m, "content_parts": None} for m in found["_messages"]]
        return 200, {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"],
            "last_id": data[-1]["id"],
            "has_more": False,
        }

    # --- files and fine-tuning jobs -----------------------------------------------------------

    def _upload(self, raw: bytes = b"", content_type: str = "") -> Reply:
        fields = _multipart(raw, content_type)
        with self._lock:
            file_id = f"file-{next(self._ids)}"
        self.contents[file_id] = fields.get("file", (b"", ""))[0]
        self.files[file_id] = self._file(
            file_id,
            fields.get("file", (b"", "train.jsonl"))[1] or "train.jsonl",
            fields.get("purpose", (b"fine-tune", ""))[0].decode(),
        )
        return 200, self.files[file_id]

    def _file(self, file_id: str, name: str, purpose: str) -> dict[str, Any]:
        return {
            "id": file_id,
            "object": "file",
            "bytes": len(self.contents.get(file_id, b"")),
            "created_at": int(time.time()),
            "filename": name,
            "purpose": purpose,
            "status": "processed",
        }

    # --- batches ------------------------------------------------------------------------------

    def _create_batch(self, body: dict[str, Any]) -> Reply:
        file_id = body.get("input_file_id")
        if file_id not in self.contents or self.files[file_id]["purpose"] != "batch":
            return 400, {"error": {"message": f"no batch file {file_id}", "type": "invalid"}}
        self.batch_creates.append(body)
        lines = [json.loads(line) for line in self.contents[file_id].splitlines() if line]
        with self._lock:
            batch_id = f"batch_{next(self._ids)}"
            fails = self.batch_create_fails.pop(0) if self.batch_create_fails else None
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": body["endpoint"],
            "errors": None,
            "input_file_id": file_id,
            "completion_window": body["completion_window"],
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(time.time()),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": body.get("metadata"),
            "_polls": 0,
        }
        if fails is not None:
            return _error(fails, "The server had an error while processing your request.")
        return 200, self._shown(batch_id)

    def _shown(self, batch_id: str) -> dict[str, Any]:
        return {k: v for k, v in self.batches[batch_id].items() if not k.startswith("_")}

    def _retrieve_batch(self, batch_id: str) -> Reply:
        batch = self.batches.get(batch_id)
        if batch is None:
            return _error(404, f"no batch {batch_id}")
        if batch["status"] in ("validating", "in_progress"):
            batch["_polls"] += 1
            if batch["_polls"] > self.batch_polls:
                self._finish(batch)
            else:
                batch["status"] = "in_progress"
        return 200, self._shown(batch_id)

    def _finish(self, batch: dict[str, Any]) -> None:
        requests = [json.loads(x) for x in self.contents[batch["input_file_id"]].splitlines() if x]
        ran = requests if self.batch_ran is None else requests[: self.batch_ran]
        output, errors = [], []
        for request in ran:
            user = request["body"]["messages"][-1]["content"]
            status = self.batch_line_fails.get(user)
            if status is not None:
                answer = {"error": {"message": f"scripted {status}", "type": "server_error"}}
            else:
                assert self.chat is not None
                answer = self.chat(request["body"])
            line = {
                "id": f"batch_req_{len(output) + len(errors)}",
                "custom_id": request["custom_id"],
                "response": {"status_code": status or 200, "request_id": "req", "body": answer},
                "error": None,
            }
            (errors if status else output).append(line)
        if self.batch_reversed:
            output.reverse()
        for name, lines in (("output_file_id", output), ("error_file_id", errors)):
            if lines:
                with self._lock:
                    file_id = f"file-{next(self._ids)}"
                self.contents[file_id] = b"".join(json.dumps(x).encode() + b"\n" for x in lines)
                self.files[file_id] = self._file(file_id, f"{name}.jsonl", "batch_output")
                batch[name] = file_id
        batch["status"] = self.batch_final
        if self.batch_final == "failed":
            batch["errors"] = {
                "object": "list",
                "data": [{"code": "scripted", "message": "scripted failure", "line": None}],
            }
        batch["request_counts"] = {
            "total": len(requests),
            "completed": len(output),
            "failed": len(errors),
        }

    def _list_batches(self, query: dict[str, str]) -> Reply:
        data = [self._shown(b) for b in reversed(self.batches)][: int(query.get("limit", 20))]
        return 200, {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": False,
        }

    def _create(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            job_id = f"ftjob-{next(self._ids)}"
            fails = self.create_fails.pop(0) if self.create_fails else None
        refused = _check_method(body, self.contents.get(body.get("training_file", ""), b""))
        if refused is not None:
            return 400, {"error": {"message": refused, "type": "invalid_request_error"}}
        done = self.job_status == "succeeded"
        method = body.get("method") or {"type": "supervised"}
        hyper = (method.get(method["type"]) or {}).get("hyperparameters", {})
        self.jobs[job_id] = {
            "id": job_id,
            "object": "fine_tuning.job",
            "created_at": int(time.time()),
            "error": None,
            "fine_tuned_model": (
                f"ft:{body['model']}:scripted:{body.get('suffix')}:{job_id}" if done else None
            ),
            "finished_at": int(time.time()) if done else None,
            "hyperparameters": {"n_epochs": "auto", "batch_size": "auto", **hyper},
            "model": body["model"],
            "organization_id": "org-scripted",
            "result_files": [],
            "status": self.job_status,
            "trained_tokens": 100 if done else None,
            "training_file": body["training_file"],
            "validation_file": None,
            "integrations": None,
            "seed": body.get("seed", 7),
            "estimated_finish": None,
            "method": body.get("method"),
            "metadata": body.get("metadata"),
        }
        if fails is not None and self.jobs_lost_on_fail:
            del self.jobs[job_id]
        if fails is not None:  # the job exists (unless lost); the answer says otherwise
            return _error(fails, "The server had an error while processing your request.")
        return 200, self.jobs[job_id]

    def _list_jobs(self, query: dict[str, str]) -> Reply:
        wanted = {k[9:-1]: v for k, v in query.items() if k[:9] == "metadata["}
        data = [
            j
            for j in reversed(list(self.jobs.values()))
            if all((j["metadata"] or {}).get(k) == v for k, v in wanted.items())
        ][: int(query.get("limit", 20))]
        return 200, {"object": "list", "data": data, "has_more": False}


def _check_method(body: dict[str, Any], content: bytes) -> str | None:
    """A job's ``method`` as the API checks it, and its training file in that method's shape
    (chat lines, preference lines or reinforcement prompts): the error, or None."""
    from distill_shapes.methods import parse_method
    from distill_shapes.preference import parse_preference_file
    from distill_shapes.reinforcement import parse_reinforcement_file
    from distill_shapes.training import parse_training_file

    try:
        method = parse_method(body["method"]) if "method" in body else None
        kind = method.type if method is not None else "supervised"
        if content:
            {
                "supervised": parse_training_file,
                "dpo": parse_preference_file,
                "reinforcement": parse_reinforcement_file,
            }[kind](content)
    except ValueError as exc:
        return str(exc)
    return None


def _multipart(raw: bytes, content_type: str) -> dict[str, tuple[bytes, str]]:
    """A multipart form's fields: name -> (content, file name)."""
    if not content_type.startswith("multipart/"):
        return {}
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + raw)
    fields = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        fields[str(name)] = (payload, str(part.get_filename() or ""))
    return fields
