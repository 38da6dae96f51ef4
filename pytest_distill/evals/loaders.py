"""The eval file formats, read into :class:`Suite` values with each case's line number.

- YAML suites (``*.eval.yaml``): a prompt, per-role prompt overrides, graders, and cases
  inline or from a JSONL file (``cases_file``).
- JSONL case files (``*.eval.jsonl``), one case a line, in any of: OpenAI-evals samples
  (``input`` messages + ``ideal``), chat fine-tune lines (``messages``; the last assistant
  message is the reference), or ``{"id", "messages", "reference"}``.

A malformed file raises :class:`CaseFileError` (``path:line: what is wrong; how to fix it``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_distill.evals.cases import (
    DEFAULT_GRADERS,
    CaseFileError,
    EvalCase,
    Message,
    Prompt,
    Suite,
)
from pytest_distill.evals.yamlines import LineDict, LineList, YamlSyntaxError, load_yaml
from pytest_distill.roles import UnknownParam, check_params

_SUITE_KEYS = {"name", "prompt", "roles", "graders", "params", "cases", "cases_file", "source"}
_CASE_KEYS = {"id", "vars", "reference", "messages", "graders", "metadata"}


def load_file(path: Path) -> Suite:
    if path.suffix == ".jsonl":
        return Suite(name=_stem(path), path=path, cases=tuple(_jsonl_cases(path)))
    return _load_suite(path)


def _stem(path: Path) -> str:
    return path.name.split(".")[0]


# --- YAML suites -----------------------------------------------------------------------------


def _load_suite(path: Path) -> Suite:
    try:
        doc = load_yaml(path.read_text(encoding="utf-8"))
    except YamlSyntaxError as exc:
        raise CaseFileError(path, exc.line, exc.problem) from None
    if not isinstance(doc, LineDict):
        raise CaseFileError(path, 1, "a suite is a mapping with 'prompt', 'graders' and 'cases'")
    _no_unknown(path, doc, _SUITE_KEYS, "suite")
    prompt = _prompt(path, doc.get("prompt"), doc.line)
    roles = _mapping(path, doc, "roles")
    role_prompts = {r: _prompt(path, v.get("prompt"), v.line) for r, v in roles.items()}
    role_params = {r: _params(path, v) for r, v in roles.items()}
    graders = _graders(path, doc.get("graders"), doc.line, DEFAULT_GRADERS)
    source = doc.get("source")
    if source is not None and (
        not isinstance(source, Mapping) or set(source) != {"stored_completions"}
    ):
        raise CaseFileError(
            path, doc.line_of("source"), "'source' takes one key, 'stored_completions'"
        )
    raw_cases = _raw_cases(path, doc) if source is None else []
    cases = tuple(_yaml_case(path, c, graders) for c in raw_cases)
    suite = Suite(
        name=str(doc.get("name") or _stem(path)),
        path=path,
        prompt=prompt,
        role_prompts=role_prompts,
        role_params=role_params,
        params=_params(path, doc),
        cases=cases,
        source=_plain(source["stored_completions"]) if source is not None else None,
        graders=graders,
        line=doc.line_of("source") if source is not None else doc.line,
    )
    _check_cases(suite)
    return suite


def _raw_cases(path: Path, doc: LineDict) -> list[tuple[int, Any]]:
    if "cases_file" in doc:
        source = path.parent / str(doc["cases_file"])
        if not source.is_file():
            raise CaseFileError(
                path, doc.line_of("cases_file"), f"cases_file {str(source)!r} does not exist"
            )
        return [(line, (source, data)) for line, data in _jsonl_lines(source)]
    cases = doc.get("cases")
    if not isinstance(cases, LineList) or not cases:
        raise CaseFileError(
            path, doc.line, "a suite needs a non-empty 'cases' list or a 'cases_file'"
        )
    return [(cases.line_at(i), (path, case)) for i, case in enumerate(cases)]


def _yaml_case(
    path: Path, entry: tuple[int, Any], graders: tuple[Mapping[str, Any], ...]
) -> EvalCase:
    line, (source, data) = entry
    if not isinstance(data, Mapping):
        raise CaseFileError(source, line, f"a case is a mapping with 'id' and 'vars', got {data!r}")
    if "input" in data or ("messages" in data and "vars" not in data):
        return _jsonl_case(source, line, data, graders)
    _no_unknown(source, data, _CASE_KEYS, "case", line)
    if "id" not in data:
        raise CaseFileError(source, line, "case has no 'id'; give every case a stable id")
    case_vars = data.get("vars", {})
    if not isinstance(case_vars, Mapping):
        raise CaseFileError(source, line, f"'vars' must be a mapping, got {case_vars!r}")
    return EvalCase(
        id=str(data["id"]),
        line=line,
        vars=dict(case_vars),
        reference=_plain(data.get("reference")),
        graders=_graders(source, data.get("graders"), line, graders),
        metadata=dict(data.get("metadata") or {}),
        source=source,
    )


def _check_cases(suite: Suite) -> None:
    seen: dict[str, int] = {}
    for case in suite.cases:
        if case.id in seen:
            raise CaseFileError(
                suite.path,
                case.line,
                f"duplicate case id {case.id!r} (first on line "
                f"{seen[case.id]}); case ids must be unique in a suite",
            )
        seen[case.id] = case.line
        if case.messages is None and suite.prompt.user is None:
            raise CaseFileError(
                suite.path, case.line, "no prompt to render: add 'prompt: {user: ...}'"
            )
        for role in ("teacher", *suite.role_prompts):
            try:
                suite.messages_for(case, role)
            except KeyError as exc:
                raise CaseFileError(
                    suite.path,
                    case.line,
                    f"case {case.id!r} has no variable {exc.args[0]!r} used by the "
                    f"{role} prompt; add it under 'vars'",
                ) from None


def _prompt(path: Path, raw: Any, line: int) -> Prompt:
    if raw is None:
        return Prompt()
    if isinstance(raw, str):
        return Prompt(user=raw)
    if not isinstance(raw, Mapping):
        raise CaseFileError(path, line, f"'prompt' must be a mapping or a string, got {raw!r}")
    _no_unknown(path, raw, {"system", "few_shot", "user"}, "prompt", getattr(raw, "line", line))
    shots = []
    for shot in raw.get("few_shot") or ():
        if not isinstance(shot, Mapping) or set(shot) != {"user", "assistant"}:
            raise CaseFileError(
                path,
                getattr(shot, "line", line),
                f"a few_shot entry needs exactly 'user' and 'assistant', got {shot!r}",
            )
        shots.append((_text(shot["user"]), _text(shot["assistant"])))
    return Prompt(system=raw.get("system"), few_shot=tuple(shots), user=raw.get("user"))


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(_plain(value), ensure_ascii=False)


def _graders(
    path: Path, raw: Any, line: int, default: tuple[Mapping[str, Any], ...]
) -> tuple[Mapping[str, Any], ...]:
    if raw is None:
        return default
    specs = raw if isinstance(raw, list) else [raw]
    for spec in specs:
        if not isinstance(spec, Mapping) or "type" not in spec:
            raise CaseFileError(
                path,
                getattr(spec, "line", line),
                f"a grader is a mapping with a 'type', got {spec!r}",
            )
    return tuple(_spec(s, line) for s in specs)


def _spec(raw: Mapping[str, Any], line: int) -> LineDict:
    """A grader spec as plain values, keeping its line for error messages."""
    spec = LineDict(_plain(raw))
    spec.line = getattr(raw, "line", line)
    spec.key_lines = {}
    return spec


def _mapping(path: Path, doc: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = doc.get(key) or {}
    if not isinstance(value, Mapping):
        where = doc.line_of(key) if isinstance(doc, LineDict) else 1
        raise CaseFileError(path, where, f"{key!r} must be a mapping, got {value!r}")
    return value


def _params(path: Path, doc: Mapping[str, Any]) -> dict[str, Any]:
    """A suite's or a role's ``params``, checked against the chat API's sampling parameters."""
    params = _mapping(path, doc, "params")
    try:
        check_params(params)
    except UnknownParam as exc:
        where = params.line_of(exc.name) if isinstance(params, LineDict) else 1
        raise CaseFileError(path, where, f"'params': {exc.problem}") from None
    return _plain(params)  # type: ignore[no-any-return]


