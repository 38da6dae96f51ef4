"""The eval file formats, read into :class:`Suite` values with each case's line number.

- YAML suites (``*.eval.yaml``): a prompt, per-role prompt overrides, graders, and cases
  inline or from a JSONL file (``cases_file``).
- Tools and structured output (``tools`` or ``tools_file``, ``tool_choice``,
  ``parallel_tool_calls``, ``response_format``), for the suite or a role, read with the API's
  own shapes (``distill_shapes.tools``); a case's ``messages`` may hold a conversation with
  tool calls and their results.
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

from distill_shapes.tools import (
    FunctionTool,
    InvalidShape,
    parse_response_format,
    parse_tool_call,
    parse_tool_choice,
    parse_tools,
)
from pytest_distill.evals.cases import (
    DEFAULT_GRADERS,
    CaseFileError,
    EvalCase,
    Message,
    Prompt,
    Suite,
    Tooling,
)
from pytest_distill.evals.yamlines import LineDict, LineList, YamlSyntaxError, load_yaml
from pytest_distill.roles import UnknownParam, check_params

_TOOLING_KEYS = {"tools", "tools_file", "tool_choice", "parallel_tool_calls", "response_format"}
_SUITE_KEYS = {
    "name",
    "prompt",
    "roles",
    "graders",
    "params",
    "cases",
    "cases_file",
    "source",
    "train_earlier_turns",
    *_TOOLING_KEYS,
}
_CASE_KEYS = {"id", "vars", "reference", "messages", "graders", "metadata", *_TOOLING_KEYS}
TOOL_CALLS_GRADERS: tuple[Mapping[str, Any], ...] = ({"type": "tool_calls"},)
"""The graders of a case whose reference is a list of expected tool calls, unless it (or its
suite) names graders."""


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
    tooling = _tooling(path, doc)
    role_tooling = {r: _tooling(path, v) for r, v in roles.items() if isinstance(v, Mapping)}
    earlier = doc.get("train_earlier_turns", False)
    if not isinstance(earlier, bool):
        raise CaseFileError(
            path,
            doc.line_of("train_earlier_turns"),
            f"'train_earlier_turns' is {earlier!r}; write true (train every assistant turn of "
            "a training line) or false (only its answer, the default)",
        )
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
        tooling=tooling,
        role_tooling=role_tooling,
        train_earlier_turns=earlier,
    )
    _check_tooling(suite, doc)
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
    reference = _plain(data.get("reference"))
    return EvalCase(
        tooling=_case_tooling(source, data, line),
        id=str(data["id"]),
        line=line,
        vars=dict(case_vars),
        reference=reference,
        graders=_graders(source, data.get("graders"), line, _for_calls(reference, graders)),
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
        if case.messages is not None or case.tooling is not None:
            _check_case_tooling(suite, case)
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
    shots = [
        _shot(path, shot, number, getattr(shot, "line", line))
        for number, shot in enumerate(raw.get("few_shot") or (), start=1)
    ]
    return Prompt(system=raw.get("system"), few_shot=tuple(shots), user=raw.get("user"))


def _shot(path: Path, shot: Any, number: int, line: int) -> tuple[Message, ...]:
    """A worked example: ``{user, assistant}``, where ``assistant`` is text or ``{tool_calls:
    [{name, arguments}]}``; an answer with tool calls also takes ``tool_results``, one per call
    (the API answers every call before the conversation goes on)."""
    if not isinstance(shot, Mapping) or not {"user", "assistant"} <= set(shot) <= {
        "user",
        "assistant",
        "tool_results",
    }:
        raise CaseFileError(
            path,
            line,
            "a few_shot entry needs 'user' and 'assistant' (and 'tool_results' when the "
            f"assistant calls tools), got {_plain(shot)!r}",
        )
    user: Message = {"role": "user", "content": _text(shot["user"])}
    answer = shot["assistant"]
    if not (isinstance(answer, Mapping) and "tool_calls" in answer):
        if "tool_results" in shot:
            raise CaseFileError(
                path, line, "'tool_results' answers tool calls; this few_shot answer makes none"
            )
        return user, {"role": "assistant", "content": _text(answer)}
    raw_calls = answer["tool_calls"]
    if not isinstance(raw_calls, list) or not raw_calls:
        raise CaseFileError(
            path,
            getattr(answer, "line", line),
            "a few_shot answer's 'tool_calls' is a non-empty list of {name, arguments}",
        )
    calls = [
        _wire_call(path, getattr(call, "line", line), call, f"call_shot{number}_{index}")
        for index, call in enumerate(raw_calls, start=1)
    ]
    results = shot.get("tool_results")
    if not isinstance(results, list) or len(results) != len(calls):
        raise CaseFileError(
            path,
            getattr(shot, "line_of", lambda _: line)("tool_results"),
            f"this few_shot answer makes {len(calls)} tool call(s); give 'tool_results', a list "
            "of as many results (text or JSON), one per call in order, as the API answers "
            "every call before the conversation goes on",
        )
    assistant: Message = {"role": "assistant", "content": None, "tool_calls": calls}
    if isinstance(answer.get("content"), str):
        assistant["content"] = answer["content"]
    tools = [
        {"role": "tool", "tool_call_id": call["id"], "content": _text(result)}
        for call, result in zip(calls, results, strict=True)
    ]
    return (user, assistant, *tools)


def _wire_call(path: Path, line: int, raw: Any, default_id: str) -> dict[str, Any]:
    """A tool call as the API writes it, from its shape or the short ``{name, arguments}``
    (``arguments`` an object or a JSON string); ``default_id`` when it has no id."""
    raw = _plain(raw)
    if isinstance(raw, Mapping) and "function" not in raw:
        raw = {"id": raw.get("id", default_id), "type": "function", "function": dict(raw)}
        raw["function"].pop("id", None)
    if isinstance(raw, Mapping) and isinstance(raw.get("function"), Mapping):
        function = dict(raw["function"])
        if not isinstance(function.get("arguments", ""), str):
            function["arguments"] = json.dumps(function["arguments"], ensure_ascii=False)
        function.setdefault("arguments", "{}")
        raw = {"type": "function", **raw, "function": function}
    try:
        return parse_tool_call(raw, "tool_call").to_json()
    except InvalidShape as error:
        raise CaseFileError(path, line, str(error)) from None


# --- tools and response formats -----------------------------------------------------------


def _tooling(path: Path, doc: Mapping[str, Any], line: int = 1) -> Tooling:
    """A suite's (a role's, a case's) ``tools``/``tools_file``, ``tool_choice``,
    ``parallel_tool_calls`` and ``response_format``, each in the API's shape."""

    def line_of(key: str) -> int:
        return doc.line_of(key) if isinstance(doc, LineDict) else line

    tools: tuple[FunctionTool, ...] | None = None
    if "tools" in doc and "tools_file" in doc:
        raise CaseFileError(
            path,
            line_of("tools_file"),
            "'tools' and 'tools_file' are both given; keep one (the file, to share the tools "
            "between suites, or the list)",
        )
    if "tools" in doc:
        tools = _tools(path, doc["tools"], line_of("tools"), "tools")
    elif "tools_file" in doc:
        tools = _tools_file(path, doc["tools_file"], line_of("tools_file"))
    choice = None
    if doc.get("tool_choice") is not None:
        try:
            choice = parse_tool_choice(_plain(doc["tool_choice"]))
        except InvalidShape as error:
            raise CaseFileError(path, line_of("tool_choice"), str(error)) from None
    parallel = doc.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise CaseFileError(
            path,
            line_of("parallel_tool_calls"),
            f"'parallel_tool_calls' is {parallel!r}; write true or false",
        )
    response_format = None
    if doc.get("response_format") is not None:
        try:
            response_format = parse_response_format(_plain(doc["response_format"]))
        except InvalidShape as error:
            raise CaseFileError(path, line_of("response_format"), str(error)) from None
    return Tooling(tools, choice, parallel, response_format)


