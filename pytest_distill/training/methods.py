"""The training files past SFT: preference pairs (DPO) and reinforcement prompts (RL).

A **pair** is one train-split case's prompt (the student's), the teacher's passing answer as
the preferred output, and a failing answer of the model being improved as the non-preferred
one: the student's own answer from this session (method ``dpo``), or one of the SFT model's
samples (``sft+dpo``, sampled and graded by the ``--distill`` step). A case where nothing
failed gives no pair. The lines are OpenAI's DPO lines (``distill_shapes.preference``), checked
by the same rules module, written atomically with a lineage manifest: each line's case, the
teacher's completion, and the rejected completion and where it came from.

A **prompt** (``sft+rl``) is one train-split case's student prompt with the case's
``reference`` and variables as the grader's ``item``; the job's grader is the suite's graders
in OpenAI's grader JSON.

No API calls here: the caller samples and grades; this module selects, validates and writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distill_shapes.preference import parse_preference_lines, preference_line
from distill_shapes.reinforcement import (
    grader_json,
    parse_reinforcement_lines,
    reinforcement_line,
)
from distill_shapes.training import MIN_EXAMPLES
from pytest_distill import paths
from pytest_distill.atomic import write_atomic
from pytest_distill.records import ItemResult
from pytest_distill.roles import CallRecord
from pytest_distill.training.dataset import (
    MANIFEST_SCHEMA,
    DatasetError,
    estimate_tokens,
    tools_sha256,
)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A failing answer to a train-split case: the call, and which model gave it (``student``,
    ``sft sample 2``)."""

    call: CallRecord
    source: str


@dataclass(frozen=True, slots=True)
class Line:
    """One line of a preference or prompt file and its lineage."""

    case: str  # "suite::case-id"
    case_sha256: str
    record: dict[str, Any]
    lineage: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        return json.dumps(self.record, ensure_ascii=False, sort_keys=True)


@dataclass(frozen=True, slots=True)
class Selection:
    """The lines chosen for a file, and the counts that explain them."""

    kind: str  # "dpo" or "reinforcement"
    lines: tuple[Line, ...]
    train_cases: int
    passing: int  # train-split cases with a passing teacher answer
    without_failure: int = 0  # dpo: of those, cases where nothing failed (no pair)
    duplicates: int = 0
    too_long: int = 0
    grader: Mapping[str, Any] | None = None  # reinforcement: the job's grader JSON

    def explain(self) -> str:
        if self.kind == "dpo":
            return (
                f"{self.passing} of {self.train_cases} train-split teacher cases passed; "
                f"{self.without_failure} of them had no failing answer to pair with, "
                f"{self.duplicates} pairs were duplicates and {self.too_long} over the token "
                f"limit, leaving {len(self.lines)} pairs"
            )
        return (
            f"{self.train_cases} train-split cases; {self.too_long} over the token limit "
            f"left {len(self.lines)} prompts"
        )


def answer_message(call: CallRecord) -> dict[str, Any]:
    """A call's answer as an assistant message: its text, or its tool calls in the API's shape."""
    message: dict[str, Any] = {"role": "assistant", "content": call.reply}
    if call.tool_calls:
        message["tool_calls"] = [c.to_json() for c in call.tool_calls]
        if not call.reply:
            message["content"] = None
    return message


def _prompt(result: ItemResult, call: CallRecord) -> list[dict[str, Any]]:
    """The student's prompt for the case (the call's own, for a Python eval), without any
    ``weight`` keys: a DPO or RL line has no per-message weights."""
    prompt = [dict(m) for m in (result.train_messages or call.messages)]
    for message in prompt:
        message.pop("weight", None)
    return prompt


def _tools(result: ItemResult, call: CallRecord) -> tuple[list[dict[str, Any]] | None, Any]:
    student = result.train_messages is not None
    tools = result.train_tools if student else call.params.get("tools")
    parallel = (
        result.train_parallel_tool_calls if student else call.params.get("parallel_tool_calls")
    )
    return (list(tools) if tools else None), (parallel if tools else None)


def passing_call(result: ItemResult) -> CallRecord | None:
    """The teacher's passing answer to a case (its first passing repeat's), if any."""
    if result.attempts:
        return next((a.call for a in result.attempts if a.passed and a.call is not None), None)
    return result.call if result.passed else None


def teacher_cases(results: Iterable[ItemResult]) -> list[ItemResult]:
    """The train-split teacher results, in a stable order."""
    found = [r for r in results if r.role == "teacher" and r.split == "train"]
    return sorted(found, key=lambda r: (r.suite, r.case_id, r.nodeid))


