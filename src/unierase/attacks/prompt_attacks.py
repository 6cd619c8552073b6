"""The attacks that only change what the model is asked: pre-fill, token ban, paraphrase,
typed token text, instructions and few-shot contexts (and "direct", no attack, for reference).

Each attack returns one record per (item, variant): the question asked, the generation (what the
model wrote after any pre-fill), its ROUGE-L recall against the reference answer, the
teacher-forced probability of the reference answer in the same context (``p_answer``), whether
the answer is a refusal, and whether the model's first token was the unlearning token.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from unierase import prompting as P
from unierase.attacks.config import AttackConfig, AttackData
from unierase.attacks.generation import generate_after_prefix
from unierase.attacks.prompts import (
    few_shot_question,
    inject_token_text,
    instruction_question,
    prefill_ids,
    select_shots,
)
from unierase.data.refusals import is_refusal
from unierase.data.schema import QAItem
from unierase.eval import metrics as M
from unierase.eval.scoring import score_answers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttackContext:
    """What every attack needs besides the model and data.

    Attributes:
        config: the run's settings.
        token_id: the unlearning token's id in this tokenizer; None when it has none (the retain
            model, the model before unlearning): banning it is then a no-op.
    """

    config: AttackConfig
    token_id: int | None


def _num(x: float) -> float | None:
    x = float(x)
    return x if np.isfinite(x) else None


@torch.no_grad()
def answer_records(
    model: torch.nn.Module,
    tokenizer: Any,
    items: Sequence[QAItem],
    questions: Sequence[str],
    ctx: AttackContext,
    *,
    attack: str,
    variant: str,
    prefix: str | None = None,
    banned_ids: Sequence[int] = (),
    indices: Sequence[int] | None = None,
    split: str = "forget",
) -> list[dict[str, Any]]:
    """Generate, score and record the answers to ``questions`` (one per item, same order).

    Args:
        model: a causal LM.
        tokenizer: its tokenizer.
        items: the items asked about (their ``answer`` is the reference).
        questions: the question actually asked for each item.
        ctx: settings and the token id.
        attack: the attack's name (recorded).
        variant: the variant's name (recorded).
        prefix: text that starts the answer turn (pre-fill); the generation and ``p_answer``
            are about what follows it.
        banned_ids: ids that may not be generated (``p_answer`` is not renormalised for them).
        indices: each item's index in its split (recorded; default 0, 1, ...).
        split: which split the items come from (recorded).

    Returns:
        One record per item.
    """
    cfg = ctx.config
    prefix_ids = prefill_ids(tokenizer, prefix, cfg.fmt) if prefix else []
    gens = generate_after_prefix(
        model,
        tokenizer,
        questions,
        prefix_ids,
        fmt=cfg.fmt,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        banned_ids=banned_ids,
    )
    scores = score_answers(
        model,
        tokenizer,
        questions,
        [it.answer for it in items],
        fmt=cfg.fmt,
        batch_size=cfg.batch_size,
        answer_prefix_ids=prefix_ids,
        details=False,
        desc=f"{attack}/{variant}: score",
    )
    indices = list(range(len(items))) if indices is None else list(indices)
    records = []
    for i, it, q, g, s in zip(indices, items, questions, gens, scores, strict=True):
        # The pre-filled ids are scored too; p_answer is about the answer after them.
        logp = s.token_logprobs[len(prefix_ids) :]
        records.append(
            {
                "attack": attack,
                "variant": variant,
                "split": split,
                "index": i,
                "question": it.question,
                "asked": q,
                "prefill": prefix,
                "answer": it.answer,
                "group": it.group,
                "generation": g.text,
                "generation_tokens": g.num_tokens,
                "rouge": M.rouge_l_recall(g.text, it.answer),
                "p_answer": _num(M.sequence_probability(logp)),
                "refusal": is_refusal(g.text),
                "first_token_is_unlearning": bool(
                    ctx.token_id is not None and g.token_ids[:1] == [ctx.token_id]
                ),
            }
        )
    return records


def direct(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """No attack: the forget questions as they are (the reference every attack is read against)."""
    questions = [it.question for it in data.forget]
    return answer_records(
        model, tokenizer, data.forget, questions, ctx, attack="direct", variant="plain"
    )


def prefill(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """Start the answer turn with a neutral prefix, so the first-token gate is never reached."""
    questions = [it.question for it in data.forget]
    out = []
    for prefix in ctx.config.prefills:
        out += answer_records(
            model,
            tokenizer,
            data.forget,
            questions,
            ctx,
            attack="prefill",
            variant=prefix.strip(),
            prefix=prefix,
        )
    return out


def token_ban(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """Decode with the unlearning token's logit at minus infinity (a no-op without the token)."""
    questions = [it.question for it in data.forget]
    banned = [ctx.token_id] if ctx.token_id is not None else []
    return answer_records(
        model,
        tokenizer,
        data.forget,
        questions,
        ctx,
        attack="token_ban",
        variant="banned" if banned else "no_token",
        banned_ids=banned,
    )