def _no_unknown(
    path: Path, data: Mapping[str, Any], allowed: set[str], what: str, line: int | None = None
) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        where = data.line_of(unknown[0]) if isinstance(data, LineDict) else (line or 1)
        raise CaseFileError(
            path, where, f"unknown {what} key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}"
        )


def _plain(value: Any) -> Any:
    """Line-tracking containers back to plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


# --- JSONL case files ------------------------------------------------------------------------


def _jsonl_lines(path: Path) -> list[tuple[int, Any]]:
    rows = []
    for number, text in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not text.strip():
            continue
        try:
            rows.append((number, json.loads(text)))
        except json.JSONDecodeError as exc:
            raise CaseFileError(
                path, number, f"not valid JSON ({exc.msg} at column {exc.colno})"
            ) from None
    if not rows:
        raise CaseFileError(path, 1, "the file holds no cases")
    return rows


def _jsonl_cases(path: Path) -> list[EvalCase]:
    cases = [_jsonl_case(path, line, data, DEFAULT_GRADERS) for line, data in _jsonl_lines(path)]
    _check_cases(Suite(name=_stem(path), path=path, cases=tuple(cases)))
    return cases


def _jsonl_case(
    path: Path, line: int, data: Any, graders: tuple[Mapping[str, Any], ...]
) -> EvalCase:
    if not isinstance(data, Mapping):
        raise CaseFileError(path, line, f"a case line is a JSON object, got {data!r}")
    alternatives: list[Any] = []
    if "input" in data:
        messages, reference = data["input"], data.get("ideal")
        if isinstance(reference, list):  # several ideals: the output may match any of them
            reference, *alternatives = reference or [None]
    elif "messages" in data:
        messages, reference = _split_chat(path, line, data)
    else:
        raise CaseFileError(
            path,
            line,
            "a case line needs 'input' and 'ideal' (OpenAI evals) or 'messages' "
            "(chat fine-tune format)",
        )
    _check_messages(path, line, messages)
    if reference is None:
        raise CaseFileError(path, line, "case has no reference: add 'ideal' or 'reference'")
    case_id = (
        data.get("id")
        or "c" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    )
    case = EvalCase(
        id=str(case_id),
        line=line,
        reference=_plain(reference),
        messages=tuple(messages),
        graders=_graders(path, data.get("graders"), line, graders),
        metadata=dict(data.get("metadata") or {}),
        alternatives=tuple(_plain(a) for a in alternatives),
        source=path,
    )
    if (
        isinstance(case.reference, (dict, list))
        and data.get("graders") is None
        and (graders is DEFAULT_GRADERS)
    ):
        case = replace(case, graders=({"type": "json"},))
    return case


def _split_chat(path: Path, line: int, data: Mapping[str, Any]) -> tuple[list[Message], Any]:
    messages = list(data["messages"]) if isinstance(data["messages"], list) else []
    if "reference" in data:
        return messages, data["reference"]
    last = max((i for i, m in enumerate(messages) if _role(m) == "assistant"), default=None)
    if last is None:
        raise CaseFileError(
            path, line, "chat case has no assistant message to use as the reference"
        )
    return messages[:last], messages[last].get("content")


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None


def _check_messages(path: Path, line: int, messages: Any) -> None:
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise CaseFileError(path, line, "messages must be a non-empty list of chat messages")
    for message in messages:
        if _role(message) not in ("system", "developer", "user", "assistant"):
            raise CaseFileError(
                path,
                line,
                f"message {message!r} needs a role of system, developer, user or assistant",
            )
