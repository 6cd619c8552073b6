"""``unierase bench`` end to end on a tiny random model: UniErase and two baselines, the files."""

from __future__ import annotations

import json

import pytest

from conftest import BENCH_EDIT, BENCH_STATS_TEXTS, bench_token_settings
from unierase.bench import (
    RESULTS_FILE,
    TABLE_FILE,
    UNIERASE,
    BenchSettings,
    format_table,
    headline_ratios,
    method_dir_name,
    resolve_methods,
    run_bench,
)


def test_methods_resolve_case_insensitively_and_reject_unknown_ones():
    assert resolve_methods(["uniERASE", "npo+gd", "GA"]) == (UNIERASE, "NPO+GD", "GA")
    assert resolve_methods([])[0] == UNIERASE and "RMU" in resolve_methods([])
    with pytest.raises(ValueError, match="unknown baseline"):
        resolve_methods(["nope"])
    assert method_dir_name("IdkDPO+GD") == "IdkDPO_GD"


def _metrics(fe, mu):
    return {"metrics": {"paper/forget_efficacy": fe, "paper/model_utility": mu}, "seconds": 1.0}


def test_headline_ratios_by_hand():
    methods = {
        UNIERASE: _metrics(0.8, 0.6),
        "GA": _metrics(0.9, 0.15),  # the best forgetter
        "GD": _metrics(0.5, 0.7),  # the best retainer
    }
    head = headline_ratios(methods)
    assert head["best_forgetting_baseline"] == "GA" and head["best_retaining_baseline"] == "GD"
    assert head["mu_ratio"] == pytest.approx(0.6 / 0.15)
    assert head["fe_gain"] == pytest.approx(0.8 / 0.5 - 1)
    assert headline_ratios({"GA": _metrics(0.9, 0.1)})["mu_ratio"] is None
    table = format_table({"target": _metrics(0.1, 0.7), "methods": methods, "headline": head})
    assert "| GA |" in table and "4.00x" in table and "+60%" in table


def test_bench_end_to_end(base_dir, tmp_path):
    out = tmp_path / "bench"
    lines: list[str] = []
    settings = BenchSettings(
        model=str(base_dir),
        out=out,
        methods=("UniErase", "GA", "NPO+GD"),
        authors=4,
        forget=1,
        questions=5,
        forget_items=5,
        retain_items=4,
        probe_items=3,
        max_new_tokens=4,
        probe_max_new_tokens=2,
        embedding_model="none",
        finetune_overrides={"epochs": 1, "lr": 1e-3},
        baseline_overrides={"epochs": 1, "lr": 1e-3},
        token_overrides=bench_token_settings(),
        edit_overrides=BENCH_EDIT,
        stats_texts=BENCH_STATS_TEXTS,
        progress=False,
    )
    result = run_bench(settings, lines.append)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results == json.loads(json.dumps(result.results, default=str))
    assert list(results["methods"]) == ["UniErase", "GA", "NPO+GD"]
    for name, record in results["methods"].items():
        assert {"metrics", "seconds", "peak_memory_bytes", "report"} <= set(record)
        assert "paper/forget_efficacy" in record["metrics"]
        assert record["seconds"] > 0 and record["peak_memory_bytes"] > 0
        assert (out / "methods" / method_dir_name(name) / "eval" / "summary.json").is_file()
    assert results["methods"]["GA"]["report"]["steps"] == 2  # 5 forget QA, batches of 4
    assert (out / "methods" / "UniErase" / "model" / "config.json").is_file()
    assert results["methods"]["UniErase"]["metrics"]["tofu/forget_quality"] is not None
    assert {"mu_ratio", "fe_gain"} <= set(results["headline"])
    table = (out / TABLE_FILE).read_text()
    assert "| target (before) |" in table and "| NPO+GD |" in table
    assert any(line.startswith("[GA]") for line in lines)


def test_cli_bench_options_reach_the_settings(monkeypatch, tmp_path):
    import unierase.bench as B
    from unierase.cli import main

    seen = {}
    monkeypatch.setattr(B, "run_bench", lambda settings, out: seen.setdefault("s", settings))
    argv = ["bench", "--methods", "UniErase, GA", "--out", str(tmp_path), "--baseline-epochs", "2"]
    assert main([*argv, "--baseline-lr", "1e-4", "--no-retain-model", "--no-progress"]) == 0
    s = seen["s"]
    assert s.methods == ("UniErase", "GA") and s.out == tmp_path and not s.retain_model
    assert s.baseline_overrides == {"epochs": 2, "lr": 1e-4} and not s.progress


def test_cli_bench_rejects_an_unknown_method(tmp_path, capsys):
    from unierase.cli import main

    assert main(["bench", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown baseline" in capsys.readouterr().out


def test_cli_bench_rejects_a_learning_rate_that_is_not_positive(tmp_path, capsys):
    from unierase.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["bench", "--baseline-lr", "0", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "must be > 0" in capsys.readouterr().err
