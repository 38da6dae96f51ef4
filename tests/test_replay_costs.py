"""What a replay costs, told without a clock: each item is handed to the prefetch once, the
role clients share one TLS context, a replay writes no cassette and a recording writes each
cassette once (an interrupted recording still keeps the items it finished), the SDK gets the
same request bytes when the messages skip its transform, and an equal JSON grade skips the
diff."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import httpcore2
import httpx2
import openai
import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

from pytest_distill.cassettes import files as cassette_files
from pytest_distill.cassettes import recorder as recording
from pytest_distill.evals.items import DistillItem
from pytest_distill.grading import compare
from pytest_distill.roles import Endpoint, RoleConfig, send_chat
from pytest_distill.runtime import Runtime

# --- the prefetch ---------------------------------------------------------------------------


def test_the_prefetch_window_hands_out_each_item_once_also_items_added_later() -> None:
    runtime = Runtime(cast(Any, SimpleNamespace(concurrency=2)))  # a window of 4 items
    items = list(range(10))
    handed = [list(runtime.ahead(items, start)) for start in range(len(items))]
    assert handed[:3] == [[0, 1, 2, 3], [4], [5]]
    assert [n for batch in handed for n in batch] == items
    items += [10, 11, 12]  # the fine-tuned student's items, run after the distill step
    later = [list(runtime.ahead(items, start)) for start in range(10, 13)]
    assert later == [[10, 11, 12], [], []]


def test_a_session_hands_each_item_to_the_prefetch_once(
    pytester: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases = "\n".join(
        f"  - {{id: c{n:02d}, vars: {{country: France}}, reference: Paris}}" for n in range(30)
    )
    pytester.makefile(".eval.yaml", capitals=SUITE.split("cases:")[0] + "cases:\n" + cases)
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = big
        distill_teacher_endpoint = {server.base_url}
        distill_student_model = small
        distill_student_endpoint = {server.base_url}
        distill_concurrency = 4
        """
    )
    handed: Counter[str] = Counter()
    prefetch = DistillItem.prefetch

    def counted(item: DistillItem) -> None:
        handed[item.nodeid] += 1
        prefetch(item)

    monkeypatch.setattr(DistillItem, "prefetch", counted)
    pytester.runpytest().assert_outcomes(passed=60)
    # Before, each item handed out the whole window ahead of it: 8 items each, here.
    assert len(handed) == 60 and set(handed.values()) == {1}


# --- the clients ----------------------------------------------------------------------------


def _settings(**endpoints: str) -> Any:
    configs = {
        role: RoleConfig(role, f"model-{role}", Endpoint("url", url))
        for role, url in endpoints.items()
    }
    return SimpleNamespace(
        role_configs=configs, timeout=None, max_retries=3, concurrency=2, record_mode=None
    )


@pytest.mark.parametrize("recorded", [False, True])
def test_role_clients_share_one_tls_context_and_keep_their_own_endpoints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, recorded: bool
) -> None:
    built: list[object] = []
    default = httpcore2.default_ssl_context

    def counted(**kwargs: Any) -> Any:
        built.append(context := default(**kwargs))
        return context

    monkeypatch.setattr(httpcore2, "default_ssl_context", counted)
    runtime = Runtime(
        _settings(
            teacher="https://a.invalid/v1", student="https://b.invalid/v1", judge="http://c/v1"
        )
    )
    if recorded:
        cassette = recording.SessionCassette(tmp_path, "none", tmp_path)
        runtime.transport = recording.Recorder(cassette).transport
    try:
        clients = {role: runtime.client(role) for role in ("teacher", "student", "judge")}
        assert len(built) == 1
        assert {role: str(c.base_url) for role, c in clients.items()} == {
            "teacher": "https://a.invalid/v1/",
            "student": "https://b.invalid/v1/",
            "judge": "http://c/v1/",
        }
        assert {c.max_retries for c in clients.values()} == {3}
        assert len({id(c._client) for c in clients.values()}) == 3  # closed one by one
        assert runtime.client("teacher") is clients["teacher"]
    finally:
        runtime.close()


# --- the cassettes --------------------------------------------------------------------------


@pytest.fixture
def capitals(project: pytest.Pytester) -> pytest.Pytester:
    """conftest's project (teacher ``big``, student ``small``) with the capitals suite."""
    project.makefile(".eval.yaml", capitals=SUITE)
    return project


@pytest.fixture
def dumps(monkeypatch: pytest.MonkeyPatch) -> Counter[Path]:
    written: Counter[Path] = Counter()
    dump = cassette_files.dump

    def counted(path: Path, interactions: Any, meta: Any) -> None:
        written[path] += 1
        dump(path, interactions, meta)

    monkeypatch.setattr(cassette_files, "dump", counted)
    return written


def test_a_recording_writes_each_cassette_once_and_a_replay_writes_none(
    capitals: pytest.Pytester, dumps: Counter[Path]
) -> None:
    capitals.runpytest("--distill-record-mode=once").assert_outcomes(passed=6, failed=4)
    files = sorted((capitals.path / "cassettes").rglob("*.json"))
    assert len(files) == 10
    assert sorted(dumps) == files and set(dumps.values()) == {1}

    dumps.clear()
    before = {p: p.read_bytes() for p in files}
    capitals.runpytest("--distill-record-mode=none").assert_outcomes(passed=6, failed=4)
    assert dumps == Counter()
    assert {p: p.read_bytes() for p in files} == before


