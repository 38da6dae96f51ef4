"""Tests of the embedded local server (a package, so its conftest does not shadow tests/conftest.py)."""
