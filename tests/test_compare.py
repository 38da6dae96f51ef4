"""Unit tests for the structured JSON comparison (compare.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from pytest_distill import json_match
from pytest_distill.grading.compare import (
    JsonMatch,
    assertrepr,
    compare_json,
    format_path,
    parse_exclude_path,
    parse_model_json,
)


def test_equal_documents_score_one_with_no_lines() -> None:
    result = compare_json({"a": [1, {"b": "x"}]}, {"a": [1, {"b": "x"}]})
    assert (result.equal, result.score, result.lines) == (True, 1.0, ())


def test_changed_leaf_is_reported_by_friendly_path() -> None:
    result = compare_json({"items": [{"qty": 3}]}, {"items": [{"qty": 2}]})
    assert not result.equal
    assert result.lines == ("items[0].qty: expected 2, got 3",)


def test_missing_and_unexpected_keys_are_reported() -> None:
    result = compare_json({"a": 1, "extra": True}, {"a": 1, "b": [1, 2]})
    assert result.lines == (
        "b: missing key, expected [1, 2]",
        "extra: unexpected key, got true",
    )


def test_missing_and_unexpected_list_items_are_reported() -> None:
    assert compare_json([1], [1, 2]).lines == ("[1]: missing item, expected 2",)
    assert compare_json([1, 2], [1]).lines == ("[1]: unexpected item, got 2",)


@pytest.mark.parametrize(
    ("actual", "expected"),
    [(1, "1"), (1, True), ("true", True), (0, False), (None, 0), ([], {})],
)
def test_json_types_stay_distinct(actual: object, expected: object) -> None:
    result = compare_json({"v": actual}, {"v": expected})
    assert not result.equal
    assert "(" in result.lines[0]  # type changes name the JSON types


def test_type_change_names_both_json_types() -> None:
    result = compare_json({"v": "1"}, {"v": 1})
    assert result.lines == ('v: expected 1 (number), got "1" (string)',)


def test_integer_and_float_of_same_value_are_equal() -> None:
    assert compare_json({"v": 2.0}, {"v": 2}).equal


def test_tolerance_accepts_small_absolute_differences_only() -> None:
    assert compare_json({"v": 1.04}, {"v": 1}, tolerance=0.05).equal
    assert not compare_json({"v": 1.06}, {"v": 1}, tolerance=0.05).equal
    assert not compare_json({"v": 1.04}, {"v": 1}).equal


def test_order_matters_unless_ignore_order() -> None:
    assert not compare_json([1, 2, 3], [3, 2, 1]).equal
    assert compare_json([1, 2, 3], [3, 2, 1], ignore_order=True).equal


def test_ignore_order_treats_lists_as_multisets() -> None:
    assert not compare_json([1, 1, 2], [1, 2, 2], ignore_order=True).equal


def test_ignore_order_reports_changed_item_field_at_expected_index() -> None:
    expected = {"items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]}
    actual = {"items": [{"sku": "b", "qty": 5}, {"sku": "a", "qty": 1}]}
    result = compare_json(actual, expected, ignore_order=True)
    assert result.lines == ("items[1].qty: expected 2, got 5",)


def test_ignore_order_combines_with_tolerance_in_nested_lists() -> None:
    expected = [{"p": [1.0, 2.0]}, {"p": [3.0]}]
    actual = [{"p": [3.01]}, {"p": [2.01, 0.99]}]
    assert compare_json(actual, expected, ignore_order=True, tolerance=0.02).equal


@pytest.mark.parametrize(
    "path", ["items[*].sku", "$.items[*].sku", "root['items'][0]['sku']", "items[0].sku"]
)
def test_excluded_paths_are_not_compared(path: str) -> None:
    expected = {"items": [{"sku": "a", "qty": 1}]}
    actual = {"items": [{"sku": "zzz", "qty": 1}]}
    assert compare_json(actual, expected, exclude_paths=[path]).equal


def test_excluded_path_ignores_a_key_missing_on_one_side() -> None:
    assert compare_json({"a": 1}, {"a": 1, "id": 7}, exclude_paths=["id"]).equal


def test_wildcard_key_excludes_every_key_at_that_level() -> None:
    result = compare_json({"x": {"a": 1, "b": 2}}, {"x": {"a": 9, "b": 9}}, exclude_paths=["x.*"])
    assert result.equal


def test_exclusion_applies_with_ignore_order() -> None:
    expected = [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}]
    actual = [{"sku": "x", "qty": 2}, {"sku": "y", "qty": 1}]
    assert compare_json(actual, expected, ignore_order=True, exclude_paths=["[*].sku"]).equal


def test_unreadable_exclude_path_raises_naming_the_path() -> None:
    with pytest.raises(ValueError, match=r"'a\.\.b' is unreadable"):
        compare_json({}, {}, exclude_paths=["a..b"])


def test_parse_exclude_path_reads_friendly_and_native_forms() -> None:
    assert parse_exclude_path("order.lines[2]['unit price']") == ("order", "lines", 2, "unit price")
    assert parse_exclude_path("root['a'][3]") == ("a", 3)


def test_score_is_fraction_of_matching_leaves() -> None:
    result = compare_json({"a": 1, "b": 2, "c": 0, "d": 4}, {"a": 1, "b": 2, "c": 3, "d": 4})
    assert result.score == pytest.approx(0.75)


def test_unexpected_leaves_lower_the_score() -> None:
    result = compare_json({"a": 1, "b": 2}, {"a": 1})
    assert result.score == pytest.approx(0.5)


def test_long_diffs_are_capped_with_a_count_of_the_rest() -> None:
    result = compare_json(list(range(25)), list(range(100, 125)))
    assert len(result.lines) == 11
    assert result.lines[-1] == "... and 15 more"


def test_long_values_are_shortened_in_lines() -> None:
    result = compare_json({"t": "x" * 200}, {"t": "y"})
    assert len(result.lines[0]) < 120
    assert result.lines[0].endswith('..."') or result.lines[0].endswith("...")


def test_format_path_quotes_keys_that_are_not_identifiers() -> None:
    assert format_path(["items", 0, "unit price"]) == "items[0]['unit price']"
    assert format_path([]) == "(root)"


def test_parse_model_json_tolerates_fences_and_prose() -> None:
    assert parse_model_json('```json\n{"a": 1}\n```') == {"a": 1}
    assert parse_model_json("Here it is:\n```\n[1, 2]\n```\nDone.") == [1, 2]
    assert parse_model_json("  null \n") is None


def test_parse_model_json_raises_value_error_on_prose() -> None:
    with pytest.raises(ValueError):
        parse_model_json("the answer is 4")


def test_json_match_parses_strings_on_either_side() -> None:
    assert json_match({"a": [1, 2]}, ignore_order=True) == '{"a": [2, 1]}'
    assert '```json\n{"a": 1}\n```' == json_match({"a": 1})  # noqa: SIM300  # reflected ==


def test_json_match_rejects_invalid_json_and_keeps_the_comparison() -> None:
    match = json_match({"a": 1})
    assert match != "not json"
    assert match.last is not None
    assert "not valid JSON" in match.last.lines[0]


def test_json_match_is_unhashable_and_has_readable_repr() -> None:
    match = JsonMatch({"a": 1}, ignore_order=True, exclude_paths=["b"])
    assert repr(match) == "json_match({'a': 1}, ignore_order=True, exclude_paths=['b'])"
    with pytest.raises(TypeError):
        hash(match)


def test_json_match_rejects_bad_exclude_paths_when_created() -> None:
    with pytest.raises(ValueError, match="unreadable"):
        json_match({}, exclude_paths=["a["])


def test_assertrepr_renders_the_diff_for_a_failed_match() -> None:
    lines = assertrepr("==", json_match({"qty": 2}), '{"qty": 3}')
    assert lines is not None
    assert lines[1:] == ["JSON differs (score 0.00):", "qty: expected 2, got 3"]
    two = assertrepr("==", json_match({"qty": 2, "sku": "A"}), '{"qty": 3, "sku": "B"}')
    assert two is not None and two[1] == "JSON differs in 2 fields (score 0.00):"
    assert two[2:] == ["qty: expected 2, got 3", 'sku: expected "A", got "B"']
    reflected = assertrepr("==", '{"qty": 3}', json_match({"qty": 2}))
    assert reflected == ["'{\"qty\": 3}' does not match json_match({'qty': 2})", *lines[1:]]


def test_assertrepr_leaves_other_comparisons_to_pytest() -> None:
    assert assertrepr("==", 1, 2) is None
    assert assertrepr("!=", json_match(1), 1) is None
    assert assertrepr("==", json_match(1), 1) is None


def test_importing_compare_does_not_import_deepdiff() -> None:
    code = "import sys, pytest_distill.grading.compare; print('deepdiff' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
