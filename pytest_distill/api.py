"""The public API: everything ``from pytest_distill import ...`` offers, and nothing else.

``pytest_distill/__init__.py`` forwards these names lazily, so ``import pytest_distill`` (and
the plugin, which pytest imports first) costs nothing until one is used. This module sits in
the top layer of the import contracts: the plugin's own modules never import it, nor the
package root that forwards to it.
"""

from __future__ import annotations

from typing import Any

from pytest_distill.evals.cases import Split, split_of
from pytest_distill.grading.base import Grade, Grader, Sample
from pytest_distill.grading.compare import JsonMatch
from pytest_distill.version import __version__

__all__ = ["Grade", "Grader", "Sample", "Split", "__version__", "json_match", "split_of"]


def json_match(expected: Any, **options: Any) -> JsonMatch:
    """Compare a reply with structured JSON in an ``assert``: ``assert json_match(x) == reply``.

    Options are those of the ``json`` grader: ``ignore_order``, ``tolerance``, ``exclude_paths``.
    """
    return JsonMatch(expected, **options)
