"""Cassettes: record the model traffic of a run, replay it offline, never leak a secret."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from conftest import SUITE
from scripted_server import ScriptedServer

FAKE_KEY = "sk-distill-FAKE-0123456789"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def capitals(project: pytest.Pytester) -> pytest.Pytester:
    project.makefile(".eval.yaml", capitals=SUITE)
    return project


def cassette_bytes(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*.json")) if p.is_file()}


def scores(path: Path) -> dict[str, tuple[bool, float]]:
    items = json.loads(path.read_text())["items"]
    return {i["nodeid"]: (i["passed"], i["score"]) for i in items}


def test_replay_in_none_mode_gives_the_recorded_outcomes_without_sending_a_request(
    capitals: pytest.Pytester, server: ScriptedServer
) -> None:
    capitals.runpytest("--distill-record-mode=once", "--distill-report=live.json").assert_outcomes(
        passed=6, failed=4
    )
    sent = len(server.requests)
    assert (capitals.path / "cassettes" / "capitals.eval.yaml" / "fr[teacher].json").is_file()

    replay = capitals.runpytest("--distill-record-mode=none", "--distill-report=cd.json")
    replay.assert_outcomes(passed=6, failed=4)
    replay.stdout.fnmatch_lines(["distill cassettes: cassettes/ (record mode none)"])
    assert scores(capitals.path / "cd.json") == scores(capitals.path / "live.json")
    assert len(server.requests) == sent


def test_xdist_workers_record_their_own_cassettes_and_replay_serially(
    capitals: pytest.Pytester, server: ScriptedServer
) -> None:
    pytest.importorskip("xdist")
    live = capitals.runpytest("-n", "2", "--distill-record-mode=once", "--distill-report=live.json")
    live.assert_outcomes(passed=6, failed=4)
    assert len(cassette_bytes(capitals.path / "cassettes")) == 10
    sent = len(server.requests)
    capitals.runpytest("--distill-record-mode=none", "--distill-report=cd.json").assert_outcomes(
        passed=6, failed=4
    )
    assert scores(capitals.path / "cd.json") == scores(capitals.path / "live.json")
    assert len(server.requests) == sent


def test_ci_replays_only_and_a_missing_cassette_names_the_command_that_records_it(
    capitals: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    result = capitals.runpytest("-k", "fr")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            "POST /v1/chat/completions has no recorded response; no cassette "
            "cassettes/capitals.eval.yaml/fr?teacher?.json; record it with: "
            "pytest --distill-record-mode=once 'capitals.eval.yaml::fr[[]teacher[]]'",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")
    assert server.requests == []
    assert not (capitals.path / "cassettes").exists()


def test_without_a_record_mode_traffic_is_live_and_nothing_is_recorded(
    capitals: pytest.Pytester, server: ScriptedServer
) -> None:
    capitals.runpytest().assert_outcomes(passed=6, failed=4)
    assert server.chat_requests()
    assert not (capitals.path / "cassettes").exists()


def test_off_mode_runs_live_in_ci_and_records_nothing(
    capitals: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", "true")
    capitals.runpytest("--distill-record-mode=off").assert_outcomes(passed=6, failed=4)
    assert server.chat_requests()
    assert not (capitals.path / "cassettes").exists()


def test_changed_request_fails_only_its_item_with_the_closest_recorded_request(
    capitals: pytest.Pytester,
) -> None:
    capitals.runpytest("--distill-record-mode=once").assert_outcomes(passed=6, failed=4)
    capitals.makefile(".eval.yaml", capitals=SUITE.replace("{country: Peru}", "{country: Chile}"))
    result = capitals.runpytest("--distill-record-mode=none")
    result.assert_outcomes(passed=5, failed=5)
    result.stdout.fnmatch_lines(
        [
            "POST /v1/chat/completions has no recorded response; "
            "cassettes/capitals.eval.yaml/pe?teacher?.json: closest recorded "
            "POST /v1/chat/completions differs in body.messages[[]1[]].content: "
            "recorded 'Capital of Peru?' (str), sent 'Capital of Chile?' (str); "
            "record it with: pytest --distill-record-mode=all 'capitals.eval.yaml::pe[[]teacher[]]'",
        ]
    )
    result.stdout.no_fnmatch_line("*Traceback*")


def test_rerecording_with_all_replaces_the_cassette_instead_of_appending(
    capitals: pytest.Pytester, server: ScriptedServer
) -> None:
    capitals.runpytest("-k", "fr", "--distill-record-mode=once")
    server.script("big", {"Capital of France?": "Lyon"})
    capitals.runpytest("-k", "fr", "--distill-record-mode=all")
    cassette = json.loads(
        (capitals.path / "cassettes" / "capitals.eval.yaml" / "fr[teacher].json").read_text()
    )
    chats = [i for i in cassette["interactions"] if i["request"]["method"] == "POST"]
    assert [c["response"]["body"]["json"]["choices"][0]["message"]["content"] for c in chats] == [
        "Lyon"
    ]


def test_new_episodes_keeps_recorded_items_and_records_the_new_ones(
    capitals: pytest.Pytester, server: ScriptedServer
) -> None:
    capitals.runpytest("-k", "fr", "--distill-record-mode=once")
    before = len(server.chat_requests())
    capitals.runpytest("--distill-record-mode=new_episodes").assert_outcomes(passed=6, failed=4)
    assert len(server.chat_requests()) - before == 8  # fr's two calls came from the cassette
    capitals.runpytest("--distill-record-mode=none").assert_outcomes(passed=6, failed=4)


def test_a_python_test_replays_from_its_own_cassette(
    project: pytest.Pytester, server: ScriptedServer
) -> None:
    project.makepyfile(
        test_capitals="""
        def test_france(teacher):
            assert teacher.complete("Capital of France?") == "Paris"
        """
    )
    project.runpytest("--distill-record-mode=once").assert_outcomes(passed=1)
    assert (project.path / "cassettes" / "test_capitals.py" / "test_france.json").is_file()
    sent = len(server.requests)
    project.runpytest("--distill-record-mode=none", "-p", "no:randomly").assert_outcomes(passed=1)
    assert len(server.requests) == sent


def test_in_ci_the_users_own_httpx2_and_openai_calls_pass_beside_replayed_items(
    capitals: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    capitals.runpytest("--distill-record-mode=once").assert_outcomes(passed=6, failed=4)
    capitals.makepyfile(
        test_theirs=f"""
        import httpx2
        import openai

        def test_their_httpx2_call():
            assert httpx2.get("{server.base_url}/models/big").json()["id"] == "big"

        def test_their_openai_client():
            client = openai.OpenAI(base_url="{server.base_url}", api_key="theirs")
            reply = client.chat.completions.create(
                model="big", messages=[{{"role": "user", "content": "Capital of Peru?"}}]
            )
            assert reply.choices[0].message.content == "Lima"
        """
    )
    sent = len(server.requests)
    monkeypatch.setenv("CI", "true")  # no record mode set: CI replays, offline
    result = capitals.runpytest("-p", "no:randomly")
    result.stdout.fnmatch_lines(["distill cassettes: cassettes/ (record mode none)"])
    result.assert_outcomes(passed=8, failed=4)
    # Only the user's two tests reached the server; the eval items replayed.
    assert [(m, p) for m, p, _ in server.requests[sent:]] == [
        ("GET", "/v1/models/big"),
        ("POST", "/v1/chat/completions"),
    ]
    assert not (capitals.path / "cassettes" / "test_theirs.py").exists()


def test_secrets_and_account_headers_never_reach_a_cassette(
    capitals: pytest.Pytester, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_KEY)
    capitals.makepyfile(
        test_key=f"""
        def test_sends_the_fake_key(teacher):
            assert teacher.openai.api_key == "{FAKE_KEY}"
            assert teacher.complete("Capital of Peru?") == "Lima"
        """
    )
    server.fail(
        429,
        retry_after_ms="1",
        set_cookie=f"session={FAKE_KEY}",
        openai_organization="org-FAKE",
        openai_project="proj-FAKE",
    )
    capitals.runpytest("-k", "fr or key", "--distill-record-mode=once").assert_outcomes(passed=3)
    stored = cassette_bytes(capitals.path / "cassettes")
    assert len(stored) == 3
    for path, data in stored.items():
        assert b"x-stainless" not in data and b"authorization" not in data.lower(), path
        for secret in (FAKE_KEY, "org-FAKE", "proj-FAKE", "set-cookie"):
            assert secret.encode() not in data, (path, secret)
    # The recorded 429 and the SDK's retry replay as they happened.
    capitals.runpytest("-k", "fr or key", "--distill-record-mode=none").assert_outcomes(passed=3)


def test_no_cassette_in_the_repository_holds_a_secret() -> None:
    secret = re.compile(
        rb"sk-[A-Za-z0-9_\-]{16,}|Bearer [A-Za-z0-9]|" + re.escape(FAKE_KEY.encode())
    )
    for folder in (REPO / "cassettes", REPO / "example_project" / "cassettes"):
        for path, data in cassette_bytes(folder).items():
            assert not secret.search(data), f"{path} holds a secret"


def test_recorded_429_with_retry_after_replays_without_waiting(
    capitals: pytest.Pytester, server: ScriptedServer
) -> None:
    server.fail(429, retry_after_ms="1")
    capitals.runpytest("-k", "fr and teacher", "--distill-record-mode=once")
    path = capitals.path / "cassettes" / "capitals.eval.yaml" / "fr[teacher].json"
    cassette = json.loads(path.read_text())
    limited = next(i for i in cassette["interactions"] if i["response"]["status"]["code"] == 429)
    limited["response"]["headers"].pop("retry-after-ms")
    limited["response"]["headers"]["retry-after"] = ["30"]
    path.write_text(json.dumps(cassette))
    started = time.perf_counter()
    result = capitals.runpytest("-k", "fr and teacher", "--distill-record-mode=none")
    result.assert_outcomes(passed=1)
    assert time.perf_counter() - started < 10


def test_record_mode_ini_and_bad_value(capitals: pytest.Pytester) -> None:
    result = capitals.runpytest("-o", "distill_record_mode=sometimes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*ini distill_record_mode: 'sometimes' is not a record mode; use one of "
            "none, once, new_episodes, all, off (or --distill-record-mode)"
        ]
    )


def test_cassette_dir_ini_moves_the_cassettes(capitals: pytest.Pytester) -> None:
    capitals.runpytest(
        "-k", "fr", "-o", "distill_cassette_dir=tapes", "-o", "distill_record_mode=once"
    )
    assert (capitals.path / "tapes" / "capitals.eval.yaml" / "fr[student].json").is_file()


def test_works_beside_pytest_recording_without_a_name_collision(
    capitals: pytest.Pytester, server: ScriptedServer
) -> None:
    pytest.importorskip("pytest_recording")
    capitals.runpytest("--distill-record-mode=once").assert_outcomes(passed=6, failed=4)
    sent = len(server.requests)
    capitals.makepyfile(
        test_theirs="""
        import pytest

        @pytest.mark.vcr
        def test_their_marker_and_fixture(vcr, record_mode):
            assert record_mode == "none"
        """
    )
    # --block-network: our replay needs no socket at all.
    result = capitals.runpytest(
        "--distill-record-mode=none", "--record-mode=none", "--block-network"
    )
    result.assert_outcomes(passed=7, failed=4)
    assert len(server.requests) == sent


def test_an_offline_replay_loads_no_certificates_and_trusts_none() -> None:
    """Record mode none: every request is answered by the cassettes, so the clients' TLS
    context loads no certificates (about 0.3 s a session); it still verifies, so a request
    that got out would fail its check instead of going out unverified."""
    import ssl

    from pytest_distill.roles import tls_context

    offline = tls_context(offline=True)
    assert offline.verify_mode == ssl.CERT_REQUIRED and offline.check_hostname
    assert offline.cert_store_stats()["x509_ca"] == 0
    assert tls_context().cert_store_stats()["x509_ca"] > 0
