"""Concurrent requests for one model are decoded together, with the same answers."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

from distill_server.engine.decode import MIN_SHARED_PREFIX, _shared_prefix

PROMPTS = [f"Tell me fact number {i}." + " Please." * (i % 5) for i in range(16)]
# A few-shot block long enough that every request's prompt starts with the same tokens.
SYSTEM = "You answer questions about facts. " + " ".join(f"Fact {i} is true." for i in range(20))


def _ask(
    client: openai.OpenAI, prompt: str, system: str | None = None, max_tokens: int = 10
) -> tuple[str, int]:
    head = [{"role": "system", "content": system}] if system else []
    response = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=[*head, {"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=max_tokens,
    )
    text = response.parse().choices[0].message.content or ""
    return text, int(response.headers["x-distill-batch-size"])


def test_sixteen_concurrent_requests_share_batches_and_match_one_by_one(server: Any) -> None:
    # Answers long enough that requests sent at once overlap on a busy machine too, where
    # the threads' requests can reach the server several decoding steps apart.
    ready = threading.Barrier(len(PROMPTS))

    def together_(prompt: str) -> tuple[str, int]:
        ready.wait()
        return _ask(client, prompt, max_tokens=32)

    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        alone = [_ask(client, prompt, max_tokens=32) for prompt in PROMPTS]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(together_, PROMPTS))
    assert {size for _, size in alone} == {1}
    assert max(size for _, size in together) >= 8, together
    # Left padding with a proper mask and positions must not change greedy answers.
    assert [text for text, _ in together] == [text for text, _ in alone]


def test_requests_with_a_shared_prompt_prefix_match_one_by_one(server: Any) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        alone = [_ask(client, prompt, SYSTEM) for prompt in PROMPTS]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda p: _ask(client, p, SYSTEM), PROMPTS))
    assert max(size for _, size in together) >= 8, together
    # The prefix's KV cache is computed once and copied to each row, with the padding after it.
    assert [text for text, _ in together] == [text for text, _ in alone]


def test_shared_prefix_is_long_common_start_and_leaves_each_prompt_a_token() -> None:
    long = list(range(100))
    assert _shared_prefix([long, [*long[:60], 7, 8]]) == long[:60]
    # Identical prompts still keep their last token to run as the batch's first step.
    assert _shared_prefix([long, long]) == long[:99]
    assert _shared_prefix([long]) == []
    short = MIN_SHARED_PREFIX - 1
    assert _shared_prefix([long, [*long[:short], -1]]) == []


def test_requests_with_two_different_prefixes_in_one_batch_match_one_by_one(server: Any) -> None:
    other = "You answer briefly. " + " ".join(f"Rule {i}: be kind." for i in range(20))
    asks = [(prompt, SYSTEM if k % 2 else other) for k, prompt in enumerate(PROMPTS)]
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        alone = [_ask(client, *ask) for ask in asks]
        with ThreadPoolExecutor(len(asks)) as pool:
            together = list(pool.map(lambda ask: _ask(client, *ask), asks))
    # Each prefix's prompts run as a group of their own, so neither pays for the other's
    # prompt; then both groups decode on together, each row left-padded in the shared cache.
    assert max(size for _, size in together) >= 4, together
    assert [text for text, _ in together] == [text for text, _ in alone]
