"""Constrained decoding: answers that must be JSON, match a JSON Schema, or be tool calls.

A ``Constraint`` is the grammar a request's answer must follow, as ``llguidance`` (the grammar
library vLLM and SGLang use) reads it. While a constrained row decodes, its ``Matcher`` gives
the tokens the grammar allows next (every other token's logit becomes -inf before the next
token is picked, greedy or sampled) and takes the token picked; once the grammar can go no
further the row is complete and stops, as at its end-of-turn token, which is allowed only
where the grammar may end.

JSON is written as ``json.dumps`` writes it by default: ``", "`` between items, ``": "``
after keys, no other whitespace (free whitespace would let a weak model pad forever).

This module imports neither torch nor llguidance at import time: a ``Constraint`` is built
(and its grammar checked) before a request is queued; the engine's ``Grammars`` does the rest.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal

from distill_shapes.tools import FunctionTool, parse_tool

if TYPE_CHECKING:
    import torch
    from llguidance import LLExecutor, LLMatcher, LLTokenizer

JSON_OPTIONS: dict[str, Any] = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}
"""How llguidance writes JSON here: as ``json.dumps`` does by default."""
GRAMMARS_KEPT = 64
"""Compiled grammars a model keeps (by their text) for the requests that repeat them."""
TOOL_CALL_OPEN = "<tool_call>\n"
TOOL_CALL_CLOSE = "\n</tool_call>"


class UnsupportedSchema(ValueError):
    """A schema (or tool parameters) that llguidance cannot enforce; the message names the
    feature (``Unimplemented keys: ["not"]``, ``Unknown format: ...``)."""


@dataclass(frozen=True, slots=True)
class Constraint:
    """The grammar an answer must follow. Build one with ``json_object``, ``json_schema`` or
    ``tool_calls``; each checks its grammar, so a constraint that exists can be enforced."""

    kind: Literal["json_object", "json_schema", "tool_calls"]
    grammar: str
    """The llguidance grammar (its JSON text); compiled grammars are cached by it."""

    @classmethod
    def json_object(cls) -> Constraint:
        """Any JSON object."""
        return cls("json_object", _checked(_json_grammar('{"type": "object"}', lenient=False)))

    @classmethod
    def json_schema(cls, schema: Mapping[str, Any], *, lenient: bool = False) -> Constraint:
        """JSON valid against ``schema``. Raises ``UnsupportedSchema`` when the schema uses
        something llguidance cannot enforce; with ``lenient``, keywords it does not implement
        (``not``, ``uniqueItems``, ``if``) are left unenforced instead, and only what is left
        (an unknown ``format``, a regex it cannot read) raises."""
        text = json.dumps(schema, sort_keys=False, ensure_ascii=False)
        return cls("json_schema", _checked(_json_grammar(text, lenient=lenient)))

    @classmethod
    def tool_calls(
        cls,
        tools: Sequence[FunctionTool | Mapping[str, Any]],
        name: str | None = None,
        parallel: bool = True,
        *,
        optional: bool = False,
    ) -> Constraint:
        """One or more ``<tool_call>`` blocks joined by newlines (exactly one when not
        ``parallel``), each ``{"name": <a tool's name>, "arguments": <an object valid against
        that tool's parameters>}``, name first; with ``name``, every call is to that tool.
        With ``optional`` (``tool_choice`` auto), the answer is text in which no ``<tool_call>``
        begins, or those calls: a call, if the model makes one, is a valid one (llguidance's
        greedy text lexeme cannot end just before a call, so text and calls do not mix).

        ``tools`` are ``FunctionTool``s or their wire shape (``{"type": "function", ...}``).
        A tool marked ``strict`` whose parameters use what llguidance cannot enforce raises
        ``UnsupportedSchema``; for the others that part is left unenforced (as
        ``json_schema(..., lenient=True)``).
        """
        parsed = [t if isinstance(t, FunctionTool) else parse_tool(t) for t in tools]
        chosen = [tool for tool in parsed if name is None or tool.name == name]
        if not chosen:
            known = ", ".join(tool.name for tool in parsed) or "none"
            raise ValueError(f"No tool named {name!r} to call (the tools: {known}).")
        rules = [f"call_{k}: %json {_call_schema(tool)}" for k, tool in enumerate(chosen)]
        calls = " | ".join(f"call_{k}" for k in range(len(chosen)))
        block = f"{json.dumps(TOOL_CALL_OPEN)} ({calls}) {json.dumps(TOOL_CALL_CLOSE)}"
        calls_rule = 'calls: block ("\\n" block)*' if parallel else "calls: block"
        start = "start: TEXT | calls" if optional else "start: calls"
        text = [_TEXT] if optional else []
        lark = "\n".join([start, calls_rule, f"block: {block}", *rules, *text])
        return cls("tool_calls", _checked(_lark_grammar(lark)))


_TEXT = f"TEXT: /(?s:.+)/ & ~/(?s:.*{TOOL_CALL_OPEN.strip()}.*)/"
"""Any text, at least a character, in which no call begins (llguidance's ``&`` and ``~`` on
lexemes: the intersection with the complement)."""


def _call_schema(tool: FunctionTool) -> str:
    parameters = tool.parameters
    if parameters is None:  # a function without parameters takes an empty object
        parameters = {"type": "object", "properties": {}, "additionalProperties": False}
    schema = {
        "x-guidance": {**JSON_OPTIONS, "lenient": not tool.strict},
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
    return json.dumps(schema, ensure_ascii=False)


def _json_grammar(schema: str, lenient: bool) -> str:
    from llguidance import LLMatcher

    options = {**JSON_OPTIONS, "lenient": lenient}
    return LLMatcher.grammar_from_json_schema(schema, overrides=options)  # type: ignore[arg-type]


def _lark_grammar(lark: str) -> str:
    from llguidance import LLMatcher

    return LLMatcher.grammar_from_lark(lark)


@lru_cache(maxsize=256)
def _checked(grammar: str) -> str:
    """``grammar``, once llguidance finds nothing it cannot enforce in it."""
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise UnsupportedSchema(error.strip().splitlines()[0] if error.strip() else error)
    return grammar


class Matcher:
    """One row's place in its grammar."""

    __slots__ = ("_inner",)

    def __init__(self, inner: LLMatcher) -> None:
        self._inner = inner

    @property
    def inner(self) -> LLMatcher:
        return self._inner

    def consume(self, token: int) -> bool:
        """Take the token picked; returns whether the grammar is now complete (nothing more
        may follow). Raises ``RuntimeError`` if the grammar did not allow the token."""
        if not self._inner.consume_token(token):
            raise RuntimeError(f"Constrained decoding failed: {self._inner.get_error()}")
        return self._inner.is_stopped()


class Grammars:
    """One model's grammar machinery: its tokenizer as llguidance reads it (built on the first
    constrained request: it takes a fraction of a second) and its recently compiled grammars.
    """

    def __init__(self, tokenizer: Any, eos: Iterable[int]) -> None:
        self._hf_tokenizer = tokenizer
        self._eos = sorted(eos)
        self._tokenizer: LLTokenizer | None = None
        self._executor: LLExecutor | None = None
        self._compiled: OrderedDict[str, LLMatcher] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> LLTokenizer:
        with self._lock:
            if self._tokenizer is None:
                import llguidance
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, eos_token=self._eos
                )
                self._executor = llguidance.LLExecutor(num_threads=1)
            return self._tokenizer

    def matcher(self, constraint: Constraint) -> Matcher:
        """A fresh matcher at the start of ``constraint``'s grammar."""
        tokenizer = self.tokenizer
        with self._lock:
            compiled = self._compiled.get(constraint.grammar)
            if compiled is None:
                from llguidance import LLMatcher

                compiled = LLMatcher(tokenizer, constraint.grammar, log_level=0)
                if compiled.is_error():
                    raise UnsupportedSchema(compiled.get_error())
                self._compiled[constraint.grammar] = compiled
                while len(self._compiled) > GRAMMARS_KEPT:
                    self._compiled.popitem(last=False)
            else:
                self._compiled.move_to_end(constraint.grammar)
            return Matcher(compiled.deep_copy())

    def mask(self, logits: torch.Tensor, rows: Sequence[tuple[int, Matcher]]) -> None:
        """Set to -inf, in place, the logits of the tokens each of ``rows`` (the index of its
        row in ``logits``, its matcher) may not take next."""
        import numpy as np
        import torch
        from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask_par

        tokenizer = self.tokenizer
        assert self._executor is not None
        bitmask = allocate_token_bitmask(len(rows), tokenizer.vocab_size)
        fill_next_token_bitmask_par(
            self._executor, [(matcher.inner, j) for j, (_, matcher) in enumerate(rows)], bitmask
        )
        # Bit b of word w allows token 32 * w + b; the words are little-endian. numpy unpacks
        # and applies the bits on one thread, in a fraction of a millisecond: torch's
        # operations on a vocabulary-wide row wait for each other's threads on a busy CPU.
        width = min(logits.shape[1], 32 * bitmask.shape[1])
        allowed = np.unpackbits(bitmask.view(np.uint8), axis=1, count=width, bitorder="little")
        allowed = allowed.view(np.bool_)
        with torch.inference_mode():  # the logits are the model's output, an inference tensor
            if logits.device.type == "cpu":
                array = logits.numpy()
                for j, (k, _) in enumerate(rows):
                    np.putmask(array[k, :width], ~allowed[j], -np.inf)
                    array[k, width:] = -np.inf
                return
            on_device = torch.from_numpy(allowed).to(logits.device, non_blocking=True)
            for j, (k, _) in enumerate(rows):
                logits[k, :width].masked_fill_(~on_device[j], float("-inf"))
                logits[k, width:] = float("-inf")