def _case_tooling(path: Path, data: Mapping[str, Any], line: int) -> Tooling | None:
    return _tooling(path, data, line) if _TOOLING_KEYS & set(data) else None


def _tools(path: Path, raw: Any, line: int, where: str) -> tuple[FunctionTool, ...]:
    try:
        return parse_tools(_plain(raw), where)
    except InvalidShape as error:
        # The line of the tool at fault, where the list knows it.
        index = error.field[len(where) + 1 :].split("]", 1)[0]
        if isinstance(raw, LineList) and index.isdigit():
            line = raw.line_at(int(index))
        raise CaseFileError(path, line, str(error)) from None


def _tools_file(path: Path, name: Any, line: int) -> tuple[FunctionTool, ...]:
    source = path.parent / str(name)
    if not isinstance(name, str) or not source.is_file():
        raise CaseFileError(
            path,
            line,
            f"tools_file {str(source)!r} does not exist; give a JSON or YAML file, relative to "
            "the suite, that holds a list of function tools",
        )
    try:
        raw = load_yaml(source.read_text(encoding="utf-8"))  # JSON reads as YAML too
    except YamlSyntaxError as exc:
        raise CaseFileError(source, exc.line, exc.problem) from None
    return _tools(source, raw, getattr(raw, "line", 1), "tools")


def _check_tooling(suite: Suite, doc: LineDict) -> None:
    """Each role's ``tool_choice`` names a tool it is offered (and has tools to choose from)."""
    roles = doc.get("roles") or {}
    for role in ("teacher", "student", *suite.role_tooling):
        tooling = suite.tooling_for(role)
        if tooling.tool_choice is None:
            continue
        own = roles.get(role) if isinstance(roles, Mapping) else None
        line = (
            own.line_of("tool_choice")
            if isinstance(own, LineDict) and "tool_choice" in own
            else doc.line_of("tool_choice")
        )
        if not tooling.tools:
            raise CaseFileError(
                suite.path,
                line,
                f"tool_choice is {tooling.tool_choice.to_json()!r} but the {role} role is "
                "offered no tools; add 'tools' (or 'tools_file')",
            )
        try:
            parse_tool_choice(tooling.tool_choice.to_json(), tooling.tools)
        except InvalidShape as error:
            raise CaseFileError(suite.path, line, f"{error} (the {role} role's tools)") from None


