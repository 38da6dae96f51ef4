"""Concurrent requests for one model are decoded together, with the same answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai

PROMPTS = [f"Tell me fact number {i}." + " Please." * (i % 5) for i in range(16)]


def _ask(client: openai.OpenAI, prompt: str) -> tuple[str, int]:
    response = client.chat.completions.with_raw_response.create(
        model="tiny",
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=10,
    )
    text = response.parse().choices[0].message.content or ""
    return text, int(response.headers["x-distill-batch-size"])


def test_sixteen_concurrent_requests_share_batches_and_match_one_by_one(server: Any) -> None:
    with openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0) as client:
        alone = [_ask(client, prompt) for prompt in PROMPTS]
        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            together = list(pool.map(lambda p: _ask(client, p), PROMPTS))
    assert {size for _, size in alone} == {1}
    assert max(size for _, size in together) >= 8, together
    # Left padding with a proper mask and positions must not change greedy answers.
    assert [text for text, _ in together] == [text for text, _ in alone]
