"""The bench's HTML report, rendered from a small hand-made run (no model)."""

from __future__ import annotations

import json

import pytest

from unierase.bench import RESULTS_FILE, headline_ratios, method_dir_name
from unierase.data.schema import DataError
from unierase.report import FIGURE_IDS, REPORT_FILE, load_run, write_report


def _metrics(fe, mu, fq, tofu_mu, forget_rouge):
    return {
        "paper/forget_efficacy": fe,
        "paper/model_utility": mu,
        "tofu/forget_quality": fq,
        "tofu/model_utility": tofu_mu,
        "forget/rouge": forget_rouge,
        "forget/prob": 0.25,
        "forget/refusal_rate": 0.5,
        "retain/rouge": 0.875,
        "retain/truth_ratio": 0.6,
        "real_authors/rouge": None,
        "general/accuracy": 0.7,
        "over_refusal/rate": 0.05,
    }


METHODS = {
    "UniErase": _metrics(0.812, 0.642, 0.0314, 0.55, 0.111),
    "GA": _metrics(0.934, 0.157, 1.2e-5, 0.12, 0.021),
    "NPO+GD": _metrics(0.521, 0.703, None, 0.61, 0.402),
}


def _write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")


def _records(split, answers):
    return [
        {"split": split, "index": i, "question": f"{split} question {i}?", "answer": f"truth {i}",
         "generation": a}
        for i, a in enumerate(answers)
    ]  # fmt: skip


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "bench"
    methods = {
        name: {"metrics": m, "seconds": 12.0 + i, "peak_memory_bytes": (300 + i) * 2**20}
        for i, (name, m) in enumerate(METHODS.items())
    }
    results = {
        "format": "unierase-bench/1",
        "preset": "demo",
        "model": "tiny",
        "data": {"n_forget": 4, "n_retain": 16, "eval_items": {"forget": 4, "retain": 3}},
        "target": {"metrics": _metrics(0.104, 0.731, 1e-4, 0.6, 0.93)},
        "retain_model": "cache/retain",
        "methods": methods,
        "headline": headline_ratios(methods),
        "seconds": 99.0,
        "settings": {"seed": 0},
    }
    run.mkdir()
    (run / RESULTS_FILE).write_text(json.dumps(results), "utf-8")
    _write_jsonl(run / "target/eval/forget.jsonl", _records("forget", ["Old <fact> & more"] * 4))
    _write_jsonl(run / "target/eval/retain.jsonl", _records("retain", ["kept"] * 3))
    for name in METHODS:
        eval_dir = run / "methods" / method_dir_name(name) / "eval"
        _write_jsonl(eval_dir / "forget.jsonl", _records("forget", [f"{name} forgot"] * 4))
        _write_jsonl(eval_dir / "retain.jsonl", _records("retain", [f"{name} kept"] * 3))
    return run


