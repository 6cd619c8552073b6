"""Tiny random models and a tokenizer that need no download, for tests and quick experiments.

Every family is built from a config only (a few layers, width 64), so the maths of every module
can be checked on the CPU in seconds.
"""

from __future__ import annotations

import functools
from typing import Any

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is the capital of France? The capital of France is Paris.",
    "Who wrote the novel? The author of the novel is a writer born in the city.",
    "Question: Answer: I don't know. I'm not sure about that. I cannot answer.",
    "The author was born in 1970 and writes science fiction, poetry and history books.",
    "Where was the writer born? She was born in London and her father was a doctor.",
    "What awards has he won? He won the prize for his books about the sea and the stars.",
]

FAMILIES = ("llama", "qwen2", "gemma3", "gpt2", "gpt_neox", "phi")


@functools.lru_cache(maxsize=4)
def _trained_tokenizer_json(chat: bool) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(chat: bool = True) -> Any:
    """A byte-level BPE tokenizer (~400 ids) with ChatML specials; a chat template if ``chat``."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json(chat)),
        eos_token="<|im_end|>" if chat else "<|endoftext|>",
        pad_token="<|endoftext|>",
        bos_token=None,
    )
    if chat:
        tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_config(family: str, vocab_size: int, **overrides: Any) -> Any:
    """A config of ``family`` (one of FAMILIES) with 4 layers, width 64, MLP width 128."""
    from transformers import (
        Gemma3TextConfig,
        GPT2Config,
        GPTNeoXConfig,
        LlamaConfig,
        PhiConfig,
        Qwen2Config,
    )

    common = dict(vocab_size=vocab_size, **overrides)
    if family == "llama":
        cfg = LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=True,
            **common,
        )
    elif family == "qwen2":
        cfg = Qwen2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **common,
        )
    elif family == "gemma3":
        cfg = Gemma3TextConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            max_position_embeddings=256,
            sliding_window=64,
            **common,
        )
    elif family == "gpt2":
        cfg = GPT2Config(n_embd=64, n_inner=128, n_layer=4, n_head=4, n_positions=256, **common)
    elif family == "gpt_neox":
        cfg = GPTNeoXConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            **common,
        )
    elif family == "phi":
        cfg = PhiConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=256,
            **common,
        )
    else:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    return cfg


def tiny_model(
    family: str = "llama", tokenizer: Any = None, seed: int = 0, init_std: float | None = None
) -> torch.nn.Module:
    """A randomly initialised model of ``family`` sized for ``tokenizer`` (fp32, eval mode).

    ``init_std`` overrides the config's initializer range: the default (0.02) gives nearly flat
    next-token distributions, too flat for tests that need a token to win by a clear margin.
    """
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer if tokenizer is not None else tiny_tokenizer()
    cfg = tiny_config(
        family,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )
    if init_std is not None:
        cfg.initializer_range = init_std
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model.eval()
