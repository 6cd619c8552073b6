"""Batched greedy generation of answers, with left padding and the KV cache."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from unierase import prompting as P

log = logging.getLogger(__name__)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the input embedding (where input ids must go, also under a device_map)."""
    return model.get_input_embeddings().weight.device


@dataclass
class Generation:
    """One greedy answer.

    Attributes:
        text: decoded answer, special tokens hidden, stripped.
        token_ids: generated ids before the stop token (the stop token excluded).
        stopped: whether a stop id ended the answer (False: the token budget ran out).
    """

    text: str
    token_ids: list[int]
    stopped: bool

    @property
    def num_tokens(self) -> int:
        """Tokens the model generated for this answer, the stop token included."""
        return len(self.token_ids) + int(self.stopped)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    *,
    fmt: P.PromptFormat = P.PromptFormat(),
    max_new_tokens: int = 200,
    batch_size: int = 16,
    extra_stop_ids: Sequence[int] = (),
    banned_ids: Sequence[int] = (),
    answer_prefix_ids: Sequence[int] = (),
    progress: bool = False,
    desc: str = "generate",
) -> list[Generation]:
    """Greedy answers to ``questions`` with their token ids, in input order.

    Prompts are sorted by length and left-padded in batches of ``batch_size``; ``model.generate``
    decodes greedily with the KV cache and stops each answer at the end of turn (or at
    ``extra_stop_ids``). Throughput (items/s, generated tokens/s) is logged at the end.

    Args:
        model: a causal LM (inputs go to the device of its input embedding).
        tokenizer: its tokenizer.
        questions: user questions (formatted by ``prompting.encode``).
        fmt: prompt format.
        max_new_tokens: generation budget per answer.
        batch_size: prompts per forward pass (left padded).
        extra_stop_ids: further ids that end an answer (e.g. the unlearning token).
        banned_ids: ids that may never be generated.
        answer_prefix_ids: ids placed at the start of every answer turn (pre-filled answer);
            the returned generations hold only what the model wrote after them.
        progress: show a progress bar (with tokens/s).
        desc: the progress bar's label.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    stops = list(dict.fromkeys([*P.stop_token_ids(tokenizer, fmt), *extra_stop_ids]))
    stop_set = set(stops)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = model_device(model)
    encs = [P.encode(tokenizer, q, fmt=fmt, answer_prefix_ids=answer_prefix_ids) for q in questions]
    # Similar lengths share a batch: less padding, fewer wasted positions.
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    results: list[Generation | None] = [None] * len(encs)
    kwargs: dict[str, Any] = {}
    if banned_ids:
        kwargs["suppress_tokens"] = list(banned_ids)
    generated = 0
    start = time.perf_counter()
    bar = tqdm(total=len(encs), desc=desc, unit="item", disable=not progress)
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        batch = P.collate(
            # A pre-filled answer start is part of what the model reads (not prompt_only).
            [encs[i] for i in chunk], pad_id, left=True, prompt_only=not answer_prefix_ids,
            with_labels=False,
        )  # fmt: skip
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
        new = out[:, batch.input_ids.shape[1] :].tolist()
        for i, row in zip(chunk, new, strict=True):
            cut = next((j for j, tok in enumerate(row) if tok in stop_set), None)
            ids = row if cut is None else row[:cut]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            results[i] = Generation(text=text, token_ids=ids, stopped=cut is not None)
            generated += results[i].num_tokens
        bar.update(len(chunk))
        bar.set_postfix(tok_s=f"{generated / max(time.perf_counter() - start, 1e-9):.0f}")
    bar.close()
    seconds = max(time.perf_counter() - start, 1e-9)
    if encs:
        log.info(
            "%s: %d answers, %d new tokens in %.1f s (%.2f items/s, %.1f tokens/s)",
            desc,
            len(encs),
            generated,
            seconds,
            len(encs) / seconds,
            generated / seconds,
        )
    return [r for r in results if r is not None]


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
    """Greedy answers to ``questions``, decoded with special tokens hidden (see :func:`generate`).

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
    return [
        g.text
        for g in generate(
            model,
            tokenizer,
            questions,
            fmt=fmt,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            extra_stop_ids=extra_stop_ids,
            banned_ids=banned_ids,
            progress=progress,
        )
    ]
