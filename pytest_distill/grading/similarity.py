"""The ``text_similarity`` grader and its metrics, written here to add no dependency.

Metrics (OpenAI's names): ``fuzzy_match`` (difflib's ratio over the stripped texts), ``bleu``
(sentence BLEU up to 4-grams, add-one smoothing for n > 1, brevity penalty), ``gleu`` (Google
BLEU), ``rouge_1`` ... ``rouge_5`` (n-gram F1) and ``rouge_l`` (longest common subsequence F1).
The n-gram metrics compare lower-cased word tokens (``\\w+``), as rouge-score does. OpenAI's
``cosine`` and ``meteor`` need embeddings or WordNet and are not offered.
"""

from __future__ import annotations

import difflib
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from pytest_distill.grading.base import Grade, Sample, Spec, Template

_WORD = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def fuzzy_match(candidate: str, reference: str) -> float:
    return difflib.SequenceMatcher(None, candidate.strip(), reference.strip()).ratio()


def _ngrams(words: list[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(candidate: str, reference: str) -> float:
    got, want = tokens(candidate), tokens(reference)
    if not got or not want:
        return float(got == want)
    order = min(4, len(got))  # short answers: only the n-grams they can have
    logs = []
    for n in range(1, order + 1):
        counts = _ngrams(got, n)
        matched = sum((counts & _ngrams(want, n)).values())
        total = sum(counts.values())
        if n == 1 and matched == 0:
            return 0.0
        logs.append(math.log((matched + (n > 1)) / (total + (n > 1))))
    brevity = 1.0 if len(got) > len(want) else math.exp(1 - len(want) / len(got))
    return brevity * math.exp(sum(logs) / order)


def gleu(candidate: str, reference: str) -> float:
    got, want = tokens(candidate), tokens(reference)
    if not got or not want:
        return float(got == want)
    matched = got_total = want_total = 0
    for n in range(1, 5):
        got_grams, want_grams = _ngrams(got, n), _ngrams(want, n)
        matched += sum((got_grams & want_grams).values())
        got_total += sum(got_grams.values())
        want_total += sum(want_grams.values())
    return min(matched / got_total, matched / want_total)


def rouge_n(candidate: str, reference: str, n: int) -> float:
    got, want = _ngrams(tokens(candidate), n), _ngrams(tokens(reference), n)
    if not got or not want:
        return float(tokens(candidate) == tokens(reference))
    return _f1(sum((got & want).values()), sum(got.values()), sum(want.values()))


def rouge_l(candidate: str, reference: str) -> float:
    got, want = tokens(candidate), tokens(reference)
    if not got or not want:
        return float(got == want)
    return _f1(_lcs_length(got, want), len(got), len(want))


def _lcs_length(left: list[str], right: list[str]) -> int:
    previous = [0] * (len(right) + 1)
    for word in left:
        current = [0]
        for index, other in enumerate(right):
            current.append(
                previous[index] + 1 if word == other else max(previous[index + 1], current[index])
            )
        previous = current
    return previous[-1]


def _f1(matched: int, got_total: int, want_total: int) -> float:
    if matched == 0:
        return 0.0
    precision, recall = matched / got_total, matched / want_total
    return 2 * precision * recall / (precision + recall)


def _rouge(n: int) -> Callable[[str, str], float]:
    return lambda candidate, reference: rouge_n(candidate, reference, n)


METRICS: Final[dict[str, Callable[[str, str], float]]] = {
    "fuzzy_match": fuzzy_match,
    "bleu": bleu,
    "gleu": gleu,
    **{f"rouge_{n}": _rouge(n) for n in range(1, 6)},
    "rouge_l": rouge_l,
}


@dataclass(frozen=True, slots=True)
class TextSimilarity:
    name: str
    metric: str
    input: Template
    reference: Template
    pass_threshold: float

    def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
        got, want = self.input.render(sample, item), self.reference.render(sample, item)
        score = min(1.0, max(0.0, METRICS[self.metric](got, want)))
        if score >= self.pass_threshold:
            return Grade(self.name, score, True)
        reason = f"{self.metric} {score:.3f} < pass_threshold {self.pass_threshold:g}"
        return Grade(self.name, score, False, reason)


def build_text_similarity(spec: Spec) -> TextSimilarity:
    if spec.get("evaluation_metric") in ("cosine", "meteor"):
        spec.fail(
            f"uses evaluation_metric {spec.get('evaluation_metric')!r}, which needs an "
            "embedding model or WordNet",
            f"local metrics: {', '.join(METRICS)}",
            "pick one of them, or add your own through a python grader",
        )
    return TextSimilarity(
        spec.name,
        spec.choice("evaluation_metric", list(METRICS), "fuzzy_match"),
        spec.template("input", "{{sample.output_text}}"),
        spec.template("reference", "{{item.reference}}"),
        spec.number("pass_threshold", None, high=1.0),
    )
