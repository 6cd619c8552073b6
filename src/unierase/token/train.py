"""Phase I training: add the unlearning token and train only its row(s).

Only the new row of the input embedding (and, for an untied head, of the output head) is a
trainable tensor; every other weight enters the forward pass as a detached constant, so no
gradient can reach it and no optimiser holds it. A test checks bit for bit that every other
weight is unchanged.

Speed: the prompt before the opening token does not depend on the trained row, so its
key/value cache is computed once per (question, format) without gradients, and each step runs the
model over the ~20 suffix tokens only; the loss is the same as over the full sequence (tested in
float64). Stages with down-projection noise recompute the prefix (the noise changes it) but still
without gradients.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm
from transformers import DynamicCache

from unierase import prompting as P
from unierase.data.refusals import assign_refusals, load_refusals
from unierase.data.schema import QAItem
from unierase.model import ModelLayout, find_layout
from unierase.token.config import StageConfig, TokenConfig, default_edit_layers, token_config_for
from unierase.token.data import (
    Example,
    encode_unlearning_example,
    prompt_format,
    template_questions,
    unique_questions,
)
from unierase.token.vocab import add_unlearning_token

log = logging.getLogger(__name__)

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), (batch, heads, len, dim)


# ----------------------------------------------------------------------------- report


@dataclass
class StageReport:
    """How one stage went.

    Attributes:
        name: the stage's name.
        formats: formats trained in it.
        lr: its learning rate.
        examples: sequences per epoch.
        noise_rounds: per round, the layers whose down-projection carried noise ([] = none).
        epochs: epochs run per noise round (``min_steps`` may add to the configured ones).
        losses: mean cross-entropy on ``refusal <eot>`` (``refusal [UNL] <eot>`` with the
            closing token) per epoch (rounds in order).
        retain_losses: mean retain term per epoch (0 when off).
        steps: optimiser steps.
        seconds: wall time of the stage (check included).
        refusal_match: share of the checked forget questions whose greedy continuation after
            ``question [UNL]`` is exactly ``refusal [UNL]`` (None when not checked).
        retain_wins: retain positions where the new token beats every old token (None if off).
    """

    name: str
    formats: list[str]
    lr: float
    examples: int
    noise_rounds: list[list[int]]
    epochs: int = 0
    losses: list[float] = field(default_factory=list)
    retain_losses: list[float] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    refusal_match: float | None = None
    retain_wins: int | None = None


@dataclass
class TokenReport:
    """What Phase I did, JSON-ready via :meth:`to_dict`.

    Attributes:
        token_text: the token's text.
        token_id: its id.
        tied: whether head and input embedding share the row.
        trained_rows: "input_embedding" and/or "output_head".
        init: "mean" or "random".
        refusal_mode: "fixed" or "varied".
        refusals: the distinct refusal sentences trained on.
        questions: counts of training questions per source (forget, breadth, template).
        skipped_too_long: sequences dropped for exceeding ``max_length``.
        noise_layers: the layers noised in noise stages.
        retain: the retain term's data: questions, positions, weight, wins at init and at the end.
        stages: per-stage reports.
        row_norm: norm of the trained input row; ``mean_row_norm``: mean norm of the old rows.
        seconds: total wall time.
        seed: the seed.
        config: every setting.
    """

    token_text: str
    token_id: int
    tied: bool
    trained_rows: list[str]
    init: str
    refusal_mode: str
    refusals: list[str]
    questions: dict[str, int]
    skipped_too_long: int
    noise_layers: list[int]
    retain: dict[str, Any]
    stages: list[StageReport]
    row_norm: float
    mean_row_norm: float
    seconds: float
    seed: int
    config: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


# ----------------------------------------------------------------------------- trainable rows


class _Rows:
    """The trainable vector(s) of the token and how they enter the model's forward pass."""

    def __init__(self, model: nn.Module, layout: ModelLayout, token_id: int, train_output: bool):
        self.embed = model.get_input_embeddings()
        self.head = model.get_output_embeddings()
        self.embed_key = f"{layout.embed_name}.weight"
        self.head_key = f"{layout.head_name}.weight"
        self.tied = layout.tied
        self.token_id = token_id
        # Rows are trained in float32 whatever the model's dtype.
        self.input = nn.Parameter(self.embed.weight[token_id].detach().float().clone())
        self.output = (
            nn.Parameter(self.head.weight[token_id].detach().float().clone())
            if not self.tied and train_output
            else None
        )

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in (self.input, self.output) if p is not None]

    @staticmethod
    def _with_row(weight: torch.Tensor, index: int, row: torch.Tensor) -> torch.Tensor:
        idx = torch.tensor([index], device=weight.device)
        return weight.detach().index_put((idx,), row.to(weight.dtype)[None])

    def overrides(self) -> dict[str, torch.Tensor]:
        """Weights for ``functional_call``: the frozen matrices with the trainable row(s) in."""
        out = {self.embed_key: self._with_row(self.embed.weight, self.token_id, self.input)}
        if self.output is not None:
            out[self.head_key] = self._with_row(self.head.weight, self.token_id, self.output)
        return out

    def output_row(self) -> torch.Tensor:
        """(hidden,) the row that scores the token at the output (trainable or frozen)."""
        if self.tied:
            return self.input
        if self.output is not None:
            return self.output
        return self.head.weight[self.token_id].detach().float()

    @torch.no_grad()
    def write(self) -> None:
        """Copy the trained values into the model's weights."""
        self.embed.weight[self.token_id] = self.input.to(self.embed.weight.dtype)
        if self.output is not None:
            self.head.weight[self.token_id] = self.output.to(self.head.weight.dtype)


