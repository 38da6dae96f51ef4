"""Training lines with tools: the student's prompt and tools, the teacher's tool calls, earlier
assistant turns untrained, every line within OpenAI's rules, the tools' hash in the lineage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill_shapes.tools import ToolCall
from distill_shapes.training import parse_training_file
from pytest_distill.evals.cases import EvalCase
from pytest_distill.evals.loaders import load_file
from pytest_distill.records import ItemResult
from pytest_distill.roles import CallRecord
from pytest_distill.training import dataset

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]

SUITE = f"""\
name: weather
prompt:
  system: You are the teacher. Use the tools.
  few_shot:
    - user: Weather in Rome?
      assistant: {{tool_calls: [{{name: get_weather, arguments: {{city: Rome}}}}]}}
      tool_results: ['{{"temp": 25}}']
  user: "Weather in {{{{ city }}}}?"
tools: {json.dumps(TOOLS)}
parallel_tool_calls: false
roles:
  student:
    prompt:
      system: Use the tools.
cases:
{{cases}}
"""


def _suite(tmp_path: Path, extra: str = "") -> Path:
    cases = "\n".join(
        f"  - {{id: c{n:02d}, vars: {{city: C{n}}}, reference: "
        f"[{{name: get_weather, arguments: {{city: C{n}}}}}]}}"
        for n in range(12)
    )
    path = tmp_path / "weather.eval.yaml"
    path.write_text(SUITE.replace("{cases}", cases) + extra)
    return path


def _results(path: Path) -> list[ItemResult]:
    """Each case's passing teacher answer, as the teacher's item records it."""
    suite = load_file(path)
    results = []
    for case in suite.cases:
        city = case.vars["city"]
        call = CallRecord(
            "teacher", "big", tuple(suite.messages_for(case, "teacher")),
            suite.tooling_for("teacher", case).request(), "", f"cmpl-{case.id}", 10, 5, 0.1,
            tool_calls=(ToolCall(f"call_{case.id}", "get_weather", json.dumps({"city": city})),),
        )  # fmt: skip
        results.append(_teacher_result(suite, case, call))
    return results


def _teacher_result(suite: object, case: EvalCase, call: CallRecord) -> ItemResult:
    from pytest_distill.evals.cases import Suite

    assert isinstance(suite, Suite)
    student = suite.tooling_for("student", case)
    result = ItemResult(
        f"weather.eval.yaml::{case.id}[teacher]", "weather", case.id, "teacher", "train",
        True, 1.0, call=call, train_messages=tuple(suite.messages_for(case, "student")),
        train_tools=tuple(student.request().get("tools", ())),
        train_parallel_tool_calls=student.parallel_tool_calls,
        train_earlier_turns=suite.train_earlier_turns, tool_score=1.0,
    )  # fmt: skip
    return ItemResult.from_json(json.loads(json.dumps(result.to_json())))  # as the report has it


def test_a_teacher_answer_with_tool_calls_becomes_a_line_within_the_rules(
    tmp_path: Path,
) -> None:
    written = dataset.write(dataset.select(_results(_suite(tmp_path)), max_tokens=10_000), tmp_path)
    examples = parse_training_file(written.path.read_bytes())  # OpenAI's rules
    assert len(examples) == 12
    line = json.loads(written.path.read_text().splitlines()[0])
    assert line["tools"] == TOOLS and line["parallel_tool_calls"] is False
    messages = line["messages"]
    # The student's prompt, not the teacher's; the few-shot answer and its result stay.
    assert messages[0] == {"role": "system", "content": "Use the tools."}
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "user",
        "assistant",
    ]
    assert messages[2]["weight"] == 0  # an earlier turn: not trained
    assert messages[-1] == {
        "role": "assistant",
        "tool_calls": [
            {
                "id": "call_c00",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "C0"}'},
            }
        ],
    }
    assert [m.trained for m in examples[0].messages] == [False] * 5 + [True]


def test_train_earlier_turns_trains_every_assistant_turn(tmp_path: Path) -> None:
    path = _suite(tmp_path, "train_earlier_turns: true\n")
    written = dataset.write(dataset.select(_results(path), max_tokens=10_000), tmp_path)
    line = json.loads(written.path.read_text().splitlines()[0])
    assert all("weight" not in m for m in line["messages"])
    assert parse_training_file(written.path.read_bytes())[0].messages[2].trained


def test_the_manifest_records_the_hash_of_the_tools_the_student_is_sent(tmp_path: Path) -> None:
    path = _suite(tmp_path)
    written = dataset.write(dataset.select(_results(path), max_tokens=10_000), tmp_path)
    manifest = json.loads(written.manifest_path.read_text())
    suite = load_file(path)
    at_inference = {"tools": suite.tooling_for("finetuned", suite.cases[0]).request()["tools"]}
    assert manifest["tools_sha256"] == [dataset.tools_sha256(at_inference)]
    assert {line["tools_sha256"] for line in manifest["lines"]} == set(manifest["tools_sha256"])


def test_a_call_to_a_tool_the_student_is_not_offered_names_the_line(tmp_path: Path) -> None:
    results = _results(_suite(tmp_path))
    wrong = results[3].call
    assert wrong is not None
    bad = ItemResult.from_json(
        {
            **results[3].to_json(),
            "call": {
                **wrong.to_json(),
                "tool_calls": [
                    {"id": "x", "type": "function", "function": {"name": "nope", "arguments": "{}"}}
                ],
            },
        }
    )
    selection = dataset.select([*results[:3], bad, *results[4:]], max_tokens=10_000)
    with pytest.raises(dataset.DatasetError, match=r"line 4: messages\[5\]\.tool_calls\[0\]"):
        dataset.write(selection, tmp_path)
