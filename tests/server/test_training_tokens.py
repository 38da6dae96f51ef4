"""Loss falls on assistant tokens only, cut where generation starts at serving time."""

from __future__ import annotations

import json
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


def test_tool_lines_carry_loss_on_their_trained_calls_and_answers_only(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    from distill_server.weights.chat_format import render
    from distill_shapes.training import parse_training_file

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}

    def call(call_id: str, key: str) -> dict[str, object]:
        arguments = json.dumps({"key": key})
        return {
            "id": call_id,
            "type": "function",
            "function": {"name": "lookup", "arguments": arguments},
        }

    line = {
        "messages": [
            {"role": "user", "content": "Look up a and b."},
            {
                "role": "assistant",
                "content": "On it.",
                "tool_calls": [call("1", "a"), call("2", "b")],
            },
            {"role": "tool", "tool_call_id": "1", "content": "A!"},
            {"role": "tool", "tool_call_id": "2", "content": "B!"},
            {"role": "assistant", "content": "Both found.", "weight": 0},
            {"role": "user", "content": "Now c."},
            {"role": "assistant", "content": None, "tool_calls": [call("3", "c")]},
        ],
        "tools": [tool],
    }
    [example] = parse_training_file(((json.dumps(line) + "\n") * 10).encode())[:1]
    ids, labels = tokenize_example(tokenizer, example)
    chat = [{k: v for k, v in m.items() if k != "weight"} for m in line["messages"]]
    assert tokenizer.decode(ids) == render(tokenizer, chat, False, [tool])
    assert len(ids) == len(labels)
    runs: list[list[int]] = []  # the labelled tokens, run by run
    for index, label in enumerate(labels):
        if label == -100:
            continue
        if not runs or labels[index - 1] == -100:
            runs.append([])
        runs[-1].append(label)
    block = '<tool_call>\n{{"name": "lookup", "arguments": {{"key": "{}"}}}}\n</tool_call>'
    assert [tokenizer.decode(run) for run in runs] == [
        f"On it.\n{block.format('a')}\n{block.format('b')}<|im_end|>\n",
        f"{block.format('c')}<|im_end|>\n",
    ]