@torch.no_grad()
def _init_rows(
    model: nn.Module, layout: ModelLayout, token_id: int, n_old: int, init: str, seed: int
) -> None:
    embed = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    gen = torch.Generator().manual_seed(seed)
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)

    def value(weight: torch.Tensor) -> torch.Tensor:
        if init == "mean":
            return weight[:n_old].float().mean(dim=0)
        return torch.randn(weight.shape[1], generator=gen) * std

    embed[token_id] = value(embed).to(embed.dtype)
    if not layout.tied:
        head_module.weight[token_id] = value(head_module.weight).to(head_module.weight.dtype)
    bias = getattr(head_module, "bias", None)
    if isinstance(bias, torch.Tensor):
        bias[token_id] = bias[:n_old].mean() if init == "mean" else 0.0


@contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """No parameter of the model requires grad inside; the flags are restored afterwards."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def _noisy_down_projections(
    model: nn.Module,
    layout: ModelLayout,
    layers: Sequence[int],
    scale: float,
    stds: dict[int, float],
    gen: torch.Generator,
) -> Iterator[None]:
    """Add N(0, (scale * std(W))^2) noise to the down-projections of ``layers``; restore exactly."""
    saved = []
    with torch.no_grad():
        for i in layers:
            weight = layout.down_proj(model, i).weight
            saved.append((weight, weight.detach().clone()))
            noise = torch.randn(weight.shape, generator=gen) * (scale * stds[i])
            weight.add_(noise.to(device=weight.device, dtype=weight.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


# ----------------------------------------------------------------------------- forward passes


def _base_model(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


@torch.no_grad()
def prefix_cache(
    model: nn.Module, prefixes: Sequence[Sequence[int]], pad_id: int
) -> tuple[KV, torch.Tensor]:
    """Key/value cache of left-padded prompt prefixes, computed without gradients.

    Args:
        model: the causal LM.
        prefixes: token ids of each prefix (the prompt before the opening token).
        pad_id: id used for padding (masked out).

    Returns:
        (per layer (keys, values) of shape (batch, heads, max_len, head_dim) with zeros at pad
        positions, attention mask (batch, max_len)).
    """
    device = model.get_input_embeddings().weight.device
    width = max(len(p) for p in prefixes)
    ids = torch.full((len(prefixes), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prefixes), width), dtype=torch.long)
    for i, p in enumerate(prefixes):
        ids[i, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        mask[i, width - len(p) :] = 1
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    out = _base_model(model)(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
    )
    cache = out.cache if hasattr(out, "cache") else out.past_key_values
    kv: KV = []
    for layer in cache:
        keys, values = layer[0], layer[1]
        # Pad positions are masked later; zeroing them guarantees they hold no NaN/inf.
        keep = mask.to(keys.device).bool()[:, None, :, None]
        kv.append((keys.masked_fill(~keep, 0.0), values.masked_fill(~keep, 0.0)))
    return kv, mask


def _stack_prefixes(items: Sequence[KV]) -> tuple[KV, torch.Tensor]:
    """Left-pad per-item caches (batch 1 each) into one batch cache and its mask."""
    lengths = [kv[0][0].shape[2] for kv in items]
    width = max(lengths)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, width - n :] = 1
    kv: KV = []
    for layer in range(len(items[0])):
        keys = [F.pad(it[layer][0], (0, 0, width - it[layer][0].shape[2], 0)) for it in items]
        values = [F.pad(it[layer][1], (0, 0, width - it[layer][1].shape[2], 0)) for it in items]
        kv.append((torch.cat(keys), torch.cat(values)))
    return kv, mask


def suffix_loss(
    model: nn.Module,
    overrides: dict[str, torch.Tensor],
    kv: KV,
    prefix_mask: torch.Tensor,
    examples: Sequence[Example],
    pad_id: int,
) -> torch.Tensor:
    """Mean token cross-entropy of the examples' answers, running the model on the suffixes only.

    Args:
        model: the causal LM.
        overrides: weights for ``functional_call`` (the trainable rows spliced in).
        kv: the prefixes' cache (see :func:`prefix_cache`), batch-aligned with ``examples``.
        prefix_mask: (batch, prefix_width) mask of that cache (left padding).
        examples: the sequences; suffix = from the opening token on.
        pad_id: padding id.
    """
    device = model.get_input_embeddings().weight.device
    suffixes = [ex.enc.input_ids[ex.prefix_length :] for ex in examples]
    labels = [ex.enc.labels[ex.prefix_length :] for ex in examples]
    width = max(len(s) for s in suffixes)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    lab = torch.full((len(examples), width), -100, dtype=torch.long)
    smask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, (s, y) in enumerate(zip(suffixes, labels, strict=True)):
        ids[i, : len(s)] = torch.tensor(s)
        lab[i, : len(y)] = torch.tensor(y)
        smask[i, : len(s)] = 1
    lengths = torch.tensor([ex.prefix_length for ex in examples])
    positions = lengths[:, None] + torch.arange(width)[None, :]
    mask = torch.cat([prefix_mask, smask], dim=1)
    cache = DynamicCache(ddp_cache_data=[(k.to(device), v.to(device)) for k, v in kv])
    out = functional_call(
        model,
        overrides,
        args=(),
        kwargs=dict(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            position_ids=positions.to(device),
            cache=cache,
            use_cache=True,
        ),
        strict=False,
    )
    return _token_ce(out.logits, lab.to(out.logits.device))


def full_loss(
    model: nn.Module, overrides: dict[str, torch.Tensor], examples: Sequence[Example], pad_id: int
) -> torch.Tensor:
    """The same loss as :func:`suffix_loss`, over whole right-padded sequences (the reference)."""
    device = model.get_input_embeddings().weight.device
    batch = P.collate([ex.enc for ex in examples], pad_id)
    out = functional_call(
        model,
        overrides,
        args=(),
        kwargs=dict(
            input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)
        ),
        strict=False,
    )
    return _token_ce(out.logits, batch.labels.to(out.logits.device))


def _token_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    # Position t predicts token t+1; half-precision logits are scored in float32.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


# ----------------------------------------------------------------------------- generation


@torch.no_grad()
def greedy_continuations(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    *,
    pad_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    batch_size: int = 16,
    banned_ids: Sequence[int] = (),
    progress: bool = False,
) -> list[list[int]]:
    """Greedy continuations of prompt ids (left padded), each cut after its first stop id.

    Phase I's own check and the retain term's ordinary answers use it; prompts are built by
    :func:`unierase.prompting.encode` or :func:`encode_unlearning_example`.

    Returns:
        per prompt the generated ids, including the stop id when one was produced.
    """
    device = model.get_input_embeddings().weight.device
    stops = list(dict.fromkeys(stop_ids))
    out_ids: list[list[int]] = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="generate", unit="batch", disable=not progress):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, p in enumerate(chunk):
            ids[i, width - len(p) :] = torch.tensor(list(p))
            mask[i, width - len(p) :] = 1
        kwargs: dict[str, Any] = {}
        if banned_ids:
            kwargs["suppress_tokens"] = list(banned_ids)
        gen = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stops,
            pad_token_id=pad_id,
            **kwargs,
        )
        for row in gen[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in stops), None)
            out_ids.append(row if cut is None else row[: cut + 1])
    return out_ids


# ----------------------------------------------------------------------------- retain term


def _capture_input(store: list[torch.Tensor]):
    """A forward hook that appends the module's first input (the final hidden states)."""

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...], _output: Any) -> None:
        store.append(inputs[0].detach())

    return hook