def student_failures(results: Iterable[ItemResult]) -> dict[str, list[Rejected]]:
    """Method ``dpo``: the student's graded failures on train-split cases, by ``suite::id``
    (each failing repeat's answer; an answer that errored is no answer)."""
    found: dict[str, list[Rejected]] = {}
    for result in results:
        if result.role != "student" or result.split != "train" or result.error is not None:
            continue
        attempts = result.attempts or ()
        calls = (
            [a.call for a in attempts if not a.passed and a.call is not None]
            if attempts
            else ([result.call] if not result.passed and result.call is not None else [])
        )
        if calls:
            found.setdefault(f"{result.suite}::{result.case_id}", []).extend(
                Rejected(call, "student") for call in calls
            )
    return found


def select_pairs(
    results: Iterable[ItemResult],
    rejected: Mapping[str, Sequence[Rejected]],
    *,
    max_tokens: int,
) -> Selection:
    """One pair per distinct failing answer of a case with a passing teacher answer."""
    teacher = teacher_cases(results)
    passing = [(r, call) for r in teacher if (call := passing_call(r)) is not None]
    seen: set[str] = set()
    lines: list[Line] = []
    without = duplicates = too_long = 0
    for result, call in passing:
        case = f"{result.suite}::{result.case_id}"
        failures = rejected.get(case) or ()
        if not failures:
            without += 1
            continue
        prompt = _prompt(result, call)
        tools, parallel = _tools(result, call)
        chosen = answer_message(call)
        for failure in failures:
            wrong = answer_message(failure.call)
            if _same_answer(chosen, wrong):
                continue  # graded differently, answered alike: it teaches nothing
            record = preference_line(
                prompt, chosen, wrong, tools=tools, parallel_tool_calls=parallel
            )
            line = Line(
                case,
                result.case_sha256,
                record,
                {
                    "completion_id": call.completion_id,
                    "rejected_completion_id": failure.call.completion_id,
                    "rejected_from": failure.source,
                    "rejected_model": failure.call.model,
                },
            )
            if line.text() in seen:
                duplicates += 1
                continue
            if estimate_tokens([*prompt, chosen, wrong]) > max_tokens:
                too_long += 1
                continue
            seen.add(line.text())
            lines.append(line)
    return Selection("dpo", tuple(lines), len(teacher), len(passing), without, duplicates, too_long)


def _same_answer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def calls(m: Mapping[str, Any]) -> list[tuple[Any, Any]]:
        return [
            (c["function"]["name"], c["function"]["arguments"]) for c in m.get("tool_calls") or ()
        ]

    return (a.get("content") or "") == (b.get("content") or "") and calls(a) == calls(b)


@dataclass(frozen=True, slots=True)
class PromptCase:
    """What a reinforcement prompt needs of a case beyond its teacher result: its variables,
    reference and grader specs."""

    vars: Mapping[str, Any]
    reference: Any
    graders: tuple[Mapping[str, Any], ...]


def select_prompts(
    results: Iterable[ItemResult], cases: Mapping[str, PromptCase], *, max_tokens: int
) -> Selection:
    """One prompt per train-split case (of those ``cases`` knows), all graded alike."""
    teacher = [r for r in teacher_cases(results) if f"{r.suite}::{r.case_id}" in cases]
    specs: dict[str, tuple[Mapping[str, Any], ...]] = {}
    lines: list[Line] = []
    too_long = 0
    for result in teacher:
        case = f"{result.suite}::{result.case_id}"
        known = cases[case]
        call = result.call or next((a.call for a in result.attempts if a.call), None)
        if call is None and result.train_messages is None:
            continue  # an errored Python eval: no prompt known
        key = json.dumps(known.graders, sort_keys=True, default=str)
        specs.setdefault(key, known.graders)
        if len(specs) > 1:
            raise DatasetError(
                f"distill: sft+rl trains one job with one grader, but train-split cases are "
                f"graded differently ({case} differs from the cases before it); run the suites "
                "that share graders (select them by path), or give the cases the same graders"
            )
        prompt = (
            _prompt(result, call)
            if call is not None
            else [dict(m) for m in result.train_messages or ()]
        )
        tools, parallel = _tools(result, call) if call is not None else (None, None)
        item = {**_plain(known.vars), "reference": known.reference}
        try:
            record = reinforcement_line(prompt, item, tools=tools, parallel_tool_calls=parallel)
        except ValueError as exc:
            raise DatasetError(f"distill: case {case}: {exc}") from None
        if estimate_tokens(prompt) > max_tokens:
            too_long += 1
            continue
        lines.append(Line(case, result.case_sha256, record, {}))
    grader = grader_json([_explicit(g) for g in next(iter(specs.values()))]) if specs else None
    return Selection(
        "reinforcement", tuple(lines), len(teacher), len(teacher), too_long=too_long, grader=grader
    )


