"""Membership inference beside the attacks: can the forget answers be told from unseen ones?

The same scores as evaluation (LOSS, zlib, Min-K%, Min-K%++; :mod:`unierase.eval.metrics`) on the
forget answers (members) and the holdout answers (non-members), and their AUCs: 0.5 means the
forget set looks unseen, 1 means it stands out as trained on.
"""

from __future__ import annotations

from typing import Any

from unierase.attacks.config import AttackData
from unierase.attacks.prompt_attacks import AttackContext
from unierase.eval import metrics as M
from unierase.eval.scoring import score_answers

MIA_SCORES: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus")


def membership(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """One record per forget and holdout item with its four scores (none without a holdout)."""
    if not data.holdout:
        return []
    cfg = ctx.config
    out = []
    for split, items in (("forget", data.forget), ("holdout", data.holdout)):
        scores = score_answers(
            model,
            tokenizer,
            [it.question for it in items],
            [it.answer for it in items],
            fmt=cfg.fmt,
            batch_size=cfg.batch_size,
            details=True,
            desc=f"membership: {split}",
        )
        for i, (it, s) in enumerate(zip(items, scores, strict=True)):
            logp = s.token_logprobs
            out.append(
                {
                    "attack": "membership",
                    "variant": "scores",
                    "split": split,
                    "index": i,
                    "question": it.question,
                    "answer": it.answer,
                    "p_answer": s.probability,
                    "mia": {
                        "loss": M.loss_score(logp),
                        "zlib": M.zlib_score(logp, it.answer),
                        "min_k": M.min_k_score(logp, cfg.min_k),
                        "min_k_plus_plus": M.min_k_plus_plus_score(
                            logp, s.vocab_mean, s.vocab_std, cfg.min_k
                        ),
                    },
                }
            )
    return out


def membership_aucs(records: list[dict[str, Any]]) -> dict[str, float | None]:
    """AUC of each score, forget (members) against holdout (non-members)."""
    out: dict[str, float | None] = {}
    for name in MIA_SCORES:
        members = [r["mia"][name] for r in records if r["split"] == "forget"]
        others = [r["mia"][name] for r in records if r["split"] == "holdout"]
        out[name] = M.mia_auc(members, others) if members and others else None
    return out
