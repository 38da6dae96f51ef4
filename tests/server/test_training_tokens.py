"""Loss falls on assistant tokens only, cut where generation starts at serving time."""

from __future__ import annotations

from pathlib import Path

from distill_server.trainer.lora import tokenize_example
from distill_shapes.training import Example, Message


def test_labels_cover_exactly_the_trained_assistant_turns(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    example = Example(
        (
            Message("system", "Be terse.", False),
            Message("user", "First?", False),
            Message("assistant", "One.", False),
            Message("user", "Second?", False),
            Message("assistant", "Two.", True),
        )
    )
    ids, labels = tokenize_example(tokenizer, example)
    chat = [{"role": m.role, "content": m.content} for m in example.messages]
    whole = tokenizer.apply_chat_template(chat, tokenize=False)
    assert tokenizer.decode(ids) == whole
    trained = [token for token in labels if token != -100]
    assert tokenizer.decode(trained) == "Two.<|im_end|>\n"
    assert len(ids) == len(labels)
