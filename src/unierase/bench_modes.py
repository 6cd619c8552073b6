"""``unierase bench --mode sequential`` and ``--mode precise``: the paper's two other settings.

Sequential (deletion requests keep arriving): from the same target model, ``rounds`` rounds of
``per_round`` new forget questions each, drawn from authors no earlier round touched. UniErase
resumes its own saved state every round (its token, projectors and C_prev); each baseline
continues from its own previous round's weights. After every round each model is evaluated on
the forget questions of every round so far (does an old deletion still hold?), the retain
questions of the authors no round touched, the general probe and, when the data has them, real
authors and world facts. Per round: FE over all rounds so far, FE per round's questions, MU,
probe accuracy, refusal rate on retain questions; and the first round at which a method's MU
falls below ``MU_COLLAPSE`` x the target model's MU.

Precise (one fact about a person whose other facts must stay): ``precise_items`` single
questions, each forgotten from a fresh copy of the target model (UniErase: one question-level
edit on a token trained once; baselines: their loss on that one question). Per item: the
forgotten question and its paraphrase (refused? ROUGE-L recall), the other questions of the same
author (neighbours: ROUGE-L recall, refusal rate, and the exact-answer rate: the share whose
greedy answer is token-for-token the target model's), a retain sample of other authors (the
same three numbers) and the general probe.

Both write ``results.json``, ``table.md``, ``report.html``, the plot's data as CSV and, when
matplotlib is installed, the plot as PNG; per-round evaluation records go under
``methods/<name>/rounds/<r>/eval``, per-item precise records to
``methods/<name>/precise.jsonl``. TOFU's forget quality is not computed in these modes: it needs
a retain model trained without each round's (or item's) forget set.
"""

from __future__ import annotations

import csv
import dataclasses
import html
import io
import json
import logging
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unierase import artifacts as A
from unierase._util.atomic import write_atomically
from unierase._util.jsonl import write_jsonl
from unierase.bench import (
    PROBE_ROLES,
    RESULTS_FILE,
    TABLE_FILE,
    UNIERASE,
    BenchResult,
    BenchSettings,
    PeakMemory,
    _capped_splits,
    _eval_config,
    _finetune,
    _fmt,
    _status,
    _training_data,
    baseline_run_settings,
    method_dir_name,
    resolve_methods,
)
from unierase.data.schema import DataError, QAItem

log = logging.getLogger(__name__)

MODES = ("batch", "sequential", "precise")
HTML_FILE = A.BENCH_HTML
ROUNDS_CSV = A.BENCH_ROUNDS_CSV
PRECISE_CSV = A.BENCH_PRECISE_CSV
PLOT_FILE = A.BENCH_PLOT
PRECISE_RECORDS = "precise.jsonl"
MU_COLLAPSE = 0.9  # a method "collapses" at the first round its MU is below 90% of the start

FE, MU = "paper/forget_efficacy", "paper/model_utility"
# (column, summary key) of each sequential round record.
ROUND_METRICS: tuple[tuple[str, str], ...] = (
    ("fe", FE),
    ("mu", MU),
    ("probe_accuracy", "general/accuracy"),
    ("retain_refusal", "retain/refusal_rate"),
    ("retain_rouge", "retain/rouge"),
    ("forget_rouge", "forget/rouge"),
    ("forget_prob", "forget/prob"),
    ("forget_refusal", "forget/refusal_rate"),
)
# (column, label) of the precise table, from ``precise_summary``.
PRECISE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("forgotten_refusal", "forgotten: refused"),
    ("forgotten_rouge", "forgotten: ROUGE"),
    ("paraphrase_refusal", "paraphrase: refused"),
    ("paraphrase_rouge", "paraphrase: ROUGE"),
    ("neighbours_rouge", "neighbours: ROUGE"),
    ("neighbours_exact", "neighbours: exact"),
    ("neighbours_refusal", "neighbours: refused"),
    ("retain_rouge", "retain: ROUGE"),
    ("retain_exact", "retain: exact"),
    ("retain_refusal", "retain: refused"),
    ("probe_accuracy", "probe acc."),
)


# ----------------------------------------------------------------------------- planning


def by_group(items: Sequence[QAItem]) -> dict[str, list[QAItem]]:
    """Items per author (``QAItem.group``; "" for none), in first-seen order."""
    groups: dict[str, list[QAItem]] = {}
    for it in items:
        groups.setdefault(it.group or "", []).append(it)
    return groups


def drop_repeats(
    rounds: Sequence[Sequence[QAItem]], already: Sequence[str] = ()
) -> tuple[list[list[QAItem]], list[list[str]]]:
    """Each round without the questions already forgotten (in ``already`` or an earlier round).

    Returns:
        (the rounds kept, the questions skipped in each round); a repeat is logged.
    """
    seen = set(already)
    kept, skipped = [], []
    for r, items in enumerate(rounds, 1):
        keep, skip = [], []
        for it in items:
            (skip if it.question in seen else keep).append(it)
            seen.add(it.question)
        if skip:
            log.warning("round %d repeats %d already-forgotten questions; skipped", r, len(skip))
        kept.append(keep)
        skipped.append([it.question for it in skip])
    return kept, skipped


