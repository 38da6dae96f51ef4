"""A row's answer as text while it is decoded: stop sequences, and the deltas a stream sends."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

_INCOMPLETE = "\ufffd"
"""What the tokenizer decodes a character split across tokens to, until its last byte comes."""


class Answer:
    """Decodes a row's tokens as they come; cuts the text at the first stop sequence.

    With ``on_text``, every piece of text that is final is passed on as soon as it is: text
    that might still turn into a stop sequence, or a character still missing bytes, waits for
    the next token. The pieces joined are exactly ``text`` at the end.
    """

    def __init__(
        self, tokenizer: Any, stops: Sequence[str], on_text: Callable[[str], None] | None
    ) -> None:
        self._tokenizer = tokenizer
        self._stops = tuple(s for s in stops if s)
        self._on_text = on_text
        self._sent = ""
        self._prefix = self._read = 0
        """Tokens before ``_prefix`` are settled; ``_prefix:_read`` give the context that the
        next tokens are decoded against (a space or a split character can depend on it)."""
        self.text = ""
        self.stopped = False

    @property
    def incremental(self) -> bool:
        """Whether the text must be followed token by token (else decoded once at the end)."""
        return bool(self._stops) or self._on_text is not None

    def update(self, tokens: list[int]) -> None:
        """Take the tokens so far; sets ``stopped`` once a stop sequence appeared.

        Decodes only the newest tokens (against a few before them), so a long answer costs
        the same per token as a short one.
        """
        before = self._decode(tokens[self._prefix : self._read])
        now = self._decode(tokens[self._prefix :])
        if len(now) <= len(before) or now.endswith(_INCOMPLETE):
            return  # a character still missing bytes: wait for the next token
        searched = max(0, len(self.text) - max((len(s) for s in self._stops), default=0))
        self.text += now[len(before) :]
        self._prefix, self._read = self._read, len(tokens)
        cuts = [self.text.find(stop, searched) for stop in self._stops]
        if any(cut >= 0 for cut in cuts):
            self.text, self.stopped = self.text[: min(c for c in cuts if c >= 0)], True
            return
        self._send(_final_part(self.text, self._stops))

    def finish(self, tokens: list[int]) -> str:
        """The whole answer, once the row is done; sends what was held back."""
        if not self.incremental:
            self.text = self._decode(tokens)
        elif not self.stopped:  # the last tokens may have been held back for a character
            rest = self._decode(tokens[self._prefix :])[
                len(self._decode(tokens[self._prefix : self._read])) :
            ]
            self.text += rest
        self._send(self.text)
        return self.text

    def _decode(self, tokens: list[int]) -> str:
        return str(self._tokenizer.decode(tokens, skip_special_tokens=True))

    def _send(self, ready: str) -> None:
        if self._on_text is None or len(ready) <= len(self._sent):
            return
        if not ready.startswith(self._sent):  # decoding more tokens rewrote earlier text
            return
        delta, self._sent = ready[len(self._sent) :], ready
        self._on_text(delta)


def _final_part(text: str, stops: Sequence[str]) -> str:
    """``text`` less a trailing partial character and any ending that could begin a stop."""
    text = text.rstrip(_INCOMPLETE)
    held = max((_overlap(text, stop) for stop in stops), default=0)
    return text[: len(text) - held]


def _overlap(text: str, stop: str) -> int:
    """The length of the longest end of ``text`` that is a beginning of ``stop``."""
    for size in range(min(len(text), len(stop) - 1), 0, -1):
        if text.endswith(stop[:size]):
            return size
    return 0
