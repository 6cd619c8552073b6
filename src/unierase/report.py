"""The benchmark's HTML report: one self-contained page rendered from a finished ``bench`` run.

It reads only what ``unierase bench`` wrote (``results.json`` and the per-item evaluation records
under ``target/eval`` and ``methods/<name>/eval``), never a model, so a finished run can be
re-rendered at any time (``unierase report RUN_DIR``). The page holds:

- the two headline ratios (the paper's ~4.0x and +36%), as measured;
- forget efficacy vs model utility (the paper's family), one point per method;
- TOFU's forget quality vs model utility (forget quality on a log scale: it is a p-value);
- per-split bars of ROUGE-L recall, answer probability, truth ratio and refusal rate;
- the table of ``table.md`` with time and peak memory;
- when the run attacked its models (``--attacks``), the attack table and the method that leaks
  least (``unierase.bench_attacks``);
- before/after answers of a few forget and retain questions, per method.

Plots are inline SVG drawn with matplotlib (no file beside the page, no script, no network).
The same run gives a byte-identical page: SVG ids are salted with a constant, no date is written.
"""

from __future__ import annotations

import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unierase._util.atomic import write_atomically
from unierase._util.jsonl import read_jsonl
from unierase.bench import (
    RESULTS_FILE,
    TABLE_COLUMNS,
    UNIERASE,
    UNIERASE_DEEP,
    UNIERASE_METHODS,
    headline_ratios,
    method_dir_name,
)
from unierase.bench_attacks import attack_notes, attack_rows, least_leaking_text
from unierase.data.schema import DataError

REPORT_FILE = "report.html"
TARGET = "target (before)"
FE, MU = "paper/forget_efficacy", "paper/model_utility"
FQ, TOFU_MU = "tofu/forget_quality", "tofu/model_utility"
# Per-split bars: (panel title, metric under each split), and the splits shown.
BAR_METRICS: tuple[tuple[str, str], ...] = (
    ("ROUGE-L recall", "rouge"),
    ("answer probability", "prob"),
    ("truth ratio", "truth_ratio"),
    ("refusal rate", "refusal_rate"),
)
BAR_SPLITS: tuple[str, ...] = ("forget", "retain", "real_authors", "world_facts")
SAMPLE_SPLITS: tuple[str, ...] = ("forget", "retain")
FIGURE_IDS: tuple[str, ...] = ("fe-mu", "fq-mu", "per-split")


@dataclass
class BenchRun:
    """A finished bench run as the report sees it.

    Attributes:
        results: the content of ``results.json``.
        records: model name (``TARGET`` or a method) -> split -> per-item records; only the
            splits the samples need are read, and a model without records is absent.
    """

    results: dict[str, Any]
    records: dict[str, dict[str, list[dict[str, Any]]]]


