"""The server under hostile input: odd numbers and dates, guessed keys, stalled bodies, cookie
floods, and the headers and permissions that keep a browser and other local users out."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

OpenApi = Any


@pytest.fixture
def http(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        yield client


@pytest.fixture
def pages(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url.removesuffix("/v1"), timeout=30) as client:
        yield client


def _error(response: httpx.Response, status: int, openapi: OpenApi) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    openapi.validate_schema("ErrorResponse", body)
    error: dict[str, Any] = body["error"]
    return error


# --- numbers, dates and cursors -------------------------------------------------------------

ODD_NUMBERS = ["²", "١٢", "\uff11\uff10", "+5", " 5", "5_0", "9" * 30, "1e3", ""]


@pytest.mark.parametrize("value", ODD_NUMBERS)
@pytest.mark.parametrize(
    "path",
    [
        "/files",
        "/chat/completions",
        "/fine_tuning/jobs",
        "/fine_tuning/jobs/ftjob-x/events",
        "/fine_tuning/jobs/ftjob-x/checkpoints",
        "/chat/completions/chatcmpl-x/messages",
    ],
)
def test_an_odd_limit_is_a_400_naming_it(
    http: httpx.Client, openapi: OpenApi, path: str, value: str
) -> None:
    error = _error(http.get(path, params={"limit": value}), 400, openapi)
    assert error["param"] == "limit"


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ({"until": "9999-12-31"}, "until"),
        ({"since": "\uff12\uff10\uff12\uff14-01-01"}, "since"),
        ({"since": "2024-W01-1"}, "since"),
        ({"until": "not a day"}, "until"),
        ({"before": "99999999999999999999"}, "before"),
        ({"before": "9223372036854775808"}, "before"),
        ({"before": "²"}, "before"),
        ({"before": "-1"}, "before"),
    ],
)
def test_an_odd_date_or_cursor_on_the_completions_page_is_shown_on_the_page(
    pages: httpx.Client, query: dict[str, str], named: str
) -> None:
    page = pages.get("/completions", params=query)
    assert page.status_code == 400, page.text
    assert 'class="error"' in page.text
    assert f"`{named}`" in page.text


def test_the_largest_cursor_and_last_dates_are_fine(pages: httpx.Client) -> None:
    query = {"before": str(2**63 - 1), "since": "0001-01-01", "until": "9999-12-30"}
    assert pages.get("/completions", params=query).status_code == 200


def test_odd_epochs_on_the_distill_form_are_refused_on_the_page() -> None:
    from distill_server.dashboard.distill import SelectionError, parse_request

    for value in ["²", "9" * 30, "+3"]:
        with pytest.raises(SelectionError, match="epochs"):
            parse_request({"epochs": value, "base_model": "tiny"}, [])
    assert parse_request({"epochs": "7", "base_model": "tiny"}, []).epochs == 7


# --- the API key ----------------------------------------------------------------------------


@pytest.fixture
def keyed(tmp_path: Path, tiny_model: Path) -> Iterator[Any]:
    from distill_server import LocalServer

    with LocalServer(tmp_path / "keyed", models={"tiny": tiny_model}, api_key="s3cret") as srv:
        yield srv


def _models(base_url: str, key: str) -> httpx.Response:
    return httpx.get(
        f"{base_url}/models", headers={"authorization": f"Bearer {key}".rstrip()}, timeout=30
    )


def test_wrong_keys_from_one_address_are_slowed_and_right_keys_are_not_counted(
    keyed: Any, openapi: OpenApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    from distill_server.http import keys

    monkeypatch.setattr(keys, "LOCKOUT_S", 1.0)
    for _ in range(3 * keys.FAILURES):  # a right key is never counted
        assert _models(keyed.base_url, "s3cret").status_code == 200
    for _ in range(keys.FAILURES):
        _error(_models(keyed.base_url, "guess"), 401, openapi)
    locked = _models(keyed.base_url, "guess")
    error = _error(locked, 429, openapi)
    assert error["code"] == "rate_limit_exceeded"
    assert 1 <= int(locked.headers["retry-after"]) <= 1
    # While locked out no key is compared (else the answer would still tell a right guess).
    assert _models(keyed.base_url, "s3cret").status_code == 429
    # The login form is the same check, counted together with the API's.
    root = keyed.base_url.removesuffix("/v1")
    login = httpx.post(f"{root}/login", data={"key": "s3cret", "next": "/"}, timeout=30)
    assert login.status_code == 429
    assert "try again" in login.text and "retry-after" in login.headers
    time.sleep(1.2)
    assert _models(keyed.base_url, "s3cret").status_code == 200
    # The next lockout is longer.
    for _ in range(keys.FAILURES):
        _models(keyed.base_url, "guess")
    assert int(_models(keyed.base_url, "guess").headers["retry-after"]) == 2


def test_the_login_form_and_the_api_check_the_key_the_same_way(keyed: Any) -> None:
    root = keyed.base_url.removesuffix("/v1")
    for given, right in [("s3cret", True), (" s3cret ", True), ("s3cre", False), ("", False)]:
        assert (_models(keyed.base_url, given).status_code == 200) is right, given
        login = httpx.post(f"{root}/login", data={"key": given, "next": "/"}, timeout=30)
        assert (login.status_code == 303) is right, given


def test_key_check_counts_per_address_and_forgets() -> None:
    from distill_server.http.keys import FAILURES, KeyCheck, Verdict

    now = [0.0]
    check = KeyCheck("k", clock=lambda: now[0])
    for _ in range(FAILURES):
        assert check.check("10.0.0.1", "x") is Verdict.WRONG
    assert check.check("10.0.0.1", "k") is Verdict.LOCKED
    assert check.check("10.0.0.2", "k") is Verdict.RIGHT  # another address is not slowed
    now[0] += 3
    assert check.check("10.0.0.1", "k") is Verdict.RIGHT
    assert KeyCheck(None).check("a", "anything") is Verdict.RIGHT


@pytest.mark.parametrize("argv", [["--api-key", " "], ["--api-key", ""], ["--api-key", " k"]])
def test_a_blank_key_stops_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    from distill_server import cli

    assert cli.main([*argv, "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill-server: ") and err.count("\n") == 1
    assert not (tmp_path / "state.sqlite3").exists()


def test_a_blank_key_in_the_environment_stops_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from distill_server import cli

    monkeypatch.setenv("DISTILL_SERVER_API_KEY", " \t")
    assert cli.main(["--data-dir", str(tmp_path)]) == 2
    assert "blank" in capsys.readouterr().err


def test_the_key_can_come_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from distill_server import cli

    good = tmp_path / "key"
    good.write_text("s3cret\n")
    assert cli._api_key(cli.parser().parse_args(["--api-key-file", str(good)])) == "s3cret"
    for text in ["", "\n", "  \n"]:
        bad = tmp_path / "empty"
        bad.write_text(text)
        assert cli.main(["--api-key-file", str(bad), "--data-dir", str(tmp_path / "d")]) == 2
        assert "empty" in capsys.readouterr().err
    assert cli.main(["--api-key-file", str(tmp_path / "none"), "--data-dir", str(tmp_path)]) == 2
    assert "cannot read" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--api-key-file", str(good), "--api-key", "x"])
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    assert "--api-key-file PATH" in capsys.readouterr().out


# --- stalled bodies -------------------------------------------------------------------------


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """What the server logs (uvicorn's loggers do not reach pytest's capture)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    names = ["uvicorn.error", "uvicorn", "distill_server", "asyncio"]
    for name in names:
        logging.getLogger(name).addHandler(handler)
    yield records
    for name in names:
        logging.getLogger(name).removeHandler(handler)