def _explicit(spec: Mapping[str, Any]) -> dict[str, Any]:
    """A grader spec with the plugin's defaults written out where OpenAI's grader JSON requires
    the field: the sample's text as ``input`` and the case's ``reference``, and string_check's
    ``eq``. The plugin grades it as before."""
    out = dict(spec)
    if out.get("type") in ("string_check", "text_similarity"):
        out.setdefault("input", "{{sample.output_text}}")
        out.setdefault("reference", "{{item.reference}}")
    if out.get("type") == "string_check":
        out.setdefault("operation", "eq")
    return out


def _plain(values: Mapping[str, Any]) -> dict[str, Any]:
    """A case's variables as JSON values (a date read from YAML becomes its text)."""
    return {
        str(k): v
        for k, v in json.loads(json.dumps(dict(values), default=str, ensure_ascii=False)).items()
    }


@dataclass(frozen=True, slots=True)
class TrainingFile:
    """A written preference or prompt file: what a job trains on, and its lineage."""

    kind: str  # "dpo" or "reinforcement"
    path: Path
    manifest_path: Path
    sha256: str
    lines: tuple[Line, ...] = field(repr=False)
    grader: Mapping[str, Any] | None = None


def write(selection: Selection, directory: Path, fix: str) -> TrainingFile:
    """Check the lines by OpenAI's rules, then write the JSONL and its manifest atomically.
    ``fix``: what to do when there are too few lines."""
    noun = "preference pairs" if selection.kind == "dpo" else "reinforcement prompts"
    if len(selection.lines) < MIN_EXAMPLES:
        raise DatasetError(
            f"distill: {len(selection.lines)} {noun}, at least {MIN_EXAMPLES} are needed "
            f"({selection.explain()}); {fix}"
        )
    data = "".join(line.text() + "\n" for line in selection.lines).encode()
    try:
        if selection.kind == "dpo":
            parse_preference_lines(data.split(b"\n"))
        else:
            parse_reinforcement_lines(data.split(b"\n"))
    except ValueError as exc:
        raise DatasetError(f"distill: the {noun} break a fine-tune rule: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    path, manifest = paths.dataset_files(directory, digest)
    write_atomic(path, data)
    written = TrainingFile(
        selection.kind, path, manifest, digest, selection.lines, selection.grader
    )
    update_manifest(written, {})
    return written


def read(path: Path, kind: str) -> TrainingFile | None:
    """A file written earlier (a rerun picks up its second stage's file rather than sampling
    again), with its manifest's lines and grader; None when it is gone or changed."""
    try:
        data = path.read_bytes()
        manifest = json.loads((path.parent / paths.MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    digest = hashlib.sha256(data).hexdigest()
    if manifest.get("sha256") != digest:
        return None
    records = [json.loads(raw) for raw in data.splitlines() if raw.strip()]
    lines = tuple(
        Line(
            str(meta.get("case")),
            str(meta.get("case_sha256") or ""),
            record,
            {k: v for k, v in meta.items() if k not in ("line", "case", "case_sha256")},
        )
        for meta, record in zip(manifest.get("lines") or (), records, strict=False)
    )
    grader = manifest.get("grader")
    grader = grader if isinstance(grader, dict) else None
    return TrainingFile(kind, path, path.parent / paths.MANIFEST, digest, lines, grader)


def update_manifest(written: TrainingFile, training: Mapping[str, Any]) -> None:
    """The lineage: each line's case and completions, then the file, job and model."""
    lines = [
        {
            "line": number,
            "case": line.case,
            "case_sha256": line.case_sha256 or None,
            **line.lineage,
            "tools_sha256": tools_sha256(line.record.get("input") or line.record),
        }
        for number, line in enumerate(written.lines, start=1)
    ]
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "method": written.kind,
        "dataset": written.path.name,
        "sha256": written.sha256,
        "tools_sha256": sorted({str(x["tools_sha256"]) for x in lines if x["tools_sha256"]}),
        "lines": lines,
        "training": dict(training),
    }
    if written.grader is not None:
        manifest["grader"] = dict(written.grader)
    write_atomic(written.manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
