"""Chat completions: generation through the batcher, and stored completions."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from pytest_distill.local.api.files import new_id
from pytest_distill.local.api.jobs import check_metadata, matches
from pytest_distill.local.engine.batcher import Batcher
from pytest_distill.local.errors import ApiError, bad_request, not_found
from pytest_distill.local.models import ModelSource, Registry
from pytest_distill.local.store import Record, Store, paginate
from pytest_distill.training.rules import ROLES

if TYPE_CHECKING:
    from pytest_distill.local.engine.decode import Engine, GenRequest


class Serving:
    """One batcher (and so one loaded model) per base model, created on first use."""

    def __init__(self) -> None:
        self._batchers: dict[str, Batcher] = {}
        self._lock = threading.Lock()

    def batcher(self, source: ModelSource) -> Batcher:
        with self._lock:
            if source.id not in self._batchers:
                self._batchers[source.id] = Batcher(lambda: _load(source))
            return self._batchers[source.id]

    def close(self) -> None:
        with self._lock:
            for batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()


def _load(source: ModelSource) -> Engine:
    from pytest_distill.local.engine.decode import Engine

    return Engine(source)


class Chat:
    """``/chat/completions`` and its stored-completion endpoints."""

    def __init__(self, store: Store, registry: Registry, serving: Serving) -> None:
        self._store = store
        self._registry = registry
        self._serving = serving

    def create(self, request: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """The completion body, and the size of the batch it was decoded in."""
        model = request.get("model")
        if not isinstance(model, str):
            raise bad_request("`model` is required.", "model", "missing_required")
        resolved = self._registry.resolve(model)
        messages = _messages(request.get("messages"))
        generation = _generation(request, messages)
        future = self._serving.batcher(resolved.base).submit(resolved.adapter, generation)
        try:
            result = future.result()
        except CancelledError:  # a BaseException: the server is stopping under this request
            raise ApiError(503, "The server is shutting down.", type="server_error") from None
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens,
        }
        message: dict[str, Any] = {
            "role": "assistant",
            "content": result.text,
            "refusal": None,
            "annotations": [],
        }
        choice = {"index": 0, "message": message, "finish_reason": result.finish_reason}
        body: dict[str, Any] = {
            "id": new_id("chatcmpl-"),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [{**choice, "logprobs": None}],
            "usage": usage,
            "service_tier": "default",
            "system_fingerprint": "fp_local",
            "metadata": check_metadata(request.get("metadata")),
        }
        if request.get("store"):
            self._store.put(Record("completion", body["id"], body, {"messages": messages}))
        return body, result.batch_size

    def list(
        self,
        model: str | None,
        metadata: Mapping[str, str],
        after: str | None,
        limit: int,
        order: str,
    ) -> dict[str, Any]:
        bodies = [r.body for r in self._store.list("completion")]
        bodies = [b for b in bodies if (not model or b["model"] == model)]
        bodies = [b for b in bodies if matches(b.get("metadata"), metadata)]
        return paginate(bodies, after=after, limit=limit, newest_first=order == "desc").body()

    def retrieve(self, completion_id: str) -> dict[str, Any]:
        return self._record(completion_id).body

    def update(self, completion_id: str, request: Mapping[str, Any]) -> dict[str, Any]:
        record = self._record(completion_id)
        if "metadata" not in request:
            raise bad_request("`metadata` is required.", "metadata", "missing_required")
        body = {**record.body, "metadata": check_metadata(request["metadata"])}
        self._store.put(Record("completion", completion_id, body, record.extra))
        return body

    def delete(self, completion_id: str) -> dict[str, Any]:
        self._record(completion_id)
        self._store.delete("completion", completion_id)
        return {"object": "chat.completion.deleted", "id": completion_id, "deleted": True}

    def messages(
        self, completion_id: str, after: str | None, limit: int, order: str
    ) -> dict[str, Any]:
        stored = self._record(completion_id).extra["messages"]
        bodies = [
            {
                "id": f"{completion_id}-{i}",
                **m,
                "refusal": None,
                "name": None,
                "content_parts": None,
            }
            for i, m in enumerate(stored)
        ]
        return paginate(bodies, after=after, limit=limit, newest_first=order == "desc").body()

    def _record(self, completion_id: str) -> Record:
        record = self._store.get("completion", completion_id)
        if record is None:
            raise not_found("chat completion", completion_id, "completion_id")
        return record


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise bad_request("`messages` must be a non-empty list.", "messages")
    out = []
    for index, item in enumerate(value):
        role = item.get("role") if isinstance(item, dict) else None
        if role not in ROLES:
            allowed = ", ".join(sorted(ROLES))
            raise bad_request(f"Unknown role {role!r}; known: {allowed}.", f"messages[{index}]")
        out.append({"role": role, "content": _text(item.get("content"))})
    return out


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


def _generation(request: Mapping[str, Any], messages: list[dict[str, str]]) -> GenRequest:
    from pytest_distill.local.engine.decode import GenRequest

    if request.get("n", 1) != 1:
        raise bad_request("Only n=1 is supported by the local server.", "n")
    if request.get("stream"):
        raise bad_request("Streaming is not supported by the local server.", "stream")
    stop = request.get("stop")
    stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
    limit = request.get("max_completion_tokens") or request.get("max_tokens")
    template = [
        {"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
        for m in messages
    ]
    temperature = request.get("temperature")
    return GenRequest(
        messages=tuple(template),
        max_tokens=int(limit) if limit else None,
        temperature=float(1.0 if temperature is None else temperature),
        top_p=float(request.get("top_p") or 1.0),
        seed=request.get("seed"),
        stop=tuple(str(s) for s in stops),
    )