def _read_records(eval_dir: Path, splits: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    paths = {s: eval_dir / f"{s}.jsonl" for s in splits}
    return {
        s: read_jsonl(path, source=str(path), error=DataError)
        for s, path in paths.items()
        if path.is_file()
    }


def load_run(run_dir: str | Path, splits: Sequence[str] = SAMPLE_SPLITS) -> BenchRun:
    """Read ``results.json`` and the records of ``splits`` for the target and every method.

    Raises:
        DataError: when ``run_dir`` has no ``results.json``, it is not a bench result, or a
            record line is not JSON.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise DataError(f"{run_dir}: no {RESULTS_FILE} (not a finished `unierase bench` run)")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: malformed JSON ({err.msg})") from err
    if not isinstance(results, dict) or "methods" not in results or "target" not in results:
        raise DataError(f"{path}: not a bench result (needs 'target' and 'methods')")
    if results.get("mode", "batch") != "batch":
        # sequential and precise runs (unierase.bench_modes) write their own report.html
        raise DataError(
            f"{path}: a {results['mode']} run; this report renders batch runs only "
            "(the run's own report.html covers it)"
        )
    records = {TARGET: _read_records(run_dir / "target" / "eval", splits)}
    for name in results["methods"]:
        records[name] = _read_records(run_dir / "methods" / method_dir_name(name) / "eval", splits)
    return BenchRun(results, {k: v for k, v in records.items() if v})


# ----------------------------------------------------------------------------- figures


def _models(results: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    """(name, metrics) of the target, then of every method in run order."""
    rows = [(TARGET, results["target"].get("metrics", {}))]
    return rows + [(n, r.get("metrics", {})) for n, r in results["methods"].items()]


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _style(name: str, index: int) -> dict[str, Any]:
    """Marker and colour per model: the target hollow grey, UniErase a red star, baselines from
    a qualitative palette in run order."""
    if name == TARGET:
        return {"marker": "o", "color": "0.45", "facecolor": "none", "size": 60}
    if name == UNIERASE:
        return {"marker": "*", "color": "#d62728", "facecolor": "#d62728", "size": 220}
    if name == UNIERASE_DEEP:
        return {"marker": "*", "color": "#d62728", "facecolor": "none", "size": 220}
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#393b79", "#637939"]  # fmt: skip
    colour = palette[index % len(palette)]
    return {"marker": "o", "color": colour, "facecolor": colour, "size": 60}


def _svg(fig: Any) -> str:
    """The figure as an inline ``<svg>`` element, byte-identical across renders."""
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": "unierase-report", "svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    return text[text.index("<svg") :].strip()


def _new_figure(width: float, height: float) -> Any:
    # Figure, not pyplot: no global state and no GUI backend.
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def scatter_svg(
    points: Sequence[tuple[str, float, float]],
    xlabel: str,
    ylabel: str,
    title: str,
    log_y: bool = False,
) -> str:
    """A labelled scatter plot, one point per model, as inline SVG.

    Args:
        points: (model name, x, y); the target and UniErase get their own markers.
        xlabel, ylabel, title: axis labels and title.
        log_y: a logarithmic y axis (forget quality is a p-value).
    """
    fig = _new_figure(6.4, 4.6)
    ax = fig.add_subplot()
    for i, (name, x, y) in enumerate(points):
        st = _style(name, i)
        ax.scatter([x], [y], s=st["size"], marker=st["marker"], edgecolors=st["color"],
                   facecolors=st["facecolor"], linewidths=1.5, zorder=3)  # fmt: skip
        ax.annotate(name, (x, y), xytext=(6, 4), textcoords="offset points", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=11)
    if log_y:
        ax.set_yscale("log")
    else:
        ax.set_ylim(-0.02, 1.05)
    ax.set_xlim(-0.02, 1.05)
    ax.grid(True, alpha=0.3)
    return _svg(fig)


def bars_svg(models: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """Grouped bars: one panel per metric of :data:`BAR_METRICS`, a group per split, a bar per
    model (a missing value leaves a gap)."""
    import numpy as np

    fig = _new_figure(11.0, 6.2)
    axes = fig.subplots(2, 2).ravel()
    n = max(len(models), 1)
    width = 0.8 / n
    x = np.arange(len(BAR_SPLITS))
    for ax, (title, metric) in zip(axes, BAR_METRICS, strict=True):
        for i, (name, metrics) in enumerate(models):
            values = [_num(metrics.get(f"{split}/{metric}")) for split in BAR_SPLITS]
            heights = [np.nan if v is None else v for v in values]
            st = _style(name, i)
            colour = st["color"] if name != TARGET else "0.75"
            ax.bar(x - 0.4 + width * (i + 0.5), heights, width, color=colour, label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xticks(x, [s.replace("_", " ") for s in BAR_SPLITS], fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.grid(True, axis="y", alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right center", fontsize=8)
    return _svg(fig)


# ----------------------------------------------------------------------------- the page

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1150px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.88em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; vertical-align: top; }
th:first-child, td:first-child { text-align: left; }
table.samples td { text-align: left; max-width: 32em; }
tr.unierase td { background: #fdecea; }
.headline { font-size: 1.1em; background: #f6f8fa; padding: 0.6em 1em; border-left: 4px solid
            #d62728; }
.note { color: #666; font-size: 0.9em; }
figure { margin: 1em 0; } figure svg { max-width: 100%; height: auto; }
code { background: #f3f3f3; padding: 0 0.2em; }
"""


def _fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    return "-" if v is None else f"{v:.{digits}f}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _headline_html(results: Mapping[str, Any]) -> str:
    head = results.get("headline") or headline_ratios(results["methods"])
    lines = []
    if _num(head.get("mu_ratio")) is not None:
        lines.append(
            f"UniErase's MU / MU of the best-forgetting baseline "
            f"({_e(head.get('best_forgetting_baseline'))}): <b>{head['mu_ratio']:.2f}x</b> "
            "(the paper: ~4.0x)"
        )
    if _num(head.get("fe_gain")) is not None:
        lines.append(
            f"UniErase's FE vs the best-retaining baseline "
            f"({_e(head.get('best_retaining_baseline'))}): <b>{head['fe_gain']:+.0%}</b> "
            "(the paper: +36%)"
        )
    if not lines:
        lines.append(f"headline ratios not available: {_e(head.get('reason', 'no numbers'))}")
    return '<p class="headline">' + "<br>\n".join(lines) + "</p>"


def _table_html(results: Mapping[str, Any]) -> str:
    cols = "".join(f"<th>{_e(label)}</th>" for label, _ in TABLE_COLUMNS)
    rows = [f"<tr><th>method</th>{cols}<th>time (s)</th><th>peak memory (MB)</th></tr>"]
    for name, metrics in _models(results):
        record = results["methods"].get(name, {}) if name != TARGET else {}
        cells = "".join(f"<td>{_fmt(metrics.get(key))}</td>" for _, key in TABLE_COLUMNS)
        seconds = _num(record.get("seconds"))
        memory = _num(record.get("peak_memory_bytes"))
        time_cell = "-" if seconds is None else f"{seconds:.0f}"
        memory_cell = "-" if memory is None else f"{memory / 2**20:.0f}"
        css = ' class="unierase"' if name in UNIERASE_METHODS else ""
        rows.append(
            f"<tr{css}><td>{_e(name)}</td>{cells}<td>{time_cell}</td><td>{memory_cell}</td></tr>"
        )
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _attacks_html(results: Mapping[str, Any]) -> str:
    """The attack section: which method leaks least, and the table of every attacked model."""
    block = results["attacks"]
    header, rows = attack_rows(block)
    lines = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in header) + "</tr>"]
    for name, cells in rows:
        css = ' class="unierase"' if name in UNIERASE_METHODS else ""
        tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
        lines.append(f"<tr{css}><td>{_e(name)}</td>{tds}</tr>")
    items = block.get("items", {})
    notes = [
        f"{items.get('forget', '-')} forget and {items.get('retain', '-')} retain questions "
        "attacked (a seeded sample of the evaluated ones); per-item records under "
        "methods/&lt;name&gt;/attacks.",
        *(_e(n) for n in attack_notes(block)),
    ]
    return (
        f'<p class="headline">{_e(least_leaking_text(block))}</p>\n<table>\n'
        + "\n".join(lines)
        + "\n</table>\n"
        + "\n".join(f'<p class="note">{n}</p>' for n in notes)
    )


