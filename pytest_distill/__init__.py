"""pytest-distill: eval-driven model distillation as a pytest plugin.

Importing this package is cheap on purpose: heavy modules (vcr, deepdiff, torch) load only
inside the module that owns them, and only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["__version__", "json_match"]
__version__ = "0.1.0"

if TYPE_CHECKING:
    from pytest_distill.grading.compare import JsonMatch


def json_match(expected: Any, **options: Any) -> JsonMatch:
    """Compare a reply with structured JSON in an ``assert``: ``assert json_match(x) == reply``.

    Options are those of the ``json`` grader: ``ignore_order``, ``tolerance``, ``exclude_paths``.
    """
    from pytest_distill.grading.compare import JsonMatch

    return JsonMatch(expected, **options)
