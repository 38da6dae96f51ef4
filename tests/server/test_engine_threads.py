"""The engine's choice of torch threads: the count that has run a kind of call fastest."""

from __future__ import annotations

import itertools

import torch

from distill_server.engine.decode import _Threads


def run(threads: _Threads, seconds: dict[int, float], calls: int) -> list[int]:
    """``calls`` decoding steps whose cost per token on each count is ``seconds``."""
    picks = []
    for _ in range(calls):
        count = threads.pick("step")
        threads.timed("step", count, seconds[count])
        picks.append(count)
    return picks


def test_calls_run_on_the_fastest_count_and_try_the_other_less_and_less() -> None:
    threads = _Threads(2)
    assert threads.counts == [1, 2]
    busy = run(threads, {1: 1.0, 2: 6.0}, 600)  # two threads wait on each other: one is faster
    assert busy[:2] == [2, 1]  # the default first, then the other once
    tries = [k for k, count in enumerate(busy) if count == 2][1:]
    assert 4 <= len(tries) <= 12, tries  # every 16 calls at first, then 32, then every 64
    assert all(b - a >= 16 for a, b in itertools.pairwise(tries))
    idle = run(threads, {1: 1.0, 2: 0.6}, 600)  # the machine is idle again: two are faster
    assert idle.index(2) <= 64
    assert idle[-100:].count(2) >= 90


def test_each_kind_of_call_has_its_own_choice() -> None:
    threads = _Threads(4)
    assert threads.counts == [1, 2, 4]
    for count, cost in {4: 3.0, 2: 2.0, 1: 1.0}.items():
        assert threads.pick("step") == count
        threads.timed("step", count, cost)
    assert threads.best("step") == 1
    assert threads.pick("prompt") == 4  # not yet timed: the default


def test_the_block_runs_on_the_chosen_count_and_the_default_comes_back() -> None:
    default = torch.get_num_threads()
    threads = _Threads(2)
    seen = []
    for _ in range(2):
        with threads("step", 8):
            seen.append(torch.get_num_threads())
        assert torch.get_num_threads() == default
    assert seen == [2, 1]
    assert set(threads.cost) == {("step", 1), ("step", 2)}


def test_one_core_times_nothing() -> None:
    threads = _Threads(1)
    with threads("step", 8):
        pass
    assert not threads.cost