def _figure_html(fig_id: str, caption: str, svg: str | None, missing: str = "") -> str:
    body = svg if svg is not None else f'<p class="note">not plotted: {_e(missing)}</p>'
    return (
        f'<figure id="{fig_id}">\n{body}\n<figcaption class="note">{_e(caption)}</figcaption>'
        "\n</figure>"
    )


def _scatter(
    results: Mapping[str, Any], xkey: str, ykey: str, labels: tuple[str, str, str]
) -> tuple[str, str | None, str]:
    """(caption, svg or None, why not plotted) of a scatter plot, one point per model."""
    points, absent = [], []
    for name, metrics in _models(results):
        x, y = _num(metrics.get(xkey)), _num(metrics.get(ykey))
        if x is None or y is None or (ykey == FQ and y <= 0):
            absent.append(name)
        else:
            points.append((name, x, y))
    caption = f"{labels[2]}: one point per model."
    if absent:
        caption += f" Without a value (not plotted): {', '.join(absent)}."
    if not points:
        return caption, None, f"no model has both {xkey} and {ykey}"
    return caption, scatter_svg(points, labels[0], labels[1], labels[2], log_y=ykey == FQ), ""


def figures(results: Mapping[str, Any]) -> list[tuple[str, str, str | None, str]]:
    """The report's plots: (id, caption, svg or None, why not plotted) each."""
    fe_mu = _scatter(results, MU, FE, (
        "model utility (paper, harmonic mean of 18 scores)",
        "forget efficacy (paper)",
        "Forget efficacy vs model utility",
    ))  # fmt: skip
    fq_mu = _scatter(results, TOFU_MU, FQ, (
        "model utility (TOFU)",
        "forget quality (KS-test p-value, log)",
        "Forget quality vs model utility",
    ))  # fmt: skip
    bars = (
        "Per split: ROUGE-L recall, answer probability, truth ratio and refusal rate of every "
        "model (forget: lower is better except refusals; other splits: higher is better except "
        "refusals).",
        bars_svg(_models(results)),
        "",
    )
    return [("fe-mu", *fe_mu), ("fq-mu", *fq_mu), ("per-split", *bars)]


