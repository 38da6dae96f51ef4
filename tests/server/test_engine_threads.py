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
    # The default first, and on it until the other is tried, at the 4th call after the first.
    assert busy[:5] == [2] * 4 + [1]
    tries = [k for k, count in enumerate(busy) if count == 2][4:]
    assert 4 <= len(tries) <= 12, tries  # every 16 calls at first, then 32, then every 64
    assert all(b - a >= 16 for a, b in itertools.pairwise(tries))
    idle = run(threads, {1: 1.0, 2: 0.6}, 600)  # the machine is idle again: two are faster
    assert idle.index(2) <= 64
    assert idle[-100:].count(2) >= 90


def test_each_kind_of_call_has_its_own_choice() -> None:
    threads = _Threads(4)
    assert threads.counts == [1, 2, 4]
    cost = {4: 3.0, 2: 2.0, 1: 1.0}
    picks = run(threads, cost, 8)
    assert picks[:7] == [4, 4, 4, 4, 2, 1, 1]  # from the 4th call, each untried one in turn
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
    assert seen == [2, 2]  # the default, until the other count's turn comes
    assert set(threads.cost) == {("step/8", 2)}


def test_one_core_times_nothing() -> None:
    threads = _Threads(1)
    with threads("step", 8):
        pass
    assert not threads.cost


def test_each_size_of_call_is_timed_apart() -> None:
    """A token costs less in a wider step: a count timed on 32 rows is not compared with one
    timed on 4 (the wider step would make its count look faster)."""
    threads = _Threads(2)
    assert threads.kind_of("step", 32) == threads.kind_of("step", 63) == "step/32"
    assert threads.kind_of("step", 4) == "step/4" and threads.kind_of("step", 0) == "step/1"
    wide, thin = threads.kind_of("step", 32), threads.kind_of("step", 4)
    # Per token: 32 rows on 2 threads 1.0, on 1 thread 1.6; 4 rows on 2 threads 5.0, on 1: 4.0.
    for kind, seconds in ((wide, {2: 1.0, 1: 1.6}), (thin, {2: 5.0, 1: 4.0})):
        for _ in range(1 + _Threads.FIRST_TRY):
            count = threads.pick(kind)
            threads.timed(kind, count, seconds[count])
        assert {count for (k, count) in threads.cost if k == kind} == {1, 2}
    assert threads.best(wide) == 2 and threads.best(thin) == 1
