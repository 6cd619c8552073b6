"""Teacher-forced log-probabilities of answers, batched, for every per-item metric at once.

A forward pass over ``question + answer`` (the prompt built by :mod:`unierase.prompting`) gives,
for each answer token, its log-probability, the model's argmax at that position (exact
memorisation, extraction strength) and the mean and standard deviation of ``log p`` under the full
next-token distribution there (Min-K%++).

Answers to the same question share its prompt's computation. Evaluation scores several answers
per question (the answer, a paraphrase, perturbed answers), and the chat prompt is often longer
than the answer, so recomputing it for every answer wastes most of the forward pass. A batch with
a repeated prompt therefore runs in two forward passes:

1. the batch's distinct prompts without their last token, left-padded, with the KV cache on;
2. for every answer, its prompt's last token followed by the answer ids, right-padded, reading
   its prompt's cache row (the cache is expanded to one row per answer first).

Position ids continue from each prompt's true length and the attention mask hides every pad, so
each real token sees exactly what it sees in one unpadded pass; left-padding the prompts keeps
each row's tokens contiguous with its answer, so sliding-window attention (Gemma-3) measures the
same distances too. The answer's first token is predicted at the prompt's last token, which is
why that token goes to the second pass. A batch without a repeated prompt, or a model whose
``forward`` takes no ``position_ids`` and cache argument, is scored in one pass over the whole,
right-padded sequences instead (``share_prompts=False`` forces that everywhere). Both give the
same numbers as one item at a time, up to float rounding. Tested with Llama, Qwen2, Gemma-3,
GPT-2, GPT-NeoX and Phi models.

Items are sorted before batching so little compute goes to padding: by total length, or, when
prompts are shared, by prompt length with a prompt's answers kept together.
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


@dataclass(frozen=True)
class _ForwardArgs:
    """What the model's ``forward`` accepts beyond ids and mask."""

    keep_logits: bool  # takes ``logits_to_keep``
    cache_arg: str | None  # name of its KV-cache argument; None: no cache with position ids


def _forward_args(model: torch.nn.Module) -> _ForwardArgs:
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return _ForwardArgs(keep_logits=False, cache_arg=None)
    # transformers renamed ``past_key_values`` to ``cache`` (5.x keeps the old name a while).
    names = [n for n in ("cache", "past_key_values") if n in params]
    shareable = "position_ids" in params and "use_cache" in params and bool(names)
    return _ForwardArgs(
        keep_logits="logits_to_keep" in params, cache_arg=names[0] if shareable else None
    )


def _pad_id(tokenizer: Any, fmt: P.PromptFormat) -> int:
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    return int(P.stop_token_ids(tokenizer, fmt)[0])


def _shared_prefix(enc: P.EncodedQA) -> tuple[int, ...]:
    """The ids the prompt pass computes once: the prompt without its last token."""
    return tuple(enc.input_ids[: enc.prompt_length - 1])


def _scores_from_logits(
    logits: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor, details: Sequence[bool]
) -> list[AnswerScore]:
    """Scores from the logits that predict each answer token.

    Args:
        logits: (B, T, V) logits; ``logits[i, t]`` predicts answer token ``t`` of row ``i``.
        targets: (B, T) answer ids (anything past a row's length).
        lengths: (B,) answer tokens per row.
        details: per row, whether to also compute argmax ids and the vocabulary log-prob
            moments (they cost several passes over the vocabulary per answer token).
    """
    steps = torch.arange(targets.shape[1], device=targets.device)
    valid = steps[None, :] < lengths[:, None]  # (B, T)
    logp = torch.log_softmax(logits.float(), dim=-1)
    token_logprobs = logp.gather(-1, targets[..., None]).squeeze(-1)  # (B, T)
    rows = [i for i, d in enumerate(details) if d]
    slot = {i: j for j, i in enumerate(rows)}  # batch row -> row of the detail tensors
    if rows:
        logp = logp[rows] if len(rows) < len(details) else logp
        argmax = logp.argmax(-1)
        p = logp.exp()
        finite = torch.where(p > 0, logp, torch.zeros_like(logp))
        mu = (p * finite).sum(-1)
        # Centred second moment: E[x^2] - mu^2 cancels badly in float32 near a flat distribution.
        centred = torch.where(p > 0, finite - mu[..., None], torch.zeros_like(logp))
        sigma = (p * centred.square()).sum(-1).sqrt()
    out = []
    for i in range(targets.shape[0]):
        row, j = valid[i], slot.get(i)
        out.append(
            AnswerScore(
                target_ids=targets[i][row].cpu().numpy(),
                token_logprobs=token_logprobs[i][row].double().cpu().numpy(),
                argmax_ids=argmax[j][row].cpu().numpy() if j is not None else None,
                vocab_mean=mu[j][row].double().cpu().numpy() if j is not None else None,
                vocab_std=sigma[j][row].double().cpu().numpy() if j is not None else None,
            )
        )
    return out


@torch.no_grad()
def _score_batch(
    model: torch.nn.Module,
    encs: Sequence[P.EncodedQA],
    pad_id: int,
    details: Sequence[bool],
    keep_logits: bool,
) -> list[AnswerScore]:
    """One forward pass over the whole, right-padded sequences."""
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
    steps = torch.arange(int(lengths.max()), device=device)
    positions = (starts[:, None] - 1 + steps[None, :]).clamp(max=width - 1)  # (B, T)
    targets = ids.gather(1, (positions + 1).clamp(max=width - 1))  # (B, T)
    index = (positions - offset).clamp(min=0)
    selected = logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))  # (B, T, V)
    return _scores_from_logits(selected, targets, lengths, details)