def _check_case_tooling(suite: Suite, case: EvalCase) -> None:
    """The tools a case's conversation called, and its tool_choice, are offered to each role
    it is sent to."""
    called = {
        call["function"]["name"]
        for message in case.messages or ()
        for call in message.get("tool_calls") or ()
    }
    for role in ("teacher", "student", *suite.role_tooling):
        tooling = suite.tooling_for(role, case)
        offered = {tool.name for tool in tooling.tools or ()}
        if tooling.tool_choice is not None and case.tooling is not None:
            try:
                parse_tool_choice(tooling.tool_choice.to_json(), tooling.tools or ())
            except InvalidShape as error:
                raise CaseFileError(
                    case.source or suite.path, case.line, f"{error} (the {role} role's tools)"
                ) from None
        missing = sorted(set(called) - offered)
        if missing:
            raise CaseFileError(
                case.source or suite.path,
                case.line,
                f"the conversation calls {missing[0]!r}, which the {role} role is not offered "
                f"(its tools: {', '.join(sorted(offered)) or 'none'}); add it to the suite's "
                "'tools'",
            )


def _for_calls(
    reference: Any, graders: tuple[Mapping[str, Any], ...]
) -> tuple[Mapping[str, Any], ...]:
    """The tool_calls grader for a reference of expected calls, where no graders are named."""
    if graders is DEFAULT_GRADERS and _is_calls(reference):
        return TOOL_CALLS_GRADERS
    return graders


def _is_calls(reference: Any) -> bool:
    """A list of ``{name, arguments}`` (or of the API's tool calls)."""
    return (
        isinstance(reference, list)
        and bool(reference)
        and all(
            isinstance(item, Mapping)
            and isinstance(item.get("function", item), Mapping)
            and "name" in item.get("function", item)
            for item in reference
        )
    )


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
    messages = _checked_messages(path, line, messages)
    if reference is None:
        raise CaseFileError(path, line, "case has no reference: add 'ideal' or 'reference'")
    case_id = (
        data.get("id")
        or "c" + hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:10]
    )
    case = EvalCase(
        tooling=_case_tooling(path, data, line),
        id=str(case_id),
        line=line,
        reference=_plain(reference),
        messages=tuple(messages),
        graders=_graders(path, data.get("graders"), line, graders),
        metadata=dict(data.get("metadata") or {}),
        alternatives=tuple(_plain(a) for a in alternatives),
        source=path,
    )
    if data.get("graders") is None and graders is DEFAULT_GRADERS:
        if _is_calls(case.reference):
            case = replace(case, graders=TOOL_CALLS_GRADERS)
        elif isinstance(case.reference, (dict, list)):
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
    answer = messages[last]
    if isinstance(answer, Mapping) and answer.get("tool_calls"):
        calls = [_wire_call(path, line, c, "call_answer") for c in answer["tool_calls"]]
        return messages[:last], [
            {"name": c["function"]["name"], "arguments": _arguments(c["function"]["arguments"])}
            for c in calls
        ]
    return messages[:last], answer.get("content")


def _arguments(text: str) -> Any:
    return json.loads(text)  # checked as JSON by _wire_call


def _role(message: Any) -> Any:
    return message.get("role") if isinstance(message, Mapping) else None


def _checked_messages(path: Path, line: int, messages: Any) -> list[Message]:
    """The conversation so far, as the API takes it: assistant ``tool_calls`` in the API's
    shape (``{name, arguments}`` is read too; arguments become a JSON string), each ``tool``
    message answering, by ``tool_call_id``, a call made before it."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise CaseFileError(path, line, "messages must be a non-empty list of chat messages")
    checked: list[Message] = []
    unanswered: set[str] = set()
    for index, message in enumerate(messages):
        role = _role(message)
        if role not in ("system", "developer", "user", "assistant", "tool"):
            raise CaseFileError(
                path,
                line,
                f"message {message!r} needs a role of system, developer, user, assistant or tool",
            )
        message = _plain(message)
        if message.get("tool_calls") is not None:
            if role != "assistant" or not isinstance(message["tool_calls"], list):
                raise CaseFileError(
                    path,
                    line,
                    f"messages[{index}] ({role}) has 'tool_calls'; only an assistant message "
                    "makes tool calls, as a list",
                )
            message["tool_calls"] = [
                _wire_call(path, line, call, f"call_{index}_{number}")
                for number, call in enumerate(message["tool_calls"], start=1)
            ]
            message.setdefault("content", None)
            unanswered |= {call["id"] for call in message["tool_calls"]}
        if role == "tool":
            call_id = message.get("tool_call_id")
            if call_id not in unanswered:
                raise CaseFileError(
                    path,
                    line,
                    f"messages[{index}] (tool) answers tool_call_id {call_id!r}, which no "
                    "assistant message before it called (or it is answered twice); give it the "
                    "id of one of that message's tool_calls",
                )
            unanswered.discard(call_id)
        checked.append(message)
    return checked