def _stall(base_url: str, head: str, part: bytes) -> tuple[bytes, float]:
    """Send ``head`` and ``part`` of a longer body, then wait: the answer and how long it took."""
    host, port = base_url.split("//")[1].split("/")[0].split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head.encode() + b"\r\n" + part)
        started = time.monotonic()
        received = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            received += chunk
        return received, time.monotonic() - started


@pytest.mark.parametrize(
    ("path", "content_type", "part"),
    [
        ("/v1/chat/completions", "application/json", b'{"model": "tiny", "mess'),
        ("/v1/files", "multipart/form-data; boundary=XX", b"--XX\r\nContent-Disposition: form"),
        ("/login", "application/x-www-form-urlencoded", b"key=abc&ne"),
    ],
)
def test_a_stalled_body_is_answered_408_and_closed_without_a_traceback(
    server: Any,
    openapi: OpenApi,
    monkeypatch: pytest.MonkeyPatch,
    server_log: list[logging.LogRecord],
    path: str,
    content_type: str,
    part: bytes,
) -> None:
    from distill_server.http import guard

    monkeypatch.setattr(guard, "BODY_TIMEOUT_S", 0.5)
    host = server.base_url.split("//")[1].split("/")[0]
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        "Content-Length: 1000\r\n"
    )
    answer, waited = _stall(server.base_url, head, part)
    status, _, rest = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 408"), answer
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"connection: close" in headers.lower()
    error = json.loads(body)
    openapi.validate_schema("ErrorResponse", error)
    assert error["error"]["code"] == "request_timeout"
    assert waited < 10
    time.sleep(0.2)
    assert [r.getMessage() for r in server_log] == []


