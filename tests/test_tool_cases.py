"""Suites with tools, response formats and conversations: collected, sent as the API's spec
shapes them, their replies' tool calls graded, reported and replayed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from scripted_server import ScriptedServer

from pytest_distill.evals.loaders import load_file
from pytest_distill.records import ItemResult
from pytest_distill.roles import CallRecord

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city"],
        },
    },
}
TICKET = {
    "type": "function",
    "function": {
        "name": "open_ticket",
        "parameters": {"type": "object", "properties": {"category": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, TICKET]

SUITE = f"""\
name: weather
prompt:
  system: Use the tools.
  user: "{{{{ ask }}}}"
tools: {json.dumps(TOOLS)}
tool_choice: auto
parallel_tool_calls: true
roles:
  student:
    parallel_tool_calls: false
cases:
  - id: two
    vars: {{ask: "Weather in Paris and Oslo?"}}
    reference:
      - {{name: get_weather, arguments: {{city: Paris}}}}
      - {{name: get_weather, arguments: {{city: Oslo}}}}
  - id: vpn
    vars: {{ask: My VPN is down}}
    reference: [{{name: open_ticket, arguments: {{category: vpn}}}}]
"""

PARIS = {"name": "get_weather", "arguments": {"city": "Paris"}}
OSLO = {"name": "get_weather", "arguments": {"city": "Oslo"}}
REPLIES: dict[str, Any] = {
    # Parallel calls in the other order than the reference's: still a match.
    "Weather in Paris and Oslo?": {"content": None, "tool_calls": [OSLO, PARIS]},
    "My VPN is down": {"content": None, "tool_calls": [{"name": "open_ticket", "arguments": {}}]},
}


@pytest.fixture
def tools_project(project: pytest.Pytester, server: ScriptedServer) -> pytest.Pytester:
    server.script("big", REPLIES)
    server.script(
        "small",
        {
            "Weather in Paris and Oslo?": {"content": None, "tool_calls": [PARIS]},
            "My VPN is down": "Please restart your router.",
        },
    )
    project.makefile(".eval.yaml", weather=SUITE)
    return project


def test_a_suite_with_tools_sends_them_as_the_spec_shapes_them(
    tools_project: pytest.Pytester, server: ScriptedServer
) -> None:
    tools_project.runpytest("-k", "two")
    bodies = {b["model"]: b for b in server.chat_requests()}
    assert bodies["big"]["tools"] == TOOLS
    assert bodies["big"]["tool_choice"] == "auto"
    assert bodies["big"]["parallel_tool_calls"] is True
    assert "response_format" not in bodies["big"]  # only what the suite sets
    # The student's override replaces one field; the suite gives the rest.
    assert bodies["small"]["parallel_tool_calls"] is False
    assert bodies["small"]["tools"] == TOOLS


def test_tool_calls_are_graded_in_any_order_with_partial_credit_and_a_diff(
    tools_project: pytest.Pytester,
) -> None:
    result = tools_project.runpytest("--distill-report=report.json", "-rA")
    result.assert_outcomes(passed=1, failed=3)
    items = {
        i["nodeid"].split("::")[1]: i
        for i in json.loads((tools_project.path / "report.json").read_text())["items"]
    }
    assert items["two[teacher]"]["score"] == 1.0  # parallel, in the other order
    assert items["two[student]"]["score"] == 0.5  # one of the two calls
    assert items["two[teacher]"]["reply"] == ""
    assert [c["function"]["name"] for c in items["two[teacher]"]["tool_calls"]] == [
        "get_weather",
        "get_weather",
    ]
    # The teacher's call with the wrong arguments: the grade names the path that differs.
    assert items["vpn[teacher]"]["passed"] is False
    result.stdout.fnmatch_lines(
        [
            "*FAIL tool_calls: score 0.00 - 0 of 1 expected tool calls matched*",
            '*open_ticket.category: missing key, expected "vpn"*',
            "*reply: 'open_ticket({})'*",
        ]
    )
    assert "missing call get_weather" in items["two[student]"]["grades"][0]["reason"]
    # The tables gain the tool-call accuracy: the tool_calls graders' mean score.
    result.stdout.fnmatch_lines(["*score*tool calls*prompt tok*", "*teacher * 0.500 *"])


def test_the_html_report_shows_the_reply_tool_calls(tools_project: pytest.Pytester) -> None:
    tools_project.runpytest("--distill-html=report.html", "--distill-report=report.json")
    page = (tools_project.path / "report.html").read_text()
    assert "tool-call accuracy" in page
    assert 'get_weather({\\"city\\": \\"Oslo\\"})' in page or "get_weather(" in page
    scores = json.loads((tools_project.path / "report.json").read_text())["scores"]
    assert scores["student"]["all"]["tool_call_accuracy"] == 0.25


def test_a_suite_without_tool_graders_has_no_tool_column(project: pytest.Pytester) -> None:
    from conftest import SUITE as CAPITALS

    project.makefile(".eval.yaml", capitals=CAPITALS)
    result = project.runpytest("--distill-html=report.html")
    assert "tool calls" not in result.stdout.str()
    assert "tool-call accuracy" not in (project.path / "report.html").read_text()


CONVERSATION = {
    "id": "followup",
    "messages": [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "tool_calls": [{"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
        {"role": "user", "content": "And a ticket about the VPN, please."},
    ],
    "reference": [{"name": "open_ticket", "arguments": {"category": "vpn"}}],
}


def test_a_conversation_so_far_is_sent_in_the_spec_shapes(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makefile(".eval.jsonl", chat=json.dumps({**CONVERSATION, "tools": TOOLS}))
    server.script(
        "big",
        {
            "And a ticket about the VPN, please.": {
                "content": None,
                "tool_calls": [{"name": "open_ticket", "arguments": {"category": "vpn"}}],
            }
        },
    )
    result = project.runpytest("-k", "teacher")
    result.assert_outcomes(passed=1)
    [body] = server.chat_requests()
    assert body["tools"] == TOOLS
    assert body["messages"][1] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    assert body["messages"][2] == {
        "role": "tool",
        "tool_call_id": "call_1",
        "content": '{"temp": 21}',
    }


def test_a_few_shot_answer_may_call_tools_and_brings_their_results(tmp_path: Path) -> None:
    path = tmp_path / "s.eval.yaml"
    path.write_text(
        SUITE.replace(
            "  system: Use the tools.\n",
            "  system: Use the tools.\n"
            "  few_shot:\n"
            "    - user: Weather in Rome?\n"
            "      assistant: {tool_calls: [{name: get_weather, arguments: {city: Rome}}]}\n"
            "      tool_results: ['{\"temp\": 25}']\n",
        )
    )
    suite = load_file(path)
    messages = suite.messages_for(suite.cases[0], "teacher")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "user"]
    assert messages[2]["tool_calls"] == [
        {
            "id": "call_shot1_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
        }
    ]
    assert messages[3] == {
        "role": "tool",
        "tool_call_id": "call_shot1_1",
        "content": '{"temp": 25}',
    }


def test_tools_file_is_shared_and_response_format_is_sent(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    (project.path / "tools.yaml").write_text(json.dumps(TOOLS))
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    suite = SUITE.replace(f"tools: {json.dumps(TOOLS)}", "tools_file: tools.yaml")
    suite = suite.replace(
        "tool_choice: auto",
        "tool_choice: {type: function, function: {name: get_weather}}\n"
        f"response_format: {{type: json_schema, json_schema: {{name: city, strict: true, "
        f"schema: {json.dumps(schema)}}}}}",
    )
    project.makefile(".eval.yaml", weather=suite)
    project.runpytest("-k", "two and teacher")
    [body] = server.chat_requests()
    assert body["tools"] == TOOLS
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "city", "schema": schema, "strict": True},
    }


def _glob(text: str) -> str:
    """``text`` as an fnmatch pattern whose brackets are literal (its ``*`` stay wildcards)."""
    return text.replace("[", "[[]")


BAD_TOOL = json.dumps([{"type": "function", "function": {"name": "has space"}}])
BAD_SCHEMA = "{type: json_schema, json_schema: {name: x, schema: {type: 12}}}"


@pytest.mark.parametrize(
    ("change", "line", "message"),
    [
        (
            ("tools: " + json.dumps(TOOLS), "tools:\n  - " + BAD_TOOL[1:-1]),
            6,
            "tools[0].function.name: is 'has space'; use 1-64 of a-z*",
        ),
        (
            ("tool_choice: auto", "response_format: " + BAD_SCHEMA),
            6,
            "response_format.json_schema.schema.type: is not valid JSON Schema*",
        ),
        (
            ("tool_choice: auto", "tools_file: tools.json"),
            6,
            "'tools' and 'tools_file' are both given; keep one*",
        ),
        (
            ("tools: " + json.dumps(TOOLS), "tools_file: missing.json"),
            5,
            "tools_file *missing.json' does not exist*",
        ),
        (
            ("tool_choice: auto", "tool_choice: {type: function, function: {name: nope}}"),
            6,
            "tool_choice.function.name: 'nope' is not among the tools*",
        ),
    ],
    ids=["malformed-tool", "bad-schema", "tools-and-tools-file", "missing-tools-file", "choice"],
)
def test_tool_mistakes_are_collection_errors_at_their_line(
    project: pytest.Pytester, change: tuple[str, str], line: int, message: str
) -> None:
    project.makefile(".eval.yaml", weather=SUITE.replace(*change))
    result = project.runpytest()
    result.stdout.fnmatch_lines([f"weather.eval.yaml:{line}: {_glob(message)}"])
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_a_tool_message_without_a_matching_call_is_a_collection_error(
    project: pytest.Pytester,
) -> None:
    wrong = json.loads(json.dumps(CONVERSATION))
    wrong["messages"][2]["tool_call_id"] = "call_9"
    project.makefile(
        ".eval.jsonl",
        chat="\n".join([json.dumps({**CONVERSATION, "tools": TOOLS}), json.dumps(wrong)]),
    )
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        [_glob("chat.eval.jsonl:2: messages[2] (tool) answers tool_call_id 'call_9', which no*")]
    )


def test_a_conversation_calling_a_tool_nobody_offers_is_a_collection_error(
    project: pytest.Pytester,
) -> None:
    project.makefile(".eval.jsonl", chat=json.dumps(CONVERSATION))
    result = project.runpytest()
    result.stdout.fnmatch_lines(
        ["chat.eval.jsonl:1: the conversation calls 'get_weather', which the teacher role is*"]
    )


def test_replay_from_a_cassette_gives_the_same_tool_call_grades(
    tools_project: pytest.Pytester, server: ScriptedServer
) -> None:
    live = tools_project.runpytest("--distill-record-mode=once", "--distill-report=live.json")
    live.assert_outcomes(passed=1, failed=3)
    sent = len(server.requests)
    replay = tools_project.runpytest("--distill-record-mode=none", "--distill-report=cd.json")
    replay.assert_outcomes(passed=1, failed=3)
    assert len(server.requests) == sent

    def graded(name: str) -> dict[str, Any]:
        items = json.loads((tools_project.path / name).read_text())["items"]
        return {i["nodeid"]: (i["score"], i["grades"], i["tool_calls"]) for i in items}

    assert graded("cd.json") == graded("live.json")


def test_a_call_record_with_tool_calls_survives_the_item_records_json() -> None:
    from distill_shapes.tools import ToolCall

    call = CallRecord(
        "teacher", "m", ({"role": "user", "content": "hi"},), {}, "", "id", 1, 1, 0.1,
        tool_calls=(ToolCall("call_1", "get_weather", '{"city": "Paris"}'),),
    )  # fmt: skip
    result = ItemResult("n", "s", "c", "teacher", "train", True, 1.0, call=call, tool_score=1.0)
    again = ItemResult.from_json(json.loads(json.dumps(result.to_json())))
    assert again == result


def test_python_evals_take_tools_and_give_back_the_tool_calls(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    server.script("big", REPLIES)
    project.makepyfile(
        test_agent=f"""
        import json
        import pytest

        TOOLS = {TOOLS!r}

        @pytest.mark.distill(
            graders=[{{"type": "tool_calls"}}],
            reference=[{{"name": "get_weather", "arguments": {{"city": "Paris"}}}},
                       {{"name": "get_weather", "arguments": {{"city": "Oslo"}}}}],
        )
        def test_weather(teacher):
            reply = teacher.complete(
                "Weather in Paris and Oslo?", tools=TOOLS, tool_choice="auto",
                parallel_tool_calls=True,
            )
            assert reply == ""
            assert [c.function.name for c in reply.tool_calls] == ["get_weather"] * 2
            assert json.loads(reply.tool_calls[0].function.arguments) == {{"city": "Oslo"}}
        """
    )
    result = project.runpytest("test_agent.py")
    result.assert_outcomes(passed=1)
    [body] = server.chat_requests()
    assert body["tools"] == TOOLS and body["parallel_tool_calls"] is True


def test_stored_completions_that_called_tools_become_cases_with_their_calls(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
    }
    server.api.store("big", "Weather in Oslo?", None, [call], distill_suite="prod")
    server.script("big", {"Weather in Oslo?": {"content": None, "tool_calls": [OSLO]}})
    project.makefile(
        ".eval.yaml",
        prod=f"tools: {json.dumps(TOOLS)}\n"
        "source: {stored_completions: {role: teacher, metadata: {distill_suite: prod}}}\n",
    )
    result = project.runpytest("-k", "teacher", "--distill-report=report.json")
    result.assert_outcomes(passed=1)
    [item] = json.loads((project.path / "report.json").read_text())["items"]
    assert item["reference"] == [OSLO]
    assert [g["name"] for g in item["grades"]] == ["tool_calls"]
    assert server.chat_requests()[0]["tools"] == TOOLS
