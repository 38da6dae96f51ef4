"""The decoder's KV cache: room set aside for each step, and rows joining or leaving a batch.

Imports torch and transformers at import time; only ``decode.py`` imports it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicLayer


class RoomyLayer(DynamicLayer):  # type: ignore[no-untyped-call]  # transformers is untyped
    """A KV cache layer that writes each step into room it set aside, and whose rows join and
    leave the batch in place.

    transformers' ``DynamicLayer`` concatenates on every decoding step, copying the whole cache
    into a fresh allocation: with 32 rows of a few hundred prompt tokens, a profile of a fresh
    process put 39% of a step in that copying (``benchmarks/bench_shared_prefix.py``, in a warm
    process, measures about 9% of a batch). This one copies only when its room runs out.

    Rows joining and leaving a running batch copy only themselves, not the batch: selecting
    the rows that stay, or concatenating the ones that join, copies every row's keys and values
    into fresh memory, which took longer than the decoding step itself (36 rows of 500
    positions: 0.4 s each, against a 0.27 s step). Here the live rows are the room's first
    ``rows``; a row that leaves gives its place to one of the last (``move_rows``), new rows
    take the places after them (``append``), and positions no row needs any more are dropped
    by moving the view's start (``drop_leading``).
    """

    ROOM = 64

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            self._rows, self._start, self._used = key_states.shape[0], 0, 0
            self._key_room = self._value_room = key_states[..., :0, :]
        used, size = self._used, self._used + key_states.shape[-2]
        if size > self._key_room.shape[-2]:
            self._regrow(self._key_room.shape[0], size - self._start + self.ROOM)
            used, size = self._used, self._used + key_states.shape[-2]
        self._key_room[: self._rows, :, used:size, :] = key_states
        self._value_room[: self._rows, :, used:size, :] = value_states
        self._used = size
        return self._view()

    def _regrow(self, rows: int, length: int, offset: int = 0) -> None:
        """Fresh room for ``rows`` rows of ``length`` positions, holding what the view held
        from position ``offset`` on (zeros before it: padding the mask hides)."""
        width = self._used - self._start
        for name in ("_key_room", "_value_room"):
            room = getattr(self, name)
            grown = room.new_empty((rows, *room.shape[1:-2], length, room.shape[-1]))
            grown[: self._rows, ..., offset : offset + width, :] = room[
                : self._rows, ..., self._start : self._used, :
            ]
            grown[: self._rows, ..., :offset, :] = 0
            setattr(self, name, grown)
        self._start, self._used = 0, offset + width

    def reserve(self, length: int) -> None:
        """Set aside room for ``length`` positions, so that the chunks up to it copy nothing."""
        if self._start + length > self._key_room.shape[-2]:
            self._regrow(self._key_room.shape[0], length)
            self._view()

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._key_room = self._key_room[: self._rows].repeat_interleave(repeats, dim=0)
        self._value_room = self._value_room[: self._rows].repeat_interleave(repeats, dim=0)
        self._rows *= repeats
        self._view()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._key_room, self._value_room = self._key_room[indices], self._value_room[indices]
        self._rows = len(indices)
        self._view()

    @torch.inference_mode()
    def move_rows(self, holes: list[int], movers: list[int], rows: int) -> None:
        """Keep the first ``rows`` rows, row ``movers[k]`` taking the place of ``holes[k]``."""
        if holes:
            to = torch.tensor(holes, device=self._key_room.device)
            source = torch.tensor(movers, device=self._key_room.device)
            live = slice(self._start, self._used)
            for room in (self._key_room, self._value_room):
                room[to, :, live] = room[source, :, live]
        self._rows = rows
        self._view()

    @torch.inference_mode()
    def append(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Add rows (another cache's ``keys`` and ``values``) after these, the shorter side
        left-padded with zeros, which the caller's attention mask hides."""
        count, length = keys.shape[0], keys.shape[-2]
        width = self._used - self._start
        rows = self._key_room.shape[0]
        if self._rows + count > rows:  # a quarter more, so that joins rarely copy the batch
            rows = self._rows + count + (self._rows + count) // 4
        if rows > self._key_room.shape[0] or length - width > self._start:
            size = max(length, width)
            self._regrow(rows, size + self.ROOM, size - width)
        elif length > width:
            self._start -= length - width  # room before the view: zeros for the older rows
            for room in (self._key_room, self._value_room):
                room[: self._rows, :, self._start : self._used - width, :] = 0
        end = self._rows + count
        for room, states in ((self._key_room, keys), (self._value_room, values)):
            room[self._rows : end, :, self._used - length : self._used, :] = states
            room[self._rows : end, :, self._start : self._used - length, :] = 0
        self._rows = end
        self._view()

    def drop_leading(self, count: int) -> None:
        """Forget the first ``count`` positions of every row."""
        self._start += count
        self._view()

    def _view(self) -> tuple[torch.Tensor, torch.Tensor]:
        live = (slice(0, self._rows), Ellipsis, slice(self._start, self._used), slice(None))
        keys, values = self._key_room[live], self._value_room[live]
        self.keys, self.values = keys, values
        return keys, values


def append_rows(cache: Cache, other: Cache) -> None:
    """Add ``other``'s rows after ``cache``'s, left-padding the shorter one with zeros.

    The padding is masked out by the caller's attention mask; zeros (not uninitialised memory)
    keep a masked score from ever being NaN.
    """
    for layer, extra in zip(_layers(cache), _layers(other), strict=True):
        if isinstance(layer, RoomyLayer):
            layer.append(extra.keys, extra.values)
            continue
        length = max(layer.keys.shape[-2], extra.keys.shape[-2])
        keys = torch.cat([_left_pad(layer.keys, length), _left_pad(extra.keys, length)])
        values = torch.cat([_left_pad(layer.values, length), _left_pad(extra.values, length)])
        _assign(layer, keys, values)


