"""The package's shape: what importing the plugin costs, and the import contracts."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = (
    "openai",
    "deepdiff",
    "vcr",
    "torch",
    "transformers",
    "peft",
    "httpx2",
    "jinja2",
    "scipy",
    "numpy",
)


def test_importing_the_plugin_loads_no_heavy_library() -> None:
    code = (
        "import sys, pytest_distill.plugin\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""


def test_a_misspelt_sampling_parameter_stops_pytest_naming_the_key(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(
        """
        [pytest]
        distill_teacher_model = big
        distill_teacher_params = temprature=0
        """
    )
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*ini distill_teacher_params: unknown sampling parameter 'temprature'; "
            "did you mean 'temperature'? allowed: *"
        ]
    )


def test_the_public_api_loads_no_heavy_library_and_only_when_used() -> None:
    code = (
        "import sys, pytest_distill\n"
        "assert 'pytest_distill.api' not in sys.modules\n"
        "[getattr(pytest_distill, name) for name in pytest_distill.__all__]\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == ""