@dataclass
class RoundPlan:
    """What each sequential round forgets, and what stays.

    Attributes:
        rounds: the forget questions of each round.
        skipped: per round, the questions dropped because an earlier round had forgotten them.
        groups: per round, the authors its questions come from.
        retain: every question of the authors no round touched.
    """

    rounds: list[list[QAItem]]
    skipped: list[list[str]]
    groups: list[list[str]]
    retain: list[QAItem]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": [[it.question for it in r] for r in self.rounds],
            "groups": self.groups,
            "skipped_repeats": self.skipped,
            "retain_questions": len(self.retain),
            "retain_groups": list(by_group(self.retain)),
        }


def plan_rounds(pool: Sequence[QAItem], rounds: int, per_round: int, seed: int = 0) -> RoundPlan:
    """Draw ``rounds`` rounds of ``per_round`` questions from authors not yet forgotten.

    Authors are taken in a seeded order; a round takes the questions of the next author (and of
    the one after when the author has fewer than ``per_round`` left). An author a round took
    any question from is forgotten: later rounds start with a new author, and the author's other
    questions are neither forgotten nor retained. At least one author must stay untouched.

    Raises:
        DataError: a bad count, or too few authors for the rounds asked.
    """
    if rounds < 1 or per_round < 1:
        raise DataError(f"need rounds >= 1 and per_round >= 1, got {rounds} and {per_round}")
    groups = by_group(pool)
    order = list(groups)
    random.Random(seed).shuffle(order)
    plan: list[list[QAItem]] = []
    plan_groups: list[list[str]] = []
    used = 0
    for r in range(rounds):
        items: list[QAItem] = []
        names: list[str] = []
        while len(items) < per_round:
            if used >= len(order) - 1:
                raise DataError(
                    f"{rounds} rounds of {per_round} questions need more authors than the "
                    f"{len(order)} in the data (round {r + 1} ran out; at least one author must "
                    f"stay untouched as the retain set): lower --rounds or --per-round, or use "
                    f"more authors"
                )
            name = order[used]
            used += 1
            names.append(name)
            items += groups[name][: per_round - len(items)]
        plan.append(items)
        plan_groups.append(names)
    kept, skipped = drop_repeats(plan)
    retain = [it for name in order[used:] for it in groups[name]]
    return RoundPlan(kept, skipped, plan_groups, retain)


def choose_precise_items(pool: Sequence[QAItem], n: int, seed: int = 0) -> list[QAItem]:
    """``n`` single questions spread over authors (round robin over a seeded author order).

    Only authors with at least two questions qualify (the others are the neighbours); within an
    author, questions with a paraphrase come first, in a seeded order.

    Raises:
        DataError: ``n`` < 1, or fewer eligible questions than ``n``.
    """
    if n < 1:
        raise DataError(f"need at least one precise item, got {n}")
    rng = random.Random(seed)
    groups = {g: list(its) for g, its in by_group(pool).items() if len(its) >= 2}
    order = list(groups)
    rng.shuffle(order)
    for its in groups.values():
        rng.shuffle(its)
        its.sort(key=lambda it: it.paraphrased_question is None)  # stable: paraphrased first
    # An author keeps at least one neighbour: take at most len - 1 questions of each.
    available = sum(len(its) - 1 for its in groups.values())
    if available < n:
        raise DataError(
            f"{n} precise items asked, but the data has only {available} questions of authors "
            f"with at least two questions (one must stay as a neighbour)"
        )
    chosen: list[QAItem] = []
    depth = 0
    while len(chosen) < n:
        for g in order:
            if depth < len(groups[g]) - 1 and len(chosen) < n:
                chosen.append(groups[g][depth])
        depth += 1
    return chosen


def neighbours(item: QAItem, pool: Sequence[QAItem]) -> list[QAItem]:
    """The other questions about ``item``'s author (its group), in pool order."""
    return [it for it in pool if it.group == item.group and it.question != item.question]


def paraphrase_item(item: QAItem) -> QAItem | None:
    """The item asked with its paraphrased question (None when it has none)."""
    if not item.paraphrased_question:
        return None
    return dataclasses.replace(
        item,
        question=item.paraphrased_question,
        answer=item.paraphrased_answer or item.answer,
        paraphrased_question=None,
        paraphrased_answer=None,
        perturbed_answers=(),
    )


