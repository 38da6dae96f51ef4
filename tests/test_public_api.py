"""The public API: what ``from pytest_distill import ...`` offers, and that the example project
and the README use nothing else."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import SUITE

import pytest_distill
from pytest_distill import api

REPO = Path(__file__).resolve().parents[1]
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)


def test_every_public_name_resolves_to_the_facade() -> None:
    assert sorted(pytest_distill.__all__) == sorted(api.__all__)
    for name in pytest_distill.__all__:
        assert getattr(pytest_distill, name) is getattr(api, name), name
    assert set(pytest_distill.__all__) <= set(dir(pytest_distill))


def test_a_name_outside_the_public_api_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'make_grader'"):
        _ = pytest_distill.make_grader  # type: ignore[attr-defined]


def python_sources() -> Iterator[tuple[str, str]]:
    """(where, source) of the example project's Python files and the docs' Python samples."""
    for path in sorted((REPO / "example_project").rglob("*.py")):
        yield str(path.relative_to(REPO)), path.read_text()
    for doc in (REPO / "README.md", REPO / "example_project" / "README.md"):
        for n, block in enumerate(CODE_BLOCK.findall(doc.read_text()), 1):
            yield f"{doc.relative_to(REPO)} python sample {n}", block


def private_imports(source: str) -> list[str]:
    """The imports of ``pytest_distill`` internals: submodules, or names outside ``__all__``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("pytest_distill.")]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pytest_distill"):
            if node.module != "pytest_distill":
                found.append(f"from {node.module} import ...")
            else:
                found += [a.name for a in node.names if a.name not in pytest_distill.__all__]
    return found


def test_the_example_project_and_the_readme_import_only_public_names() -> None:
    sources = dict(python_sources())
    assert any(w.startswith("example_project/") for w in sources)
    assert any(w.startswith("README.md") for w in sources)
    assert {w: private_imports(s) for w, s in sources.items() if private_imports(s)} == {}


def test_the_private_import_check_sees_submodules_and_unlisted_names() -> None:
    assert private_imports("from pytest_distill.evals.cases import split_of") == [
        "from pytest_distill.evals.cases import ..."
    ]
    assert private_imports("import pytest_distill.plugin") == ["pytest_distill.plugin"]
    assert private_imports("from pytest_distill import Grade, xdist") == ["xdist"]


def test_the_readme_grader_of_ones_own_grades_the_cases(project: pytest.Pytester) -> None:
    (sample,) = [b for b in CODE_BLOCK.findall((REPO / "README.md").read_text()) if "Grade(" in b]
    project.makeconftest(sample)
    suite = SUITE.replace(
        "  - type: string_check\n    operation: eq\n",
        "  - type: max_length\n    max_chars: 5\n",
    )
    suite = re.sub(r"    reference: \w+\n", "", suite)
    project.makefile(".eval.yaml", capitals=suite)
    result = project.runpytest("--distill-roles=teacher", "-k", "fr or jp or es")
    result.assert_outcomes(passed=2, failed=1)  # Paris, Tokyo; Madrid is 6 characters
    result.stdout.fnmatch_lines(["*6 characters > 5*"])