@torch.no_grad()
def _score_batch_shared(
    model: torch.nn.Module,
    encs: Sequence[P.EncodedQA],
    pad_id: int,
    details: Sequence[bool],
    keep_logits: bool,
    cache_arg: str,
) -> list[AnswerScore] | None:
    """Two forward passes: the distinct prompts once, then every answer on its prompt's cache.

    Returns None, having changed nothing, when the model returns no transformers ``Cache``.
    """
    from transformers.cache_utils import Cache

    device = model_device(model)
    prefixes: dict[tuple[int, ...], int] = {}
    rows = [prefixes.setdefault(_shared_prefix(e), len(prefixes)) for e in encs]

    # Pass 1: distinct prompts without their last token, left-padded, so every row's last real
    # token sits in the last column and the answers continue right after it.
    width = max(len(p) for p in prefixes)
    prefix_ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for r, prefix in enumerate(prefixes):
        prefix_ids[r, width - len(prefix) :] = torch.tensor(prefix, dtype=torch.long)
        prefix_mask[r, width - len(prefix) :] = 1
    prefix_ids, prefix_mask = prefix_ids.to(device), prefix_mask.to(device)
    prefix_positions = (prefix_mask.cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {"logits_to_keep": 1} if keep_logits else {}
    out = model(
        input_ids=prefix_ids,
        attention_mask=prefix_mask,
        position_ids=prefix_positions,
        use_cache=True,
        **kwargs,
    )
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if not isinstance(cache, Cache):
        return None
    # One cache row per answer (rows repeat where answers share a prompt).
    cache.reorder_cache(torch.tensor(rows, device=device))

    # Pass 2: the prompt's last token, then the answer ids, right-padded.
    continuations = [e.input_ids[e.prompt_length - 1 :] for e in encs]
    cont_width = max(len(c) for c in continuations)
    cont_ids = torch.full((len(encs), cont_width), pad_id, dtype=torch.long)
    cont_mask = torch.zeros((len(encs), cont_width), dtype=torch.long)
    for i, cont in enumerate(continuations):
        cont_ids[i, : len(cont)] = torch.tensor(cont, dtype=torch.long)
        cont_mask[i, : len(cont)] = 1
    cont_ids, cont_mask = cont_ids.to(device), cont_mask.to(device)
    starts = torch.tensor([e.prompt_length - 1 for e in encs], device=device)
    cont_positions = starts[:, None] + torch.arange(cont_width, device=device)[None, :]
    # Pads take position 0: they are masked, and positions past a row's end could overflow an
    # absolute position table (GPT-2).
    cont_positions = cont_positions * cont_mask
    mask = torch.cat([prefix_mask[torch.tensor(rows, device=device)], cont_mask], dim=1)
    logits = model(
        input_ids=cont_ids,
        attention_mask=mask,
        position_ids=cont_positions,
        use_cache=True,
        **{cache_arg: cache},
    ).logits  # (B, C, V)
    lengths = torch.tensor([e.answer_length for e in encs], device=device)
    # Column t predicts answer token t, which sits in column t + 1 of the continuation.
    return _scores_from_logits(logits[:, :-1], cont_ids[:, 1:], lengths, details)


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
    details: bool | Sequence[bool] = True,
    share_prompts: bool = True,
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
        batch_size: answers per batch (right padded; with shared prompts, a batch's distinct
            prompts run first as one smaller pass).
        include_end_of_turn: also score the template's end-of-turn ids after the answer, as TOFU
            and open-unlearning do (their labels end with the eos / end-of-turn token).
        answer_prefix_ids: ids placed at the start of the answer turn, before the answer text
            (e.g. a pre-filled token); they count as answer tokens and are scored too.
        details: also return argmax ids and the vocabulary log-prob moments (nothing more in
            the forward pass, but several passes over the vocabulary per answer token); one
            flag for every pair, or one per pair.
        share_prompts: compute a prompt once for all its answers in a batch (see the module
            docstring); False runs every sequence whole. Same numbers up to float rounding.
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
    wants = [details] * len(encs) if isinstance(details, bool) else [bool(d) for d in details]
    if len(wants) != len(encs):
        raise ValueError(f"{len(wants)} details flags for {len(encs)} answers")
    pad_id = _pad_id(tokenizer, fmt)
    args = _forward_args(model)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, enc in enumerate(encs):
        groups.setdefault(_shared_prefix(enc), []).append(i)
    # The cache argument to share prompts through; None: every sequence runs whole.
    cache_arg = args.cache_arg if share_prompts else None
    if len(groups) == len(encs) or any(e.prompt_length < 2 for e in encs):
        cache_arg = None
    if cache_arg is not None:
        # A prompt's answers side by side (shortest first), prompts of similar length together.
        order = [
            i
            for prefix in sorted(groups, key=len)
            for i in sorted(groups[prefix], key=lambda i: encs[i].answer_length)
        ]
    else:
        order = sorted(range(len(encs)), key=lambda i: len(encs[i].input_ids))
    results: list[AnswerScore | None] = [None] * len(encs)
    tokens = sum(len(e.input_ids) for e in encs)
    start = time.perf_counter()
    bar = tqdm(total=len(encs), desc=desc, unit="seq", disable=not progress)
    for b in range(0, len(order), batch_size):
        chunk = order[b : b + batch_size]
        batch = [encs[i] for i in chunk]
        scored = None
        if cache_arg is not None and len({_shared_prefix(e) for e in batch}) < len(batch):
            flags = [wants[i] for i in chunk]
            scored = _score_batch_shared(model, batch, pad_id, flags, args.keep_logits, cache_arg)
            if scored is None:
                log.warning("%s: the model returned no KV cache; prompts are not shared", desc)
                cache_arg = None
        if scored is None:
            scored = _score_batch(model, batch, pad_id, [wants[i] for i in chunk], args.keep_logits)
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