def held_bytes(cache: Cache) -> int:
    """The bytes ``cache``'s layers hold: their room, spare rows and positions included."""
    total = 0
    for layer in _layers(cache):
        if isinstance(layer, RoomyLayer) and layer.is_initialized:
            total += layer._key_room.nbytes + layer._value_room.nbytes
        elif getattr(layer, "keys", None) is not None:
            total += layer.keys.nbytes + layer.values.nbytes
    return total


def keep_rows(cache: Cache, keep: list[int]) -> list[int]:
    """Keep the rows ``keep`` (in increasing order) of ``cache``; returns which row each place
    now holds. The last rows move into the places of those that left, so only they are
    copied: the rows' order changes, and the caller reorders what it keeps by row likewise."""
    order = list(range(len(keep)))
    kept = set(keep)
    holes = [place for place in order if place not in kept]
    movers = [row for row in keep if row >= len(keep)]
    for hole, mover in zip(holes, movers, strict=True):
        order[hole] = mover
    for layer in _layers(cache):
        if isinstance(layer, RoomyLayer):
            layer.move_rows(holes, movers, len(keep))
        else:
            index = torch.tensor(order, dtype=torch.long, device=layer.keys.device)
            layer.batch_select_indices(index)
    return order


def reserve(cache: Cache, length: int) -> None:
    """Room for ``length`` positions and a few steps more in each layer that holds some.

    A prompt that runs in chunks then takes the room its whole prompt needs once (the room
    it takes run whole), instead of growing it chunk by chunk.
    """
    for layer in _layers(cache):
        if isinstance(layer, RoomyLayer) and layer.is_initialized:
            layer.reserve(length + RoomyLayer.ROOM)


def drop_leading(cache: Cache, count: int) -> None:
    """Forget the first ``count`` positions of every row (padding no remaining row needs)."""
    for layer in _layers(cache):
        if isinstance(layer, RoomyLayer):
            layer.drop_leading(count)
        else:
            _assign(layer, layer.keys[..., count:, :], layer.values[..., count:, :])


def _layers(cache: Cache) -> list[Any]:
    # Full-attention layers, each holding ``keys`` and ``values`` (typed as any layer kind).
    return list(cache.layers)


def _left_pad(states: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - states.shape[-2]
    if not missing:
        return states
    zeros = states.new_zeros((*states.shape[:-2], missing, states.shape[-1]))
    return torch.cat([zeros, states], dim=-2)


def _assign(layer: Any, keys: torch.Tensor, values: torch.Tensor) -> None:
    # transformers' own layer, which the shared-prefix benchmark compares against (a
    # ``RoomyLayer`` joins, leaves and drops positions in place).
    layer.keys, layer.values = keys, values


class PrefixCache:
    """The KV cache of recent shared prompt prefixes (one row each), by adapter and tokens.

    The main job's calls share long prefixes (a suite's system message and few-shot turns) but
    arrive over time: once the first requests have run a prefix together, a request that
    arrives later, alone, starts from its cached keys and values and runs only its own tokens.
    Least recently used entries go first once their bytes pass ``budget``.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self._entries: OrderedDict[tuple[Any, tuple[int, ...]], list[tuple[Tensor, Tensor]]] = (
            OrderedDict()
        )
        self._bytes = 0
        self._found: dict[tuple[int, ...], tuple[Any, tuple[int, ...]]] = {}

    def longest(self, adapter: Any, prompts: list[list[int]], least: int = 1) -> tuple[int, ...]:
        """The longest start that every one of ``prompts`` shares with one cached prefix, at
        least ``least`` tokens, leaving each prompt a token; empty when there is none.

        Part of a cached prefix serves too: a position's keys and values depend only on the
        tokens before it, and a prefix that a wave of requests shared may reach into their
        last message, which a later request begins otherwise.
        """
        best: tuple[int, ...] = ()
        best_key: tuple[Any, tuple[int, ...]] | None = None
        room = min(len(p) for p in prompts) - 1
        for key in self._entries:
            key_adapter, tokens = key
            if key_adapter != adapter:
                continue
            size = min(len(tokens), room)
            for prompt in prompts:
                size = next((k for k in range(size) if prompt[k] != tokens[k]), size)
            if size > len(best) and size >= least:
                best, best_key = tokens[:size], key
        if best_key is not None:
            self._entries.move_to_end(best_key)
            self._found[best] = best_key
        return best

    def restore(self, adapter: Any, tokens: tuple[int, ...], cache: Cache) -> None:
        """Fill the empty ``cache`` (one row) with the keys and values of ``tokens``, the start
        of a cached prefix that ``longest`` found."""
        key = self._found.pop(tokens, (adapter, tokens))
        size = len(tokens)
        for index, (keys, values) in enumerate(self._entries[key]):
            # Copied into the layer's own room.
            cache.update(keys[..., :size, :], values[..., :size, :], index)

    def put(self, adapter: Any, tokens: tuple[int, ...], cache: Cache) -> None:
        """Keep the keys and values ``cache`` (one row) holds for ``tokens``."""
        key = (adapter, tokens)
        if key in self._entries or not self.budget:
            return
        layers = [(layer.keys.clone(), layer.values.clone()) for layer in _layers(cache)]
        size = sum(k.nbytes + v.nbytes for k, v in layers)
        if size > self.budget:
            return
        self._entries[key] = layers
        self._bytes += size
        while self._bytes > self.budget:
            _, dropped = self._entries.popitem(last=False)
            self._bytes -= sum(k.nbytes + v.nbytes for k, v in dropped)