def test_report_holds_the_table_figures_ratios_and_samples(run_dir):
    path = write_report(run_dir, n_samples=2)
    assert path == run_dir / REPORT_FILE
    page = path.read_text("utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # every table value, time and memory
    for value in ("0.812", "0.642", "0.934", "0.157", "0.521", "0.703", "0.104", "0.731",
                  "0.031", "0.111", "0.875", "0.050", ">12<", ">302<"):  # fmt: skip
        assert value in page, value
    # one inline plot per figure, self-contained
    assert page.count("<svg") == len(FIGURE_IDS) == 3
    for fig_id in FIGURE_IDS:
        section = page.split(f'<figure id="{fig_id}">')[1].split("</figure>")[0]
        assert section.count("<svg") == 1, fig_id
    assert "<script" not in page and 'src="' not in page and 'href="http' not in page
    # the headline ratios: 0.642 / 0.157 (GA forgets best), 0.812 / 0.521 - 1 (NPO+GD retains)
    assert f"{0.642 / 0.157:.2f}x" in page and f"{0.812 / 0.521 - 1:+.0%}" in page
    # NPO+GD has no forget quality: said, not plotted
    assert "Without a value (not plotted): NPO+GD" in page
    # samples: 2 per split, before and after, escaped
    assert "forget question 1?" in page and "forget question 2?" not in page
    assert "Old &lt;fact&gt; &amp; more" in page and "NPO+GD forgot" in page
    assert "UniErase kept" in page


def test_report_says_which_method_leaks_least_when_the_run_attacked(run_dir):
    from unierase.bench_attacks import least_leaking

    assert "<h2>Attacks</h2>" not in write_report(run_dir).read_text("utf-8")
    results = json.loads((run_dir / RESULTS_FILE).read_text())

    def entry(rouge, recovery):
        cells = {"rouge": rouge, "p_answer": rouge / 2, "above_floor": rouge - 0.0625,
                 "recovery": recovery}  # fmt: skip
        return {"attacks": {"prefill": cells}, "mean_recovery": recovery, "mean_rouge": rouge,
                "mean_above_floor": rouge - 0.0625}  # fmt: skip

    methods = {"UniErase": entry(0.125, 0.0625), "GA": entry(0.25, 0.25)}
    results["attacks"] = {
        "attacks": ["prefill"],
        "items": {"forget": 4, "retain": 3},
        "ceiling": {"prefill": {"rouge": 0.875, "p_answer": 0.5}},
        "floor": {"prefill": {"rouge": 0.0625, "p_answer": 0.03}},
        "min_recovery_gap": 0.1,
        "methods": methods,
        "least_leaking": least_leaking(methods),
    }
    (run_dir / RESULTS_FILE).write_text(json.dumps(results), "utf-8")
    page = write_report(run_dir).read_text("utf-8")
    section = page.split("<h2>Attacks</h2>")[1].split("<h2>")[0]
    assert "least leaking: UniErase (mean recovery 0.062 over prefill)" in section
    assert "<td>target (ceiling)</td><td>0.88 / 0.50</td><td>-</td><td>-</td>" in section
    assert "<td>GA</td><td>0.25 / 0.12, rec 0.25</td><td>+0.19</td><td>0.25</td>" in section
    assert "at least 0.1 above the floor" in section


def test_report_rerenders_byte_identically(run_dir, tmp_path):
    first = write_report(run_dir).read_bytes()
    again = write_report(run_dir, tmp_path / "again.html").read_bytes()
    assert first == again


def test_report_without_records_or_results(run_dir, tmp_path):
    import shutil

    shutil.rmtree(run_dir / "methods")
    shutil.rmtree(run_dir / "target")
    page = write_report(run_dir).read_text("utf-8")
    assert "no evaluation records found" in page and page.count("<svg") == 3
    with pytest.raises(DataError, match="no results.json"):
        load_run(tmp_path / "nowhere")
    results = json.loads((run_dir / RESULTS_FILE).read_text())
    (run_dir / RESULTS_FILE).write_text(json.dumps({**results, "mode": "sequential"}))
    with pytest.raises(DataError, match="batch runs only"):
        load_run(run_dir)


def test_cli_report(run_dir, tmp_path, capsys):
    from unierase.cli import main

    out = tmp_path / "r.html"
    assert main(["report", str(run_dir), "--out", str(out), "--samples", "1"]) == 0
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    assert "no results.json" in capsys.readouterr().out


def test_cli_report_writes_the_plots_as_svg_files(run_dir, tmp_path, capsys):
    import xml.etree.ElementTree as ET

    from unierase.cli import main

    figs = tmp_path / "figs"
    assert main(["report", str(run_dir), "--out", str(tmp_path / "r.html"), "--figures",
                 str(figs)]) == 0  # fmt: skip
    written = sorted(p.name for p in figs.iterdir())
    assert "fe-mu.svg" in written and "per-split.svg" in written
    assert capsys.readouterr().out.count("figure: ") == len(written)
    html = (tmp_path / "r.html").read_text("utf-8")
    for name in written:
        root = ET.parse(figs / name).getroot()  # a standalone, well-formed SVG file
        assert root.tag.endswith("svg")
        # The same plot as in the page.
        assert (figs / name).read_text("utf-8").strip() in html
