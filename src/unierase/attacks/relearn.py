"""Relearning: fine-tune a copy of the model a few steps, then ask the forget questions again.

Two variants: train on a seeded part of the forget set and measure the rest ("forget_part": does
knowing a few facts bring back their neighbours?), or train on retain data only ("retain_only":
does ordinary fine-tuning undo the edit?). Both measure the same held-out forget items. The
attacked model is deep-copied, never modified.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Sequence
from typing import Any

from unierase.attacks.config import AttackData
from unierase.attacks.prompt_attacks import AttackContext, answer_records
from unierase.data.schema import QAItem
from unierase.finetune import FinetuneConfig, finetune

log = logging.getLogger(__name__)


def relearn_split(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Seeded split of ``range(n)`` into (train, held out) indices, both sorted and non-empty.

    ``round(fraction * n)`` items train, clamped to ``[1, n - 1]``.

    Raises:
        ValueError: fewer than 2 items.
    """
    if n < 2:
        raise ValueError(
            f"relearning needs at least 2 forget items (one to train, one to test), got {n}"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    k = min(max(round(fraction * n), 1), n - 1)
    return sorted(order[:k]), sorted(order[k:])


def relearn_config(ctx: AttackContext) -> FinetuneConfig:
    """The fine-tuning settings of the attack: full, every block, no replay, no warm-up."""
    cfg = ctx.config
    return FinetuneConfig(
        epochs=cfg.relearn_epochs,
        lr=cfg.relearn_lr,
        batch_size=cfg.relearn_batch_size,
        warmup_ratio=0.0,
        replay_questions=0,
        train_fraction=1.0,
        system_prompt=cfg.fmt.system_prompt,
        seed=cfg.seed,
    )


def _relearned_records(
    model, tokenizer, train: Sequence[QAItem], held: Sequence[QAItem], held_idx, ctx, variant
) -> list[dict[str, Any]]:
    copy_ = copy.deepcopy(model)
    try:
        copy_, result = finetune(copy_, tokenizer, train, relearn_config(ctx))
        records = answer_records(
            copy_,
            tokenizer,
            held,
            [it.question for it in held],
            ctx,
            attack="relearn",
            variant=variant,
            indices=held_idx,
        )
    finally:
        del copy_
    for rec in records:
        rec.update(relearn_items=len(train), relearn_steps=len(result.losses))
    return records


def relearn(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """Records of the held-out forget items after each relearning variant (see the module)."""
    try:
        train_idx, held_idx = relearn_split(
            len(data.forget), ctx.config.relearn_fraction, ctx.config.seed
        )
    except ValueError as err:
        log.warning("relearn skipped: %s", err)
        return []
    held = [data.forget[i] for i in held_idx]
    out = _relearned_records(
        model, tokenizer, [data.forget[i] for i in train_idx], held, held_idx, ctx, "forget_part"
    )
    if data.retain:
        retain = data.retain[: ctx.config.relearn_retain_items]
        out += _relearned_records(model, tokenizer, retain, held, held_idx, ctx, "retain_only")
    else:
        log.info("relearn: no retain items, the retain_only variant is skipped")
    return out
