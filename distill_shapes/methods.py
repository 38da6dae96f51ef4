"""A fine-tuning job's ``method``: OpenAI's three shapes, checked as the API checks them.

::

    {"type": "supervised", "supervised": {"hyperparameters": {...}}}
    {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, ...}}}
    {"type": "reinforcement", "reinforcement": {"grader": {...}, "hyperparameters": {...}}}

Each hyperparameter is ``"auto"`` or a number in the API's range. ``method_json`` writes one;
``parse_method`` reads one (``InvalidShape`` names the field and its range) into a ``Method``;
``training_file_kind`` names which file shape a method trains on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from distill_shapes.reinforcement import GraderJson, parse_grader
from distill_shapes.tools import InvalidShape

MethodType = Literal["supervised", "dpo", "reinforcement"]
TYPES: Final[tuple[MethodType, ...]] = ("supervised", "dpo", "reinforcement")

# name -> (kind, low, high, low exclusive); kind "int" or "float"
_Range = tuple[str, float, float | None, bool]
_COMMON: Final[dict[str, _Range]] = {
    "batch_size": ("int", 1, 256, False),
    "learning_rate_multiplier": ("float", 0, None, True),
    "n_epochs": ("int", 1, 50, False),
}
HYPERPARAMETERS: Final[dict[str, dict[str, _Range]]] = {
    "supervised": dict(_COMMON),
    "dpo": {**_COMMON, "beta": ("float", 0, 2, True)},
    "reinforcement": {
        **_COMMON,
        "compute_multiplier": ("float", 0.00001, 10, True),
        "eval_interval": ("int", 1, None, False),
        "eval_samples": ("int", 1, None, False),
    },
}
REASONING_EFFORTS: Final = ("default", "low", "medium", "high")


@dataclass(frozen=True, slots=True)
class Method:
    type: MethodType
    hyperparameters: Mapping[str, Any]
    """As given (``"auto"`` where not set or set to auto); the trainer resolves auto."""
    grader: GraderJson | None = None
    """The reinforcement method's grader (checked); ``None`` for the others."""
    grader_json: Mapping[str, Any] | None = None
    """That grader as the request gave it, to be stored and shown back."""


def method_json(
    type_: MethodType,
    hyperparameters: Mapping[str, Any] | None = None,
    grader: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A job's ``method`` object; only the hyperparameters given are written."""
    body: dict[str, Any] = {}
    if type_ == "reinforcement":
        if grader is None:
            raise ValueError("a reinforcement method needs its grader")
        body["grader"] = dict(grader)
    body["hyperparameters"] = dict(hyperparameters or {})
    return {"type": type_, type_: body}


def parse_method(value: Any, where: str = "method") -> Method:
    """A ``method`` checked against the API's shapes and ranges (a missing ``method`` is the
    caller's: OpenAI then reads the job's top-level ``hyperparameters`` as supervised)."""
    if not isinstance(value, Mapping):
        raise InvalidShape(where, "is not an object", 'write {"type": ..., <type>: {...}}')
    kind = value.get("type")
    if kind not in TYPES:
        raise InvalidShape(f"{where}.type", f"is {kind!r}", f"use one of {', '.join(TYPES)}")
    unknown = sorted(set(value) - {"type", kind})
    if unknown:
        raise InvalidShape(
            where,
            f"has {', '.join(unknown)}, which a {kind} method does not take",
            f"put its settings under {where}.{kind}",
        )
    body = value.get(kind) or {}
    if not isinstance(body, Mapping):
        raise InvalidShape(
            f"{where}.{kind}", "is not an object", 'write {"hyperparameters": {...}}'
        )
    allowed = {"hyperparameters"} | ({"grader"} if kind == "reinforcement" else set())
    extra = sorted(set(body) - allowed)
    if extra:
        raise InvalidShape(
            f"{where}.{kind}",
            f"has {', '.join(extra)}",
            f"it takes {', '.join(sorted(allowed))}",
        )
    hyper = _hyperparameters(kind, body.get("hyperparameters") or {}, f"{where}.{kind}")
    if kind != "reinforcement":
        return Method(kind, hyper)
    if "grader" not in body:
        raise InvalidShape(
            f"{where}.reinforcement.grader", "is missing", "give the grader that scores the answers"
        )
    grader = parse_grader(body["grader"], f"{where}.reinforcement.grader")
    return Method(kind, hyper, grader, dict(body["grader"]))


def training_file_kind(kind: MethodType) -> str:
    """What the training file's lines are for this method, for errors that name it."""
    return {
        "supervised": "chat lines (`messages` with the answer)",
        "dpo": "preference lines (`input`, `preferred_output`, `non_preferred_output`)",
        "reinforcement": "prompt lines (`messages` without the answer, and the grader's fields)",
    }[kind]


def _hyperparameters(kind: str, value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidShape(f"{where}.hyperparameters", "is not an object", 'write {"name": value}')
    ranges = HYPERPARAMETERS[kind]
    out: dict[str, Any] = {}
    for name, given in value.items():
        at = f"{where}.hyperparameters.{name}"
        if kind == "reinforcement" and name == "reasoning_effort":
            if given not in REASONING_EFFORTS:
                raise InvalidShape(
                    at, f"is {given!r}", f"use one of {', '.join(REASONING_EFFORTS)}"
                )
            out[name] = given
            continue
        if name not in ranges:
            raise InvalidShape(
                at,
                f"is not a {kind} hyperparameter",
                f"use one of {', '.join(sorted(ranges))}",
            )
        out[name] = _number(given, ranges[name], at)
    return out


def _number(given: Any, spec: _Range, at: str) -> Any:
    if given == "auto":
        return given
    kind, low, high, exclusive = spec
    ok_type = (
        isinstance(given, int) and not isinstance(given, bool)
        if kind == "int"
        else isinstance(given, int | float) and not isinstance(given, bool)
    )
    too_low = ok_type and (given <= low if exclusive else given < low)
    too_high = ok_type and high is not None and given > high
    if not ok_type or too_low or too_high:
        bound = f"{'above' if exclusive else 'at least'} {low:g}"
        if high is not None:
            bound += f" and at most {high:g}"
        noun = "an integer" if kind == "int" else "a number"
        raise InvalidShape(at, f"is {given!r}", f'use "auto" or {noun} {bound}')
    return given
