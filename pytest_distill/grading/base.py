"""The values every grader shares: samples, grades, spec reading and OpenAI-style templates.

Kept apart from ``registry.py`` so the grader families (``similarity.py``, ``judges.py``) can
build on these without importing the registry that imports them. ``registry.py`` re-exports
everything public here; import from there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, Protocol

from distill_shapes.tools import ToolCall
from pytest_distill import templating
from pytest_distill.grading.compare import parse_exclude_path, parse_model_json

Judge = Callable[[list[dict[str, str]]], str]
"""Sends chat messages to the ``judge`` role and returns the reply text."""

_SAMPLE_FIELDS = ("output_text", "output_json", "output_tools")


class GraderConfigError(ValueError):
    """A grader spec that cannot work: what is wrong, what is allowed, how to fix it.

    Raised by ``make_grader`` for a bad spec, and while grading when a valid spec does not fit
    a case (a template names a variable the case lacks, a python grader returns a bad value).
    """


@dataclass(frozen=True, slots=True)
class Sample:
    """What the model produced for one case: its text and the tools it called."""

    output_text: str
    output_tools: tuple[ToolCall, ...] = ()

    @property
    def output_json(self) -> Any:
        """``output_text`` parsed as JSON, tolerating a ```json fence.

        Raises ValueError when the text is not JSON, so a JSON ``null`` stays distinguishable;
        templates and python graders see ``None`` instead (see ``json_or_none``).
        """
        return parse_model_json(self.output_text)

    def tools_json(self) -> list[dict[str, Any]]:
        """``{{sample.output_tools}}`` as OpenAI's graders define it: the reply's tool calls in
        the chat completions shape, ``[{"id", "type": "function", "function": {"name",
        "arguments"}}]`` (arguments a JSON string), empty when it called none."""
        return [call.to_json() for call in self.output_tools]

    def json_or_none(self) -> Any:
        try:
            return self.output_json
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class Grade:
    name: str
    score: float  # in [0, 1]; checked, because user graders build these too
    passed: bool
    reason: str = ""  # one line, for failures
    detail: tuple[str, ...] = ()  # extra lines, e.g. the path-by-path JSON diff

    def __post_init__(self) -> None:
        if not (isinstance(self.score, int | float) and 0.0 <= self.score <= 1.0):
            raise ValueError(
                f"grade {self.name!r} has score {self.score!r}; scores are numbers in [0, 1]; "
                "normalise the grader's score before building the Grade"
            )


class Grader(Protocol):
    @property
    def name(self) -> str: ...  # read-only, so frozen dataclasses qualify

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade: ...


def combine(grades: Sequence[Grade]) -> tuple[float, bool]:
    """A case's overall result: the mean score, and passed only when every grade passed."""
    if not grades:
        raise ValueError("combine() needs at least one grade; give every case a grader")
    return math.fsum(grade.score for grade in grades) / len(grades), all(g.passed for g in grades)


class Spec:
    """Reads one grader spec, turning every mistake into a three-part GraderConfigError."""

    def __init__(self, spec: Mapping[str, Any], allowed: Iterable[str]) -> None:
        self.raw = spec
        self.type = str(spec["type"])
        self.name = str(spec.get("name") or self.type)
        unknown = sorted(set(spec) - {"type", "name", *allowed})
        if unknown:
            self.fail(
                f"has unknown key(s) {', '.join(map(repr, unknown))}",
                f"keys for {self.type!r}: {', '.join(sorted({'type', 'name', *allowed}))}",
                "remove or rename them",
            )

    def fail(self, what: str, allowed: str, fix: str) -> NoReturn:
        label = repr(self.name) if self.name == self.type else f"{self.name!r} ({self.type})"
        raise GraderConfigError(f"grader {label} {what}; {allowed}; {fix}")

    def get(self, key: str, default: Any = None) -> Any:
        return self.raw.get(key, default)

    def require(self, key: str, hint: str) -> Any:
        if key not in self.raw:
            self.fail(f"is missing {key!r}", f"{self.type!r} requires {key!r}", hint)
        return self.raw[key]

    def boolean(self, key: str, default: bool) -> bool:
        value = self.raw.get(key, default)
        if not isinstance(value, bool):
            self.fail(f"has {key}={value!r}", f"{key!r} is true or false", f"set {key}: true")
        return bool(value)

    def number(
        self, key: str, default: float | None = None, *, low: float = 0.0, high: float = math.inf
    ) -> float:
        span = f"a number in [{low:g}, {high:g}]" if high < math.inf else f"a number >= {low:g}"
        hint = f"add {key}: <{span}>"
        value = self.require(key, hint) if default is None else self.get(key, default)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            self.fail(f"has {key}={value!r}", f"{key!r} is {span}", f"set {key!r} to {span}")
        return float(value)

    def choice(self, key: str, choices: Sequence[str], default: str | None = None) -> str:
        value = self.get(key, default) if default is not None else self.require(key, "add it")
        if value not in choices:
            self.fail(
                f"has {key}={value!r}",
                f"allowed: {', '.join(choices)}",
                f"set {key!r} to one of them",
            )
        return str(value)

    def strings(self, key: str, default: Any = None) -> tuple[str, ...]:
        value = self.get(key, default)
        values = [value] if isinstance(value, str) else value
        if not isinstance(values, list | tuple) or not all(isinstance(v, str) for v in values):
            self.fail(
                f"has {key}={value!r}",
                f"{key!r} is a string or a list of strings",
                f"write {key!r} as a list of strings",
            )
        return tuple(values)

    def exclude_paths(self, examples: str) -> tuple[str, ...]:
        """The ``exclude_paths`` option (paths ``compare_json`` leaves out), each one readable;
        ``examples``: what such paths look like, for the error."""
        paths = self.strings("exclude_paths", [])
        for path in paths:
            try:
                parse_exclude_path(path)
            except ValueError:
                self.fail(f"has an unreadable exclude path {path!r}", examples, "fix the path")
        return paths

    def template(self, key: str, default: str) -> Template:
        return self.template_of(self.get(key, default), key)

    def template_of(self, value: Any, key: str) -> Template:
        if not isinstance(value, str):
            self.fail(
                f"has {key}={value!r}",
                f"{key!r} is a template string such as '{{{{sample.output_text}}}}'",
                "quote it as a string",
            )
        try:
            return Template(value)
        except ValueError as error:
            self.fail(f"has {key}={value!r}: {error}", _TEMPLATE_HELP, "fix the placeholder")


_TEMPLATE_HELP = (
    "placeholders are {{sample.output_text}}, {{sample.output_json.<path>}}, "
    "{{sample.output_tools[<i>].function.name}}, {{item.reference}} and {{item.<variable>}}"
)


class Template:
    """An OpenAI grader template such as ``Answer: {{ sample.output_text }}``."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.paths = [_checked(path) for path in templating.paths(text)]
        self.sole = templating.sole_path(text)

    def resolve(self, sample: Sample, item: Mapping[str, Any]) -> Any:
        """The raw value when the template is a single placeholder, else the rendered text."""
        if self.sole is not None:
            return _lookup(self.sole, sample, item)
        return self.render(sample, item)

    def render(self, sample: Sample, item: Mapping[str, Any]) -> str:
        return templating.render(self.text, lambda path: _lookup(path, sample, item))


def _checked(path: templating.Path) -> templating.Path:
    if path[0] not in ("sample", "item") or len(path) < 2 or not all(path):
        raise ValueError(f"unknown placeholder {{{{{'.'.join(path)}}}}}")
    if path[0] == "sample" and path[1] not in _SAMPLE_FIELDS:
        raise ValueError(f"unknown placeholder {{{{{'.'.join(path)}}}}}")
    return path


def _lookup(path: tuple[str, ...], sample: Sample, item: Mapping[str, Any]) -> Any:
    if path[0] == "sample":
        value: Any = (
            sample.output_text
            if path[1] == "output_text"
            else sample.tools_json()
            if path[1] == "output_tools"
            else sample.json_or_none()
        )
        return _walk(value, path[2:], None, path)
    if path == ("item", "reference") and item.get("reference") is None:
        raise GraderConfigError(
            f"case {item.get('id')!r} has no reference, which {{{{item.reference}}}} needs; "
            "graders compare with the case's reference unless their spec sets 'reference'; "
            "add a reference to the case or set the grader's 'reference'"
        )
    return _walk(item, path[1:], item.get("id"), path)


def _walk(value: Any, keys: Sequence[str], case_id: Any, path: tuple[str, ...]) -> Any:
    for key in keys:
        if isinstance(value, Mapping) and key in value:
            value = value[key]
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif case_id is None:
            return None  # model output lacking a field: the graders report it as a mismatch
        else:
            raise GraderConfigError(
                f"template {{{{{'.'.join(path)}}}}} names {key!r}, which case {case_id!r} "
                f"does not have; {_TEMPLATE_HELP}; add the variable to the case or fix the template"
            )
    return value
