"""A small OpenAI-compatible HTTP server on loopback whose replies a test scripts.

It is a real server (``http.server`` on 127.0.0.1, HTTP/1.1 keep-alive) so the plugin's SDK
traffic really crosses a socket: no patched client. Replies come from a table keyed by model
and the last user message; ``delay`` makes each reply slow, ``fail`` queues error responses.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from scripted_api import ScriptedApi

Reply = str | dict[str, Any]
"""A reply's text, or ``{"content": <text or None>, "tool_calls": [{name, arguments}]}``: the
model calls tools (``arguments`` an object, sent as a JSON string)."""
Answer = Callable[[str, list[dict[str, Any]]], Reply]


@dataclass
class Failure:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


class ScriptedServer:
    def __init__(self, answer: Answer | None = None, *, delay: float = 0.0) -> None:
        self.table: dict[tuple[str, str], Reply] = {}
        self.answer = answer
        self.delay = delay
        self.model_info: dict[str, dict[str, Any]] = {}
        # The model name answered for a requested one, as the API answers an alias with its
        # dated snapshot (``gpt-4.1`` -> ``gpt-4.1-2025-04-14``).
        self.answered_as: dict[str, str] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self.failures: list[Failure] = []
        self.api = ScriptedApi()  # files, fine-tuning jobs, batches, stored completions
        self.api.chat = self.completion
        self.chat_spans: list[tuple[float, float]] = []  # (arrived, answered), perf_counter
        self.processing_ms: int | None = None  # sent as openai-processing-ms, as OpenAI does
        # Fine-tuning, as a remote trainer (Azure OpenAI's v1 API takes OpenAI's shape): the
        # job creates it saw, with their headers, and the model each job "trains".
        self.job_creates: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.uploads: list[dict[str, str]] = []
        self.auth: list[tuple[str, str | None]] = []  # (path, Authorization) of every POST
        self.trained_model = "ft:remote-model"
        self._lock = threading.Lock()
        self._count = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> ScriptedServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def script(self, model: str, replies: dict[str, Reply]) -> None:
        """``model`` answers the user message ``key`` with ``replies[key]``."""
        self.table.update({(model, k): v for k, v in replies.items()})

    def fail(self, status: int, code: str = "rate_limit_exceeded", **headers: str) -> None:
        body = {"error": {"message": f"scripted {status}", "type": code, "code": code}}
        self.failures.append(
            Failure(status, body, {k.replace("_", "-"): v for k, v in headers.items()})
        )

    def chat_requests(self) -> list[Any]:
        return [b for m, p, b in self.requests if p.endswith("/chat/completions")]

    # --- behaviour ----------------------------------------------------------------------------

    def reply_for(self, model: str, messages: list[dict[str, Any]]) -> Reply:
        if self.answer is not None:
            return self.answer(model, messages)
        last = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        return self.table.get((model, last), "I do not know.")

    def completion(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self.reply_for(body["model"], body["messages"])
        with self._lock:
            self._count += 1
            number = self._count
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in body["messages"])
        message: dict[str, Any] = {"role": "assistant", "content": answer, "refusal": None}
        finish = "stop"
        reply = answer if isinstance(answer, str) else answer.get("content") or ""
        if isinstance(answer, dict):
            message["content"] = answer.get("content")
            message["tool_calls"] = [
                {
                    "id": f"call_{number}_{index}",
                    "type": "function",
                    "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])},
                }
                for index, call in enumerate(answer["tool_calls"], start=1)
            ]
            finish = "tool_calls"
        return {
            "id": f"chatcmpl-{number:06d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.answered_as.get(body["model"], body["model"]),
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": finish,
                    "logprobs": None,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": len(reply.split()),
                "total_tokens": prompt_tokens + len(reply.split()),
            },
        }

    def model(self, model_id: str) -> dict[str, Any]:
        return {
            "id": model_id,
            "object": "model",
            "created": 0,
            "owned_by": "scripted",
            **self.model_info.get(model_id, {}),
        }


def _file(size: int) -> dict[str, Any]:
    return {
        "id": "file-remote-1",
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": "train.jsonl",
        "purpose": "fine-tune",
        "status": "processed",
    }


def _job(server: ScriptedServer, job_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """A job that succeeded at once (the events endpoint answers an empty page)."""
    if job_id == "events":
        return {"object": "list", "data": [], "has_more": False}
    return {
        "object": "fine_tuning.job",
        "id": job_id,
        "model": (body or {}).get("model", "base"),
        "created_at": int(time.time()),
        "finished_at": int(time.time()),
        "fine_tuned_model": server.trained_model,
        "organization_id": "remote",
        "result_files": [],
        "status": "succeeded",
        "training_file": (body or {}).get("training_file", "file-remote-1"),
        "validation_file": None,
        "hyperparameters": {"n_epochs": 3, "batch_size": 1, "learning_rate_multiplier": 1.0},
        "trained_tokens": 100,
        "error": None,
        "seed": 0,
        "metadata": (body or {}).get("metadata"),
    }


def _handler(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Headers and body go out in two writes; without this, Nagle + delayed ACK add
            # ~40 ms to every keep-alive response.
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            pass

        def do_GET(self) -> None:
            server.requests.append(("GET", self.path, None))
            path = self.path.split("?", 1)[0]
            azure = path.startswith("/openai/")  # the Azure-shaped trainer of the remote tests
            answer = None if azure else server.api.get(self.path)
            if azure and path.endswith("/fine_tuning/jobs"):
                self._send(200, {"object": "list", "data": [], "has_more": False})
            elif azure and "/fine_tuning/jobs/" in path:
                self._send(200, _job(server, path.rsplit("/", 1)[1]))
            elif answer is not None:
                self._send(*answer)
            elif self.path.startswith("/v1/models/"):
                self._send(200, server.model(self.path.rsplit("/", 1)[1]))
            else:
                self._send(
                    404,
                    {
                        "error": {
                            "message": f"no route {self.path}",
                            "type": "invalid_request_error",
                        }
                    },
                )

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length)
            server.auth.append((self.path, self.headers.get("authorization")))
            azure = self.path.startswith("/openai/")
            if azure and self.path.endswith("/files"):
                server.uploads.append({k.lower(): v for k, v in self.headers.items()})
                self._send(200, _file(len(raw)))
                return
            multipart = self.headers.get("content-type", "").startswith("multipart/")
            body = None if multipart else json.loads(raw or b"{}")
            if azure and self.path.endswith("/fine_tuning/jobs"):
                server.job_creates.append((body, {k.lower(): v for k, v in self.headers.items()}))
                self._send(200, _job(server, f"ftjob-{len(server.job_creates)}", body))
                return
            server.requests.append(("POST", self.path, body))
            with server._lock:
                failure = server.failures.pop(0) if server.failures else None
            if failure is not None:
                self._send(failure.status, failure.body, failure.headers)
                return
            answer = (
                None
                if azure
                else server.api.post(self.path, body, raw, self.headers.get("content-type", ""))
            )
            if answer is not None:
                self._send(*answer)
                return
            if not self.path.endswith("/chat/completions"):
                self._send(
                    404,
                    {
                        "error": {
                            "message": f"no route {self.path}",
                            "type": "invalid_request_error",
                        }
                    },
                )
                return
            arrived = time.perf_counter()
            if server.delay:
                time.sleep(server.delay)
            timing = (
                {}
                if server.processing_ms is None
                else {"openai-processing-ms": str(server.processing_ms)}
            )
            self._send(200, server.completion(body), timing)
            server.chat_spans.append((arrived, time.perf_counter()))

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            kind = "application/octet-stream" if isinstance(body, bytes) else "application/json"
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(data)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler
