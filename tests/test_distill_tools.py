"""``pytest --distill`` with tools, end to end: a scripted teacher on loopback calls tools, a
tiny student on the embedded server trains on the tool lines and its calls are graded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from scripted_server import ScriptedServer
from test_distill import ini

from distill_shapes.training import parse_training_file

CASES = 30
CALL = {"name": "open_ticket", "arguments": {"category": "vpn"}}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "open_ticket",
            "description": "Open a support ticket.",
            "parameters": {"type": "object", "properties": {"category": {"type": "string"}}},
        },
    }
]


def _teacher(model: str, messages: list[dict[str, Any]]) -> Any:
    # The teacher misses every seventh case (it answers in words), so not every train case
    # becomes an example.
    number = int(messages[-1]["content"].rsplit(" ", 1)[1])
    return "Sorry, I cannot." if number % 7 == 3 else {"content": None, "tool_calls": [CALL]}


def suite() -> str:
    lines = [
        "name: desk",
        f"tools: {json.dumps(TOOLS)}",
        "prompt:",
        "  system: Use the tools.",
        '  user: "VPN down, ticket {{ n }}"',
        "roles:",
        "  teacher:",
        "    prompt:",
        "      system: You are the IT desk. Open a ticket with the tools for every problem.",
        "graders:",
        "  - {type: tool_calls}",
        "cases:",
    ]
    reference = json.dumps([CALL])
    lines += [
        f"  - {{id: t{n:02d}, vars: {{n: {n}}}, reference: {reference}}}" for n in range(CASES)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def teacher_server() -> Iterator[ScriptedServer]:
    with ScriptedServer(_teacher) as srv:
        yield srv


def test_distill_trains_the_embedded_student_on_the_teachers_tool_calls(
    pytester: pytest.Pytester, teacher_server: ScriptedServer, tiny_model: Path
) -> None:
    pytester.makeini(
        ini(teacher_server.base_url, tiny_model).replace("max_tokens=8", "max_tokens=40")
    )
    pytester.makefile(".eval.yaml", desk=suite())
    result = pytester.runpytest(
        "--distill",
        "--distill-report=report.json",
        "--distill-gate",
        "teacher >= 0.5",
    )
    result.stdout.fnmatch_lines(
        [
            "distill: wrote * examples to *train.jsonl*",
            "distill: started job ftjob-* on local for tiny",
            "distill: fine-tuned model ft:tiny:local:distill:*",
            "*tool calls*",
            "gate passed on holdout cases (exit code 0)",
        ]
    )
    assert result.ret == 0, result.stdout.str()

    # The training file holds tool lines within the training-file rules: the student's prompt
    # and tools, the teacher's call as the trained assistant turn.
    [dataset] = (pytester.path / ".distill" / "datasets").glob("*/train.jsonl")
    examples = parse_training_file(dataset.read_bytes())
    lines = [json.loads(x) for x in dataset.read_text().splitlines()]
    assert len(examples) == len(lines) >= 10
    for line in lines:
        assert line["tools"] == TOOLS
        assert line["messages"][0] == {"role": "system", "content": "Use the tools."}
        [call] = line["messages"][-1]["tool_calls"]
        assert call["type"] == "function"
        assert call["function"]["name"] == "open_ticket"
        assert json.loads(call["function"]["arguments"]) == CALL["arguments"]

    # The embedded server's job trained on them, and served the fine-tuned student.
    manifest = json.loads((dataset.parent / "manifest.json").read_text())
    assert manifest["training"]["status"] == "succeeded"
    assert "tools_sha256" in json.dumps(manifest)
    report = json.loads((pytester.path / "report.json").read_text())
    finetuned = [i for i in report["items"] if i["role"] == "finetuned"]
    assert finetuned and all(i["split"] == "holdout" and i["error"] is None for i in finetuned)
    assert {i["model"] for i in finetuned} == {manifest["training"]["fine_tuned_model"]}
    assert report["training"]["examples"] == len(lines)
    assert "tool_call_accuracy" in report["scores"]["finetuned"]["all"]
