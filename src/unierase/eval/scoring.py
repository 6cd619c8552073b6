"""Teacher-forced log-probabilities of answers, batched, for every per-item metric at once.

One forward pass over ``question + answer`` (the prompt built by :mod:`unierase.prompting`) gives,
for each answer token, its log-probability, the model's argmax at that position (exact
memorisation, extraction strength) and the mean and standard deviation of ``log p`` under the full
next-token distribution there (Min-K%++). Sequences are right-padded, so every real token keeps
its position ids and a batch gives the same numbers as one item at a time (up to float rounding).
Items are sorted by length before batching, so little compute goes to padding.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from unierase import prompting as P
from unierase.eval.generate import model_device

log = logging.getLogger(__name__)


@dataclass
class AnswerScore:
    """Teacher-forced scores of one answer given its question.

    Attributes (T = number of scored answer tokens; float64 arrays):
        target_ids: (T,) the answer's token ids.
        token_logprobs: (T,) natural-log probability of each answer token.
        argmax_ids: (T,) the model's most likely token at each answer position; None when
            details were not requested.
        vocab_mean: (T,) ``sum_v p log p`` of the next-token distribution at each position
            (Min-K%++'s mu); None without details.
        vocab_std: (T,) standard deviation of ``log p`` under that distribution (sigma); None
            without details.
    """

    target_ids: np.ndarray
    token_logprobs: np.ndarray
    argmax_ids: np.ndarray | None = None
    vocab_mean: np.ndarray | None = None
    vocab_std: np.ndarray | None = None

    @property
    def mean_logprob(self) -> float:
        """Mean token log-probability (``-`` mean NLL)."""
        return float(np.mean(self.token_logprobs))

    @property
    def probability(self) -> float:
        """Length-normalised probability ``exp(mean token log-probability)``."""
        return float(np.exp(self.mean_logprob))


def _accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def _pad_id(tokenizer: Any, fmt: P.PromptFormat) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(P.stop_token_ids(tokenizer, fmt)[0])


@torch.no_grad()
def _score_batch(
    model: torch.nn.Module,
    encs: Sequence[P.EncodedQA],
    pad_id: int,
    details: bool,
    keep_logits: bool,
) -> list[AnswerScore]:
    device = model_device(model)
    batch = P.collate(encs, pad_id, left=False, with_labels=False)
    ids = batch.input_ids.to(device)
    mask = batch.attention_mask.to(device)
    width = ids.shape[1]
    starts = torch.tensor([e.prompt_length for e in encs], device=device)
    lengths = torch.tensor([e.answer_length for e in encs], device=device)
    # Answer token t is predicted by the logits at t - 1; only positions from the earliest such
    # one on are needed, which skips the (long) chat prompt in the output head.
    first = int(starts.min()) - 1
    kwargs: dict[str, Any] = {"logits_to_keep": width - first} if keep_logits else {}
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False, **kwargs).logits
    offset = width - logits.shape[1]  # position of logits[:, 0]
    t_max = int(lengths.max())
    steps = torch.arange(t_max, device=device)
    valid = steps[None, :] < lengths[:, None]  # (B, T)
    positions = (starts[:, None] - 1 + steps[None, :]).clamp(max=width - 1)  # (B, T)
    targets = ids.gather(1, (positions + 1).clamp(max=width - 1))  # (B, T)
    index = (positions - offset).clamp(min=0)
    selected = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # (B, T, V)
    logp = torch.log_softmax(selected.float(), dim=-1)
    token_logprobs = logp.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    if details:
        argmax = logp.argmax(-1)
        p = logp.exp()
        finite = torch.where(p > 0, logp, torch.zeros_like(logp))
        mu = (p * finite).sum(-1)
        # Centred second moment: E[x^2] - mu^2 cancels badly in float32 near a flat distribution.
        centred = torch.where(p > 0, finite - mu[..., None], torch.zeros_like(logp))
        sigma = (p * centred.square()).sum(-1).sqrt()
    out = []
    for i in range(len(encs)):
        row = valid[i]
        out.append(
            AnswerScore(
                target_ids=targets[i][row].cpu().numpy(),
                token_logprobs=token_logprobs[i][row].double().cpu().numpy(),
                argmax_ids=argmax[i][row].cpu().numpy() if details else None,
                vocab_mean=mu[i][row].double().cpu().numpy() if details else None,
                vocab_std=sigma[i][row].double().cpu().numpy() if details else None,
            )
        )
    return out


def score_answers(
    model: torch.nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    answers: Sequence[str],
    *,
    fmt: P.PromptFormat = P.PromptFormat(),
    batch_size: int = 16,
    include_end_of_turn: bool = True,
    answer_prefix_ids: Sequence[int] = (),
    details: bool = True,
    progress: bool = False,
    desc: str = "score",
) -> list[AnswerScore]:
    """Teacher-forced scores of ``answers[i]`` given ``questions[i]``, in input order.

    Args:
        model: a causal LM (any device; inputs go to the device of its input embedding).
        tokenizer: its tokenizer.
        questions: user questions, formatted by :func:`unierase.prompting.encode`.
        answers: the answer to score for each question (same length as ``questions``).
        fmt: prompt format (chat template or plain).
        batch_size: sequences per forward pass (right padded).
        include_end_of_turn: also score the template's end-of-turn ids after the answer, as TOFU
            and open-unlearning do (their labels end with the eos / end-of-turn token).
        answer_prefix_ids: ids placed at the start of the answer turn, before the answer text
            (e.g. a pre-filled token); they count as answer tokens and are scored too.
        details: also return argmax ids and the vocabulary log-prob moments (costs a little
            more compute, nothing more in the forward pass).
        progress: show a progress bar.
        desc: the progress bar's label.

    Returns:
        One :class:`AnswerScore` per pair.

    Raises:
        ValueError: when the lengths differ or a pair has no answer token to score.
    """
    if len(questions) != len(answers):
        raise ValueError(f"{len(questions)} questions but {len(answers)} answers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    encs = [
        P.encode(
            tokenizer,
            q,
            a,
            fmt,
            answer_prefix_ids=answer_prefix_ids,
            add_end_of_turn=include_end_of_turn,
        )
        for q, a in zip(questions, answers, strict=True)
    ]
    for i, enc in enumerate(encs):
        if enc.answer_length == 0:
            raise ValueError(f"answer {i} ({answers[i]!r}) has no token to score")
    pad_id = _pad_id(tokenizer, fmt)
    keep_logits = _accepts_logits_to_keep(model)
    order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    results: list[AnswerScore | None] = [None] * len(encs)
    tokens = sum(len(e.input_ids) for e in encs)
    start = time.perf_counter()
    bar = tqdm(total=len(encs), desc=desc, unit="seq", disable=not progress)
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        scored = _score_batch(model, [encs[i] for i in chunk], pad_id, details, keep_logits)
        for i, s in zip(chunk, scored, strict=True):
            results[i] = s
        bar.update(len(chunk))
    bar.close()
    seconds = max(time.perf_counter() - start, 1e-9)
    if encs:
        log.info(
            "%s: %d sequences, %d tokens in %.1f s (%.1f seq/s, %.0f tokens/s)",
            desc,
            len(encs),
            tokens,
            seconds,
            len(encs) / seconds,
            tokens / seconds,
        )
    return [r for r in results if r is not None]