def _samples_html(run: BenchRun, n_samples: int) -> str:
    """Per split, the first ``n_samples`` questions: the reference answer, the target's answer
    and every method's answer (matched by question)."""
    before = run.records.get(TARGET, {})
    methods = [n for n in run.results["methods"] if n in run.records]
    if not before and not methods:
        return '<p class="note">no evaluation records found next to results.json.</p>'
    parts = []
    for split in SAMPLE_SPLITS:
        base = before.get(split) or next(
            (run.records[m][split] for m in methods if run.records[m].get(split)), []
        )
        if not base:
            continue
        parts.append(f"<h3>{_e(split)} questions</h3>")
        by_question = {
            name: {r.get("question"): r for r in run.records.get(name, {}).get(split, [])}
            for name in [TARGET, *methods]
        }
        for rec in base[:n_samples]:
            q = rec.get("question")
            rows = [f"<tr><td>reference</td><td>{_e(rec.get('answer', ''))}</td></tr>"]
            for name in [TARGET, *methods]:
                other = by_question[name].get(q)
                if other is None:
                    continue
                gen = other.get("generation")
                text = "(not generated)" if gen is None else gen if gen.strip() else "(empty)"
                css = ' class="unierase"' if name in UNIERASE_METHODS else ""
                rows.append(f"<tr{css}><td>{_e(name)}</td><td>{_e(text)}</td></tr>")
            parts.append(
                f"<p><b>Q:</b> {_e(q)}</p>\n<table class=\"samples\">\n" + "\n".join(rows)
                + "\n</table>"
            )  # fmt: skip
    return "\n".join(parts) if parts else '<p class="note">no forget or retain records.</p>'


def _setup_html(results: Mapping[str, Any]) -> str:
    data = results.get("data", {})
    items = data.get("eval_items", {})
    settings = results.get("settings", {})
    facts = [
        ("preset", results.get("preset")),
        ("model", results.get("model")),
        ("forget / retain QA", f"{data.get('n_forget', '-')} / {data.get('n_retain', '-')}"),
        ("evaluated items", ", ".join(f"{k} {v}" for k, v in items.items()) or "-"),
        ("retain model", results.get("retain_model") or "none (no forget quality)"),
        ("seed", settings.get("seed", "-")),
        ("total time", f"{_num(results.get('seconds')) or 0:.0f} s"),
    ]
    rows = "\n".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in facts)
    return f'<table class="samples">\n{rows}\n</table>'


def render_html(run: BenchRun, n_samples: int = 3) -> str:
    """The whole report page for a loaded run (see the module docstring)."""
    results = run.results
    figs = [_figure_html(*fig) for fig in figures(results)]
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f"<title>unierase bench: {_e(results.get('preset', ''))}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body>",
            f"<h1>UniErase vs fine-tuning baselines ({_e(results.get('preset', ''))})</h1>",
            _headline_html(results),
            "<h2>Setup</h2>",
            _setup_html(results),
            "<h2>Forgetting vs utility</h2>",
            figs[0],
            figs[1],
            "<h2>Per split</h2>",
            figs[2],
            "<h2>Table</h2>",
            _table_html(results),
            "<p class=\"note\">FE and MU: the paper's family; forget quality and TOFU MU: TOFU's. "
            "Time: the unlearning alone (evaluation excluded). Every number comes from "
            "results.json; per-item records are under methods/&lt;name&gt;/eval.</p>",
            *(["<h2>Attacks</h2>", _attacks_html(results)] if results.get("attacks") else []),
            "<h2>Answers before and after</h2>",
            _samples_html(run, n_samples),
            "</body>",
            "</html>",
            "",
        ]
    )


def write_report(run_dir: str | Path, out: str | Path | None = None, n_samples: int = 3) -> Path:
    """Render ``RUN_DIR/results.json`` and its records to ``out`` (default
    ``RUN_DIR/report.html``), written atomically; returns the path.

    Raises:
        DataError: see :func:`load_run`.
    """
    run = load_run(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    return write_atomically(path, render_html(run, n_samples=n_samples))


def write_figures(run_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write the report's plots as standalone SVG files (``fe-mu.svg``, ``fq-mu.svg``,
    ``per-split.svg``) to ``out_dir``, for a README or a paper; returns the paths written
    (a plot without data is left out)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for fig_id, _caption, svg, _missing in figures(load_run(run_dir).results):
        if svg is None:
            continue
        paths.append(write_atomically(out / f"{fig_id}.svg", svg + "\n"))
    return paths
