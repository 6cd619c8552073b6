"""``unierase bench --attacks``: the same attacks on every model of a batch run (issue 9).

After each model of the run is evaluated, while it is still in memory, the chosen attacks
(:func:`unierase.attacks.run_attacks`) run on a seeded sample of the evaluated forget questions
(and of the evaluated retain questions, which the injection and retain-only relearning attacks
use): once on the target model (the ceiling) and on the retain model (the floor) when the run
has one, then on every method's model. Nothing is trained on the attacked model itself
(relearning fine-tunes a deep copy), and each model is dropped after its attacks, so no later
stage sees an attacked model.

Files: the references' records and summaries in ``target/attacks`` and
``retain_model/attacks``; each method's in ``methods/<name>/attacks``, written by
:func:`unierase.attacks.write_run` with the references' summaries beside the method's (their
records stay in the references' directories), so that ``summary.json`` holds the comparison
and its recovery. ``results.json`` gets the block of :func:`attack_block`: per method and attack
the forget ROUGE-L recall, the answer probability, the excess over the floor ``method - floor``
and the recovery ``(method - floor) / (ceiling - floor)`` (:func:`unierase.attacks.compare`;
none where the ceiling is less than ``MIN_RECOVERY_GAP`` above the floor, since the ratio is
then noise), each method's means, and the method that leaks least.

This module imports torch only inside its functions, so ``unierase.report`` can format an
attack block without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# The roles of the references in the attacks' own vocabulary (unierase.attacks.MODEL_ROLES).
METHOD_ROLE, FLOOR_ROLE, CEILING_ROLE = "unlearned", "retain", "before"
# Attacks that measure something other than forget-answer leakage: not in the leak ranking.
NOT_LEAKAGE = ("token_injection", "membership")
NOTES = (
    "cells: forget ROUGE-L recall / teacher-forced answer probability; rec: recovery = "
    "(method - floor) / (ceiling - floor), 0 = no more than the retain model, 1 = all back, "
    "given only where the ceiling is at least {gap} above the floor; mean above floor: the "
    "method's ROUGE-L recall minus the floor's, averaged over the leakage attacks",
    "token_injection: kept (retain) answers with the token's text typed in (not leakage); "
    "membership: Min-K% AUC, forget against holdout",
)


def resolve_attacks(text: str) -> tuple[str, ...]:
    """Attack names from a comma-separated list, as ``unierase attack --attacks`` takes them, or
    "all" (every attack); "" gives none.

    Raises:
        ValueError: an unknown attack name.
    """
    from unierase.attacks import ATTACK_NAMES

    names = [a.strip() for a in text.split(",") if a.strip()]
    if [n.lower() for n in names] == ["all"]:
        return ATTACK_NAMES
    unknown = [n for n in names if n not in ATTACK_NAMES]
    if unknown:
        raise ValueError(
            f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACK_NAMES)} "
            "or 'all'"
        )
    return tuple(dict.fromkeys(names))


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def _cells(row: Mapping[str, Any], role: str) -> dict[str, Any]:
    """One model's numbers in a :func:`unierase.attacks.compare` row."""
    if row["attack"] == "membership":
        return {"auc_min_k": row.get(f"{role}/auc_min_k")}
    return {"rouge": row.get(f"{role}/rouge"), "p_answer": row.get(f"{role}/p_answer")}