def mu_collapse_round(mu: Sequence[float | None], start: float | None, share: float = MU_COLLAPSE):
    """The first round (1-based index into ``mu``) whose MU is below ``share`` x ``start``."""
    if start is None:
        return None
    for r, value in enumerate(mu, 1):
        if value is not None and value < share * start:
            return r
    return None


def check_resume(directory: str | Path, base_model: str) -> None:
    """Refuse to continue a saved UniErase run that was not unlearned from ``base_model``.

    Raises:
        ResumeError: no token record, or its token was trained on another model.
    """
    from unierase.api import ResumeError
    from unierase.token import read_token_state

    try:
        record = read_token_state(directory)
    except (FileNotFoundError, ValueError) as err:
        raise ResumeError(f"cannot resume from {directory}: {err}") from None
    sources = [t.get("base_model") for t in record["tokens"]]
    if str(base_model) not in sources:
        raise ResumeError(
            f"cannot resume from {directory}: its state was made from "
            f"{', '.join(map(str, sources)) or 'an unknown model'}, not from {base_model}"
        )


# ----------------------------------------------------------------------------- shared set-up


@dataclass
class _Setup:
    training: Any
    data_dir: Path
    target: Path
    pool: list[QAItem]
    fixed: dict[str, Any]  # role -> EvalSplit of the probes (general, real authors, world facts)
    eval_config: Any
    embedding: str | None
    aux: dict[str, Any]


def _enrich(pool: Sequence[QAItem], richer: Sequence[QAItem]) -> list[QAItem]:
    """Pool items with the paraphrase and perturbed answers of their evaluation copies."""
    by_question = {it.question: it for it in richer}
    out = []
    for it in pool:
        r = by_question.get(it.question)
        if r is not None:
            it = dataclasses.replace(
                it,
                paraphrased_question=it.paraphrased_question or r.paraphrased_question,
                paraphrased_answer=it.paraphrased_answer or r.paraphrased_answer,
                perturbed_answers=it.perturbed_answers or r.perturbed_answers,
                subject=it.subject or r.subject,
            )
        out.append(it)
    return out


def _setup(settings: BenchSettings, out: Callable[[str], None]) -> _Setup:
    from unierase.eval import suite

    out_dir = Path(settings.out)
    t = time.perf_counter()
    training, data_dir, forget_split = _training_data(settings, out_dir / "data")
    splits = suite.load_eval_splits(data_dir, forget_split=forget_split)
    richer = [*splits["forget"].items, *splits.get("retain", suite.EvalSplit("", [], "")).items]
    pool = _enrich(training.items, richer)
    out(_status("data", f"{settings.preset}: {len(pool)} QA of {len(by_group(pool))} authors "
                f"({data_dir})", time.perf_counter() - t))  # fmt: skip
    target = _finetune(training, settings, "target", out)
    # The forget and retain items change per round or item; the probes are fixed for the run.
    fixed = _capped_splits(splits, settings, PROBE_ROLES)
    embedding = None if settings.embedding_model == "none" else settings.embedding_model
    return _Setup(
        training, data_dir, Path(target.path), pool, fixed, _eval_config(settings), embedding, {}
    )


def _aux(setup: _Setup, model: Any) -> Any:
    from unierase.eval import suite
    from unierase.eval.generate import model_device

    if "aux" not in setup.aux:
        setup.aux["aux"] = suite.load_auxiliary(
            embedding=setup.embedding, device=model_device(model)
        )
    return setup.aux["aux"]


def _edit_layers(model: Any, settings: BenchSettings) -> tuple[int, ...]:
    """The layers ``api.unlearn`` will edit (Phase I adds noise to exactly these)."""
    from unierase.edit.config import preset_for
    from unierase.model import find_layout

    layout = find_layout(model)
    config = dataclasses.replace(preset_for(layout.hidden_size), **dict(settings.edit_overrides))
    return tuple(config.resolved_layers(layout.num_layers))


def _settings_record(settings: BenchSettings) -> dict[str, Any]:
    return {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(settings).items()
        if k not in ("stats_texts",)
    }


def run_mode_bench(settings: BenchSettings, out: Callable[[str], None]) -> BenchResult:
    """``run_bench`` for ``settings.mode`` "sequential" or "precise" (see the module docstring)."""
    import torch

    if settings.mode not in ("sequential", "precise"):
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {settings.mode!r}")
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    if settings.mode == "sequential":
        return run_sequential(settings, out)
    return run_precise(settings, out)