def test_a_recording_that_dies_midway_keeps_the_items_it_finished(
    capitals: pytest.Pytester,
) -> None:
    # The process ends at once as the third teacher item starts: no session end, no atexit.
    capitals.makeconftest(
        """
        import os

        def pytest_runtest_setup(item):
            if item.nodeid.endswith("es[teacher]"):
                os._exit(3)
        """
    )
    died = capitals.runpytest_subprocess("--distill-record-mode=once", "-p", "no:cacheprovider")
    assert died.ret == 3
    kept = sorted(p.name for p in (capitals.path / "cassettes").rglob("*.json"))
    assert {"fr[teacher].json", "it[teacher].json"} <= set(kept)
    assert "es[teacher].json" not in kept

    (capitals.path / "conftest.py").unlink()
    finished = ["capitals.eval.yaml::fr[teacher]", "capitals.eval.yaml::it[teacher]"]
    replay = capitals.runpytest("--distill-record-mode=none", "-p", "no:cacheprovider", *finished)
    replay.assert_outcomes(passed=2)


# --- the request body -----------------------------------------------------------------------


def _sent(call: Any) -> bytes:
    bodies: list[bytes] = []

    def answer(request: httpx2.Request) -> httpx2.Response:
        bodies.append(request.content)
        reply = {"id": "c", "object": "chat.completion", "created": 0, "model": "m"}
        reply["choices"] = [  # type: ignore[assignment]
            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "x"}}
        ]
        return httpx2.Response(200, json=reply)

    client = openai.OpenAI(
        base_url="http://local.invalid/v1",
        api_key="x",
        http_client=openai.DefaultHttpx2Client(transport=httpx2.MockTransport(answer)),
    )
    with client:
        call(client)
    assert len(bodies) == 1
    return bodies[0]


MESSAGES: list[dict[str, Any]] = [
    {"role": "system", "content": "Reply with the code.", "name": "desk"},
    {"role": "user", "content": [{"type": "text", "text": "Which code? é"}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
    },
    {"role": "tool", "tool_call_id": "t1", "content": "42"},
]


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0, "max_tokens": 8},
        {"stop": ["\n"], "seed": 1, "extra_body": {"top_k": 3}},
    ],
)
def test_the_messages_reach_the_wire_as_the_sdk_itself_sends_them(
    params: dict[str, Any],
) -> None:
    role = RoleConfig("student", "m", Endpoint("url", "http://local.invalid/v1"))

    def ours(client: openai.OpenAI) -> None:
        send_chat(client, role, MESSAGES, params=params)

    def sdk(client: openai.OpenAI) -> None:
        client.chat.completions.create(model="m", messages=cast(Any, MESSAGES), **params)

    assert _sent(ours) == _sent(sdk)
    assert json.loads(_sent(ours))["messages"] == MESSAGES


# --- the JSON grader ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actual", "expected"),
    [
        ({"a": [1, 2], "b": "x"}, {"b": "x", "a": [1, 2]}),
        ({"n": 1}, {"n": 1.0}),
        ({"n": -0.0}, {"n": 0}),
        ({"n": True}, {"n": 1}),
        ({"n": 9007199254740993}, {"n": 9007199254740992.0}),
        ({"n": float("nan")}, {"n": float("nan")}),
        ([1, 2], [2, 1]),
        ({"a": None}, {"a": "None"}),
    ],
)
def test_the_json_grade_skips_the_diff_only_when_it_would_find_nothing(
    actual: Any, expected: Any
) -> None:
    identical = compare._identical(expected, actual)
    if identical:
        assert compare._diff_levels(expected, actual, 0.0) == []
        assert compare._diff_levels(expected, actual, 0.5) == []
    for tolerance in (0.0, 0.5):
        shown = compare.compare_json(actual, expected, tolerance=tolerance)
        levels = compare._diff_levels(
            compare._normalize(expected, (), ()), compare._normalize(actual, (), ()), tolerance
        )
        assert shown.equal == (not levels)


# --- what a plain pytest run loads ----------------------------------------------------------


def _closure(requirements: list[str]) -> set[str]:
    """The distributions these requirements install, as this environment has them."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(requirement.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            todo += [Requirement(r) for r in metadata.requires(name) or ()]
        except metadata.PackageNotFoundError:
            continue
    return seen


def test_the_dev_and_local_extras_install_no_pytest_plugin_of_schemathesis_or_hypothesis() -> None:
    """Both register pytest plugins, which every pytest run in the environment then imports, a
    user's project included: they come with the ``schemathesis`` extra only."""
    import tomllib

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    installed = _closure(extras["dev"] + extras["local"] + project["project"]["dependencies"])
    assert not installed & {"schemathesis", "hypothesis"}
    assert "schemathesis" in _closure(extras["schemathesis"])
