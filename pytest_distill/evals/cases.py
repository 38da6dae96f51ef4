"""Eval cases and suites: the prompt each role is sent, and the stable train/holdout split.

No pytest import; ``loaders`` reads the file formats into these values.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from distill_shapes.tools import FunctionTool, ResponseFormat, ToolChoice
from pytest_distill import templating

Message = dict[str, Any]
Split = Literal["train", "holdout"]
DEFAULT_GRADERS: tuple[Mapping[str, Any], ...] = ({"type": "string_check", "operation": "eq"},)


class CaseFileError(ValueError):
    """A malformed eval file: ``path:line: what is wrong; how to fix it``."""

    def __init__(self, path: Path | str, line: int, message: str) -> None:
        super().__init__(f"{path}:{line}: {message}")
        self.path, self.line, self.message = Path(path), line, message


@dataclass(frozen=True, slots=True)
class Prompt:
    system: str | None = None
    few_shot: tuple[tuple[Message, ...], ...] = ()
    """Each worked example's messages: its user turn, the assistant's answer (text, or tool
    calls followed by their tool results)."""
    user: str | None = None

    def merged(self, override: Prompt | None) -> Prompt:
        if override is None:
            return self
        return Prompt(
            system=override.system if override.system is not None else self.system,
            few_shot=override.few_shot or self.few_shot,
            user=override.user if override.user is not None else self.user,
        )


@dataclass(frozen=True, slots=True)
class Tooling:
    """What a role's requests offer besides the messages: tools and the reply's format.

    ``None`` leaves a field to the suite (or the endpoint's default); ``tools=()`` is no tools.
    """

    tools: tuple[FunctionTool, ...] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None

    def merged(self, override: Tooling | None) -> Tooling:
        if override is None:
            return self
        return Tooling(
            *(
                mine if (mine := getattr(override, name)) is not None else getattr(self, name)
                for name in ("tools", "tool_choice", "parallel_tool_calls", "response_format")
            )
        )

    def request(self) -> dict[str, Any]:
        """The chat completion request's fields, in the API's shapes, only those that are set
        (and no ``tools`` when there are none)."""
        body: dict[str, Any] = {}
        if self.tools:
            body["tools"] = [tool.to_json() for tool in self.tools]
        if self.tool_choice is not None:
            body["tool_choice"] = self.tool_choice.to_json()
        if self.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = self.parallel_tool_calls
        if self.response_format is not None:
            body["response_format"] = self.response_format.to_json()
        return body


@dataclass(frozen=True, slots=True)
class EvalCase:
    id: str
    line: int
    vars: Mapping[str, Any] = field(default_factory=dict)
    reference: Any = None
    messages: tuple[Message, ...] | None = None
    graders: tuple[Mapping[str, Any], ...] = DEFAULT_GRADERS
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Other accepted answers (an OpenAI-evals ``ideal`` list): the output may match any of them.
    alternatives: tuple[Any, ...] = ()
    source: Path | None = None  # the file the case is written in, when not the suite's own
    tooling: Tooling | None = None  # the case's own tools (a JSONL line's ``tools``, ...)

    def fingerprint(self) -> str:
        """A hash of the case's content (variables, messages, reference), not of its file or
        id: the gate knows a training case again after its eval file was renamed."""
        content = {"vars": self.vars, "messages": self.messages, "reference": self.reference}
        text = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def item(self) -> dict[str, Any]:
        """The case as graders see it: its variables, ``reference`` and ``id``."""
        return {**self.vars, "reference": self.reference, "id": self.id}

    def items(self) -> tuple[dict[str, Any], ...]:
        """The case once per accepted reference: the first is :meth:`item`."""
        return (self.item(), *({**self.item(), "reference": r} for r in self.alternatives))


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    path: Path
    prompt: Prompt = Prompt()
    role_prompts: Mapping[str, Prompt] = field(default_factory=dict)
    role_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)
    cases: tuple[EvalCase, ...] = ()
    source: Mapping[str, Any] | None = None  # cases come from elsewhere (stored completions)
    graders: tuple[Mapping[str, Any], ...] = DEFAULT_GRADERS
    line: int = 1
    tooling: Tooling = Tooling()
    role_tooling: Mapping[str, Tooling] = field(default_factory=dict)
    train_earlier_turns: bool = False
    """Whether a training line trains the assistant turns before its answer too (few-shot
    answers, a conversation's earlier turns); by default they get ``weight: 0``."""

    def tooling_for(self, role: str, case: EvalCase | None = None) -> Tooling:
        """The suite's tools and response format, then each of the role's lineage's, then the
        case's own (a line that brings its tools knows best what its conversation calls)."""
        tooling = self.tooling
        for each in lineage(role):
            tooling = tooling.merged(self.role_tooling.get(each))
        return tooling.merged(case.tooling if case is not None else None)

    def messages_for(self, case: EvalCase, role: str) -> list[Message]:
        """The chat messages ``role`` is sent for ``case``: the role's prompt, rendered."""
        prompt = self.prompt
        for each in lineage(role):
            prompt = prompt.merged(self.role_prompts.get(each))
        if case.messages is not None:
            return _with_prompt(list(case.messages), prompt)
        assert prompt.user is not None  # checked at load time
        messages: list[Message] = []
        if prompt.system:
            messages.append({"role": "system", "content": render(prompt.system, case.vars)})
        for shot in prompt.few_shot:
            messages += [dict(m) for m in shot]
        messages.append({"role": "user", "content": render(prompt.user, case.vars)})
        return messages

    def params_for(self, role: str) -> dict[str, Any]:
        """The suite's ``params``, then each of the role's lineage's ``roles: <role>: params``."""
        params = dict(self.params)
        for each in lineage(role):
            own = self.role_params.get(each, {})
            params.update(own if each == role else {k: v for k, v in own.items() if k != "model"})
        return params


def lineage(role: str) -> tuple[str, ...]:
    """The roles whose settings ``role`` takes, itself last: ``finetuned`` is the student after
    training, so it is sent the student's prompt and parameters unless it sets its own; ``sft``
    (a two-stage method's first model) is configured as ``finetuned`` is."""
    if role == "sft":
        return ("student", "finetuned", role)
    return ("student", role) if role == "finetuned" else (role,)


def _with_prompt(messages: list[Message], prompt: Prompt) -> list[Message]:
    """Apply a role's system override and few-shot block to explicit case messages."""
    if prompt.system is not None:
        messages = [m for m in messages if m.get("role") != "system"]
        messages.insert(0, {"role": "system", "content": prompt.system})
    if prompt.few_shot:
        at = next((i for i, m in enumerate(messages) if m.get("role") != "system"), 0)
        messages[at:at] = [dict(m) for shot in prompt.few_shot for m in shot]
    return messages


def render(template: str, variables: Mapping[str, Any]) -> str:
    """Fill ``{{ name }}`` / ``{{ item.name }}`` placeholders from a case's variables.

    A variable the case lacks raises ``KeyError`` naming it.
    """

    def lookup(path: templating.Path) -> Any:
        found: Any = variables
        for part in path[1:] if path[0] == "item" else path:
            if not isinstance(found, Mapping) or part not in found:
                raise KeyError(".".join(path[1:] if path[0] == "item" else path))
            found = found[part]
        return found

    return templating.render(template, lookup)


def split_of(key: str, holdout: float) -> Split:
    """Stable train/holdout split: a case's side depends on its key alone."""
    digest = hashlib.sha256(key.encode()).digest()
    return "holdout" if int.from_bytes(digest[:8], "big") / 2**64 < holdout else "train"