def test_a_slow_but_steady_body_is_read(server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from distill_server.http import guard

    monkeypatch.setattr(guard, "BODY_TIMEOUT_S", 1.0)

    def pieces() -> Iterator[bytes]:
        message = {"role": "user", "content": "hi"}
        body = json.dumps({"model": "tiny", "messages": [message], "max_tokens": 2})
        for i in range(0, len(body), 20):
            time.sleep(0.3)
            yield body[i : i + 20].encode()

    response = httpx.post(
        f"{server.base_url}/chat/completions",
        content=pieces(),
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


# --- dashboard sessions ---------------------------------------------------------------------


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def test_a_flood_of_cookie_less_page_views_leaves_a_session_alone(server: Any) -> None:
    root = server.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=30) as browser:
        csrf = _csrf(browser.get("/playground").text)
        assert "distill_session" in browser.cookies
        with httpx.Client(base_url=root, timeout=30) as flood:
            for i in range(1000):
                flood.cookies.clear()
                page = flood.get("/jobs" if i % 2 else "/models")
                assert page.status_code == 200
                assert "set-cookie" not in page.headers  # no page without a form starts one
        # The session is still known: its form is accepted.
        answer = browser.post("/playground", data={"csrf": csrf, "prompt": ""})
        assert answer.status_code == 200, answer.text


def test_only_pages_with_a_form_start_a_session_and_only_this_process_signs_one(
    server: Any,
) -> None:
    root = server.base_url.removesuffix("/v1")
    with httpx.Client(base_url=root, timeout=30) as browser:
        for path in ["/jobs", "/models", "/completions/chatcmpl-none", "/login"]:
            assert "set-cookie" not in browser.get(path).headers, path
        for path in ["/completions", "/playground", "/reports"]:
            browser.cookies.clear()
            assert "distill_session=" in browser.get(path).headers["set-cookie"], path
        csrf = _csrf(browser.get("/playground").text)
        nonce = browser.cookies["distill_session"].partition(".")[0]
        for forged in [nonce, f"{nonce}.{'0' * 64}", f"{nonce}.zz", "."]:
            browser.cookies.clear()
            browser.cookies.set("distill_session", forged)
            answer = browser.post("/playground", data={"csrf": csrf, "prompt": ""})
            assert answer.status_code == 403, forged


# --- headers and the Host check -------------------------------------------------------------


def test_pages_and_answers_carry_the_safety_headers(server: Any) -> None:
    import base64
    import hashlib

    root = server.base_url.removesuffix("/v1")
    with httpx.Client(timeout=30) as client:
        for url in [f"{root}/completions", f"{root}/jobs", f"{server.base_url}/models"]:
            for response in [client.get(url), client.get(url, headers={"origin": "http://x"})]:
                headers = response.headers
                assert headers["x-frame-options"] == "DENY", url
                assert headers["x-content-type-options"] == "nosniff"
                assert headers["referrer-policy"] == "same-origin"
                policy = headers["content-security-policy"]
                assert "frame-ancestors 'none'" in policy
                assert "unsafe-inline" not in policy.split("script-src")[-1].split(";")[0]
        page = client.get(f"{root}/completions")
    # The page's one inline script is allowed by its hash, and nothing else inline is.
    scripts = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert len(scripts) == 1
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    assert f"'sha256-{digest}'" in page.headers["content-security-policy"]


def test_the_host_check_ignores_case(server: Any) -> None:
    port = server.base_url.split(":")[2].split("/")[0]
    for host in [f"LOCALHOST:{port}", f"LocalHost:{port}", f"127.0.0.1:{port}"]:
        response = httpx.get(f"{server.base_url}/models", headers={"host": host}, timeout=30)
        assert response.status_code == 200, host
    evil = httpx.get(f"{server.base_url}/models", headers={"host": f"EVIL:{port}"}, timeout=30)
    assert evil.status_code == 403


def test_an_abandoned_stream_leaves_no_pending_task(
    server: Any, server_log: list[logging.LogRecord]
) -> None:
    import gc

    question = [{"role": "user", "content": "Tell me a long story."}]
    body = {"model": "tiny", "messages": question, "max_tokens": 400, "stream": True}
    body |= {"temperature": 1, "seed": 2}
    for _ in range(3):
        with (
            httpx.Client(base_url=server.base_url, timeout=60) as client,
            client.stream("POST", "/chat/completions", json=body) as response,
        ):
            for line in response.iter_lines():
                if '"content": "' in line and '"content": ""' not in line:
                    break  # the first text arrived: leave mid-stream
    time.sleep(1.0)  # the server sees the disconnects and closes the streams
    gc.collect()
    time.sleep(0.2)
    assert [r.getMessage() for r in server_log if "destroyed" in r.getMessage()] == []


# --- the GGUF converter's child -------------------------------------------------------------

_PARENT = """
import sys, time
from pathlib import Path
from distill_server.weights import convert
convert.convert(Path(sys.argv[1]), Path(sys.argv[2]))
"""


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        text = (task / "children").read_text() if (task / "children").exists() else ""
        found |= {int(child) for child in text.split()}
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_the_converter_child_ends_when_its_parent_is_killed(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    # A converter that takes long: its transformers import (here a stand-in) never ends.
    (tmp_path / "slow" / "transformers").mkdir(parents=True)
    (tmp_path / "slow" / "transformers" / "__init__.py").write_text("import time\ntime.sleep(60)\n")
    path = os.pathsep.join([str(tmp_path / "slow"), os.environ.get("PYTHONPATH", "")])
    command = [sys.executable, "-c", _PARENT, str(gguf), str(tmp_path / "out")]
    parent = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": path})
    try:
        deadline = time.monotonic() + 60
        while not (children := _children(parent.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert children, "the converter child did not start"
        (child,) = children
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the converter outlived its killed parent"
    finally:
        parent.kill()
        parent.wait()
        for pid in children if "children" in locals() else ():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_the_portable_fallback_ends_the_child_too(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import os, sys, time; "
        "from distill_server.weights.convert import die_with_parent; "
        "die_with_parent(int(sys.argv[1]), poll_only=True); time.sleep(60)', str(os.getpid())])\n"
        "print(child.pid, flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    child = int(out.stdout)
    deadline = time.monotonic() + 15
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


# --- the data directory's permissions -------------------------------------------------------


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
def test_the_data_dir_is_private_whatever_the_umask(tmp_path: Path, tiny_model: Path) -> None:
    from distill_server import LocalServer
    from distill_server.trainer.checkpoints import save

    parent = tmp_path / "project"
    parent.mkdir(mode=0o755)
    data = parent / "data"
    data.mkdir(mode=0o755)  # a data dir that exists already is made private too
    old = os.umask(0o000)
    try:
        with LocalServer(data, models={"tiny": tiny_model}) as server:
            uploaded = httpx.post(
                f"{server.base_url}/files",
                files={"file": ("a.jsonl", b"{}\n")},
                data={"purpose": "batch"},
                timeout=30,
            ).json()
            root = server.base_url.removesuffix("/v1")
            with httpx.Client(base_url=root, timeout=30) as browser:
                csrf = _csrf(browser.get("/reports").text)
                sent = browser.post(
                    "/reports", data={"csrf": csrf}, files={"report": ("r.html", b"<p>")}
                )
                assert sent.status_code == 303, sent.text

        class Model:
            def save_pretrained(self, where: str) -> None:
                Path(where).mkdir(parents=True)
                (Path(where) / "adapter.safetensors").write_bytes(b"x")

        checkpoint = save(Model(), data / "adapters" / "ftjob-x" / "step-1")
    finally:
        os.umask(old)
    assert _mode(parent) == 0o755  # the user's own folder is left alone
    assert _mode(data) == 0o700
    assert _mode(data / "state.sqlite3") == 0o600
    assert _mode(data / "files") == 0o700
    assert _mode(data / "files" / uploaded["id"]) == 0o600
    assert _mode(data / "reports" / "r.html") == 0o600
    assert _mode(checkpoint) == 0o700
    assert _mode(checkpoint / "adapter.safetensors") == 0o600
