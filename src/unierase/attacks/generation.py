"""Greedy answers whose turn the attacker has already started (pre-filled answer ids).

The same decoding as :func:`unierase.eval.generate.generate` (greedy, left padding, KV cache,
stop at the end of turn, banned ids), but each prompt ends with the given answer-start ids, so the
model's first free choice comes after them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from unierase import prompting as P
from unierase.eval.generate import Generation, generate, model_device


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
    if not answer_prefix_ids:
        return generate(
            model,
            tokenizer,
            questions,
            fmt=fmt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            extra_stop_ids=extra_stop_ids,
            banned_ids=banned_ids,
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stops = list(dict.fromkeys([*P.stop_token_ids(tokenizer, fmt), *extra_stop_ids]))
    stop_set = set(stops)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = model_device(model)
    encs = [P.encode(tokenizer, q, fmt=fmt, answer_prefix_ids=answer_prefix_ids) for q in questions]
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    kwargs: dict[str, Any] = {"suppress_tokens": list(banned_ids)} if banned_ids else {}
    results: list[Generation | None] = [None] * len(encs)
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        # Not prompt_only: the pre-filled ids are part of what the model reads.
        batch = P.collate([encs[i] for i in chunk], pad_id, left=True, with_labels=False)
        out = model.generate(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=stops,
            pad_token_id=pad_id,
            **kwargs,
        )
        for i, row in zip(chunk, out[:, batch.input_ids.shape[1] :].tolist(), strict=True):
            cut = next((j for j, tok in enumerate(row) if tok in stop_set), None)
            ids = row if cut is None else row[:cut]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            results[i] = Generation(text=text, token_ids=ids, stopped=cut is not None)
    return [r for r in results if r is not None]
