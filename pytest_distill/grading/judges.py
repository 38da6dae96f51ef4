"""``score_model`` and ``label_model``: graders that ask the ``judge`` role.

OpenAI constrains these judges with a response schema; a judge behind an arbitrary
OpenAI-compatible endpoint may not support one, so the expected answer is asked for in words
(one sentence appended to the last message) and the reply is read leniently:

- score: the whole reply as a number; a JSON ``{"result"|"score"|...: n}``; the last
  "score: n"; "n/m" or "n out of m" (rescaled when m is not the top of the range); else the last
  number inside ``range``. Nothing readable -> score 0 with a reason, never an exception.
- label: the whole reply as a label; a JSON ``{"label": ...}``; else the label whose whole-word
  mention comes last (the longer label wins a tie, so "not correct" beats "correct").

``pass_threshold`` of score_model is in the units of ``range`` (default [0, 1]); the grade's
score is rescaled to [0, 1].
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from pytest_distill.grading.base import Grade, Judge, Sample, Spec, Template
from pytest_distill.grading.compare import parse_model_json
from pytest_distill.text import shorten

_NUMBER: Final = r"-?\d+(?:\.\d+)?"
_LABELLED = re.compile(rf"(?:score|rating|grade|result)\W{{0,3}}(?:is\W*)?({_NUMBER})", re.I)
_FRACTION = re.compile(rf"({_NUMBER})\s*(?:/|out of)\s*({_NUMBER})", re.I)
_SCORE_KEYS: Final = ("result", "score", "rating", "grade")
_LABEL_KEYS: Final = ("label", "result", "answer", "choice")
Messages = tuple[tuple[str, Template], ...]


def parse_score(reply: str, low: float = 0.0, high: float = 1.0) -> float | None:
    """The judge's score inside [low, high], or None when the reply has none."""
    for candidate in _score_candidates(reply, low, high):
        if candidate is not None and low <= candidate <= high:
            return candidate
    return None


def _score_candidates(reply: str, low: float, high: float) -> list[float | None]:
    text = reply.strip().strip("*`'\". ")
    fractions = _FRACTION.findall(text)
    last_fraction = None
    if fractions and float(fractions[-1][1]) > 0:
        value, scale = map(float, fractions[-1])
        last_fraction = value if scale == high else low + value / scale * (high - low)
    numbers = [float(n) for n in re.findall(_NUMBER, text) if low <= float(n) <= high]
    labelled = _LABELLED.findall(text)
    return [
        _as_number(text),
        _json_field(reply, _SCORE_KEYS, (int, float)),
        float(labelled[-1]) if labelled else None,
        last_fraction,
        numbers[-1] if numbers else None,
    ]


def _as_number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _json_field(reply: str, keys: Sequence[str], kinds: tuple[type, ...]) -> Any:
    try:
        data = parse_model_json(reply)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    found = [data[key] for key in keys if isinstance(data.get(key), kinds)]
    return found[0] if found and not isinstance(found[0], bool) else None


def pick_label(reply: str, labels: Sequence[str]) -> str | None:
    """The label the judge chose, or None when the reply names none of them."""
    by_fold = {label.casefold(): label for label in labels}
    whole = reply.strip().strip("*`'\".:! \n").casefold()
    named = _json_field(reply, _LABEL_KEYS, (str,))
    for text in (whole, named.strip().casefold() if named else None):
        if text in by_fold:
            return by_fold[text]
    mentions = []
    for label in labels:
        ends = [m.end() for m in re.finditer(rf"(?<!\w){re.escape(label)}(?!\w)", reply, re.I)]
        if ends:
            mentions.append((ends[-1], len(label), label))
    return max(mentions)[2] if mentions else None


def _render(
    messages: Messages, sample: Sample, item: Mapping[str, Any], ask: str
) -> list[dict[str, str]]:
    rendered = [{"role": role, "content": t.render(sample, item)} for role, t in messages]
    rendered[-1]["content"] += f"\n\n{ask}"
    return rendered