def _write_outputs(
    out_dir: Path,
    results: dict[str, Any],
    table: str,
    csv_rows: list[dict[str, Any]],
    csv_name: str,
    plot: Callable[[Path], bool],
    title: str,
    out: Callable[[str], None],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(csv_rows[0]) if csv_rows else [])
    writer.writeheader()
    writer.writerows(csv_rows)
    write_atomically(out_dir / csv_name, buffer.getvalue())
    try:
        plotted = plot(out_dir / PLOT_FILE)
    except Exception as err:  # a plot must never cost the measured results
        log.warning("plot failed: %s", err)
        plotted = False
    results["files"] = {
        "results": RESULTS_FILE,
        "table": TABLE_FILE,
        "html": HTML_FILE,
        "plot_data": csv_name,
        "plot": PLOT_FILE if plotted else None,
    }
    if not plotted:
        results["files"]["plot_note"] = "matplotlib is not installed: the plot's data is the CSV"
    write_atomically(out_dir / RESULTS_FILE, json.dumps(results, indent=2, default=str) + "\n")
    write_atomically(out_dir / TABLE_FILE, table + "\n")
    write_atomically(
        out_dir / HTML_FILE, markdown_page_html(title, table, PLOT_FILE if plotted else None)
    )
    out("")
    out(table)
    plot_note = (
        f", plot: {out_dir / PLOT_FILE}" if plotted else f", plot data: {out_dir / csv_name}"
    )
    out(f"\nresults: {out_dir / RESULTS_FILE}, table: {out_dir / TABLE_FILE}{plot_note}")


# ----------------------------------------------------------------------------- sequential


def _round_metrics(summary_metrics: Mapping[str, Any]) -> dict[str, Any]:
    return {col: summary_metrics.get(key) for col, key in ROUND_METRICS}


def _fe_by_round(result: Any, rounds: Sequence[Sequence[QAItem]]) -> list[float | None]:
    """FE of each round's forget questions alone, from the run's per-item records."""
    from unierase.eval import suite

    forget = result.records.get("forget", [])
    values = []
    for items in rounds:
        questions = {it.question for it in items}
        subset = [rec for rec in forget if rec["question"] in questions]
        if not subset:
            values.append(None)
            continue
        summary = suite.summarise({"forget": subset}, result.run_info)
        values.append(summary["metrics"].get(FE))
    return values


def _mean(values: Sequence[float | None]) -> float | None:
    xs = [v for v in values if v is not None]
    return sum(xs) / len(xs) if xs else None