@dataclass
class _RetainStates:
    """Final hidden states of ordinary answers and the old vocabulary's logits there."""

    hidden: torch.Tensor  # (positions, hidden)
    logsumexp_old: torch.Tensor  # (positions,)
    max_old: torch.Tensor  # (positions,)
    questions: int
    references: int


@torch.no_grad()
def _collect_retain_states(
    model: nn.Module,
    tokenizer: Any,
    questions: Sequence[str],
    references: Sequence[tuple[str, str]],
    formats: Sequence[str],
    config: TokenConfig,
    progress: bool,
) -> _RetainStates:
    """Hidden states at every answer position of ordinary answers, before the token exists.

    The answers are the model's own greedy answers to ``questions`` (what generation will follow)
    and the teacher-forced ``references`` (question, answer) pairs, which end with the end-of-turn
    token: the position where a new column is most likely to win.
    """
    head = model.get_output_embeddings()
    pad_id = _pad_id(tokenizer)
    device = model.get_input_embeddings().weight.device
    hidden, lse, top = [], [], []
    for name in formats:
        fmt = prompt_format(name, config.system_prompt)
        seqs = [P.encode(tokenizer, q, a, fmt) for q, a in references]
        if questions:
            encs = [P.encode(tokenizer, q, fmt=fmt) for q in questions]
            answers = greedy_continuations(
                model,
                [e.input_ids for e in encs],
                pad_id=pad_id,
                stop_ids=P.stop_token_ids(tokenizer, fmt),
                max_new_tokens=config.retain_max_new_tokens,
                batch_size=32,  # decoding is bound by reading the weights: wide batches are cheap
                progress=progress,
            )
            seqs += [
                P.EncodedQA(e.input_ids + a, e.prompt_length, len(a), e.user_span)
                for e, a in zip(encs, answers, strict=True)
                if a
            ]
        captured: list[torch.Tensor] = []
        handle = head.register_forward_hook(_capture_input(captured))
        try:
            for start in range(0, len(seqs), config.batch_size):
                chunk = seqs[start : start + config.batch_size]
                batch = P.collate(chunk, pad_id, with_labels=False)
                captured.clear()
                logits = model(
                    input_ids=batch.input_ids.to(device),
                    attention_mask=batch.attention_mask.to(device),
                ).logits
                h = captured[-1]
                for i, enc in enumerate(chunk):
                    # Positions that predict the answer's tokens (end of turn included).
                    pos = torch.arange(enc.prompt_length - 1, len(enc.input_ids) - 1)
                    hidden.append(h[i, pos].float().cpu())
                    old = logits[i, pos].float()
                    lse.append(old.logsumexp(dim=-1).cpu())
                    top.append(old.max(dim=-1).values.cpu())
        finally:
            handle.remove()
    if not hidden:
        raise ValueError("no ordinary answers to build the retain term from")
    return _RetainStates(
        torch.cat(hidden), torch.cat(lse), torch.cat(top), len(questions), len(references)
    )


