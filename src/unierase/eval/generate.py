"""Batched greedy generation of answers, with left padding and the KV cache."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from unierase import prompting as P

log = logging.getLogger(__name__)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the input embedding (where input ids must go, also under a device_map)."""
    return model.get_input_embeddings().weight.device


@torch.no_grad()
def generate_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    fmt: P.PromptFormat = P.PromptFormat(),
    max_new_tokens: int = 200,
    batch_size: int = 16,
    extra_stop_ids: Sequence[int] = (),
    banned_ids: Sequence[int] = (),
    progress: bool = False,
) -> list[str]:
    """Greedy answers to ``questions``, decoded with special tokens hidden.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        questions: user questions (formatted by ``prompting.encode``).
        fmt: prompt format.
        max_new_tokens: generation budget per answer.
        batch_size: prompts per forward pass (left padded).
        extra_stop_ids: further ids that end an answer (e.g. the unlearning token).
        banned_ids: ids that may never be generated.
        progress: show a progress bar.
    """
    stops = list(dict.fromkeys([*P.stop_token_ids(tokenizer, fmt), *extra_stop_ids]))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = model_device(model)
    answers: list[str] = []
    batches = range(0, len(questions), batch_size)
    for start in tqdm(batches, desc="generate", unit="batch", disable=not progress):
        encs = [P.encode(tokenizer, q, fmt=fmt) for q in questions[start : start + batch_size]]
        batch = P.collate(encs, pad_id, left=True, prompt_only=True, with_labels=False)
        kwargs = {}
        if banned_ids:
            kwargs["suppress_tokens"] = list(banned_ids)
        out = model.generate(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad_id,
            **kwargs,
        )
        new = out[:, batch.input_ids.shape[1] :]
        answers += [tokenizer.decode(row, skip_special_tokens=True).strip() for row in new]
    return answers
