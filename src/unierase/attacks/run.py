"""Running the attacks on one or more models, summarising them from their records, writing them.

A run attacks the unlearned model and, when given, the retain model (trained without the forget
set: the floor an unlearned model should not leak more than) and the model before unlearning (the
ceiling). Every number in the summary is recomputed from the per-item records
(:func:`summarise_records`), so a stored run can be re-read without any model.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unierase import artifacts as A
from unierase._util.atomic import atomic_dir, write_atomically
from unierase._util.jsonl import dumps_jsonl, read_jsonl
from unierase.attacks.config import ATTACK_NAMES, AttackConfig, AttackData
from unierase.attacks.membership import membership, membership_aucs
from unierase.attacks.prompt_attacks import (
    AttackContext,
    direct,
    few_shot,
    instruction,
    paraphrase,
    prefill,
    token_ban,
    token_injection,
)
from unierase.attacks.relearn import relearn
from unierase.data.loaders import check_disjoint
from unierase.data.schema import DataError
from unierase.token.vocab import TokenError, unlearning_token_id

log = logging.getLogger(__name__)

SUMMARY_FORMAT = "unierase-attack-summary/1"
SUMMARY_FILE = A.ATTACK_SUMMARY
RECORDS_FILE = A.ATTACK_RECORDS
TABLE_FILE = A.ATTACK_TABLE

# The roles of the models a run can attack, in report order.
MODEL_ROLES: tuple[str, ...] = ("unlearned", "retain", "before")
# Recovery divides by (ceiling - floor); below this gap in ROUGE-L recall (about the noise of a
# few dozen answers) the ratio is noise blown up (a gap of 0.02 turns a 0.1 difference into 5x),
# so none is given and the raw excess over the floor stands alone.
MIN_RECOVERY_GAP = 0.1

AttackFn = Callable[[torch.nn.Module, Any, AttackData, AttackContext], list[dict[str, Any]]]
ATTACKS: dict[str, AttackFn] = {
    "direct": direct,
    "prefill": prefill,
    "token_ban": token_ban,
    "paraphrase": paraphrase,
    "token_injection": token_injection,
    "instruction": instruction,
    "few_shot": few_shot,
    "relearn": relearn,
    "membership": membership,
}
assert tuple(ATTACKS) == ATTACK_NAMES

# What a high ROUGE means: for every attack but injection, knowledge that came back (leakage);
# for injection, kept questions still answered (a low value is the damage).
MEASURES = {name: "leakage" for name in ATTACK_NAMES} | {
    "token_injection": "retain answers kept",
    "membership": "forget vs holdout AUC",
}


def _mean(values: Sequence[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _variant_summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "n": len(records),
        "rouge": _mean([r.get("rouge") for r in records]),
        "p_answer": _mean([r.get("p_answer") for r in records]),
        "refusal_rate": _mean([r.get("refusal") for r in records]),
        "first_token_unlearning_rate": _mean([r.get("first_token_is_unlearning") for r in records]),
    }


def summarise_records(attack: str, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One attack's numbers from its records.

    ``variants`` has each variant's mean ROUGE-L recall, answer probability, refusal rate and
    rate of answers opened by the unlearning token. For a leakage attack, ``rouge`` and
    ``p_answer`` are the strongest variant's (max of the means) and ``rouge_any_variant`` the
    mean over items of the best variant per item (an attacker who could tell which variant
    worked: an upper bound). For injection, ``rouge`` is the worst typed variant's and
    ``rouge_clean`` the clean questions'. Membership gives ``auc`` per score. An attack with no
    records says why in ``skipped``.
    """
    out: dict[str, Any] = {"measures": MEASURES[attack], "n_records": len(records)}
    if not records:
        out["skipped"] = {
            "paraphrase": "no item has a paraphrased question",
            "few_shot": "no group has two or more forget items",
            "relearn": "fewer than 2 forget items",
            "membership": "no holdout items (--holdout-split)",
        }.get(attack, "no records")
        return out
    if attack == "membership":
        out["auc"] = membership_aucs(list(records))
        out["p_answer_forget"] = _mean([r["p_answer"] for r in records if r["split"] == "forget"])
        out["p_answer_holdout"] = _mean([r["p_answer"] for r in records if r["split"] == "holdout"])
        return out
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_variant.setdefault(r["variant"], []).append(r)
    out["variants"] = {v: _variant_summary(rs) for v, rs in by_variant.items()}
    if attack == "token_injection":
        typed = {v: s for v, s in out["variants"].items() if v != "clean"}
        out["rouge_clean"] = out["variants"].get("clean", {}).get("rouge")
        out["rouge"] = min((s["rouge"] for s in typed.values() if s["rouge"] is not None),
                           default=None)  # fmt: skip
        out["refusal_rate"] = max((s["refusal_rate"] or 0.0 for s in typed.values()), default=None)
        out["token_id_in_prompt"] = any(r.get("token_id_in_prompt") for r in records)
        return out
    means = [s for s in out["variants"].values() if s["rouge"] is not None]
    out["rouge"] = max((s["rouge"] for s in means), default=None)
    out["p_answer"] = max((s["p_answer"] for s in means if s["p_answer"] is not None),
                          default=None)  # fmt: skip
    best: dict[int, float] = {}
    for r in records:
        if r.get("rouge") is not None:
            best[r["index"]] = max(best.get(r["index"], 0.0), float(r["rouge"]))
    out["rouge_any_variant"] = _mean(list(best.values()))
    return out