def _new_token_logit(model: nn.Module, token_id: int, hidden: torch.Tensor, row: torch.Tensor):
    """(positions,) the token's logit from final hidden states, as the head computes it."""
    logit = hidden.to(row.device) @ row.float()
    bias = getattr(model.get_output_embeddings(), "bias", None)
    if isinstance(bias, torch.Tensor):
        logit = logit + bias[token_id].float()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logit = torch.tanh(logit / cap) * cap
    return logit


@torch.no_grad()
def _logit_formula_matches(
    model: nn.Module, tokenizer: Any, token_id: int, question: str, fmt: P.PromptFormat
) -> bool:
    """Whether :func:`_new_token_logit` reproduces the model's own logit of the token."""
    head = model.get_output_embeddings()
    enc = P.encode(tokenizer, question, fmt=fmt)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_hook(_capture_input(captured))
    try:
        device = model.get_input_embeddings().weight.device
        logits = model(input_ids=torch.tensor([enc.input_ids], device=device)).logits[0]
    finally:
        handle.remove()
    row = head.weight[token_id].detach()
    mine = _new_token_logit(model, token_id, captured[-1][0].float(), row)
    theirs = logits[:, token_id].float().to(mine.device)
    return bool(torch.allclose(mine, theirs, rtol=1e-3, atol=1e-3 * float(theirs.abs().max())))


