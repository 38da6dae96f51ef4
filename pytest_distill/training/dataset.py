"""Passing teacher outputs -> a validated chat fine-tune JSONL and its lineage manifest.

A line is the student's prompt, then the teacher's answer: its text, or its ``tool_calls`` in
the API's shape. A line whose student is offered tools carries them (``tools``, and
``parallel_tool_calls`` when the suite sets it), the same definitions the student is sent at
inference; the manifest records their hash. The assistant turns before the answer (few-shot
answers, a conversation's earlier turns) get ``weight: 0`` unless the suite sets
``train_earlier_turns: true``.

No API calls here: this module selects, filters, validates and writes. Files are written to a
temporary name and renamed, so a crash never leaves a half-written training set.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_shapes.training import MIN_EXAMPLES, parse_training_file
from pytest_distill import paths
from pytest_distill.atomic import write_atomic
from pytest_distill.records import ItemResult
from pytest_distill.roles import CallRecord

MANIFEST_SCHEMA = "pytest-distill/manifest/1"
Filter = Callable[[dict[str, Any], str], "dict[str, Any] | bool | None"]


class DatasetError(RuntimeError):
    """The training set cannot be built; the message says why and what to change."""


@dataclass(frozen=True, slots=True)
class Example:
    case: str  # "suite::case-id"
    completion_id: str | None
    stored: bool
    record: dict[str, Any]  # the chat fine-tune line: {"messages": [...]}
    case_sha256: str = ""  # the case's content, so the gate knows it again (verdict/leakage)
    batch_id: str | None = None  # the Batch API batch that answered it (None: a live call)
    custom_id: str | None = None  # its request's line in that batch

    def line(self) -> str:
        return json.dumps(self.record, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Selection:
    examples: tuple[Example, ...]
    train_cases: int
    passing: int
    duplicates: int
    too_long: int
    dropped_by_hook: int

    def explain(self) -> str:
        return (
            f"{self.passing} of {self.train_cases} train-split teacher cases passed; "
            f"{self.duplicates} duplicates, {self.too_long} over the token limit and "
            f"{self.dropped_by_hook} dropped by pytest_distill_filter_example hooks left "
            f"{len(self.examples)} examples"
        )


def estimate_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """An estimate, not a tokenizer: about 4 characters a token plus 4 a message."""
    return sum(
        4 + (len(str(m.get("content") or "")) + len(json.dumps(m.get("tool_calls") or ""))) // 4
        for m in messages
    )


def training_record(result: ItemResult, call: CallRecord) -> dict[str, Any]:
    """The fine-tune line of one passing answer: the student's prompt (the call's own, for a
    Python eval), the assistant's answer with its tool calls, and the tools offered."""
    student = result.train_messages is not None
    prompt = [dict(m) for m in (result.train_messages or call.messages)]
    if not result.train_earlier_turns:
        for message in prompt:
            if message.get("role") == "assistant":
                message.setdefault("weight", 0)
    answer: dict[str, Any] = {"role": "assistant", "content": call.reply}
    if call.tool_calls:
        answer["tool_calls"] = [c.to_json() for c in call.tool_calls]
        if not call.reply:
            del answer["content"]
    record: dict[str, Any] = {"messages": [*prompt, answer]}
    tools = result.train_tools if student else call.params.get("tools")
    parallel = (
        result.train_parallel_tool_calls if student else call.params.get("parallel_tool_calls")
    )
    if tools:
        record["tools"] = list(tools)
        if parallel is not None:
            record["parallel_tool_calls"] = parallel
    return record


def tools_sha256(record: Mapping[str, Any]) -> str | None:
    """The hash of a line's tool definitions (canonical JSON), None when it has none."""
    tools = record.get("tools")
    if not tools:
        return None
    text = json.dumps(tools, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def select(
    results: Iterable[ItemResult], *, max_tokens: int, keep: Filter | None = None
) -> Selection:
    """Candidates: passing teacher calls on the train split, in the student's prompt."""
    teacher = [r for r in results if r.role == "teacher" and r.split == "train"]
    passing = [r for r in teacher if _passing_calls(r)]
    seen: set[str] = set()
    examples: list[Example] = []
    duplicates = too_long = dropped = 0
    answers = [
        (result, call)
        for result in sorted(passing, key=lambda r: (r.suite, r.case_id, r.nodeid))
        for call in _passing_calls(result)
    ]
    for result, call in answers:
        record = training_record(result, call)
        case = f"{result.suite}::{result.case_id}"
        if keep is not None:
            verdict = keep(record, case)
            if verdict is False:
                dropped += 1
                continue
            if isinstance(verdict, dict):
                record = verdict
        example = Example(
            case,
            call.completion_id,
            call.stored,
            record,
            result.case_sha256,
            call.batch_id,
            call.custom_id,
        )
        if example.line() in seen:
            duplicates += 1
            continue
        if estimate_tokens(record["messages"]) > max_tokens:
            too_long += 1
            continue
        seen.add(example.line())
        examples.append(example)
    return Selection(tuple(examples), len(teacher), len(passing), duplicates, too_long, dropped)


def _passing_calls(result: ItemResult) -> list[CallRecord]:
    """A case's passing answers: each passing repeat's, or the one call of a passing case."""
    if result.attempts:
        return [a.call for a in result.attempts if a.passed and a.call is not None]
    return [result.call] if result.passed and result.call is not None else []


@dataclass(frozen=True, slots=True)
class Dataset:
    path: Path
    manifest_path: Path
    sha256: str
    examples: tuple[Example, ...] = field(repr=False)


def write(selection: Selection, directory: Path) -> Dataset:
    """Validate against OpenAI's fine-tune rules, then write JSONL and manifest atomically."""
    if len(selection.examples) < MIN_EXAMPLES:
        raise DatasetError(
            f"distill: {len(selection.examples)} training examples, at least {MIN_EXAMPLES} "
            f"are needed ({selection.explain()}); add cases, improve the teacher prompt or "
            "lower distill_holdout"
        )
    data = "".join(e.line() + "\n" for e in selection.examples).encode()
    try:
        parse_training_file(data)
    except ValueError as exc:
        raise DatasetError(f"distill: the training set breaks a fine-tune rule: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    path, manifest = paths.dataset_files(directory, digest)
    write_atomic(path, data)
    dataset = Dataset(path, manifest, digest, selection.examples)
    update_manifest(dataset, {})
    return dataset


def update_manifest(dataset: Dataset, training: Mapping[str, Any]) -> None:
    """The lineage: each line's case, completion, tools and batch (the batch id and the
    request's ``custom_id``, when a Batch API batch answered it), then file, job and fine-tuned
    model. ``tools_sha256``: the distinct tool definitions the lines carry, each one's hash."""
    lines: list[dict[str, Any]] = [
        {
            "line": number,
            "case": example.case,
            "case_sha256": example.case_sha256 or None,
            "completion_id": example.completion_id,
            "stored_completion_id": example.completion_id if example.stored else None,
            "tools_sha256": tools_sha256(example.record),
            "batch": (
                {"id": example.batch_id, "custom_id": example.custom_id}
                if example.batch_id
                else None
            ),
        }
        for number, example in enumerate(dataset.examples, start=1)
    ]
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "dataset": dataset.path.name,
        "sha256": dataset.sha256,
        "tools_sha256": sorted(
            {str(line["tools_sha256"]) for line in lines if line["tools_sha256"]}
        ),
        "lines": lines,
        "training": dict(training),
    }
    write_atomic(dataset.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
