"""pytest-distill: eval-driven model distillation as a pytest plugin.

The public API is ``__all__``: ``Grade``, ``Sample`` and ``Grader`` for graders of one's own
(the ``pytest_distill_make_grader`` hook), ``json_match`` for asserts, ``split_of`` (and its
``Split``) for a case's train/holdout side, ``__version__``. Anything under a submodule is
internal and may change.

Importing this package is cheap on purpose: the public names load from ``api.py`` on first
use, and heavy modules (vcr, deepdiff, torch) load only inside the module that owns them, and
only when used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pytest_distill.version import __version__

__all__ = ["Grade", "Grader", "Sample", "Split", "__version__", "json_match", "split_of"]

if TYPE_CHECKING:
    from pytest_distill.api import Grade, Grader, Sample, Split, json_match, split_of


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from pytest_distill import api

    value = getattr(api, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
