"""Which cassette a request belongs to: the route active in its thread (a context variable).

A route is the test item's node id, or ``distill/<dataset hash>`` for the fine-tuning step;
pool threads that prefetch an item's call enter that item's route themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import shlex
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

_UNSAFE = re.compile(r"[^\w.\-\[\]=,+@]")


@dataclass(frozen=True, slots=True)
class Route:
    """Which cassette a request belongs to, and the command that records it."""

    name: str
    command: str
    shared: bool = False  # every xdist worker makes these calls; only one writes them


ROUTE: ContextVar[Route | None] = ContextVar("distill_cassette_route", default=None)
SESSION_ROUTE = Route("session", "pytest --distill-record-mode=all", shared=True)


@contextlib.contextmanager
def route(to: Route) -> Iterator[None]:
    token = ROUTE.set(to)
    try:
        yield
    finally:
        ROUTE.reset(token)


def item_route(nodeid: str) -> Route:
    return Route(cassette_name(nodeid), f"pytest --distill-record-mode=all {shlex.quote(nodeid)}")


def cassette_name(nodeid: str) -> str:
    """``evals/codes.eval.yaml::i03[teacher]`` -> ``evals/codes.eval.yaml/i03[teacher]``."""
    path, *names = nodeid.split("::")
    parts = [p for p in path.split("/") if p not in ("", ".", "..")] + names
    safe = [_UNSAFE.sub("_", p) for p in parts]
    name = "/".join(safe)
    if safe != parts:  # two ids that differ only in unsafe characters must not share a file
        name += "-" + hashlib.sha256(nodeid.encode()).hexdigest()[:8]
    return name


class CassetteMiss(Exception):
    """A request with no recorded response, in a mode that may not record it."""


def in_item_route(nodeid: str, call: Callable[[], T]) -> T:
    """Run ``call`` in the route of item ``nodeid``: a pool thread does not inherit it."""
    with route(item_route(nodeid)):
        return call()
