"""Choosing each baseline's setting from a bench run that held a grid of its variants.

``benchmarks/tune_baselines.py`` runs one ``unierase bench`` with every grid point as a variant
(``GA[lr=3e-05]``, ``unierase.bench_variants``), so the target and retain models are evaluated
once; this module reads that run's ``results.json`` (no model) and applies the rule:

    per baseline, the highest FE among the grid points whose MU is at least ``MU_SHARE`` (0.9)
    times the target model's MU; when no point keeps that much MU, the point with the highest MU,
    marked "no point keeps MU".

Ties go to the higher MU, then to the earlier grid point. A plain baseline name in the run (its
defaults) is a grid point too. Grid points may come from several runs on the same target model
and items (:func:`merge_runs`: a run at the defaults and a run of further settings).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from unierase.bench import UNIERASE, UNIERASE_METHODS, _fmt, headline_lines, headline_ratios
from unierase.bench_variants import format_value, parse_variant

FORMAT = "unierase-tuning/1"
TUNING_JSON, TUNING_MD = "tuning.json", "tuning.md"
MU_SHARE = 0.9
NO_POINT_KEEPS_MU = "no point keeps MU"
# What must agree between runs merged into one grid: they must share the target model and the
# evaluated items, which identical target metrics stand for.
SAME_RUN_KEYS = ("preset", "model")
SAME_TARGET_METRICS = ("paper/forget_efficacy", "paper/model_utility", "forget/rouge",
                       "retain/rouge", "general/accuracy")  # fmt: skip


def rule_text(mu_share: float = MU_SHARE) -> str:
    """The choice rule in words."""
    return (
        f"per baseline, the highest FE among the grid points whose MU >= {mu_share:g} x the "
        f"target model's MU; if no point keeps that MU, the point with the highest MU "
        f"({NO_POINT_KEEPS_MU})"
    )


# (point key, summary metric) of every grid point.
POINT_METRICS = (
    ("fe", "paper/forget_efficacy"),
    ("mu", "paper/model_utility"),
    ("forget_rouge", "forget/rouge"),
    ("probe_accuracy", "general/accuracy"),
)


def grid_points(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Every baseline record of a bench ``results`` dict as a grid point, grouped by the
    baseline's registry name, in run order.

    A point: ``name`` (the method name in the run), ``settings`` (the variant's own settings, {}
    for the defaults), ``lr`` and ``epochs`` it trained with (from its report), ``fe``, ``mu``,
    ``forget_rouge``, ``probe_accuracy`` (None when not measured) and ``seconds`` (unlearning).
    """
    grid: dict[str, list[dict[str, Any]]] = {}
    for name, record in results["methods"].items():
        if name in UNIERASE_METHODS:
            continue
        variant = record.get("variant")
        if variant is None:  # a run from before ``variant`` was recorded: the name says it
            method, settings = parse_variant(name)
            variant = {"method": method, "settings": settings}
        config = (record.get("report") or {}).get("config") or {}
        metrics = record.get("metrics") or {}
        grid.setdefault(variant["method"], []).append(
            {
                "name": name,
                "settings": dict(variant["settings"]),
                "lr": config.get("lr"),
                "epochs": config.get("epochs"),
                **{key: metrics.get(metric) for key, metric in POINT_METRICS},
                "seconds": record.get("seconds"),
                **({"run": record["run"]} if "run" in record else {}),
            }
        )
    return grid