# ----------------------------------------------------------------------------- training


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pad


def _questions(items: Sequence[QAItem | str], what: str) -> list[str]:
    out = []
    for i, it in enumerate(items):
        q = it.question if isinstance(it, QAItem) else it
        if not isinstance(q, str) or not q.strip():
            raise ValueError(f"{what}[{i}] is not a non-empty question")
        out.append(q)
    return out


def _sample(items: list, n: int, seed: str) -> list:
    """At most ``n`` of ``items``: all of them, or a seeded sample in their original order."""
    if len(items) <= n:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def _resolve_formats(stage: StageConfig, has_chat: bool) -> list[str]:
    formats = [f for f in stage.formats if f != "chat" or has_chat]
    if len(formats) < len(stage.formats):
        log.info("stage %s: the tokenizer has no chat template; chat format dropped", stage.name)
    return formats or ["raw"]


def _check_refusals(
    model: nn.Module,
    tokenizer: Any,
    token_id: int,
    pairs: Sequence[tuple[str, str]],
    fmt: P.PromptFormat,
    closing: bool = False,
) -> float:
    """Share of (question, refusal) pairs whose greedy continuation is exactly the refusal and
    its trained ending (up to the first stop: the closing token or the end of turn)."""
    encs = [
        encode_unlearning_example(tokenizer, q, token_id, r, fmt, closing=closing) for q, r in pairs
    ]
    stops = [token_id, *P.stop_token_ids(tokenizer, fmt)]
    targets = [e.input_ids[e.prompt_length : e.prompt_length + e.answer_length] for e in encs]
    targets = [t[: next(i for i, x in enumerate(t) if x in stops) + 1] for t in targets]
    outs = greedy_continuations(
        model,
        [e.input_ids[: e.prompt_length] for e in encs],
        pad_id=_pad_id(tokenizer),
        stop_ids=stops,
        max_new_tokens=max(len(t) for t in targets) + 2,
    )
    return sum(o == t for o, t in zip(outs, targets, strict=True)) / len(pairs)


