"""Rewards for reinforcement fine-tuning: a job's grader JSON, scored by the plugin's graders.

The one module of the server that imports the plugin (``pytest_distill.grading``): a reward is
exactly the score the same grader gives the same answer in an eval item, with no second
implementation of any grader. A single grader's score is the reward; a ``multi`` grader's
``calculate_output`` combines its graders' scores (``distill_shapes.reinforcement``). An answer
*passes* when every grader passes it. Model graders (``score_model``, ``label_model``) need a
judge this server does not have: ``check`` refuses them by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from distill_server.weights.chat_format import parse_reply
from distill_shapes.reinforcement import GraderJson, RewardPrompt, combine_scores
from pytest_distill.grading.registry import GraderConfigError, Sample, make_grader

MODEL_GRADERS: Final = frozenset({"score_model", "label_model"})


class UnusableGrader(ValueError):
    """A grader the server cannot evaluate; ``field`` names it in the job's body."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class Scored:
    reward: float
    passed: bool


class Rewarder:
    """Scores answers to reinforcement prompts with a job's grader."""

    def __init__(self, grader: GraderJson, where: str = "method.reinforcement.grader") -> None:
        self._grader = grader
        self._graders = {
            name: _build(spec, name, grader, where) for name, spec in check_items(grader, where)
        }

    def score(self, text: str, prompt: RewardPrompt) -> Scored:
        """The reward of ``text`` as the answer to ``prompt`` (its tool calls read as serving
        reads them when the prompt offers tools)."""
        return self.score_sample(sample(text, prompt), prompt.item)

    def score_sample(self, answer: Any, item: Mapping[str, Any]) -> Scored:
        grades = {name: g.grade(answer, item) for name, g in self._graders.items()}
        scores = {name: grade.score for name, grade in grades.items()}
        formula = self._grader.calculate_output
        reward = combine_scores(formula, scores) if formula else next(iter(scores.values()))
        return Scored(reward, all(grade.passed for grade in grades.values()))


def check(grader: GraderJson, where: str = "method.reinforcement.grader") -> None:
    """Raise ``UnusableGrader`` naming the first grader this server cannot evaluate."""
    Rewarder(grader, where)


def check_items(grader: GraderJson, where: str) -> list[tuple[str, Mapping[str, Any]]]:
    items = list(grader.graders.items())
    for name, spec in items:
        if spec.get("type") in MODEL_GRADERS:
            raise UnusableGrader(
                _field(name, grader, where),
                f"The grader {name!r} is a {spec['type']} grader: it needs a judge model, which "
                "this server does not have. Use graders that score the answer themselves "
                "(string_check, text_similarity, python, json, regex, contains, tool_calls, "
                "json_schema), or send the job to a provider with model graders.",
            )
    return items


def sample(text: str, prompt: RewardPrompt) -> Any:
    """The plugin's ``Sample`` of an answer: its text, and its tool calls when tools are
    offered (the content outside the calls is then the text)."""
    if not prompt.tools:
        return Sample(text)
    reply = parse_reply(text, [tool.name for tool in prompt.tools])
    return Sample(reply.content or "", reply.calls)


def _build(spec: Mapping[str, Any], name: str, grader: GraderJson, where: str) -> Any:
    try:
        return make_grader(spec)
    except GraderConfigError as exc:
        raise UnusableGrader(_field(name, grader, where), f"The grader {name!r}: {exc}.") from None


def _field(name: str, grader: GraderJson, where: str) -> str:
    return f"{where}.graders.{name}" if grader.calculate_output is not None else where


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
