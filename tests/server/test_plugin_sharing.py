"""pytest processes share the embedded server of their data directory: one model in memory."""

from __future__ import annotations

from pathlib import Path

import pytest

SUITE = """\
name: codes
prompt:
  user: "Which code goes with item {{ n }}?"
graders:
  - {type: string_check, operation: eq}
cases:
"""


def test_xdist_workers_share_one_embedded_server(
    pytester: pytest.Pytester, tiny_model: Path
) -> None:
    pytester.makeini(
        f"""
        [pytest]
        distill_teacher_model = tiny
        distill_teacher_endpoint = local
        distill_student_model = tiny
        distill_student_endpoint = local
        distill_local_models = tiny = {tiny_model}
        distill_teacher_params = temperature=0 max_tokens=2
        distill_student_params = temperature=0 max_tokens=2
        """
    )
    cases = "".join(f"  - {{id: i{n}, vars: {{n: {n}}}, reference: X}}\n" for n in range(8))
    pytester.makefile(".eval.yaml", codes=SUITE + cases)
    result = pytester.runpytest_subprocess("-n", "2", "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) + outcomes.get("failed", 0) == 16, result.stdout.str()
    assert "error" not in outcomes and "errors" not in outcomes
    result.stdout.no_fnmatch_line("*in use by*")
    data = pytester.path / ".distill" / "server"
    # One worker owned the directory; the other used its server (and held a client lock).
    assert (data / "clients").is_dir()
    assert not (data / "server.json").exists()  # the owner left, and said so