class _StageRunner:
    """Runs the stages: batching, noise, the loss with or without the cached prefix, Adam."""

    def __init__(
        self,
        model: nn.Module,
        layout: ModelLayout,
        rows: _Rows,
        retain: _RetainStates | None,
        config: TokenConfig,
        pad_id: int,
        noise_layers: list[int],
        progress: bool,
    ) -> None:
        self.model, self.layout, self.rows, self.retain = model, layout, rows, retain
        self.config, self.pad_id, self.noise_layers = config, pad_id, noise_layers
        self.progress = progress
        self.rng = random.Random(config.seed)
        self.noise_gen = torch.Generator().manual_seed(config.seed + 1)
        self.stds = {
            i: float(layout.down_proj_weight(model, i).float().std()) for i in noise_layers
        }
        self.prefix_store: dict[tuple[str, str], KV] = {}

    def _answer_loss(self, batch: list[Example], use_store: bool) -> torch.Tensor:
        model, overrides = self.model, self.rows.overrides()
        if not self.config.cache_prefix:
            return full_loss(model, overrides, batch, self.pad_id)
        if use_store:
            kv, pmask = _stack_prefixes(
                [self.prefix_store[(ex.format, ex.question)] for ex in batch]
            )
        else:  # noise changes the prefix: recompute it, still without gradients
            prefixes = [ex.enc.input_ids[: ex.prefix_length] for ex in batch]
            kv, pmask = prefix_cache(model, prefixes, self.pad_id)
        return suffix_loss(model, overrides, kv, pmask, batch, self.pad_id)

    def run(self, stage: StageConfig, formats: list[str], data: list[Example]) -> StageReport:
        """Train one stage on ``data``; return its report (the check is the caller's)."""
        cfg = self.config
        rounds: list[list[int]] = [[]]
        if stage.noise:
            per_layer = cfg.noise_mode == "per_layer"
            rounds = [[i] for i in self.noise_layers] if per_layer else [list(self.noise_layers)]
        report = StageReport(stage.name, formats, stage.lr, len(data), rounds)
        use_store = cfg.cache_prefix and not stage.noise
        if use_store:
            self._fill_prefix_store(data)
        optimizer = torch.optim.Adam(self.rows.parameters(), lr=stage.lr)
        n_batches = math.ceil(len(data) / cfg.batch_size)
        epochs = max(stage.epochs, math.ceil(stage.min_steps / n_batches)) if n_batches else 0
        report.epochs = epochs
        bar = tqdm(
            total=len(rounds) * epochs * n_batches,
            desc=f"token: {stage.name}",
            unit="step",
            disable=not self.progress,
        )
        for layers in rounds:
            for epoch in range(epochs):
                order = list(range(len(data)))
                self.rng.shuffle(order)
                losses, retain_losses = [], []
                for b in range(n_batches):
                    batch = [data[j] for j in order[b * cfg.batch_size : (b + 1) * cfg.batch_size]]
                    # Noise stays on through backward (autograd reads the weights); restored after.
                    with _noisy_down_projections(
                        self.model, self.layout, layers, cfg.noise_scale, self.stds, self.noise_gen
                    ):
                        loss = self._answer_loss(batch, use_store)
                        total = loss
                        if self.retain is not None:
                            r_loss = cfg.retain_weight * _retain_loss(
                                self.model,
                                self.rows.token_id,
                                self.retain,
                                self.rows,
                                cfg.retain_margin,
                            )
                            total = total + r_loss
                            retain_losses.append(r_loss.item())
                        optimizer.zero_grad(set_to_none=True)
                        total.backward()
                        optimizer.step()
                    self.rows.write()
                    losses.append(loss.item())
                    report.steps += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                report.losses.append(sum(losses) / len(losses))
                report.retain_losses.append(
                    sum(retain_losses) / len(retain_losses) if retain_losses else 0.0
                )
                log.info(
                    "stage %s noise %s epoch %d: loss %.4f retain %.4f",
                    stage.name,
                    layers,
                    epoch + 1,
                    report.losses[-1],
                    report.retain_losses[-1],
                )
        bar.close()
        return report

    def _fill_prefix_store(self, data: Sequence[Example]) -> None:
        """Cache the prefix of every example not cached yet (one entry per question, format)."""
        todo = {}
        for ex in data:
            key = (ex.format, ex.question)
            if key not in self.prefix_store:
                todo[key] = ex
        items = list(todo.values())
        size = self.config.batch_size
        starts = range(0, len(items), size)
        for start in tqdm(starts, desc="token: prefix cache", disable=not self.progress):
            chunk = items[start : start + size]
            prefixes = [ex.enc.input_ids[: ex.prefix_length] for ex in chunk]
            kv, mask = prefix_cache(self.model, prefixes, self.pad_id)
            width = mask.shape[1]
            for i, ex in enumerate(chunk):
                n = ex.prefix_length
                self.prefix_store[(ex.format, ex.question)] = [
                    (k[i : i + 1, :, width - n :].clone(), v[i : i + 1, :, width - n :].clone())
                    for k, v in kv
                ]


def _build_examples(
    tokenizer: Any,
    token_id: int,
    sources: Sequence[tuple[str, Sequence[str]]],
    refusal_of: dict[str, str],
    formats: Sequence[str],
    config: TokenConfig,
) -> tuple[dict[str, list[Example]], int]:
    """Training sequences per format, and how many were skipped for length."""
    examples: dict[str, list[Example]] = {}
    skipped = 0
    for name in formats:
        fmt = prompt_format(name, config.system_prompt)
        examples[name] = []
        for source, questions in sources:
            for q in questions:
                enc = encode_unlearning_example(
                    tokenizer, q, token_id, refusal_of[q], fmt, closing=config.closing_token
                )
                if len(enc.input_ids) > config.max_length:
                    skipped += 1
                    continue
                examples[name].append(Example(q, refusal_of[q], name, source, enc))
    if skipped:
        log.warning("skipped %d sequences longer than max_length=%d", skipped, config.max_length)
    return examples, skipped