def run_attacks(
    model: torch.nn.Module,
    tokenizer: Any,
    data: AttackData,
    config: AttackConfig | None = None,
) -> dict[str, Any]:
    """Run ``config.attacks`` on one model (default: every attack, default settings).

    The unlearning token is looked up by ``config.token_text``; a model without it (the retain
    model, the model before unlearning) is attacked all the same, and banning the token is then
    a no-op. The model is left as it was (relearning trains a copy).

    Returns:
        ``{"token_id", "attacks": {name: summary}, "records": [...], "seconds": {name: s}}``.

    Raises:
        DataError: an empty forget set, or a holdout that shares questions with it.
    """
    config = config or AttackConfig()
    if not data.forget:
        raise DataError("the attacks need at least one forget item")
    if data.holdout:
        check_disjoint(data.forget, data.holdout)
    try:
        token_id: int | None = unlearning_token_id(tokenizer, config.token_text)
    except TokenError:
        token_id = None
        log.info("the model has no %s token: banning it is a no-op", config.token_text)
    ctx = AttackContext(config=config, token_id=token_id)
    was_training = model.training
    model.eval()
    out: dict[str, Any] = {"token_id": token_id, "attacks": {}, "records": [], "seconds": {}}
    try:
        for name in config.attacks:
            start = time.perf_counter()
            records = ATTACKS[name](model, tokenizer, data, ctx)
            out["seconds"][name] = round(time.perf_counter() - start, 3)
            out["attacks"][name] = summarise_records(name, records)
            out["records"] += records
            log.info("attack %s: %d records in %.1f s, rouge %s", name, len(records),
                     out["seconds"][name], out["attacks"][name].get("rouge"))  # fmt: skip
    finally:
        model.train(was_training)
    return out


def compare(models: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per attack: each model's ROUGE (and probability); for the leakage attacks the
    unlearned model's ``above_floor`` (``unlearned - retain`` in ROUGE-L recall; <= 0: no more
    than a model that never saw the data) when the retain model was attacked, and its recovery
    ``(unlearned - retain) / (before - retain)`` (0: the floor; 1: everything back) when the
    model before unlearning was attacked too and answers at least :data:`MIN_RECOVERY_GAP`
    better than the retain model."""
    rows = []
    attacks = [a for a in ATTACK_NAMES if any(a in m["attacks"] for m in models.values())]
    for attack in attacks:
        row: dict[str, Any] = {"attack": attack, "measures": MEASURES[attack]}
        for role, result in models.items():
            s = result["attacks"].get(attack, {})
            if attack == "membership":
                row[f"{role}/auc_min_k"] = (s.get("auc") or {}).get("min_k")
            else:
                row[f"{role}/rouge"] = s.get("rouge")
                row[f"{role}/p_answer"] = s.get("p_answer")
        u, r, b = (row.get(f"{role}/rouge") for role in MODEL_ROLES)
        if attack not in ("membership", "token_injection") and None not in (u, r):
            row["above_floor"] = u - r
            if b is not None and b - r >= MIN_RECOVERY_GAP:
                row["recovery"] = (u - r) / (b - r)
        rows.append(row)
    return rows


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of :func:`compare`'s rows (ROUGE-L recall / answer probability)."""
    roles = [r for r in MODEL_ROLES if r in summary["models"]]
    head = f"{'attack':<16}" + "".join(f"{r:>20}" for r in roles) + f"{'recovery':>10}"
    lines = [head, "-" * len(head)]

    def cell(row, role) -> str:
        if row["attack"] == "membership":
            v = row.get(f"{role}/auc_min_k")
            return "-" if v is None else f"AUC {v:.2f}"
        rouge, prob = row.get(f"{role}/rouge"), row.get(f"{role}/p_answer")
        text = "-" if rouge is None else f"{rouge:.2f}"
        return text + ("" if prob is None else f" / p {prob:.2f}")

    for row in summary["comparison"]:
        rec = row.get("recovery")
        lines.append(f"{row['attack']:<16}" + "".join(f"{cell(row, r):>20}" for r in roles)
                     + f"{'-' if rec is None else f'{rec:.2f}':>10}")  # fmt: skip
    lines.append("ROUGE-L recall of the forget answers / teacher-forced probability;")
    lines.append("token_injection: kept (retain) answers with the token's text typed in;")
    lines.append("membership: Min-K% AUC, forget against holdout.")
    return "\n".join(lines)


