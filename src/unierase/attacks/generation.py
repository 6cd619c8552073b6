"""Greedy answers whose turn the attacker has already started (pre-filled answer ids).

A thin name for :func:`unierase.eval.generate.generate` with ``answer_prefix_ids`` (the same
greedy decoding), so each prompt ends with the given answer-start ids and the model's first free
choice comes after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unierase import prompting as P
from unierase.eval.generate import Generation, generate


@torch.no_grad()
def generate_after_prefix(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answer_prefix_ids: Sequence[int],
    *,
    fmt: P.PromptFormat = P.PromptFormat(),
    max_new_tokens: int = 200,
    batch_size: int = 16,
    extra_stop_ids: Sequence[int] = (),
    banned_ids: Sequence[int] = (),
) -> list[Generation]:
    """Greedy continuations of ``question -> answer turn + answer_prefix_ids``, in input order.

    The returned :class:`Generation` holds only what the model wrote after the prefix. With no
    prefix this is :func:`unierase.eval.generate.generate`.

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        questions: user questions (formatted by ``prompting.encode``).
        answer_prefix_ids: ids placed at the start of every answer turn (see
            :func:`unierase.attacks.prompts.prefill_ids`).
        fmt: prompt format.
        max_new_tokens: generation budget after the prefix.
        batch_size: prompts per forward pass (left padded).
        extra_stop_ids: further ids that end an answer.
        banned_ids: ids that may never be generated.
    """
    return generate(
        model,
        tokenizer,
        questions,
        fmt=fmt,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        extra_stop_ids=extra_stop_ids,
        banned_ids=banned_ids,
        answer_prefix_ids=answer_prefix_ids,
    )