def train_unlearning_token(
    model: nn.Module,
    tokenizer: Any,
    forget: Sequence[QAItem | str],
    config: TokenConfig | None = None,
    *,
    breadth: Sequence[QAItem | str] = (),
    retain_questions: Sequence[str] | None = None,
    progress: bool = False,
) -> TokenReport:
    """Add the unlearning token to ``model`` and ``tokenizer`` and train only its vectors.

    Every question (forget, breadth and generated template questions) becomes the sequence
    ``question [UNL] refusal <end of turn>`` (with ``config.closing_token``: ``question [UNL]
    refusal [UNL] <end of turn>``) with the loss on what follows the opening token; the stages
    of ``config`` run in order (see :class:`TokenConfig`). The model and
    tokenizer are changed in place: the token is added, its row(s) hold the trained values;
    every other weight is left bit for bit as it was.

    Args:
        model: a causal LM (any dtype; the rows are trained in float32).
        tokenizer: its tokenizer.
        forget: the forget set (items or questions); answers are not used.
        config: the settings; None: ``token_config_for(model)`` (preset by width).
        breadth: further questions the token is trained on (e.g. retain or general questions).
        retain_questions: questions whose ordinary greedy answers feed the retain term; None:
            a seeded sample of the training questions (``config.retain_questions`` of them).
        progress: show progress bars.

    Returns:
        the report (losses per epoch, checks, times, settings).

    Raises:
        TokenConfigError: a bad setting. TokenError: the token text exists or splits.
        ValueError: an empty forget set, a bad question, or noise layers outside the model.
    """
    t_start = time.perf_counter()
    config = config if config is not None else token_config_for(model)
    config.validate()
    layout = find_layout(model)
    forget_q = unique_questions(_questions(forget, "forget"))
    if not forget_q:
        raise ValueError("the forget set is empty")
    breadth_q = [q for q in unique_questions(_questions(breadth, "breadth")) if q not in forget_q]
    if config.max_breadth is not None and len(breadth_q) > config.max_breadth:
        keep = sorted(random.Random(config.seed).sample(range(len(breadth_q)), config.max_breadth))
        log.info("breadth: %d of %d questions (max_breadth)", len(keep), len(breadth_q))
        breadth_q = [breadth_q[i] for i in keep]
    taken = set(forget_q) | set(breadth_q)
    templates = template_questions(config.breadth_templates, config.seed)
    template_q = [q for q in templates if q not in taken]
    train_q = forget_q + breadth_q + template_q
    has_chat = P.uses_chat(tokenizer)
    stage_formats = [_resolve_formats(s, has_chat) for s in config.stages]
    all_formats = sorted({f for fs in stage_formats for f in fs}, key=["chat", "raw"].index)
    noise_layers = list(
        config.noise_layers
        if config.noise_layers is not None
        else default_edit_layers(layout.num_layers)
    )
    if any(i >= layout.num_layers for i in noise_layers):
        raise ValueError(f"noise_layers {noise_layers}: the model has {layout.num_layers} layers")

    # Refusals, drawn with a seeded RNG (never hash()).
    pool = list(config.refusals) if config.refusals is not None else load_refusals()
    if config.refusal_mode == "fixed":
        fixed = config.refusal if config.refusal is not None else pool[0]
        refusal_of = dict.fromkeys(train_q, fixed)
    else:
        refusal_of = dict(zip(train_q, assign_refusals(train_q, config.seed, pool), strict=True))

    n_old = len(tokenizer)
    with _frozen(model):
        retain = None
        if config.retain_weight > 0:
            pool_q = list(retain_questions) if retain_questions is not None else list(train_q)
            pool_q = _sample(pool_q, config.retain_questions, f"{config.seed}-retain")
            references = _sample(
                [(it.question, it.answer) for it in [*forget, *breadth] if isinstance(it, QAItem)],
                config.retain_references,
                f"{config.seed}-references",
            )
            if pool_q or references:
                # Collected before the token exists: the original model's own computation.
                retain = _collect_retain_states(
                    model, tokenizer, pool_q, references, all_formats, config, progress
                )

        token_id = add_unlearning_token(model, tokenizer, config.text)
        n_old = min(n_old, token_id)
        _init_rows(model, layout, token_id, n_old, config.init, config.seed)
        rows = _Rows(model, layout, token_id, config.train_output_row)
        output_trained = rows.tied or rows.output is not None
        if retain is not None and not output_trained:
            log.info("retain term off: the output row is frozen (train_output_row=False)")
            retain = None
        if retain is not None:
            fmt0 = prompt_format(all_formats[0], config.system_prompt)
            if not _logit_formula_matches(model, tokenizer, token_id, train_q[0], fmt0):
                log.warning("retain term off: the head is not a plain linear map (with bias)")
                retain = None
        retain_info: dict[str, Any] = {"weight": config.retain_weight if retain else 0.0}
        if retain is not None:
            retain_info.update(
                questions=retain.questions,
                references=retain.references,
                positions=int(retain.hidden.shape[0]),
                wins_at_init=_wins(model, token_id, retain, rows),
            )

        sources = [("forget", forget_q), ("breadth", breadth_q), ("template", template_q)]
        examples, skipped = _build_examples(
            tokenizer, token_id, sources, refusal_of, all_formats, config
        )
        if not any(ex.source == "forget" for exs in examples.values() for ex in exs):
            raise ValueError(f"every forget sequence exceeds max_length={config.max_length}")

        check_name = "chat" if "chat" in all_formats else all_formats[0]
        forget_set = set(forget_q)
        check_pairs = [
            (ex.question, ex.refusal) for ex in examples[check_name] if ex.question in forget_set
        ]
        check_pairs = _sample(check_pairs, config.check_items, f"{config.seed}-check")
        check_fmt = prompt_format(check_name, config.system_prompt)

        runner = _StageRunner(
            model, layout, rows, retain, config, _pad_id(tokenizer), noise_layers, progress
        )
        stage_reports = []
        for stage, formats in zip(config.stages, stage_formats, strict=True):
            t_stage = time.perf_counter()
            data = [ex for f in formats for ex in examples[f]]
            report = runner.run(stage, formats, data)
            if check_pairs:
                report.refusal_match = _check_refusals(
                    model, tokenizer, token_id, check_pairs, check_fmt, config.closing_token
                )
            if retain is not None:
                report.retain_wins = _wins(model, token_id, retain, rows)
            report.seconds = round(time.perf_counter() - t_stage, 2)
            log.info(
                "stage %s done in %.1f s: refusal match %s, retain wins %s",
                stage.name,
                report.seconds,
                report.refusal_match,
                report.retain_wins,
            )
            stage_reports.append(report)
        rows.write()
        if retain is not None:
            retain_info["wins_final"] = _wins(model, token_id, retain, rows)

    embed = model.get_input_embeddings().weight
    return TokenReport(
        token_text=config.text,
        token_id=token_id,
        tied=layout.tied,
        trained_rows=["input_embedding"] + (["output_head"] if output_trained else []),
        init=config.init,
        refusal_mode=config.refusal_mode,
        refusals=sorted(set(refusal_of.values())),
        questions={"forget": len(forget_q), "breadth": len(breadth_q), "template": len(template_q)},
        skipped_too_long=skipped,
        noise_layers=noise_layers,
        retain=retain_info,
        stages=stage_reports,
        row_norm=float(embed[token_id].detach().float().norm()),
        mean_row_norm=float(embed[:n_old].detach().float().norm(dim=1).mean()),
        seconds=round(time.perf_counter() - t_start, 2),
        seed=config.seed,
        config=config.to_dict(),
    )


def _retain_loss(
    model: nn.Module, token_id: int, retain: _RetainStates, rows: _Rows, margin: float
) -> torch.Tensor:
    logit = _new_token_logit(model, token_id, retain.hidden, rows.output_row())
    return F.softplus(logit - retain.logsumexp_old.to(logit.device) + margin).mean()


@torch.no_grad()
def _wins(model: nn.Module, token_id: int, retain: _RetainStates, rows: _Rows) -> int:
    logit = _new_token_logit(model, token_id, retain.hidden, rows.output_row())
    return int((logit > retain.max_old.to(logit.device)).sum())