def method_entry(comparison: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """A method's part of the attack block from its comparison rows (unlearned = the method).

    ``attacks``: per attack its ROUGE-L recall, answer probability, ``above_floor`` and
    recovery (None where :func:`unierase.attacks.compare` gives none: no floor, a ceiling less
    than ``MIN_RECOVERY_GAP`` above the floor, or an attack that is not about leakage);
    ``mean_recovery``, ``mean_above_floor`` and ``mean_rouge`` over the leakage attacks that
    have one.
    """
    attacks = {}
    for row in comparison:
        cells = _cells(row, METHOD_ROLE)
        if row["attack"] != "membership":
            cells["above_floor"] = row.get("above_floor")
            cells["recovery"] = row.get("recovery")
        attacks[row["attack"]] = cells
    leakage = [a for name, a in attacks.items() if name not in NOT_LEAKAGE]
    return {
        "attacks": attacks,
        "mean_recovery": _mean([a.get("recovery") for a in leakage]),
        "mean_above_floor": _mean([a.get("above_floor") for a in leakage]),
        "mean_rouge": _mean([a.get("rouge") for a in leakage]),
    }


def least_leaking(methods: Mapping[str, Mapping[str, Any]], gap: float = 0.1) -> dict[str, Any]:
    """The method with the lowest mean recovery; without any recovery (no retain model, or no
    ceiling far enough above the floor), the lowest mean forget ROUGE-L recall under attack,
    which the ``by`` key says (``gap``: the least recovery gap, named in the reason). On a tie
    ``method`` is the first in run order and ``tied`` names them all.
    """
    for key, by in (("mean_recovery", "mean recovery"), ("mean_rouge", "mean forget ROUGE-L")):
        scored = {n: m[key] for n, m in methods.items() if m.get(key) is not None}
        if scored:
            best = min(scored, key=scored.__getitem__)
            out: dict[str, Any] = {"method": best, "by": by, "value": scored[best]}
            tied = [n for n, v in scored.items() if math.isclose(v, scored[best], abs_tol=1e-9)]
            if len(tied) > 1:
                out["tied"] = tied
            if key == "mean_rouge":
                out["reason"] = (
                    "no recovery: it needs a retain model (the floor) that the target model "
                    f"(the ceiling) answers at least {gap} ROUGE-L recall better than"
                )
            return out
    return {"method": None, "by": None, "value": None, "reason": "no leakage attack has a value"}


class BenchAttacks:
    """The attack stage of one bench run: settings, the attacked items and what was attacked.

    Args:
        attacks: attack names (:data:`unierase.attacks.ATTACK_NAMES`).
        forget, retain: the evaluated forget and retain items; ``n_items`` of each (a seeded
            sample in file order) are attacked.
        n_items: forget (and retain) questions attacked.
        seed: the sample and the relearning attack.
        max_new_tokens, batch_size, fmt, token_text: as the evaluation (a ``unierase attack``
            run takes them from its options).
        overrides: further :class:`unierase.attacks.AttackConfig` fields.
        info: recorded in every summary (e.g. the data directory).
    """

    def __init__(
        self,
        attacks: Sequence[str],
        forget: Sequence[Any],
        retain: Sequence[Any],
        *,
        n_items: int,
        seed: int = 0,
        overrides: Mapping[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
        **config: Any,
    ) -> None:
        from unierase.attacks import AttackConfig, AttackData
        from unierase.demo import _sample

        fields = {"attacks": tuple(attacks), "seed": seed, **config, **dict(overrides or {})}
        self.config = AttackConfig(**fields)
        self.data = AttackData(
            forget=_sample(list(forget), n_items, seed), retain=_sample(list(retain), n_items, seed)
        )
        self.info = {
            **dict(info or {}),
            "items": {"forget": len(self.data.forget), "retain": len(self.data.retain)},
        }
        self.references: dict[str, dict[str, Any]] = {}
        self.methods: dict[str, dict[str, Any]] = {}

    def attack_reference(self, model: Any, tokenizer: Any, role: str, directory: Path) -> None:
        """Attack the target (``role`` "before", the ceiling) or the retain model ("retain",
        the floor) and write its run to ``directory``; call before any method."""
        from unierase.attacks import run_attacks, write_run

        if role not in (CEILING_ROLE, FLOOR_ROLE):
            raise ValueError(f"a reference is {CEILING_ROLE!r} or {FLOOR_ROLE!r}, not {role!r}")
        self.references[role] = run_attacks(model, tokenizer, self.data, self.config)
        write_run(directory, {role: self.references[role]}, self.config, self.info, overwrite=True)

    def attack_method(self, model: Any, tokenizer: Any, name: str, directory: Path) -> dict:
        """Attack a method's model, write its run (with the references' summaries) to
        ``directory`` and return its entry of the attack block (:func:`method_entry`)."""
        from unierase.attacks import run_attacks, write_run

        result = run_attacks(model, tokenizer, self.data, self.config)
        # The references' records are in their own directories; their summaries come along.
        refs = {role: {**r, "records": []} for role, r in self.references.items()}
        info = {**self.info, "method": name}
        summary = write_run(directory, {METHOD_ROLE: result, **refs}, self.config, info,
                            overwrite=True)  # fmt: skip
        entry = {**method_entry(summary["comparison"]), "seconds": sum(result["seconds"].values())}
        self.methods[name] = entry
        return entry

    def block(self) -> dict[str, Any]:
        """The ``attacks`` block of ``results.json``."""
        from unierase.attacks import compare
        from unierase.attacks.run import MEASURES, MIN_RECOVERY_GAP

        rows = compare(self.references) if self.references else []
        references = {
            role: {row["attack"]: _cells(row, role) for row in rows}
            for role in (CEILING_ROLE, FLOOR_ROLE)
            if role in self.references
        }
        return {
            "attacks": list(self.config.attacks),
            "measures": {a: MEASURES[a] for a in self.config.attacks},
            "items": self.info["items"],
            "config": self.config.to_dict(),
            "ceiling": references.get(CEILING_ROLE),
            "floor": references.get(FLOOR_ROLE),
            "min_recovery_gap": MIN_RECOVERY_GAP,
            "methods": self.methods,
            "least_leaking": least_leaking(self.methods, MIN_RECOVERY_GAP),
        }


# ----------------------------------------------------------------------------- tables


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _cell(cells: Mapping[str, Any] | None) -> str:
    if not cells:
        return "-"
    if "auc_min_k" in cells:
        auc = _num(cells["auc_min_k"])
        return "-" if auc is None else f"AUC {auc:.2f}"
    rouge, prob, rec = (_num(cells.get(k)) for k in ("rouge", "p_answer", "recovery"))
    text = "-" if rouge is None else f"{rouge:.2f}"
    text += "" if prob is None else f" / {prob:.2f}"
    return text + ("" if rec is None else f", rec {rec:.2f}")


def attack_rows(block: Mapping[str, Any]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """The attack table as text cells: (header, [(model, cells)]): the ceiling and the floor
    first, then every method; a column per attack, the mean excess over the floor and the mean
    recovery."""
    attacks = list(block["attacks"])
    header = ["model", *attacks, "mean above floor", "mean recovery"]
    rows = []
    for label, ref in (("target (ceiling)", block.get("ceiling")),
                       ("retain model (floor)", block.get("floor"))):  # fmt: skip
        if ref is not None:
            rows.append((label, [_cell(ref.get(a)) for a in attacks] + ["-", "-"]))
    for name, entry in block["methods"].items():
        above, mean = _num(entry.get("mean_above_floor")), _num(entry.get("mean_recovery"))
        cells = [_cell(entry["attacks"].get(a)) for a in attacks]
        rows.append((name, [*cells, "-" if above is None else f"{above:+.2f}",
                            "-" if mean is None else f"{mean:.2f}"]))  # fmt: skip
    return header, rows


def least_leaking_text(block: Mapping[str, Any]) -> str:
    """One sentence: which method leaks least, by what, over which attacks."""
    best = block.get("least_leaking") or {}
    if best.get("method") is None:
        return f"least leaking: not determined ({best.get('reason', 'no methods attacked')})"
    leakage = [a for a in block["attacks"] if a not in NOT_LEAKAGE]
    who = " and ".join(best["tied"]) + " (a tie)" if best.get("tied") else best["method"]
    text = f"least leaking: {who} ({best['by']} {best['value']:.3f} over {', '.join(leakage)})"
    return text + (f"; {best['reason']}" if best.get("reason") else "")


def attack_notes(block: Mapping[str, Any]) -> list[str]:
    """The notes under an attack table, with the block's least recovery gap filled in."""
    gap = block.get("min_recovery_gap", "-")  # runs from before the gap was recorded: "-"
    return [note.format(gap=gap) for note in NOTES]


def format_attack_table(block: Mapping[str, Any]) -> str:
    """The attack block as a Markdown table, the least-leaking method and the notes."""
    header, rows = attack_rows(block)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    items = block.get("items", {})
    lines += [
        "",
        least_leaking_text(block),
        f"attacked: {items.get('forget', '-')} forget, {items.get('retain', '-')} retain questions",
        *attack_notes(block),
    ]
    return "\n".join(lines)
