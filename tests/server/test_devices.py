"""Where models run: the device choice, its flag and ini key, and the one-line error of a model
that does not fit. Runs on the CPU; the CUDA paths are checked only where torch sees a GPU."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from distill_server import cli, devices

torch = pytest.importorskip("torch")
NO_GPU = not torch.cuda.is_available()


def test_cpu_is_float32_and_auto_takes_the_gpu_only_when_torch_sees_one() -> None:
    assert devices.choose("cpu") == devices.Placement("cpu", "float32")
    auto = devices.choose("auto")
    if NO_GPU:
        assert auto == devices.CPU
    else:
        bf16 = torch.cuda.is_bf16_supported()
        assert auto == devices.Placement("cuda", "bfloat16" if bf16 else "float16")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so_and_how_to_run_on_the_cpu() -> None:
    with pytest.raises(devices.DeviceUnavailable, match=r"torch sees no CUDA GPU.*--device cpu"):
        devices.choose("cuda")


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_server_flag_device_cuda_without_a_gpu_exits_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert cli.main(["--device", "cuda", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill-server: device 'cuda' was asked for") and "\n" not in err


def test_help_lists_the_device_flag_and_the_export_subcommand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert "--device {auto,cpu,cuda}" in text and "distill-server export MODEL_ID" in text


def test_the_estimate_is_the_weights_size_in_the_dtype(tiny_model: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    real = sum(p.numel() * p.element_size() for p in model.parameters())
    assert devices.estimated_bytes(config, devices.CPU) == real
    half = devices.estimated_bytes(config, devices.Placement("cuda", "bfloat16"))
    assert half * 2 == real


def test_a_model_that_does_not_fit_answers_one_line_with_the_memory_it_needs(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai

    from distill_server import LocalServer

    # A copy of its own: a server of an earlier test may still hold the fixture's model, whose
    # weights a new load then shares (no memory to check).
    own = shutil.copytree(tiny_model, tmp_path / "tiny-model")
    # The device reports 1 MiB free: far less than the tiny model's ~13 MiB of weights.
    monkeypatch.setattr(devices, "available_bytes", lambda placement: 1024**2)
    with LocalServer(tmp_path / "data", models={"tiny": own}, device="cpu") as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2
            )
    error: dict[str, Any] = info.value.body  # type: ignore[assignment]
    assert error["code"] == "model_too_large"
    message = error["message"]
    assert "\n" not in message
    assert message.startswith("model 'tiny' does not fit on cpu (float32): its weights need 0.01")
    assert "GiB, 0.00 GiB is free" in message and "--device" in message


def test_ini_local_device_reaches_the_embedded_server(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        distill_student_model = tiny
        distill_student_endpoint = local
        distill_local_models = tiny = {tiny_model}
        distill_local_device = {"cuda" if NO_GPU else "cpu"}
        """
    )
    pytester.makefile(
        ".eval.yaml",
        hello="name: hello\nprompt: {user: hi}\ncases:\n  - {id: a, reference: x}\n",
    )
    result = pytester.runpytest()
    if NO_GPU:
        result.stdout.fnmatch_lines(["*torch sees no CUDA GPU*"])
        assert result.ret == pytest.ExitCode.TESTS_FAILED
    else:
        result.stdout.no_fnmatch_line("*torch sees no CUDA GPU*")


def test_ini_local_device_rejects_other_values(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\ndistill_local_device = gpu\n")
    result = pytester.runpytest()
    result.stderr.fnmatch_lines(
        ["*ini distill_local_device: 'gpu' is not a device; use auto, cpu or cuda*"]
    )
    assert result.ret == pytest.ExitCode.USAGE_ERROR
