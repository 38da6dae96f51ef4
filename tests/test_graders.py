"""Unit tests for the built-in graders (graders.py and the modules it builds on)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest

from pytest_distill.grading.judges import parse_score, pick_label
from pytest_distill.grading.registry import (
    Grade,
    Grader,
    GraderConfigError,
    Sample,
    combine,
    make_grader,
)
from pytest_distill.grading.similarity import bleu, fuzzy_match, gleu, rouge_l, rouge_n

ITEM: dict[str, Any] = {"id": "c-1", "reference": "Paris", "country": "France"}


def grade(spec: Mapping[str, Any], output: str, item: Mapping[str, Any] = ITEM, **kw: Any) -> Grade:
    return make_grader(spec, **kw).grade(Sample(output), item)


def judge_replying(reply: str, seen: list[list[dict[str, str]]] | None = None) -> Any:
    def judge(messages: list[dict[str, str]]) -> str:
        if seen is not None:
            seen.append(messages)
        return reply

    return judge


# --- Sample, Grade, combine -------------------------------------------------------------


def test_sample_output_json_parses_fenced_json() -> None:
    assert Sample('```json\n{"a": 1}\n```').output_json == {"a": 1}


def test_sample_output_json_raises_on_prose_but_json_or_none_gives_none() -> None:
    with pytest.raises(ValueError):
        _ = Sample("hello").output_json
    assert Sample("hello").json_or_none() is None


def test_grade_rejects_score_outside_unit_interval() -> None:
    with pytest.raises(ValueError, match=r"score 1\.5"):
        Grade("g", 1.5, True)


def test_combine_is_mean_score_and_all_passed() -> None:
    assert combine([Grade("a", 1.0, True), Grade("b", 0.5, False)]) == (0.75, False)
    assert combine([Grade("a", 1.0, True), Grade("b", 0.5, True)]) == (0.75, True)


def test_combine_of_no_grades_raises() -> None:
    with pytest.raises(ValueError, match="at least one grade"):
        combine([])


# --- string_check ---------------------------------------------------------------------------


def test_string_check_eq_compares_output_to_reference_by_default() -> None:
    assert grade({"type": "string_check", "operation": "eq"}, "Paris").passed
    failed = grade({"type": "string_check", "operation": "eq"}, "Lyon")
    assert (failed.score, failed.passed, failed.reason) == (
        0.0,
        False,
        "expected 'Paris', got 'Lyon'",
    )


def test_string_check_strips_trailing_newline_by_default() -> None:
    assert grade({"type": "string_check"}, "Paris\n").passed
    assert not grade({"type": "string_check", "strip": False}, "Paris\n").passed


def test_string_check_ne_fails_when_equal() -> None:
    assert grade({"type": "string_check", "operation": "ne"}, "Lyon").passed
    assert not grade({"type": "string_check", "operation": "ne"}, "Paris").passed


def test_string_check_like_passes_on_substring() -> None:
    assert grade({"type": "string_check", "operation": "like"}, "It is Paris.").passed
    assert not grade({"type": "string_check", "operation": "like"}, "It is paris.").passed


def test_string_check_ilike_passes_on_case_insensitive_substring() -> None:
    assert grade({"type": "string_check", "operation": "ilike"}, "it is PARIS.").passed
    failed = grade({"type": "string_check", "operation": "ilike"}, "Lyon")
    assert failed.reason == "'Paris' not found (ignoring case) in 'Lyon'"


def test_string_check_templates_read_item_variables_with_spaces_in_braces() -> None:
    spec = {"type": "string_check", "reference": "{{ item.country }}", "name": "country"}
    result = grade(spec, "France")
    assert result.passed and result.name == "country"


def test_template_naming_a_missing_variable_is_a_config_error_naming_the_case() -> None:
    with pytest.raises(GraderConfigError, match=r"'nope', which case 'c-1' does not have"):
        grade({"type": "string_check", "reference": "{{item.nope}}"}, "x")


def test_grading_a_case_without_reference_is_a_config_error() -> None:
    with pytest.raises(GraderConfigError, match="case 'c-2' has no reference"):
        grade({"type": "string_check"}, "x", {"id": "c-2", "reference": None})


def test_template_with_unknown_root_is_rejected_at_make_time() -> None:
    with pytest.raises(GraderConfigError, match="unknown placeholder"):
        make_grader({"type": "string_check", "input": "{{output}}"})


def test_string_check_renders_json_reference_as_json_text() -> None:
    assert grade({"type": "string_check"}, "[1, 2]", {"id": "x", "reference": [1, 2]}).passed


# --- text_similarity ------------------------------------------------------------------------


def test_text_similarity_fuzzy_match_passes_near_misses_above_threshold() -> None:
    spec = {"type": "text_similarity", "evaluation_metric": "fuzzy_match", "pass_threshold": 0.8}
    assert grade(spec, "Pariss").passed
    failed = grade(spec, "Berlin")
    assert not failed.passed and failed.reason.startswith("fuzzy_match 0.")


@pytest.mark.parametrize("metric", ["bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"])
def test_text_similarity_ngram_metrics_pass_identical_and_fail_unrelated(metric: str) -> None:
    spec = {"type": "text_similarity", "evaluation_metric": metric, "pass_threshold": 0.5}
    item = {"id": "x", "reference": "the cat sat on the mat"}
    assert grade(spec, "The cat sat on the mat.", item).score == pytest.approx(1.0)
    assert not grade(spec, "dogs bark loudly at night", item).passed


def test_text_similarity_requires_pass_threshold() -> None:
    with pytest.raises(GraderConfigError, match="missing 'pass_threshold'"):
        make_grader({"type": "text_similarity", "evaluation_metric": "bleu"})


def test_text_similarity_rejects_metrics_needing_a_model() -> None:
    spec = {"type": "text_similarity", "evaluation_metric": "cosine", "pass_threshold": 0.5}
    with pytest.raises(GraderConfigError, match=r"'cosine'.*local metrics: fuzzy_match"):
        make_grader(spec)


def test_similarity_metrics_give_partial_credit() -> None:
    reference = "the quick brown fox jumps over the lazy dog"
    candidate = "the quick brown fox jumped over a lazy dog"
    for metric in (bleu, gleu, rouge_l, fuzzy_match):
        assert 0.3 < metric(candidate, reference) < 1.0
    assert rouge_n(candidate, reference, 1) == pytest.approx(7 / 9)
    assert rouge_l("a b c d", "a x c d") == pytest.approx(0.75)


def test_bleu_scores_short_exact_answers_as_one() -> None:
    assert bleu("Paris", "paris") == 1.0
    assert bleu("", "paris") == 0.0


# --- json -----------------------------------------------------------------------------------


ORDER = {"id": "o-1", "reference": '{"sku": "A1", "qty": 2, "tags": ["x", "y"]}'}


def test_json_grader_passes_equal_json_and_parses_string_reference() -> None:
    assert grade({"type": "json"}, '{"qty": 2, "sku": "A1", "tags": ["x", "y"]}', ORDER).passed


def test_json_grader_failure_shows_path_diff_and_partial_score() -> None:
    result = grade({"type": "json"}, '{"sku": "A1", "qty": 3, "tags": ["x", "y"]}', ORDER)
    assert not result.passed
    assert result.score == pytest.approx(0.75)
    assert result.reason == "JSON differs: qty: expected 2, got 3"
    assert result.detail == ("qty: expected 2, got 3",)


def test_json_grader_reason_names_every_differing_field_on_one_line() -> None:
    meeting = {"id": "m-1", "reference": '{"minutes": 60, "time": "10:00", "room": "A"}'}
    result = grade({"type": "json"}, '{"minutes": 1, "time": "9:00", "room": "A"}', meeting)
    assert result.reason == (
        'JSON differs in 2 fields: minutes: expected 60, got 1; time: expected "10:00", got "9:00"'
    )
    assert result.detail == ("minutes: expected 60, got 1", 'time: expected "10:00", got "9:00"')


def test_json_grader_reason_caps_the_paths_it_names() -> None:
    wide = {"id": "w", "reference": json.dumps({f"k{n:02d}": n for n in range(12)})}
    result = grade({"type": "json"}, json.dumps({f"k{n:02d}": -1 for n in range(12)}), wide)
    assert result.reason.startswith("JSON differs in 12 fields: k00: expected 0, got -1; ")
    assert result.reason.endswith("k04: expected 4, got -1; and 7 more")
    assert "\n" not in result.reason and result.reason.count(";") == 5


def test_json_grader_options_ignore_order_tolerance_and_exclusions() -> None:
    spec = {"type": "json", "ignore_order": True, "tolerance": 0.5, "exclude_paths": ["sku"]}
    assert grade(spec, '{"sku": "B", "qty": 2.4, "tags": ["y", "x"]}', ORDER).passed
    assert not grade(spec, '{"sku": "B", "qty": 2.6, "tags": ["y", "x"]}', ORDER).passed


def test_json_grader_fails_with_reason_when_output_is_not_json() -> None:
    result = grade({"type": "json"}, "sure! qty is 2", ORDER)
    assert (result.score, result.passed) == (0.0, False)
    assert result.reason.startswith("output is not valid JSON")


def test_json_grader_can_compare_a_sub_path_of_the_output() -> None:
    spec = {"type": "json", "input": "{{sample.output_json.order}}"}
    assert grade(spec, '{"order": {"a": 1}}', {"id": "x", "reference": {"a": 1}}).passed


def test_json_grader_reference_that_is_not_json_is_a_config_error() -> None:
    with pytest.raises(GraderConfigError, match="reference of case 'x' is not valid JSON"):
        grade({"type": "json"}, "{}", {"id": "x", "reference": "yes"})


def test_json_grader_rejects_bad_options_at_make_time() -> None:
    with pytest.raises(GraderConfigError, match="tolerance"):
        make_grader({"type": "json", "tolerance": -1})
    with pytest.raises(GraderConfigError, match=r"unreadable exclude path 'a..b'"):
        make_grader({"type": "json", "exclude_paths": ["a..b"]})


def test_importing_graders_does_not_import_deepdiff_until_json_is_graded() -> None:
    code = (
        "import sys; from pytest_distill.grading.registry import make_grader, Sample\n"
        "g = make_grader({'type': 'json'}); print('deepdiff' in sys.modules)\n"
        "g.grade(Sample('{}'), {'id': 'x', 'reference': {}}); print('deepdiff' in sys.modules)\n"
        "g.grade(Sample('{\"a\": 1}'), {'id': 'x', 'reference': {}})\n"
        "print('deepdiff' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # Equal values need no diff: only a difference loads deepdiff.
    assert out.stdout.split() == ["False", "False", "True"]


# --- regex and contains ---------------------------------------------------------------------


def test_regex_searches_with_flags() -> None:
    spec = {"type": "regex", "pattern": r"^\d{4}-\d{2}-\d{2}$", "flags": ["multiline"]}
    assert grade(spec, "Date:\n2024-03-01").passed
    failed = grade(spec, "March 1st")
    assert failed.reason == r"'March 1st' does not match /^\d{4}-\d{2}-\d{2}$/"


def test_regex_ignorecase_flag_and_fullmatch() -> None:
    assert grade({"type": "regex", "pattern": "paris", "flags": "ignorecase"}, "PARIS!").passed
    spec = {"type": "regex", "pattern": "paris", "flags": ["ignorecase"], "fullmatch": True}
    assert grade(spec, "Paris\n").passed
    assert not grade(spec, "Paris!").passed


def test_regex_rejects_bad_pattern_and_unknown_flag() -> None:
    with pytest.raises(GraderConfigError, match="does not compile"):
        make_grader({"type": "regex", "pattern": "("})
    with pytest.raises(GraderConfigError, match=r"unknown flag.*ignorecase, multiline"):
        make_grader({"type": "regex", "pattern": "a", "flags": ["caseless"]})
    with pytest.raises(GraderConfigError, match="missing 'pattern'"):
        make_grader({"type": "regex"})


def test_contains_all_scores_the_fraction_found() -> None:
    spec = {"type": "contains", "value": ["Paris", "Seine"]}
    assert grade(spec, "Paris on the Seine").passed
    half = grade(spec, "Paris")
    assert (half.score, half.passed, half.reason) == (0.5, False, "missing 'Seine'")


def test_contains_any_passes_when_one_value_is_found() -> None:
    spec = {"type": "contains", "value": ["Lyon", "paris"], "match": "any", "ignore_case": True}
    assert grade(spec, "PARIS").passed
    assert not grade(spec, "Berlin").passed


def test_contains_defaults_to_reference_and_accepts_list_references() -> None:
    assert grade({"type": "contains"}, "I say Paris").passed
    item = {"id": "x", "reference": ["a", "b"]}
    assert not grade({"type": "contains"}, "a only", item).passed


# --- score_model and label_model ------------------------------------------------------------


JUDGE_PROMPT = [{"role": "user", "content": "Is {{sample.output_text}} = {{item.reference}}?"}]


def test_score_model_sends_rendered_prompt_and_passes_above_threshold() -> None:
    seen: list[list[dict[str, str]]] = []
    spec = {"type": "score_model", "input": JUDGE_PROMPT, "range": [0, 10], "pass_threshold": 7}
    result = grade(spec, "Paris", judge=judge_replying("Looks right. Score: 8", seen))
    assert result.passed
    assert result.score == pytest.approx(0.8)
    assert seen[0][0]["content"].startswith("Is Paris = Paris?")


def test_score_model_fails_below_threshold_with_reply_in_detail() -> None:
    spec = {"type": "score_model", "input": JUDGE_PROMPT, "pass_threshold": 0.7}
    result = grade(spec, "Lyon", judge=judge_replying("Wrong city.\n0.2"))
    assert (result.passed, result.reason) == (False, "judge score 0.2 < pass_threshold 0.7")
    assert result.detail == ("Wrong city.", "0.2")


def test_score_model_unparseable_reply_scores_zero_with_reason() -> None:
    spec = {"type": "score_model", "input": JUDGE_PROMPT, "pass_threshold": 0.5}
    result = grade(spec, "Paris", judge=judge_replying("I cannot say."))
    assert (result.score, result.passed) == (0.0, False)
    assert "no score in [0, 1]" in result.reason


def test_score_model_without_judge_tells_how_to_configure_it() -> None:
    spec = {"type": "score_model", "input": JUDGE_PROMPT, "pass_threshold": 0.5}
    with pytest.raises(GraderConfigError, match=r"distill_judge_model.*distill_judge_endpoint"):
        make_grader(spec)


def test_score_model_validates_range_and_threshold() -> None:
    judge = judge_replying("1")
    with pytest.raises(GraderConfigError, match="range"):
        make_grader(
            {"type": "score_model", "input": JUDGE_PROMPT, "range": [5, 1], "pass_threshold": 2},
            judge=judge,
        )
    with pytest.raises(GraderConfigError, match="pass_threshold"):
        make_grader({"type": "score_model", "input": JUDGE_PROMPT}, judge=judge)
    with pytest.raises(GraderConfigError, match="input"):
        make_grader({"type": "score_model", "input": "rate it", "pass_threshold": 1}, judge=judge)


@pytest.mark.parametrize(
    ("reply", "low", "high", "expected"),
    [
        ("0.75", 0, 1, 0.75),
        ("**7**", 0, 10, 7.0),
        ('{"steps": [], "result": 0.4}', 0, 1, 0.4),
        ("Reasoning about 3 points.\nScore: 9", 0, 10, 9.0),
        ("I'd give it 4 out of 5", 1, 5, 4.0),
        ("8/10", 0, 1, 0.8),
        ("The answer has 2 errors, so 0.3", 0, 1, 0.3),
        ("no idea", 0, 1, None),
        ("Score: 42", 0, 10, None),
    ],
)
def test_parse_score_reads_common_judge_replies(
    reply: str, low: float, high: float, expected: float | None
) -> None:
    assert parse_score(reply, low, high) == expected


def test_label_model_passes_on_passing_label() -> None:
    seen: list[list[dict[str, str]]] = []
    spec = {
        "type": "label_model",
        "input": JUDGE_PROMPT,
        "labels": ["correct", "incorrect"],
        "passing_labels": ["correct"],
    }
    assert grade(spec, "Paris", judge=judge_replying("Correct", seen)).passed
    assert "one of these labels: correct, incorrect" in seen[0][-1]["content"]
    failed = grade(spec, "Lyon", judge=judge_replying("This is incorrect."))
    assert failed.reason == "judge chose 'incorrect'; passing labels: correct"


def test_label_model_reply_without_a_label_fails_with_reason() -> None:
    spec = {
        "type": "label_model",
        "input": JUDGE_PROMPT,
        "labels": ["yes", "no"],
        "passing_labels": ["yes"],
    }
    result = grade(spec, "x", judge=judge_replying("maybe"))
    assert not result.passed and "names none of ['yes', 'no']" in result.reason


def test_label_model_rejects_passing_labels_outside_labels() -> None:
    spec = {
        "type": "label_model",
        "input": JUDGE_PROMPT,
        "labels": ["yes", "no"],
        "passing_labels": ["ok"],
    }
    with pytest.raises(GraderConfigError, match="not all in labels"):
        make_grader(spec, judge=judge_replying("yes"))


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("incorrect", "incorrect"),
        ('{"label": "Correct"}', "correct"),
        ("The answer is not correct, so: incorrect.", "incorrect"),
        ("It looks incorrect at first but is correct", "correct"),
        ("none of them", None),
    ],
)
def test_pick_label_reads_common_judge_replies(reply: str, expected: str | None) -> None:
    assert pick_label(reply, ["correct", "incorrect"]) == expected


# --- python ---------------------------------------------------------------------------------


def length_grader(sample: dict[str, Any], item: dict[str, Any]) -> Any:
    return (1.0, "ok") if len(sample["output_text"]) <= 5 else (0.0, "too long")


def test_python_grader_imports_a_function_by_colon_or_dotted_path() -> None:
    for path in (f"{__name__}:length_grader", f"{__name__}.length_grader"):
        spec = {"type": "python", "function": path}
        assert grade(spec, "Paris").passed
        assert grade(spec, "Paris, France").reason == "too long"


def test_python_grader_source_receives_sample_json_and_item() -> None:
    source = (
        "def grade(sample, item):\n    return sample['output_json']['n'] == item['reference']\n"
    )
    spec = {"type": "python", "source": source}
    assert grade(spec, '{"n": 3}', {"id": "x", "reference": 3}).passed
    failed = grade(spec, '{"n": 4}', {"id": "x", "reference": 3})
    assert (failed.score, failed.reason) == (0.0, "score 0 < pass_threshold 1")


def test_python_grader_pass_threshold_applies_to_float_scores() -> None:
    spec = {"type": "python", "source": "def grade(s, i):\n    return 0.6", "pass_threshold": 0.5}
    assert grade(spec, "x").passed
    assert not grade({**spec, "pass_threshold": 0.7}, "x").passed


def test_python_grader_bad_return_value_is_a_config_error() -> None:
    spec = {"type": "python", "source": "def grade(s, i):\n    return 'good'"}
    with pytest.raises(GraderConfigError, match=r"returned 'good'.*float in \[0, 1\], a bool"):
        grade(spec, "x")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"function": "no_such_module_xyz:f"}, "cannot load function 'no_such_module_xyz:f'"),
        ({"function": f"{__name__}:missing"}, "has no attribute 'missing'"),
        ({"source": "def grade(:"}, "fails at line 1: SyntaxError"),
        ({"source": "x = 1"}, "without a grade\\(\\) function"),
        ({}, "exactly one of 'function' and 'source'"),
    ],
)
def test_python_grader_config_errors_name_the_problem(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(GraderConfigError, match=message):
        make_grader({"type": "python", **spec})


# --- spec checks and extension --------------------------------------------------------------


def test_unknown_type_goes_to_extra_hook() -> None:
    class Length:
        name = "length"

        def grade(self, sample: Sample, item: Mapping[str, Any]) -> Grade:
            return Grade(self.name, 1.0, True)

    def extra(spec: Mapping[str, Any]) -> Grader | None:
        return Length() if spec["type"] == "length" else None

    assert make_grader({"type": "length"}, extra=extra).name == "length"
    with pytest.raises(GraderConfigError, match=r"unknown grader type 'other'.*string_check"):
        make_grader({"type": "other"}, extra=extra)


def test_unknown_type_without_hook_lists_known_types() -> None:
    with pytest.raises(GraderConfigError, match="built-in types are string_check, text_similarity"):
        make_grader({"type": "strng_check"})


def test_spec_without_type_is_rejected() -> None:
    with pytest.raises(GraderConfigError, match="has no 'type'"):
        make_grader({"operation": "eq"})


def test_unknown_key_is_rejected_with_allowed_keys() -> None:
    with pytest.raises(GraderConfigError, match=r"unknown key\(s\) 'treshold'.*operation"):
        make_grader({"type": "string_check", "treshold": 1})


def test_openai_model_keys_are_accepted_for_migrated_specs() -> None:
    spec = {"type": "score_model", "model": "any", "input": JUDGE_PROMPT, "pass_threshold": 0.5}
    assert make_grader(spec, judge=judge_replying("1")).name == "score_model"


def test_config_error_names_value_allowed_values_and_fix() -> None:
    with pytest.raises(GraderConfigError) as info:
        make_grader({"type": "string_check", "operation": "equals", "name": "exact"})
    assert str(info.value) == (
        "grader 'exact' (string_check) has operation='equals'; allowed: eq, ne, like, ilike; "
        "set 'operation' to one of them"
    )