def build_summary(
    models: Mapping[str, Mapping[str, Any]],
    config: AttackConfig,
    info: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON summary of a run: settings, each model's attack summaries, the comparison."""
    return {
        "format": SUMMARY_FORMAT,
        "config": config.to_dict(),
        **dict(info or {}),
        "models": {
            role: {k: v for k, v in result.items() if k != "records"}
            for role, result in models.items()
        },
        "comparison": compare(models),
    }


def write_run(
    out_dir: str | Path,
    models: Mapping[str, Mapping[str, Any]],
    config: AttackConfig,
    info: Mapping[str, Any] | None = None,
    *,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Write ``records.jsonl`` (every record, with its model's role), ``summary.json`` and
    ``table.txt`` to ``out_dir``; return the summary.

    The three files are written to a temporary directory that then replaces ``out_dir`` as a
    whole, so ``out_dir`` is never a mix of two runs; ``out_dir`` must be new, empty or an
    earlier attack run (``unierase.artifacts.check_out_dir``).

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``overwrite`` is False.
        unierase.artifacts.OutputDirError: ``out_dir`` holds something else.
    """
    out_dir = Path(out_dir)
    if (out_dir / SUMMARY_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an attack run (use --overwrite)")
    A.check_out_dir(out_dir, A.ATTACK)
    rows = [{"model": role, **rec} for role, result in models.items() for rec in result["records"]]
    summary = build_summary(models, config, info)
    with atomic_dir(out_dir) as tmp:
        write_atomically(tmp / RECORDS_FILE, dumps_jsonl(rows))
        write_atomically(tmp / TABLE_FILE, format_table(summary) + "\n")
        write_atomically(tmp / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def read_records(out_dir: str | Path) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """A stored run's records as ``{model role: {attack: [records]}}``.

    Raises:
        DataError: no records file, or a line that is not JSON.
    """
    path = Path(out_dir) / RECORDS_FILE
    if not path.is_file():
        raise DataError(f"{out_dir}: no {RECORDS_FILE}")
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for rec in read_jsonl(path, error=DataError):
        out.setdefault(rec["model"], {}).setdefault(rec["attack"], []).append(rec)
    return out


def load_attack_data(
    data_dir: str | Path,
    forget_split: str | None = None,
    *,
    holdout_split: str | None = None,
    max_items: int | None = None,
) -> tuple[AttackData, dict[str, str]]:
    """The forget, retain (``retain_perturbed``) and holdout items of a TOFU-layout directory,
    as evaluation reads them (:func:`unierase.eval.suite.load_eval_splits`), and their sources.

    Raises:
        DataError: unknown or ambiguous splits.
    """
    from unierase.eval.suite import load_eval_splits

    splits = load_eval_splits(
        data_dir, forget_split=forget_split, holdout_split=holdout_split, max_items=max_items
    )
    data = AttackData(
        forget=splits["forget"].items,
        retain=splits["retain"].items if "retain" in splits else [],
        holdout=splits["holdout"].items if "holdout" in splits else [],
    )
    roles = ("forget", "retain", "holdout")
    sources = {role: splits[role].source for role in roles if role in splits}
    return data, sources


def attack_models(
    models: Mapping[str, str | Path],
    data: AttackData,
    config: AttackConfig | None = None,
    *,
    device: str | None = None,
) -> dict[str, dict[str, Any]]:
    """Load each model in turn (role -> checkpoint: ``unlearned``, ``retain``, ``before``), run
    the attacks on it and free it; returns role -> :func:`run_attacks`'s result (plus its path)."""
    import unierase

    unknown = [role for role in models if role not in MODEL_ROLES]
    if unknown:
        raise ValueError(f"unknown model role(s) {unknown}; use {MODEL_ROLES}")
    results: dict[str, dict[str, Any]] = {}
    for role in MODEL_ROLES:
        if role not in models:
            continue
        model, tokenizer = unierase.load(models[role])
        if device:
            model.to(device)
        log.info("attacking the %s model (%s)", role, models[role])
        results[role] = {"path": str(models[role]), **run_attacks(model, tokenizer, data, config)}
        del model
    return results