def merge_runs(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """One ``results`` dict holding the methods of several bench runs, each ``(label, results)``
    (label: e.g. the run's directory), for one grid: the first run's dict with every run's
    baselines, each record marked with its run's label (``run``), and ``runs`` listing the
    labels. Of UniErase (not tuned; kept for the headline ratios) the first run's record that
    has one is kept.

    Raises:
        ValueError: no run; runs of another preset or model, or whose target models' metrics
            differ (another target model or other items); a method name in two runs.
    """
    if not runs:
        raise ValueError("no run to merge")
    first_label, first = runs[0]
    target = first["target"]["metrics"]
    methods: dict[str, Any] = {}
    for label, results in runs:
        for key in SAME_RUN_KEYS:
            if results.get(key) != first.get(key):
                raise ValueError(f"run {label} has {key} {results.get(key)!r}, run "
                                 f"{first_label} {first.get(key)!r}: not one grid")  # fmt: skip
        theirs = results["target"]["metrics"]
        for metric in SAME_TARGET_METRICS:
            a, b = target.get(metric), theirs.get(metric)
            if (a is None) != (b is None) or (a is not None and abs(a - b) > 1e-9):
                raise ValueError(
                    f"run {label}'s target model has {metric} {b}, run {first_label}'s {a}: "
                    "another target model or other items"
                )
        for name, record in results["methods"].items():
            if name in UNIERASE_METHODS and name in methods:
                continue
            if name in methods:
                raise ValueError(f"method {name} is in run {methods[name]['run']} and in {label}")
            methods[name] = {**record, "run": label}
    return {**first, "methods": methods, "runs": [label for label, _ in runs]}


def choose_setting(
    points: Sequence[Mapping[str, Any]], target_mu: float, mu_share: float = MU_SHARE
) -> dict[str, Any]:
    """The rule of this module on one baseline's grid ``points`` (``grid_points``' dicts).

    Returns:
        ``name`` and ``settings`` of the chosen point (None when no point has both FE and MU),
        ``keeps_mu`` (whether its MU >= ``mu_share`` x ``target_mu``) and ``note``
        (``NO_POINT_KEEPS_MU`` when none does, else None).
    """
    scored = [p for p in points if p.get("fe") is not None and p.get("mu") is not None]
    if not scored:
        return {"name": None, "settings": None, "keeps_mu": False,
                "note": "no point has both FE and MU"}  # fmt: skip
    floor = mu_share * target_mu
    keeping = [p for p in scored if p["mu"] >= floor]
    # max() keeps the first of equal keys: ties go to the earlier grid point.
    if keeping:
        best, note = max(keeping, key=lambda p: (p["fe"], p["mu"])), None
    else:
        best, note = max(scored, key=lambda p: (p["mu"], p["fe"])), NO_POINT_KEEPS_MU
    return {"name": best["name"], "settings": dict(best["settings"]),
            "keeps_mu": bool(keeping), "note": note}  # fmt: skip


def tuning_summary(results: Mapping[str, Any], mu_share: float = MU_SHARE) -> dict[str, Any]:
    """The content of ``tuning.json``: the rule, the target's FE and MU, per baseline every grid
    point and the chosen one, and, when the run (or a merged one) has UniErase, the headline
    ratios against the chosen settings (``headline``, as ``unierase.bench.headline_ratios``).

    Raises:
        ValueError: the run has no target MU or no baseline.
    """
    target = results["target"]["metrics"]
    target_mu = target.get("paper/model_utility")
    if target_mu is None:
        raise ValueError("the run's target model has no MU (paper/model_utility): no rule to apply")
    grid = grid_points(results)
    if not grid:
        raise ValueError("the run has no baseline (only UniErase): nothing to tune")
    methods = {
        method: {"points": points, "chosen": choose_setting(points, target_mu, mu_share)}
        for method, points in grid.items()
    }
    headline = None
    if UNIERASE in results["methods"]:
        chosen = [m["chosen"]["name"] for m in methods.values() if m["chosen"]["name"]]
        picked = {n: results["methods"][n] for n in (UNIERASE, *chosen)}
        headline = {**headline_ratios(picked), "baselines": chosen}
    return {
        "format": FORMAT,
        "rule": rule_text(mu_share),
        "mu_share": mu_share,
        "run": {k: results.get(k) for k in SAME_RUN_KEYS},
        **({"runs": list(results["runs"])} if "runs" in results else {}),
        "target": {
            "fe": target.get("paper/forget_efficacy"),
            "mu": target_mu,
            "mu_floor": mu_share * target_mu,
        },
        "methods": methods,
        **({"headline": headline} if headline is not None else {}),
    }


def _setting_text(settings: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={format_value(v)}" for k, v in settings.items()) or "defaults"


def format_tuning(summary: Mapping[str, Any]) -> str:
    """``tuning.md``: the rule, the chosen setting per baseline, then every grid point."""
    target = summary["target"]
    runs = summary.get("runs")
    sources = (
        [f"Grid points from {len(runs)} runs on that target: {', '.join(runs)}."] if runs else []
    )
    lines = [
        "# Baseline tuning",
        "",
        f"Rule: {summary['rule']}.",
        "",
        f"Target model (before): FE {_fmt(target['fe'])}, MU {_fmt(target['mu'])}; "
        f"MU floor {_fmt(target['mu_floor'])}.",
        *sources,
        "",
        "| method | chosen setting | FE | MU | note |",
        "|---|---|---|---|---|",
    ]
    for method, entry in summary["methods"].items():
        chosen = entry["chosen"]
        point = next((p for p in entry["points"] if p["name"] == chosen["name"]), None)
        if point is None:
            lines.append(f"| {method} | - | - | - | {chosen['note']} |")
            continue
        lines.append(f"| {method} | {_setting_text(point['settings'])} | {_fmt(point['fe'])} | "
                     f"{_fmt(point['mu'])} | {chosen['note'] or ''} |")  # fmt: skip
    if summary.get("headline") is not None:
        lines += ["", "Headline ratios against the chosen settings:", "",
                  *(f"- {line}" for line in headline_lines(summary["headline"]))]  # fmt: skip
    lines += [
        "",
        "| method | setting | lr | epochs | FE | MU | forget ROUGE | probe acc. | time (s) | "
        "chosen |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, entry in summary["methods"].items():
        for p in entry["points"]:
            mark = "**yes**" if p["name"] == entry["chosen"]["name"] else ""
            seconds = "-" if p["seconds"] is None else f"{p['seconds']:.0f}"
            cells = [method, _setting_text(p["settings"]), _num(p["lr"]), _num(p["epochs"]),
                     _fmt(p["fe"]), _fmt(p["mu"]), _fmt(p["forget_rouge"]),
                     _fmt(p["probe_accuracy"]), seconds, mark]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:g}"
