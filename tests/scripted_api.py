"""The fine-tuning and stored-completions parts of the scripted server, in the real API's
shapes (``openapi.yaml``): files, fine-tuning jobs (created, listed by metadata, retrieved,
their events) and stored chat completions listed page by page.

``create_fails`` makes job creation do its work and *then* answer an error status, as a real
server that fails after committing does (``jobs_lost_on_fail``: one that fails before).
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

Reply = tuple[int, Any]


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

    def post(self, path: str, body: Any) -> Reply | None:
        if path == "/v1/files":
            return self._upload()
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

    def _upload(self) -> Reply:
        with self._lock:
            file_id = f"file-{next(self._ids)}"
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": 0,
            "created_at": int(time.time()),
            "filename": "train.jsonl",
            "purpose": "fine-tune",
            "status": "processed",
        }
        return 200, self.files[file_id]

    def _create(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            job_id = f"ftjob-{next(self._ids)}"
            fails = self.create_fails.pop(0) if self.create_fails else None
        done = self.job_status == "succeeded"
        hyper = body.get("method", {}).get("supervised", {}).get("hyperparameters", {})
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