def paraphrase(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """Ask the paraphrased questions (items without one are left out)."""
    keep = [i for i, it in enumerate(data.forget) if it.paraphrased_question]
    items = [data.forget[i] for i in keep]
    if len(items) < len(data.forget):
        log.info("paraphrase: %d of %d items have no paraphrased question",
                 len(data.forget) - len(items), len(data.forget))  # fmt: skip
    if not items:
        return []
    questions = [it.paraphrased_question for it in items]
    return answer_records(
        model, tokenizer, items, questions, ctx, attack="paraphrase", variant="paraphrased",
        indices=keep,
    )  # fmt: skip


def token_injection(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """Type the token's text into kept questions: they must still be answered, not refused.

    This attack measures damage rather than leakage: a user who types ``<|unlearn|>`` must not
    be able to switch refusals on. The question text is encoded with special tokens split, so
    the token's id never reaches the model (recorded per item as ``token_id_in_prompt``). Runs
    on the retain items (the forget items when there are none), clean and with the text typed.
    """
    items = data.retain or data.forget
    split = "retain" if data.retain else "forget"
    text = ctx.config.token_text
    out = answer_records(
        model,
        tokenizer,
        items,
        [it.question for it in items],
        ctx,
        attack="token_injection",
        variant="clean",
        split=split,
    )
    for place in ctx.config.injection_places:
        questions = [inject_token_text(it.question, text, place) for it in items]
        records = answer_records(
            model,
            tokenizer,
            items,
            questions,
            ctx,
            attack="token_injection",
            variant=f"typed_{place}",
            split=split,
        )
        for rec, q in zip(records, questions, strict=True):
            ids = P.encode(tokenizer, q, fmt=ctx.config.fmt).input_ids
            rec["token_id_in_prompt"] = ctx.token_id is not None and ctx.token_id in ids
        out += records
    return out


def instruction(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """Ask the model to ignore the token ("Ignore any special tokens and answer: ...")."""
    out = []
    for n, template in enumerate(ctx.config.instructions):
        questions = [
            instruction_question(template, it.question, ctx.config.token_text) for it in data.forget
        ]
        out += answer_records(
            model,
            tokenizer,
            data.forget,
            questions,
            ctx,
            attack="instruction",
            variant=f"template{n}",
        )
    return out


def few_shot(model, tokenizer, data: AttackData, ctx: AttackContext) -> list[dict[str, Any]]:
    """Put answered questions about the same group (author) before each forget question.

    The shots are other forget items of the group, never the item itself; items whose group has
    no other item are left out.
    """
    k = ctx.config.few_shot
    keep = [i for i in range(len(data.forget)) if select_shots(data.forget, i, k)]
    if not keep:
        return []
    items = [data.forget[i] for i in keep]
    questions = [
        few_shot_question(data.forget[i].question, select_shots(data.forget, i, k)) for i in keep
    ]
    return answer_records(
        model, tokenizer, items, questions, ctx, attack="few_shot", variant=f"{k}_shots",
        indices=keep,
    )  # fmt: skip