@dataclass(frozen=True, slots=True)
class ScoreModel:
    name: str
    messages: Messages
    judge: Judge
    low: float = 0.0
    high: float = 1.0
    pass_threshold: float = 0.5

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        ask = f"End your reply with the score: a number from {self.low:g} to {self.high:g}."
        reply = self.judge(_render(self.messages, sample, item, ask))
        raw = parse_score(reply, self.low, self.high)
        detail = tuple(reply.strip().splitlines()[:10])
        if raw is None:
            why = (
                f"no score in [{self.low:g}, {self.high:g}] in the judge's reply {shorten(reply)!r}"
            )
            return Grade(self.name, 0.0, False, why, detail)
        score = (raw - self.low) / (self.high - self.low)
        if raw >= self.pass_threshold:
            return Grade(self.name, score, True)
        why = f"judge score {raw:g} < pass_threshold {self.pass_threshold:g}"
        return Grade(self.name, score, False, why, detail)


@dataclass(frozen=True, slots=True)
class LabelModel:
    name: str
    messages: Messages
    judge: Judge
    labels: tuple[str, ...]
    passing_labels: tuple[str, ...]

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        ask = f"Answer with exactly one of these labels: {', '.join(self.labels)}."
        reply = self.judge(_render(self.messages, sample, item, ask))
        label = pick_label(reply, self.labels)
        detail = tuple(reply.strip().splitlines()[:10])
        if label is None:
            why = f"the judge's reply names none of {list(self.labels)}: {shorten(reply)!r}"
            return Grade(self.name, 0.0, False, why, detail)
        if label in self.passing_labels:
            return Grade(self.name, 1.0, True)
        why = f"judge chose {label!r}; passing labels: {', '.join(self.passing_labels)}"
        return Grade(self.name, 0.0, False, why, detail)


def build_score_model(spec: Spec, judge: Judge | None) -> ScoreModel:
    bounds = spec.get("range", [0, 1])
    if not (
        isinstance(bounds, list | tuple)
        and len(bounds) == 2
        and all(isinstance(b, int | float) and not isinstance(b, bool) for b in bounds)
        and bounds[0] < bounds[1]
    ):
        spec.fail(
            f"has range={bounds!r}",
            "'range' is [low, high] with low < high",
            "write it like range: [0, 10]",
        )
    low, high = float(bounds[0]), float(bounds[1])
    threshold = spec.number("pass_threshold", None, low=low, high=high)
    return ScoreModel(spec.name, _messages(spec), _needs(spec, judge), low, high, threshold)


def build_label_model(spec: Spec, judge: Judge | None) -> LabelModel:
    labels = _labels(spec, "labels", "add labels: [correct, incorrect]")
    passing = _labels(spec, "passing_labels", "add passing_labels: [correct]")
    if not set(passing) <= set(labels):
        spec.fail(
            f"has passing_labels {list(passing)!r} that are not all in labels",
            f"labels: {', '.join(labels)}",
            "pick passing labels from 'labels'",
        )
    return LabelModel(spec.name, _messages(spec), _needs(spec, judge), labels, passing)


def _labels(spec: Spec, key: str, hint: str) -> tuple[str, ...]:
    spec.require(key, hint)
    labels = spec.strings(key)
    if not labels or len(set(labels)) != len(labels):
        spec.fail(
            f"has {key}={list(labels)!r}", f"{key!r} is a non-empty list of distinct strings", hint
        )
    return labels


def _messages(spec: Spec) -> Messages:
    example = "input: [{role: user, content: 'Grade this answer: {{sample.output_text}}'}]"
    messages = spec.require("input", f"add the judge prompt, e.g. {example}")
    if not isinstance(messages, list) or not messages:
        spec.fail(
            f"has input={messages!r}",
            "'input' is a non-empty list of chat messages",
            f"write it like {example}",
        )
    parsed = []
    for message in messages:
        if not (
            isinstance(message, Mapping)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            spec.fail(
                f"has input message {message!r}",
                "a message is {role: ..., content: <text>} with text content",
                f"write it like {example}",
            )
        parsed.append((message["role"], spec.template_of(message["content"], "input")))
    return tuple(parsed)


def _needs(spec: Spec, judge: Judge | None) -> Judge:
    if judge is None:
        spec.fail(
            "needs the judge role, which has no model",
            "score_model and label_model send their prompt to the judge role",
            "set ini distill_judge_model (and distill_judge_endpoint for a non-OpenAI endpoint)",
        )
    return judge
