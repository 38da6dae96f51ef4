""" "Distill" on the dashboard: stored completions -> a training file -> a fine-tuning job.

The file is checked by the same rules as ``pytest --distill`` (``distill_shapes.training``) before
anything is written, so a selection too small or invalid is refused with the rule's own words,
and nothing is uploaded or started.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from distill_server.errors import ApiError, whole_number
from distill_server.http.app import App
from distill_shapes.training import MIN_EXAMPLES, InvalidTrainingFile, parse_training_file

MAX_SELECTION = 50_000
_SUFFIX = re.compile(r"[A-Za-z0-9_-]{1,40}")


class SelectionError(ValueError):
    """Why a selection cannot be distilled; shown on the page."""


@dataclass(frozen=True, slots=True)
class Request:
    ids: tuple[str, ...]
    base_model: str
    suffix: str
    epochs: int


def parse_request(form: Any, ids: list[str]) -> Request:
    """The distill form's fields, checked; ``ids`` is the selection already resolved."""
    suffix = str(form.get("suffix", "")).strip() or "dashboard"
    if not _SUFFIX.fullmatch(suffix):
        raise SelectionError(
            f"suffix {suffix!r} is not allowed: use 1 to 40 letters, digits, '-' or '_'"
        )
    raw_epochs = str(form.get("epochs", "")).strip() or "3"
    try:
        epochs = whole_number(raw_epochs, "epochs", 1, 50)
    except ApiError:
        shown = raw_epochs if len(raw_epochs) <= 40 else raw_epochs[:40] + "..."
        raise SelectionError(
            f"epochs {shown!r} is not allowed: use a whole number 1 to 50"
        ) from None
    base = str(form.get("base_model", "")).strip()
    if not base:
        raise SelectionError("choose the base model to fine-tune")
    return Request(tuple(dict.fromkeys(ids)), base, suffix, epochs)


def training_lines(app: App, ids: tuple[str, ...]) -> bytes:
    """One chat fine-tuning line per selected completion: its prompt and its reply, with the
    request's tools and the reply's tool calls.

    Duplicates (the same prompt and reply stored twice) are written once, as ``--distill`` does.
    """
    lines: dict[str, None] = {}
    for completion_id in ids:
        record = app.store.get("completion", completion_id)
        if record is None:
            raise SelectionError(f"completion {completion_id!r} no longer exists; reload the page")
        message = record.body["choices"][0]["message"]
        reply: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
        if message.get("tool_calls"):
            reply = {
                **reply,
                "content": message.get("content"),
                "tool_calls": message["tool_calls"],
            }
        line: dict[str, Any] = {"messages": [*record.extra.get("messages", []), reply]}
        if record.extra.get("tools"):
            line["tools"] = record.extra["tools"]
        lines[json.dumps(line, ensure_ascii=False)] = None
    return "".join(f"{line}\n" for line in lines).encode()


def start(app: App, request: Request) -> dict[str, Any]:
    """Validate, upload and start the job; raises SelectionError before anything is written."""
    if len(request.ids) < MIN_EXAMPLES:
        raise SelectionError(
            f"{len(request.ids)} completions selected; fine-tuning needs at least "
            f"{MIN_EXAMPLES}: select more, or widen the filter"
        )
    if len(request.ids) > MAX_SELECTION:
        raise SelectionError(f"{len(request.ids)} completions selected; at most {MAX_SELECTION}")
    data = training_lines(app, request.ids)
    try:
        app.registry.base(request.base_model)
        examples = parse_training_file(data)
    except InvalidTrainingFile as exc:
        raise SelectionError(str(exc)) from None
    except Exception as exc:  # an unknown base model: the registry's own message
        raise SelectionError(str(getattr(exc, "message", exc))) from None
    upload = app.files.add(f"dashboard-{request.suffix}.jsonl", "fine-tune", data)
    hyper = {"n_epochs": request.epochs}
    return app.jobs.create(
        {
            "model": request.base_model,
            "training_file": upload["id"],
            "suffix": request.suffix,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
            "metadata": {"source": "dashboard", "examples": str(len(examples))},
        }
    )
