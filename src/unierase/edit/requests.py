"""Edit requests: which prompts an edit must change, and where its key is read.

A request is one or more prompts (the questions of one author at entity level, one question at
question level). Each prompt carries the token index of its subject's last token, where the key
is read and the value shift is added, and the same prompt behind a few short generated prefixes,
over which keys are averaged so the edit does not depend on the exact start of the context.
With deep forgetting, each prompt also comes behind answer pre-fills and followed by the start of
its true answer (rows the value optimisation uses; keys stay those of the plain prompts).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from unierase import prompting as P
from unierase.data.schema import QAItem
from unierase.edit.config import EditConfig


@dataclass
class Row:
    """One token sequence and the position of interest in it."""

    ids: list[int]
    pos: int


@dataclass
class AnswerRow(Row):
    """A prompt followed by the start of its true answer.

    Attributes:
        positions: indices in ``ids`` whose next-token prediction is an answer token.
        labels: the answer token predicted at each of ``positions``.
    """

    positions: list[int]
    labels: list[int]


@dataclass
class EditRequest:
    """Prompts that one key/value pair must redirect to the target token.

    Attributes:
        items: the QA items behind the prompts.
        prompts: the chat-formatted prompts (generation prompt appended); ``pos`` is the
            subject's last token.
        contexts: per prompt, the same question behind generated prefixes.
        kl_rows: the subject alone; the next-token distribution at its last token is kept close
            to the unedited model's (the subject's own meaning).
        label: a short name for logs and reports.
        prefill_rows: per prompt, the prompt with each answer pre-fill appended (deep only).
        answer_rows: per prompt, the prompt with its answer's first tokens (deep only).
        refusal_rows: per prompt, the prompt followed by the target token and the refusal the
            token was trained to produce, up to its end of turn: the value shift must leave that
            continuation intact (``EditConfig.v_refusal_weight``).
    """

    items: list[QAItem]
    prompts: list[Row]
    contexts: list[list[Row]] = field(default_factory=list)
    kl_rows: list[Row] = field(default_factory=list)
    label: str = ""
    prefill_rows: list[list[Row]] = field(default_factory=list)
    answer_rows: list[AnswerRow] = field(default_factory=list)
    refusal_rows: list[AnswerRow] = field(default_factory=list)


def _row(
    tokenizer: Any, question: str, subject: str | None, fmt: P.PromptFormat, strip: bool = False
) -> Row:
    enc = P.encode(tokenizer, question, fmt=fmt)
    pos = P.subject_last_token(tokenizer, question, subject, fmt, strip_punctuation=strip)
    return Row(enc.input_ids[: enc.prompt_length], pos)


def _prefill_row(tokenizer: Any, question: str, prefill: str, pos: int, fmt: P.PromptFormat) -> Row:
    # The pre-fill is encoded as the start of the answer turn, so the row is exactly the prompt
    # followed by the pre-fill attack's ids (unierase.attacks.prompts.prefill_ids).
    enc = P.encode(tokenizer, question, prefill, fmt, add_end_of_turn=False)
    return Row(enc.input_ids, pos)


def _answer_row(
    tokenizer: Any, item: QAItem, pos: int, n_tokens: int, fmt: P.PromptFormat
) -> AnswerRow:
    enc = P.encode(tokenizer, item.question, item.answer, fmt, add_end_of_turn=False)
    start = enc.prompt_length
    labels = enc.input_ids[start : start + n_tokens]
    # The logits at start - 1 + t predict answer token t.
    positions = list(range(start - 1, start - 1 + len(labels)))
    return AnswerRow(enc.input_ids[: start + len(labels)], pos, positions, labels)


def _refusal_row(
    tokenizer: Any, question: str, pos: int, continuation: Sequence[int], fmt: P.PromptFormat
) -> AnswerRow:
    """The prompt, then ``continuation`` (the target token, the refusal, its ending); the
    positions are those predicting every continuation token after the target token."""
    enc = P.encode(tokenizer, question, fmt=fmt)
    prompt = enc.input_ids[: enc.prompt_length]
    ids = prompt + list(continuation)
    start = len(prompt) + 1  # the first token after the target token
    positions = list(range(start - 1, len(ids) - 1))
    return AnswerRow(ids, pos, positions, ids[start:])


def _kl_row(tokenizer: Any, subject: str) -> Row:
    # The bare subject as plain text; positions after it cannot influence its last token.
    probe = tokenizer("x", add_special_tokens=True)["input_ids"]
    bare = tokenizer("x", add_special_tokens=False)["input_ids"]
    bos = probe[: len(probe) - len(bare)] if probe[-len(bare) :] == bare else []
    ids = bos + P.encode_user_text(tokenizer, subject)
    return Row(ids, len(ids) - 1)


@torch.no_grad()
def generate_prefixes(
    model: torch.nn.Module, tokenizer: Any, starts: Sequence[str], n_tokens: int
) -> list[str]:
    """Short greedy continuations of ``starts`` (e.g. "The", "Because"), as in ROME/MEMIT."""
    if n_tokens <= 0:
        return list(starts)
    device = model.get_input_embeddings().weight.device
    prefixes = []
    for start in starts:
        ids = torch.tensor([P.encode_user_text(tokenizer, start)], device=device)
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        text = tokenizer.decode(out[0], skip_special_tokens=True)
        # Keep one line; newlines would read as a new paragraph before the question.
        prefixes.append(" ".join(text.split()))
    return prefixes


def build_requests(
    tokenizer: Any,
    items: Sequence[QAItem],
    *,
    granularity: str = "entity",
    prefixes: Sequence[str] = (),
    fmt: P.PromptFormat = P.PromptFormat(),
    deep: bool = False,
    deep_prefills: Sequence[str] = (),
    deep_answer_tokens: int = EditConfig.deep_answer_tokens,
    continuation: Sequence[int] = (),
    strip_subject_punctuation: bool = False,
) -> list[EditRequest]:
    """Group ``items`` into edit requests.

    Args:
        tokenizer: the model's tokenizer.
        items: forget items; ``subject`` (when given) must occur in the question, otherwise the
            last prompt token is the key position (documented fallback).
        granularity: "entity" (one request per ``group``; items without a group stand alone)
            or "question" (one request per item).
        prefixes: generated context prefixes; each prompt is also encoded behind each of them.
        fmt: the prompt format (the same one evaluation uses).
        deep: also build each prompt's pre-fill rows (behind each of ``deep_prefills``) and
            answer row (its first ``deep_answer_tokens`` answer tokens).
        continuation: ids that follow the prompt once the edit works: the target token, the
            refusal and its ending (empty: no refusal rows).
        strip_subject_punctuation: read keys at the subject's last word, not at a closing quote
            or punctuation mark (``prompting.subject_last_token``).
    """
    if granularity not in ("entity", "question"):
        raise ValueError(f"granularity must be 'entity' or 'question', not {granularity!r}")
    if deep and (deep_answer_tokens < 1 or not all(f.strip() for f in deep_prefills)):
        raise ValueError("deep forgetting needs deep_answer_tokens >= 1 and non-blank pre-fills")
    groups: dict[str, list[QAItem]] = {}
    for i, item in enumerate(items):
        key = item.group if granularity == "entity" and item.group else f"#{i}"
        groups.setdefault(key, []).append(item)
    requests = []
    for key, members in groups.items():
        strip = strip_subject_punctuation
        prompts = [_row(tokenizer, it.question, it.subject, fmt, strip) for it in members]
        contexts = [
            [
                _row(tokenizer, f"{prefix} {it.question}", it.subject, fmt, strip)
                for prefix in prefixes
            ]
            for it in members
        ]
        subjects = list(dict.fromkeys(it.subject for it in members if it.subject))
        kl_rows = [_kl_row(tokenizer, s) for s in subjects[:2]]
        label = key if not key.startswith("#") else members[0].question[:60]
        req = EditRequest(list(members), prompts, contexts, kl_rows, label)
        if len(continuation) > 1:
            req.refusal_rows = [
                _refusal_row(tokenizer, it.question, row.pos, continuation, fmt)
                for it, row in zip(members, prompts, strict=True)
            ]
        if deep:
            req.prefill_rows = [
                [_prefill_row(tokenizer, it.question, f, row.pos, fmt) for f in deep_prefills]
                for it, row in zip(members, prompts, strict=True)
            ]
            req.answer_rows = [
                _answer_row(tokenizer, it, row.pos, deep_answer_tokens, fmt)
                for it, row in zip(members, prompts, strict=True)
            ]
        requests.append(req)
    return requests


def left_pad(
    rows: Sequence[Row], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-pad rows so every one ends at the last column.

    Returns:
        input_ids (B, T), attention_mask (B, T), position_ids (B, T) counted from each row's
        first real token, and pos (B,) the rows' positions of interest in padded coordinates.
    """
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    pos = torch.zeros(len(rows), dtype=torch.long)
    for i, r in enumerate(rows):
        off = width - len(r.ids)
        ids[i, off:] = torch.tensor(r.ids, dtype=torch.long)
        mask[i, off:] = 1
        pos[i] = off + r.pos
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), position_ids.to(device), pos.to(device)