def run_sequential(settings: BenchSettings, out: Callable[[str], None]) -> BenchResult:
    """The sequential benchmark (see the module docstring)."""
    import unierase
    from unierase import api
    from unierase.demo import _sample, _write_run
    from unierase.eval import suite

    methods = resolve_methods(settings.methods)
    out_dir = Path(settings.out)
    t_all = time.perf_counter()
    setup = _setup(settings, out)
    plan = plan_rounds(setup.pool, settings.rounds, settings.per_round, settings.seed)
    retain_eval = suite.EvalSplit(
        "retain",
        _sample(plan.retain, settings.retain_items, settings.seed),
        "questions of the authors no round forgets",
    )
    out(_status("plan", f"{len(plan.rounds)} rounds x {settings.per_round} questions from "
                f"{sum(map(len, plan.groups))} authors; retain: {len(plan.retain)} QA of "
                f"{len(by_group(plan.retain))} authors"))  # fmt: skip

    def evaluate(model: Any, tokenizer: Any, forget: list[QAItem], name: str, directory: Path):
        splits = {
            "forget": suite.EvalSplit("forget", forget, "forget questions of the rounds so far"),
            "retain": retain_eval,
            **setup.fixed,
        }
        result = suite.evaluate(model, tokenizer, splits, setup.eval_config,
                                aux=_aux(setup, model), model_name=name,
                                data_name=str(setup.data_dir))  # fmt: skip
        _write_run(result, directory)
        return result

    all_forget = [it for r in plan.rounds for it in r]
    t = time.perf_counter()
    model, tokenizer = unierase.load(setup.target)
    before = evaluate(model, tokenizer, all_forget, "target model", out_dir / "target" / "eval")
    del model
    start = {
        **_round_metrics(before.summary["metrics"]),
        "fe_by_round": _fe_by_round(before, plan.rounds),
    }
    out(_status("eval", "target model, on every round's forget questions", time.perf_counter() - t))

    results: dict[str, Any] = {
        "format": "unierase-bench-sequential/1",
        "mode": "sequential",
        "preset": settings.preset,
        "model": settings.model,
        "data": {**setup.training.description, "pool": len(setup.pool)},
        "plan": plan.to_dict(),
        "target": {"path": str(setup.target), **start},
        "mu_collapse_share": MU_COLLAPSE,
        "methods": {},
        "notes": ["forget quality (TOFU) is not computed: it needs a retain model per round"],
    }
    for name in methods:
        directory = out_dir / "methods" / method_dir_name(name)
        model_dir = directory / "model"
        records: list[dict[str, Any]] = []
        model = tokenizer = None
        for r, items in enumerate(plan.rounds, 1):
            if not items:
                out(_status(name, f"round {r}: every question was forgotten before; skipped"))
                continue
            t = time.perf_counter()
            with PeakMemory() as memory:
                if name == UNIERASE:
                    common = dict(
                        retain=plan.retain,
                        token_overrides=dict(settings.token_overrides),
                        edit_overrides=dict(settings.edit_overrides),
                        stats_texts=settings.stats_texts,
                        seed=settings.seed,
                        progress=settings.progress,
                    )
                    if r == 1:
                        report = api.unlearn(setup.target, items, model_dir, **common)
                    else:
                        check_resume(model_dir, str(setup.target))
                        report = api.unlearn(model_dir, items, model_dir, mode="sequential",
                                             resume=model_dir, **common)  # fmt: skip
                    report_dict = report.to_dict()
                    model, tokenizer = unierase.load(model_dir)
                else:
                    from unierase.baselines import run_baseline

                    if model is None:
                        model, tokenizer = unierase.load(setup.target)
                    method, _own, overrides = baseline_run_settings(
                        name, settings, seed=settings.seed + r - 1
                    )
                    model, baseline = run_baseline(
                        method,
                        model,
                        tokenizer,
                        items,
                        plan.retain,
                        progress=settings.progress,
                        **overrides,
                    )
                    report_dict = baseline.to_dict()
            seconds = time.perf_counter() - t
            so_far = [it for rnd in plan.rounds[:r] for it in rnd]
            result = evaluate(model, tokenizer, so_far, f"{name} round {r}",
                              directory / "rounds" / f"{r:02d}" / "eval")  # fmt: skip
            if name == UNIERASE:
                model = None  # the next round reloads the saved state
            fe_rounds = _fe_by_round(result, plan.rounds[:r])
            record = {
                "round": r,
                "questions": [it.question for it in items],
                "skipped_repeats": plan.skipped[r - 1],
                **_round_metrics(result.summary["metrics"]),
                "fe_by_round": fe_rounds,
                "fe_current": fe_rounds[-1],
                "fe_earlier": _mean(fe_rounds[:-1]),
                "seconds": seconds,
                "peak_memory_bytes": memory.peak_bytes,
                "report": report_dict,
            }
            records.append(record)
            out(_status(name, f"round {r}: FE {_fmt(record['fe'])} (round 1's questions "
                        f"{_fmt(fe_rounds[0])}), MU {_fmt(record['mu'])}, unlearning "
                        f"{seconds:.1f} s", time.perf_counter() - t))  # fmt: skip
        model = None
        results["methods"][name] = {
            "rounds": records,
            "mu_collapse_round": mu_collapse_round([x["mu"] for x in records], start["mu"]),
        }
    results["seconds"] = time.perf_counter() - t_all
    results["settings"] = _settings_record(settings)
    table = format_sequential_table(results)
    _write_outputs(out_dir, results, table, sequential_csv_rows(results), ROUNDS_CSV,
                   lambda path: plot_sequential(results, path), "unierase bench: sequential",
                   out)  # fmt: skip
    return BenchResult(results, table, out_dir)


def sequential_csv_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (method, round), round 0 being the target model: the plot's data."""
    target = results["target"]
    rows = []

    def row(method: str, r: int, rec: Mapping[str, Any]) -> dict[str, Any]:
        fe_rounds = rec.get("fe_by_round") or []
        return {
            "method": method,
            "round": r,
            **{col: rec.get(col) for col, _ in ROUND_METRICS},
            "fe_round1": fe_rounds[0] if fe_rounds else None,
            "fe_current": rec.get("fe_current"),
            "fe_earlier": rec.get("fe_earlier"),
            "seconds": rec.get("seconds"),
        }

    for name, m in results["methods"].items():
        rows.append(row(name, 0, target))
        rows += [row(name, rec["round"], rec) for rec in m["rounds"]]
    return rows


def format_sequential_table(results: Mapping[str, Any]) -> str:
    """Markdown: one row per method and round (round 0 = the target model), then collapses."""
    cols = (
        ("FE (all so far)", "fe"),
        ("FE (round 1's)", "fe_round1"),
        ("FE (this round's)", "fe_current"),
        ("MU", "mu"),
        ("probe acc.", "probe_accuracy"),
        ("retain refusal", "retain_refusal"),
        ("forget refusal", "forget_refusal"),
    )
    lines = [
        "| method | round | " + " | ".join(c for c, _ in cols) + " | time (s) |",
        "|" + "---|" * (len(cols) + 3),
    ]
    rows = sequential_csv_rows(results)
    target = [r for r in rows if r["round"] == 0][:1]
    for row in [*({**r, "method": "target (before)"} for r in target), *rows]:
        if row["round"] == 0 and row["method"] != "target (before)":
            continue
        cells = [_fmt(row.get(key)) for _, key in cols]
        seconds = "-" if row.get("seconds") is None else f"{row['seconds']:.0f}"
        lines.append(
            f"| {row['method']} | {row['round']} | " + " | ".join(cells) + f" | {seconds} |"
        )
    lines.append("")
    start = results["target"].get("mu")
    lines.append(f"MU below {MU_COLLAPSE:.0%} of the target's ({_fmt(start)}):")
    for name, m in results["methods"].items():
        r = m["mu_collapse_round"]
        lines.append(f"- {name}: " + (f"from round {r}" if r is not None else "never"))
    return "\n".join(lines)


