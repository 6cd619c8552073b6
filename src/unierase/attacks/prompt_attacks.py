"""The attacks that only change what the model is asked: pre-fill, token ban, paraphrase,
typed token text, instructions and few-shot contexts (and "direct", no attack, for reference).

Each attack returns one record per (item, variant): the question asked, the generation (what the
model wrote after any pre-fill), its ROUGE-L recall against the reference answer, the
teacher-forced probability of the reference answer in the same context (``p_answer``), whether
the answer is a refusal, and whether the model's first token was the unlearning token.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
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
from unierase.eval.generate import Generation, model_device
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
    prompt_ids: Sequence[Sequence[int]] | None = None,
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
        prompt_ids: each question's prompt ids as a client built them (see
            :func:`client_prompt_ids`); None: :func:`unierase.prompting.encode` builds them.
            Not with ``prefix``.

    Returns:
        One record per item.
    """
    cfg = ctx.config
    if prompt_ids is not None and prefix:
        raise ValueError("a pre-fill needs the project's prompts (prompt_ids=None)")
    prefix_ids = prefill_ids(tokenizer, prefix, cfg.fmt) if prefix else []
    answers = [it.answer for it in items]
    if prompt_ids is not None:
        gens = _generate_from_ids(model, tokenizer, prompt_ids, ctx, banned_ids)
        logps = _answer_logprobs(model, tokenizer, prompt_ids, questions, answers, ctx)
    else:
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
            answers,
            fmt=cfg.fmt,
            batch_size=cfg.batch_size,
            answer_prefix_ids=prefix_ids,
            details=False,
            desc=f"{attack}/{variant}: score",
        )
        # The pre-filled ids are scored too; p_answer is about the answer after them.
        logps = [s.token_logprobs[len(prefix_ids) :] for s in scores]
    indices = list(range(len(items))) if indices is None else list(indices)
    records = []
    for i, it, q, g, logp in zip(indices, items, questions, gens, logps, strict=True):
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


def client_prompt_ids(
    tokenizer: Any, question: str, fmt: P.PromptFormat = P.PromptFormat()
) -> list[int]:
    """The prompt ids a plain client builds for ``question``, without unierase's prompting.

    In the chat format the tokenizer's own ``apply_chat_template(..., tokenize=True)`` (what
    ``transformers.pipeline``, TGI and vLLM do with a chat request); in the plain format
    ``tokenizer(text)`` of the filled template. Text in the question is parsed as the tokenizer
    parses any text: an added token's literal text becomes its id, a plain vocabulary entry's
    never does.
    """
    if P.uses_chat(tokenizer, fmt):
        msgs = (
            [] if fmt.system_prompt is None else [{"role": "system", "content": fmt.system_prompt}]
        )
        msgs.append({"role": "user", "content": question})
        out = tokenizer.apply_chat_template(
            msgs, tokenize=True, add_generation_prompt=True, **fmt.template_kwargs
        )
        if isinstance(out, Mapping):
            out = out["input_ids"]
        return [int(i) for i in out]
    return [int(i) for i in tokenizer(P.FALLBACK_PROMPT.format(question=question))["input_ids"]]


def _prompt_only(ids: Sequence[int]) -> P.EncodedQA:
    return P.EncodedQA(list(ids), len(ids), 0, (0, len(ids)))


@torch.no_grad()
def _generate_from_ids(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    ctx: AttackContext,
    banned_ids: Sequence[int] = (),
) -> list[Generation]:
    """Greedy answers after the given prompt ids, decoded as evaluation's generation decodes."""
    cfg = ctx.config
    stops = P.stop_token_ids(tokenizer, cfg.fmt)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    device = model_device(model)
    kwargs: dict[str, Any] = {"suppress_tokens": list(banned_ids)} if banned_ids else {}
    out: list[Generation] = []
    for b in range(0, len(prompts), cfg.batch_size):
        chunk = [_prompt_only(p) for p in prompts[b : b + cfg.batch_size]]
        batch = P.collate(chunk, pad_id, left=True, with_labels=False)
        gen = model.generate(
            input_ids=batch.input_ids.to(device),
            attention_mask=batch.attention_mask.to(device),
            max_new_tokens=cfg.max_new_tokens,
            do_sample=False,
            use_cache=True,
            eos_token_id=stops,
            pad_token_id=pad_id,
            **kwargs,
        )
        for row in gen[:, batch.input_ids.shape[1] :].tolist():
            cut = next((j for j, tok in enumerate(row) if tok in stops), None)
            ids = row if cut is None else row[:cut]
            text = tokenizer.decode(ids, skip_special_tokens=True).strip()
            out.append(Generation(text=text, token_ids=ids, stopped=cut is not None))
    return out


@torch.no_grad()
def _answer_logprobs(
    model: torch.nn.Module,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    questions: Sequence[str],
    answers: Sequence[str],
    ctx: AttackContext,
) -> list[np.ndarray]:
    """Teacher-forced log-probabilities of each answer (with its end of turn) after the given
    prompt ids; the answer ids are those :func:`unierase.prompting.encode` gives."""
    cfg = ctx.config
    encs = []
    for prompt, q, a in zip(prompts, questions, answers, strict=True):
        full = P.encode(tokenizer, q, a, cfg.fmt)
        answer_ids = full.input_ids[full.prompt_length :]
        encs.append(P.EncodedQA([*prompt, *answer_ids], len(prompt), len(answer_ids), (0, 0)))
    pad_id = tokenizer.pad_token_id
    pad_id = pad_id if pad_id is not None else P.stop_token_ids(tokenizer, cfg.fmt)[0]
    device = model_device(model)
    out: list[np.ndarray] = []
    for b in range(0, len(encs), cfg.batch_size):
        chunk = encs[b : b + cfg.batch_size]
        batch = P.collate(chunk, pad_id, left=False, with_labels=False)
        ids = batch.input_ids.to(device)
        logits = model(input_ids=ids, attention_mask=batch.attention_mask.to(device)).logits
        logp = torch.log_softmax(logits.float(), dim=-1)
        for row, enc in enumerate(chunk):
            pos = torch.arange(enc.prompt_length, len(enc.input_ids), device=device)
            taken = logp[row, pos - 1].gather(-1, ids[row, pos][:, None]).squeeze(-1)
            out.append(taken.double().cpu().numpy())
    return out


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
    be able to switch refusals on. Every prompt is built the way a plain client builds it
    (:func:`client_prompt_ids`: the tokenizer's chat template or ``tokenizer(text)``, no
    special-token splitting), so whether the typed text reaches the token's id is the
    tokenizer's own doing; each typed record says so in ``token_id_in_prompt``. Runs on the
    retain items (the forget items when there are none), clean and with the text typed.
    """
    items = data.retain or data.forget
    split = "retain" if data.retain else "forget"
    text = ctx.config.token_text
    fmt = ctx.config.fmt
    variants = [("clean", [it.question for it in items])]
    for place in ctx.config.injection_places:
        variants.append(
            (f"typed_{place}", [inject_token_text(it.question, text, place) for it in items])
        )
    out = []
    for variant, questions in variants:
        prompts = [client_prompt_ids(tokenizer, q, fmt) for q in questions]
        records = answer_records(
            model,
            tokenizer,
            items,
            questions,
            ctx,
            attack="token_injection",
            variant=variant,
            split=split,
            prompt_ids=prompts,
        )
        if variant != "clean":
            for rec, ids in zip(records, prompts, strict=True):
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
