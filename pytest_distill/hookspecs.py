"""Hooks that pytest-distill adds to pytest. Implement them in a ``conftest.py`` or a plugin.

Every hook is called with keyword arguments only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pytest_distill.grading.registry import Grader


@pytest.hookspec(firstresult=True)
def pytest_distill_make_grader(spec: Mapping[str, Any], config: pytest.Config) -> Grader | None:
    """Build a grader for a grader ``spec`` whose ``type`` pytest-distill does not know.

    Called at collection for each grader spec with an unknown ``type``. Return an object with a
    ``name`` attribute and a ``grade(sample, item) -> Grade`` method, or ``None`` to let another
    implementation answer. The first non-``None`` result wins. A case without a reference is
    a collection error when one of its graders uses the reference: give the grader a boolean
    ``uses_reference`` attribute to say whether it does (without one, its dataclass fields are
    searched for templates naming ``{{item.reference}}``).

    Example::

        def pytest_distill_make_grader(spec, config):
            if spec["type"] == "length":
                return LengthGrader(max_chars=spec["max_chars"])
            return None
    """


@pytest.hookspec(firstresult=True)
def pytest_distill_filter_example(
    example: dict[str, Any], case_id: str, config: pytest.Config
) -> dict[str, Any] | bool | None:
    """Filter or rewrite one training example before it is written.

    Called once per candidate example (a passing teacher call on a train-split case), with the
    example as a chat fine-tune dict (``{"messages": [...]}``) and ``case_id`` the case's key,
    ``"<suite>::<case id>"``. Return ``None`` to keep it as it is, ``False`` to drop it, or a
    new dict to replace it. The first non-``None`` result wins.
    """