def plot_sequential(results: Mapping[str, Any], path: Path) -> bool:
    """FE (all so far), FE of round 1's questions and MU per round; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return False
    rows = sequential_csv_rows(results)
    fig = Figure(figsize=(13, 4), layout="constrained")
    axes = fig.subplots(1, 3)
    panels = (
        ("fe", "FE, every question forgotten so far"),
        ("fe_round1", "FE, round 1's questions"),
        ("mu", "MU"),
    )
    for ax, (key, title) in zip(axes, panels, strict=True):
        for name in results["methods"]:
            pts = [(r["round"], r[key]) for r in rows if r["method"] == name and r[key] is not None]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, marker="o", label=name)
        if key == "mu" and results["target"].get("mu") is not None:
            ax.axhline(MU_COLLAPSE * results["target"]["mu"], color="grey", ls=":", lw=1)
        ax.set_title(title)
        ax.set_xlabel("round (0 = target model)")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize="small", loc="best")
    fig.savefig(path, dpi=120)
    return True


# ----------------------------------------------------------------------------- precise


def _eval_items(model, tokenizer, role: str, items, setup: _Setup, detector) -> list[dict]:
    from unierase.eval import suite

    if not items:
        return []
    split = suite.EvalSplit(role, list(items), role)
    recs, _timing = suite.evaluate_split(
        model, tokenizer, split, setup.eval_config, _aux(setup, model), detector
    )
    return [_slim(r) for r in recs]


def _slim(rec: Mapping[str, Any]) -> dict[str, Any]:
    keep = ("question", "answer", "group", "generation", "rouge", "prob", "refusal")
    return {k: rec.get(k) for k in keep} | (
        {"probe_correct": rec["probe_correct"]} if "probe_correct" in rec else {}
    )


def _rate(flags: Sequence[bool | None]) -> float | None:
    xs = [bool(f) for f in flags if f is not None]
    return sum(xs) / len(xs) if xs else None


def _same(after: Sequence[Mapping], before: Sequence[Mapping]) -> list[bool]:
    return [a["generation"] == b["generation"] for a, b in zip(after, before, strict=True)]


def _precise_probe(model, tokenizer, setup: _Setup, retain_eval, detector) -> dict[str, list]:
    general = setup.fixed["general"].items
    return {
        "retain": _eval_items(model, tokenizer, "retain", retain_eval, setup, detector),
        "general": _eval_items(model, tokenizer, "general", general, setup, detector),
    }


def _precise_item(model, tokenizer, item: QAItem, pool, setup: _Setup, detector) -> dict:
    para = paraphrase_item(item)
    asked = _eval_items(model, tokenizer, "forget", [item] + ([para] if para else []), setup,
                        detector)  # fmt: skip
    near = _eval_items(model, tokenizer, "retain", neighbours(item, pool), setup, detector)
    return {"forgotten": asked[0], "paraphrase": asked[1] if para else None, "neighbours": near}


def precise_item_metrics(
    after: Mapping[str, Any], before: Mapping[str, Any], item_group: str | None
) -> dict[str, Any]:
    """The numbers of one precise item, from the records after and before (the target model).

    ``after``/``before`` hold "forgotten", "paraphrase", "neighbours", "retain" and "general"
    records; retain records of the item's own author are left out (they are neighbours).
    """
    keep = [i for i, r in enumerate(after["retain"]) if r["group"] != item_group]
    retain_a = [after["retain"][i] for i in keep]
    retain_b = [before["retain"][i] for i in keep]
    para = after.get("paraphrase")
    return {
        "forgotten_refusal": _rate([after["forgotten"]["refusal"]]),
        "forgotten_rouge": after["forgotten"]["rouge"],
        "forgotten_prob": after["forgotten"].get("prob"),
        "paraphrase_refusal": _rate([para["refusal"]]) if para else None,
        "paraphrase_rouge": para["rouge"] if para else None,
        "neighbours_rouge": _mean([r["rouge"] for r in after["neighbours"]]),
        "neighbours_exact": _rate(_same(after["neighbours"], before["neighbours"])),
        "neighbours_refusal": _rate([r["refusal"] for r in after["neighbours"]]),
        "retain_rouge": _mean([r["rouge"] for r in retain_a]),
        "retain_exact": _rate(_same(retain_a, retain_b)),
        "retain_refusal": _rate([r["refusal"] for r in retain_a]),
        "probe_accuracy": _rate([r.get("probe_correct") for r in after["general"]]),
    }


def precise_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """Means over items of every ``precise_item_metrics`` number."""
    return {col: _mean([row["metrics"][col] for row in rows]) for col, _ in PRECISE_COLUMNS}


def run_precise(settings: BenchSettings, out: Callable[[str], None]) -> BenchResult:
    """The precise benchmark (see the module docstring)."""
    import unierase
    from unierase import api
    from unierase.demo import _sample
    from unierase.eval.refusal import RefusalDetector
    from unierase.token import save_token_checkpoint, token_config_for, train_unlearning_token

    methods = resolve_methods(settings.methods)
    out_dir = Path(settings.out)
    t_all = time.perf_counter()
    setup = _setup(settings, out)
    items = choose_precise_items(setup.pool, settings.precise_items, settings.seed)
    chosen = {it.question for it in items}
    retain_eval = _sample(
        [it for it in setup.pool if it.question not in chosen], settings.retain_items, settings.seed
    )
    out(_status("plan", f"{len(items)} single questions of {len(by_group(items))} authors, each "
                f"from a fresh target model; retain sample {len(retain_eval)} QA"))  # fmt: skip

    detector_cache: dict[str, Any] = {}

    def detector(model: Any) -> Any:
        if "d" not in detector_cache:
            aux = _aux(setup, model)
            detector_cache["d"] = RefusalDetector(
                aux.embedder, threshold=setup.eval_config.refusal_similarity
            )
        return detector_cache["d"]

    t = time.perf_counter()
    model, tokenizer = unierase.load(setup.target)
    d = detector(model)
    before_probe = _precise_probe(model, tokenizer, setup, retain_eval, d)
    before = [
        {**_precise_item(model, tokenizer, it, setup.pool, setup, d), **before_probe}
        for it in items
    ]
    target_rows = [
        {
            "question": it.question,
            "group": it.group,
            "metrics": precise_item_metrics(b, b, it.group),
        }
        for it, b in zip(items, before, strict=True)
    ]
    out(_status("eval", "target model, every precise item", time.perf_counter() - t))

    results: dict[str, Any] = {
        "format": "unierase-bench-precise/1",
        "mode": "precise",
        "preset": settings.preset,
        "model": settings.model,
        "data": {**setup.training.description, "pool": len(setup.pool)},
        "items": [{"question": it.question, "group": it.group} for it in items],
        "target": {"path": str(setup.target), "summary": precise_summary(target_rows)},
        "methods": {},
        "notes": [
            "exact = the greedy answer is token-for-token the target model's",
            "retain numbers leave out the forgotten question's author (those are neighbours)",
        ],
    }

    token_dir = out_dir / "methods" / method_dir_name(UNIERASE) / "token_model"
    if UNIERASE in methods:
        # Phase I once (on every precise question, with the rest of the pool as breadth); each
        # item is then one question-level edit of a fresh copy of this checkpoint.
        t = time.perf_counter()
        net = model
        tcfg = token_config_for(net).replace(noise_layers=_edit_layers(net, settings),
                                             seed=settings.seed,
                                             **dict(settings.token_overrides))  # fmt: skip
        breadth = [it.question for it in setup.pool if it.question not in chosen]
        report = train_unlearning_token(net, tokenizer, items, tcfg, breadth=breadth,
                                        progress=settings.progress)  # fmt: skip
        save_token_checkpoint(net, tokenizer, report, token_dir, base_model=str(setup.target))
        results["token"] = report.to_dict()
        results["token_seconds"] = time.perf_counter() - t
        out(_status(UNIERASE, f"Phase I token trained once: {token_dir}", time.perf_counter() - t))
    del model

    for name in methods:
        directory = out_dir / "methods" / method_dir_name(name)
        rows: list[dict[str, Any]] = []
        t_method = time.perf_counter()
        for i, (item, b) in enumerate(zip(items, before, strict=True), 1):
            t = time.perf_counter()
            with PeakMemory() as memory:
                if name == UNIERASE:
                    rep = api.unlearn(
                        token_dir,
                        [item],
                        directory / "model",
                        mode="precise",
                        edit_overrides=dict(settings.edit_overrides),
                        stats_texts=settings.stats_texts,
                        seed=settings.seed,
                        progress=settings.progress,
                    ).to_dict()
                    model, tokenizer = unierase.load(directory / "model")
                else:
                    from unierase.baselines import run_baseline

                    model, tokenizer = unierase.load(setup.target)
                    retain = [it for it in setup.pool if it.group != item.group]
                    method, _own, overrides = baseline_run_settings(name, settings)
                    model, baseline = run_baseline(
                        method,
                        model,
                        tokenizer,
                        [item],
                        retain,
                        progress=settings.progress,
                        **overrides,
                    )
                    rep = baseline.to_dict()
            seconds = time.perf_counter() - t
            d = detector(model)
            after = {
                **_precise_item(model, tokenizer, item, setup.pool, setup, d),
                **_precise_probe(model, tokenizer, setup, retain_eval, d),
            }
            del model
            rows.append(
                {
                    "index": i,
                    "question": item.question,
                    "group": item.group,
                    "metrics": precise_item_metrics(after, b, item.group),
                    "seconds": seconds,
                    "peak_memory_bytes": memory.peak_bytes,
                    "report": rep,
                    "records": after,
                }
            )
        write_jsonl(directory / PRECISE_RECORDS, rows, default=str)
        summary = precise_summary(rows)
        results["methods"][name] = {
            "summary": summary,
            "seconds_per_item": _mean([row["seconds"] for row in rows]),
            "items": [{k: v for k, v in row.items() if k != "records"} for row in rows],
        }
        text = (
            f"{len(rows)} items: forgotten refused {_fmt(summary['forgotten_refusal'])}, "
            f"neighbours exact {_fmt(summary['neighbours_exact'])}, retain exact "
            f"{_fmt(summary['retain_exact'])}"
        )
        out(_status(name, text, time.perf_counter() - t_method))
    results["seconds"] = time.perf_counter() - t_all
    results["settings"] = _settings_record(settings)
    table = format_precise_table(results)
    csv_rows = [
        {"method": n, **s}
        for n, s in [("target (before)", results["target"]["summary"])]
        + [(n, m["summary"]) for n, m in results["methods"].items()]
    ]
    _write_outputs(out_dir, results, table, csv_rows, PRECISE_CSV,
                   lambda path: plot_precise(results, path), "unierase bench: precise",
                   out)  # fmt: skip
    return BenchResult(results, table, out_dir)


def format_precise_table(results: Mapping[str, Any]) -> str:
    """Markdown: one row per method (the target first), the means over the precise items."""
    lines = [
        "| method | " + " | ".join(label for _, label in PRECISE_COLUMNS) + " | s/item |",
        "|" + "---|" * (len(PRECISE_COLUMNS) + 2),
    ]
    rows = [("target (before)", results["target"]["summary"], None)]
    rows += [(n, m["summary"], m["seconds_per_item"]) for n, m in results["methods"].items()]
    for name, summary, seconds in rows:
        cells = [_fmt(summary.get(col)) for col, _ in PRECISE_COLUMNS]
        time_cell = "-" if seconds is None else f"{seconds:.1f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {time_cell} |")
    lines.append("")
    lines.append(
        f"{len(results['items'])} questions, each forgotten alone from a fresh target model; "
        "exact = the answer is token-for-token the target model's."
    )
    if results.get("token_seconds") is not None:
        lines.append(
            "UniErase's s/item is the edit alone: its token was trained once for every item "
            f"({results['token_seconds']:.0f} s)."
        )
    return "\n".join(lines)


def plot_precise(results: Mapping[str, Any], path: Path) -> bool:
    """Grouped bars, one group per measure, one bar per method; False without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    shown = (
        "forgotten_refusal",
        "paraphrase_refusal",
        "neighbours_exact",
        "neighbours_rouge",
        "retain_exact",
        "probe_accuracy",
    )
    labels = dict(PRECISE_COLUMNS)
    series = [("target (before)", results["target"]["summary"])]
    series += [(n, m["summary"]) for n, m in results["methods"].items()]
    fig = Figure(figsize=(max(8, 1.6 * len(shown)), 4.5), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(series)
    for j, (name, summary) in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(shown))]
        ax.bar(xs, [summary.get(k) or 0.0 for k in shown], width, label=name)
    ax.set_xticks(range(len(shown)), [labels[k] for k in shown], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_title(f"precise unlearning: {len(results['items'])} single questions")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small", ncols=2)
    fig.savefig(path, dpi=120)
    return True


# ----------------------------------------------------------------------------- HTML


def markdown_page_html(title: str, markdown: str, image: str | None) -> str:
    """A self-contained HTML page of a table-and-lines Markdown text, with an optional image."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if not table:
            return
        head, *rest = table
        body.append("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>")
        body.extend(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rest
        )
        body.append("</table>")
        table.clear()

    items: list[str] = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                table.append(cells)
            continue
        flush()
        if line.startswith("- "):
            items.append(f"<li>{html.escape(line[2:])}</li>")
            continue
        if items:
            body.append("<ul>" + "".join(items) + "</ul>")
            items = []
        if line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    flush()
    if items:
        body.append("<ul>" + "".join(items) + "</ul>")
    if image:
        body.append(f'<p><img src="{html.escape(image)}" alt="plot" style="max-width:100%"></p>')
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.25em .5em;text-align:right}"
        "td:first-child,th:first-child{text-align:left}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
