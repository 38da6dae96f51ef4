"""The official OpenAI Node SDK streams from the embedded server, and reads its tool calls, as
the Python SDK does.

Marked ``node`` (deselected by default): it needs Node.js and the SDK that
``npm ci --prefix tests/node`` installs from the lock file; ``.ci/run`` does both.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import LOOKUP_TOOL

NODE_DIR = Path(__file__).resolve().parents[1] / "node"


@pytest.mark.node
def test_node_sdk_stream_helper_and_raw_stream_give_the_unstreamed_text(server: Any) -> None:
    node = shutil.which("node")
    assert node, "Node.js is not installed: apt-get install nodejs npm"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run: npm ci --prefix tests/node"
    run = subprocess.run(
        [node, str(NODE_DIR / "stream_check.mjs"), server.base_url, "tiny"],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)

    plain = found["plain"]
    assert plain["text"] and plain["finish"] in ("stop", "length")
    # the SDK's stream helper: its content events and its final completion
    assert found["helper"]["deltas"] == plain["text"]
    assert found["helper"]["text"] == plain["text"]
    assert found["helper"]["finish"] == plain["finish"]
    # a raw stream with include_usage: role first, the same text, one finish_reason, usage last
    raw = found["raw"]
    assert raw["first_delta"]["role"] == "assistant"
    assert raw["text"] == plain["text"]
    assert raw["finish"] == [plain["finish"]]
    assert raw["last_choices"] == 0 and raw["usage"]["completion_tokens"] > 0
    # and the Python SDK gets that same text
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        python = client.chat.completions.create(
            model="tiny",
            messages=[{"role": "user", "content": "Which code goes with item 3?"}],
            max_tokens=8,
            temperature=0,
        )
    assert python.choices[0].message.content == plain["text"]
    # an error before the stream starts is the SDK's typed error
    assert found["typed_error"]["name"] == "NotFoundError"
    assert found["typed_error"]["status"] == 404


@pytest.mark.node
def test_node_sdk_reads_tool_calls_unstreamed_streamed_and_by_its_helper(
    server: Any, tool_student: str
) -> None:
    node = shutil.which("node")
    assert node, "Node.js is not installed: apt-get install nodejs npm"
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "run: npm ci --prefix tests/node"
    script = str(NODE_DIR / "tools_check.mjs")
    run = subprocess.run(
        [node, script, server.base_url, tool_student, json.dumps(LOOKUP_TOOL)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout)
    [call] = found["plain"]["calls"]
    assert call["name"] == "lookup_code" and json.loads(call["arguments"]) == {"kind": "item"}
    assert call["id"].startswith("call_") and found["plain"]["finish"] == "tool_calls"
    for way in ("helper", "raw"):
        [streamed] = found[way]["calls"]
        assert (streamed["name"], streamed["arguments"]) == (call["name"], call["arguments"])
        assert streamed["id"].startswith("call_")
    assert found["helper"]["finish"] == "tool_calls" and found["helper"]["done"] == ["lookup_code"]
    assert found["raw"]["finish"] == ["tool_calls"]
