"""One owner per data directory, a portable directory, a clean start and a quick Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from distill_server import LocalServer
from distill_server.owner import DataDirBusy
from distill_server.starter import ModelsNotServed, shared_server

REPO = Path(__file__).resolve().parents[2]
HYPER = {"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 20}
QUESTION = [{"role": "user", "content": "Which code goes with item 1?"}]


def _serve(data_dir: Path, tiny_model: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "distill_server", "--port", "0"]
    command += ["--data-dir", str(data_dir), "--model", f"tiny={tiny_model}", *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _base_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert "serving on " in line, line
    return line.split("serving on ")[1].split()[0]


def _end(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.communicate()


def test_second_server_on_a_data_dir_exits_naming_the_owner(
    tmp_path: Path, tiny_model: Path
) -> None:
    first = _serve(tmp_path, tiny_model)
    try:
        base_url = _base_url(first)
        second = _serve(tmp_path, tiny_model)
        _out, err = second.communicate(timeout=60)
        assert second.returncode == 2
        assert err.count("\n") == 1, err
        assert f"process {first.pid}" in err and base_url in err
        with pytest.raises(DataDirBusy, match=f"process {first.pid}"):
            LocalServer(tmp_path, models={"tiny": tiny_model}).start()
    finally:
        _end(first)
    with LocalServer(tmp_path, models={"tiny": tiny_model}) as srv:  # the lock died with it
        assert srv.base_url


def test_plugin_uses_the_server_already_serving_its_data_dir(
    tmp_path: Path, tiny_model: Path
) -> None:
    models = {"tiny": str(tiny_model)}
    owner = shared_server(tmp_path, models, None)
    user = shared_server(tmp_path, models, None)
    assert owner.owned and not user.owned
    assert user.base_url == owner.base_url
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (owner.stop(), stopped.set()))
    stopper.start()
    # The owner waits while another process (here: another handle) still uses its server.
    assert not stopped.wait(1.5)
    with openai.OpenAI(base_url=user.base_url, api_key="local", max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == ["tiny"]
    user.stop()
    assert stopped.wait(10)
    stopper.join()


def test_plugin_reusing_a_keyed_server_without_its_key_names_the_variable(
    tmp_path: Path, tiny_model: Path
) -> None:
    with LocalServer(tmp_path, models={"tiny": tiny_model}, api_key="k3y"):
        with pytest.raises(RuntimeError, match="DISTILL_SERVER_API_KEY"):
            shared_server(tmp_path, {"tiny": str(tiny_model)}, None)
        assert not shared_server(tmp_path, {"tiny": str(tiny_model)}, "k3y").owned


def test_plugin_reusing_a_server_without_its_models_names_them(
    tmp_path: Path, tiny_model: Path
) -> None:
    with LocalServer(tmp_path, models={"tiny": tiny_model}) as srv:
        with pytest.raises(ModelsNotServed) as raised:
            shared_server(tmp_path, {"tiny": str(tiny_model), "student": str(tiny_model)}, None)
        message = str(raised.value)
        assert "\n" not in message
        assert f"process {os.getpid()}" in message and srv.base_url in message
        assert "does not serve 'student'" in message and "it serves 'tiny'" in message
        # the failed attempt left no attachment behind: the owner stops without waiting
        user = shared_server(tmp_path, {"tiny": str(tiny_model)}, None)
        assert user.base_url == srv.base_url and not user.owned
        user.stop()


def _train(client: openai.OpenAI, data: bytes) -> str:
    file = client.files.create(file=("t.jsonl", data), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(
        model="tiny",
        training_file=file.id,
        method={"type": "supervised", "supervised": {"hyperparameters": HYPER}},
    )
    deadline = time.monotonic() + 180
    while (job := client.fine_tuning.jobs.retrieve(job.id)).status != "succeeded":
        assert job.status not in ("failed", "cancelled"), job.error
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert job.fine_tuned_model is not None
    return job.fine_tuned_model


def _as_old_versions_stored(data_dir: Path) -> None:
    """Adapter paths absolute, as servers before the portable layout wrote them."""
    with sqlite3.connect(data_dir / "state.sqlite3") as db:
        for seq, extra in db.execute(
            "SELECT seq, extra FROM objects WHERE kind = 'model'"
        ).fetchall():
            fields = json.loads(extra)
            fields["adapter"] = str(data_dir / fields["adapter"])
            db.execute("UPDATE objects SET extra = ? WHERE seq = ?", (json.dumps(fields), seq))


@pytest.mark.parametrize("old_layout", [False, True], ids=["relative", "absolute-migrated"])
def test_moved_data_dir_keeps_fine_tuned_models_working(
    tmp_path: Path, tiny_model: Path, make_training_file: Any, old_layout: bool
) -> None:
    first = tmp_path / "first" / ".distill"
    with (
        LocalServer(first, models={"tiny": tiny_model}) as srv,
        openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0) as client,
    ):
        model = _train(client, make_training_file())
        before = client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=8
        )
    if old_layout:
        _as_old_versions_stored(first)
    moved = tmp_path / "elsewhere" / ".distill"
    shutil.copytree(first, moved)
    shutil.rmtree(first)
    with (
        LocalServer(moved, models={"tiny": tiny_model}) as srv,
        openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0) as client,
    ):
        after = client.chat.completions.create(
            model=model, messages=QUESTION, temperature=0, max_tokens=8
        )
    assert after.choices[0].message.content == before.choices[0].message.content


def test_start_removes_partial_uploads_and_conversions(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "files").mkdir()
    upload = tmp_path / "files" / "file-abc.partial-4242"
    upload.write_bytes(b"half")
    conversion = tmp_path / "converted" / "0123456789abcdef.partial-4242"
    conversion.mkdir(parents=True)
    (conversion / "model.safetensors").write_bytes(b"half")
    with LocalServer(tmp_path, models={"tiny": tiny_model}):
        assert not upload.exists() and not conversion.exists()


def test_stop_answers_requests_still_decoding_with_503_and_logs_no_traceback(
    tmp_path: Path, tiny_model: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    srv = LocalServer(tmp_path, models={"tiny": tiny_model})
    srv.start()
    outcomes: list[str] = []
    streaming = threading.Event()

    def ask(stream: bool) -> None:
        with openai.OpenAI(base_url=srv.base_url, api_key="local", max_retries=0) as client:
            try:
                if stream:
                    for chunk in client.chat.completions.create(
                        model="tiny", messages=QUESTION, max_tokens=1900, stream=True
                    ):
                        if chunk.choices and chunk.choices[0].delta.content:
                            streaming.set()
                    outcomes.append("ended")
                else:
                    client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=1900)
                    outcomes.append("ended")
            except openai.APIStatusError as exc:
                outcomes.append(str(exc.status_code))
            except openai.APIError as exc:
                outcomes.append(exc.message)

    threads = [threading.Thread(target=ask, args=(i == 0,), daemon=True) for i in range(4)]
    for thread in threads:
        thread.start()
    assert streaming.wait(120), "the streamed request never produced text"
    started = time.monotonic()
    assert srv.stop(timeout=10)
    assert time.monotonic() - started < 5
    for thread in threads:
        thread.join(30)
    # The streamed request was decoding (it had sent text): its stream ends with the error.
    # Each other one got a 503, unless the untrained model ended its answer before the stop.
    assert outcomes.count("The server is shutting down.") == 1, outcomes
    assert "503" in outcomes and set(outcomes) <= {"503", "ended", "The server is shutting down."}
    err = capfd.readouterr().err
    assert "Traceback" not in err and "Cancel" not in err, err[:2000]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_during_a_decode_exits_within_seconds(
    tmp_path: Path, tiny_model: Path, signum: int
) -> None:
    proc = _serve(tmp_path, tiny_model)
    try:
        base_url = _base_url(proc)

        def long_chat(seed: int) -> None:
            with (
                openai.OpenAI(base_url=base_url, api_key="local", max_retries=0) as client,
                contextlib.suppress(openai.APIError),
            ):
                client.chat.completions.create(
                    model="tiny",
                    messages=QUESTION,
                    max_tokens=1900,
                    temperature=1,
                    seed=seed,
                )

        with openai.OpenAI(base_url=base_url, api_key="local", max_retries=0) as warm:
            # The model is loaded before the signal, which is to land mid-decode, not mid-load.
            warm.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=2)
        threads = [threading.Thread(target=long_chat, args=(i,), daemon=True) for i in range(32)]
        for thread in threads:
            thread.start()
        time.sleep(3)  # the batch is decoding
        proc.send_signal(signum)
        started = time.monotonic()
        _out, err = proc.communicate(timeout=30)
        assert time.monotonic() - started < 10
        assert proc.returncode == 0  # stopped by its own handler, lock released
        # The requests still decoding were answered 503, not cancelled with a traceback each.
        assert "Traceback" not in err and "Task " not in err, err[:2000]
    finally:
        _end(proc)


def test_a_session_serves_from_a_child_process_that_ends_when_the_session_is_killed(
    tmp_path: Path, tiny_model: Path
) -> None:
    # The session (a process of its own here) starts the server as its child: the model, its
    # threads and memory are not the session's. Killed with SIGKILL, it leaves no server.
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from distill_server.starter import shared_server\n"
        f"server = shared_server(Path({str(tmp_path)!r}), {{'tiny': {str(tiny_model)!r}}}, None)\n"
        "print(server.pid, server.base_url, flush=True)\n"
        "time.sleep(600)\n"
    )
    session = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert session.stdout is not None
    pid_text, base_url = session.stdout.readline().split()
    pid = int(pid_text)
    assert pid not in (os.getpid(), session.pid)
    with openai.OpenAI(base_url=base_url, api_key="local", max_retries=0) as client:
        assert [m.id for m in client.models.list().data] == ["tiny"]
    log = tmp_path / "server.log"
    assert "serving on" in log.read_text() and log.stat().st_mode & 0o077 == 0
    session.kill()
    session.wait()
    session.stdout.close()
    deadline = time.monotonic() + 15
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(pid)
    # The directory is free again: the next session starts its own server there.
    again = shared_server(tmp_path, {"tiny": str(tiny_model)}, None)
    try:
        assert again.owned and again.pid != pid
    finally:
        again.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of no one here: once it exited it is gone, not a zombie of this process.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/status").read_text()
        return "State:\tZ" not in status
    return True
