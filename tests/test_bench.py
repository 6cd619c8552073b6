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
    baseline_run_settings,
    format_table,
    headline_ratios,
    method_dir_name,
    resolve_methods,
    run_bench,
)


def test_methods_resolve_case_insensitively_and_reject_unknown_ones():
    assert resolve_methods(["uniERASE", "npo+gd", "GA"]) == (UNIERASE, "NPO+GD", "GA")
    assert resolve_methods([])[0] == UNIERASE and "RMU" in resolve_methods([])
    assert "UniErase-deep" not in resolve_methods([])  # opt-in: runs only when named
    assert resolve_methods(["uniERASE-DEEP", "GA"]) == ("UniErase-deep", "GA")
    with pytest.raises(ValueError, match="unknown baseline"):
        resolve_methods(["nope"])
    assert method_dir_name("IdkDPO+GD") == "IdkDPO_GD"


def test_baseline_variants_parse_to_one_canonical_name():
    from unierase.bench_variants import parse_variant, split_method_list

    # settings in BaselineConfig's field order, values written back from their parsed form
    assert resolve_methods(["ga[ lr = 3e-5 , epochs=3 ]"]) == ("GA[epochs=3,lr=3e-05]",)
    two_spellings = ["GA[epochs=3,lr=3e-5]", "GA[lr=0.00003,epochs=3]", "GA", "npo+gd[lr=1e-4]"]
    assert resolve_methods(two_spellings) == ("GA[epochs=3,lr=3e-05]", "GA", "NPO+GD[lr=0.0001]")
    assert resolve_methods(["GD[]"]) == ("GD",)  # no settings: the plain baseline
    method, settings = parse_variant("IDK+AP[cpu=true,rmu_layer=none,refusals=No idea.|Not sure.]")
    assert method == "IDK+AP"
    assert settings == {"cpu": True, "refusals": ("No idea.", "Not sure."), "rmu_layer": None}
    assert list(settings) == ["cpu", "refusals", "rmu_layer"]  # field order
    assert split_method_list(" UniErase, GA[lr=1e-5,epochs=3] ,NPO+GD,") == [
        "UniErase",
        "GA[lr=1e-5,epochs=3]",
        "NPO+GD",
    ]


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (
            ["GA[learning_rate=1e-5]"],
            "unknown BaselineConfig field 'learning_rate'; valid: epochs, lr",
        ),
        (["GA[epochs=2.5]"], "epochs takes an integer, not '2.5'"),
        (["GA[lr=fast]"], "lr takes a finite number, not 'fast'"),
        (["GA[cpu=maybe]"], "cpu takes true or false"),
        (["GA[lr=0]"], "lr must be > 0"),  # BaselineConfig's own checks, before any model loads
        (["GA[lr=1e-5,lr=2e-5]"], "lr is set twice"),
        (["GA[lr]"], "'lr' is not field=value"),
        (["GA[lr=1e-5]x"], "malformed method variant"),
        (["nope[lr=1e-5]"], "unknown baseline 'nope'"),
        (["UniErase[lr=1e-5]"], r"UniErase takes no \[settings\] variants"),
        (["uniErase-DEEP[lr=1e-5]"], r"UniErase-deep takes no \[settings\] variants"),
    ],
)
def test_baseline_variants_reject_bad_settings_clearly(names, message):
    with pytest.raises(ValueError, match=message):
        resolve_methods(names)


def test_method_lists_with_unbalanced_brackets_are_rejected():
    from unierase.bench_variants import split_method_list

    for text, message in [("GA[lr=1e-5,GD", "unclosed"), ("GA],GD", "without"),
                          ("GA[lr=[1]]", "nested")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            split_method_list(text)


def test_variant_directory_names_and_settings_precedence():
    assert method_dir_name("NPO+GD") == "NPO_GD"
    assert method_dir_name("NPO+GD[epochs=3,lr=3e-05]") == "NPO_GD__epochs=3__lr=3e-05"
    assert method_dir_name("IDK+AP[refusals=No idea.|Not sure.]") == (
        "IDK_AP__refusals=No-idea.-Not-sure."
    )
    settings = BenchSettings(seed=3, baseline_overrides={"epochs": 1, "lr": 1e-3})
    assert baseline_run_settings("GA[lr=1e-4]", settings) == (
        "GA",
        {"lr": 1e-4},
        {"seed": 3, "epochs": 1, "lr": 1e-4},  # the variant's own settings win
    )
    assert baseline_run_settings("GD", settings, seed=7) == (
        "GD",
        {},
        {"seed": 7, "epochs": 1, "lr": 1e-3},
    )


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
        methods=("UniErase", "UniErase-deep", "GA", "NPO+GD"),
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
    assert list(results["methods"]) == ["UniErase", "UniErase-deep", "GA", "NPO+GD"]
    for name, record in results["methods"].items():
        assert {"metrics", "seconds", "peak_memory_bytes", "report"} <= set(record)
        assert "paper/forget_efficacy" in record["metrics"]
        assert record["seconds"] > 0 and record["peak_memory_bytes"] > 0
        assert (out / "methods" / method_dir_name(name) / "eval" / "summary.json").is_file()
    assert results["methods"]["GA"]["report"]["steps"] == 2  # 5 forget QA, batches of 4
    assert (out / "methods" / "UniErase" / "model" / "config.json").is_file()
    assert results["methods"]["UniErase"]["metrics"]["tofu/forget_quality"] is not None
    # The deep variant is the same method with Phase II's deep option, and not a baseline.
    assert results["methods"]["UniErase"]["report"]["edit"]["deep"] is None
    deep = results["methods"]["UniErase-deep"]["report"]["edit"]["deep"]
    assert deep is not None and deep["answer_tokens"] == 4 and deep["weight"] == 0.3  # the defaults
    assert (out / "methods" / "UniErase-deep" / "model" / "config.json").is_file()
    assert {"mu_ratio", "fe_gain"} <= set(results["headline"])
    assert "UniErase" not in results["headline"].values()
    assert "UniErase-deep" not in results["headline"].values()
    table = (out / TABLE_FILE).read_text()
    assert "| target (before) |" in table and "| NPO+GD |" in table
    assert any(line.startswith("[GA]") for line in lines)


def _tune_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tune_baselines.py"
    spec = importlib.util.spec_from_file_location("tune_baselines", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_runs_two_variants_of_one_baseline(base_dir, tmp_path, capsys):
    from unierase.bench_tuning import TUNING_JSON, TUNING_MD, tuning_summary

    out = tmp_path / "bench"
    settings = BenchSettings(
        model=str(base_dir), out=out, methods=("GA[lr=1e-3]", "ga[epochs=2,lr=1e-2]"),
        authors=4, forget=1, questions=5, forget_items=5, retain_items=4, probe_items=3,
        max_new_tokens=4, probe_max_new_tokens=2, embedding_model="none",
        finetune_overrides={"epochs": 1, "lr": 1e-3}, baseline_overrides={"epochs": 1, "lr": 5e-4},
        retain_model=False, progress=False,
    )  # fmt: skip
    lines: list[str] = []
    run_bench(settings, lines.append)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert list(results["methods"]) == ["GA[lr=0.001]", "GA[epochs=2,lr=0.01]"]
    first, second = results["methods"].values()
    assert first["variant"] == {"method": "GA", "settings": {"lr": 0.001}}
    assert second["variant"] == {"method": "GA", "settings": {"epochs": 2, "lr": 0.01}}
    # the variant's settings win over baseline_overrides; the report records what ran
    assert (first["report"]["config"]["lr"], first["report"]["config"]["epochs"]) == (0.001, 1)
    assert (second["report"]["config"]["lr"], second["report"]["config"]["epochs"]) == (0.01, 2)
    assert (first["report"]["steps"], second["report"]["steps"]) == (2, 4)  # 5 QA, batches of 4
    for name in results["methods"]:
        assert (out / "methods" / method_dir_name(name) / "eval" / "summary.json").is_file()
    assert (out / "methods" / "GA__epochs=2__lr=0.01" / "eval").is_dir()
    assert "| GA[epochs=2,lr=0.01] |" in (out / TABLE_FILE).read_text()
    assert any(line.startswith("[GA[lr=0.001]]") for line in lines)
    # the tuning script reads the finished run (no model) and writes its files next to it
    summary = tuning_summary(results)
    assert [p["name"] for p in summary["methods"]["GA"]["points"]] == list(results["methods"])
    assert summary["methods"]["GA"]["chosen"]["name"] in results["methods"]
    keep = tmp_path / "kept"
    assert _tune_script().write_tuning(out, keep) == summary
    assert json.loads((out / TUNING_JSON).read_text()) == json.loads(json.dumps(summary))
    assert "| GA | lr=0.001 |" in (out / TUNING_MD).read_text()
    assert sorted(f.name for f in keep.iterdir()) == sorted(
        [RESULTS_FILE, TABLE_FILE, TUNING_JSON, TUNING_MD]
    )
    assert "Baseline tuning" in capsys.readouterr().out


def _point(method, settings, fe, mu, lr=1e-5):
    return {
        "metrics": {"paper/forget_efficacy": fe, "paper/model_utility": mu, "forget/rouge": 0.2,
                    "general/accuracy": 0.5},
        "seconds": 12.0,
        "report": {"config": {"lr": lr, "epochs": 5}},
        "variant": {"method": method, "settings": settings},
    }  # fmt: skip


def _hand_results():
    return {
        "target": {"metrics": {"paper/forget_efficacy": 0.3, "paper/model_utility": 0.5}},
        "methods": {
            UNIERASE: _metrics(0.95, 0.5),  # not a grid point
            "GA[lr=1e-05]": _point("GA", {"lr": 1e-5}, 0.4, 0.48),
            "GA[lr=3e-05]": _point("GA", {"lr": 3e-5}, 0.7, 0.46, 3e-5),  # keeps >= 0.45: chosen
            "GA[lr=0.0001]": _point("GA", {"lr": 1e-4}, 0.9, 0.2, 1e-4),  # forgets most, no MU
            "NPO+GD[lr=1e-05]": _point("NPO+GD", {"lr": 1e-5}, 0.5, 0.3),
            "NPO+GD[lr=3e-05]": _point("NPO+GD", {"lr": 3e-5}, 0.8, 0.1, 3e-5),
            "GD": {**_metrics(0.6, 0.6), "report": {"config": {"lr": 1e-5, "epochs": 5}}},
            "RMU[lr=0.0001]": _metrics(0.5, 0.5),  # a run from before "variant" was recorded
        },
    }


def test_tuning_rule_by_hand(tmp_path):
    from unierase.bench_tuning import (
        NO_POINT_KEEPS_MU,
        choose_setting,
        format_tuning,
        tuning_summary,
    )

    results = _hand_results()
    summary = tuning_summary(results)
    assert summary["target"] == {"fe": 0.3, "mu": 0.5, "mu_floor": pytest.approx(0.45)}
    assert list(summary["methods"]) == ["GA", "NPO+GD", "GD", "RMU"]
    ga = summary["methods"]["GA"]
    assert [p["name"] for p in ga["points"]] == ["GA[lr=1e-05]", "GA[lr=3e-05]", "GA[lr=0.0001]"]
    assert ga["points"][1] == {"name": "GA[lr=3e-05]", "settings": {"lr": 3e-5}, "lr": 3e-5,
                               "epochs": 5, "fe": 0.7, "mu": 0.46, "forget_rouge": 0.2,
                               "probe_accuracy": 0.5, "seconds": 12.0}  # fmt: skip
    assert ga["chosen"] == {"name": "GA[lr=3e-05]", "settings": {"lr": 3e-5}, "keeps_mu": True,
                            "note": None}  # fmt: skip
    # no NPO+GD point keeps 0.9 x the target's MU: the one with the highest MU, marked
    npo = summary["methods"]["NPO+GD"]["chosen"]
    assert (npo["name"], npo["keeps_mu"], npo["note"]) == ("NPO+GD[lr=1e-05]", False,
                                                           NO_POINT_KEEPS_MU)  # fmt: skip
    assert summary["methods"]["GD"]["points"][0]["settings"] == {}  # the defaults
    assert summary["methods"]["RMU"]["points"][0]["settings"] == {"lr": 0.0001}  # parsed
    assert "0.9 x the target model's MU" in summary["rule"]
    # the headline ratios against the chosen settings: GA[lr=3e-05] forgets most of them (not
    # GA[lr=0.0001], which loses MU), GD keeps most
    head = summary["headline"]
    assert head["best_forgetting_baseline"] == "GA[lr=3e-05]"
    assert head["mu_ratio"] == pytest.approx(0.5 / 0.46)
    assert head["best_retaining_baseline"] == "GD"
    assert head["fe_gain"] == pytest.approx(0.95 / 0.6 - 1)
    assert "UniErase" not in head["baselines"] and len(head["baselines"]) == 4

    # ties: the higher MU, then the earlier point
    a, b, c = ({"name": n, "settings": {}, "fe": 0.5, "mu": mu} for n, mu in
               (("a", 0.5), ("b", 0.6), ("c", 0.6)))  # fmt: skip
    assert choose_setting([a, b, c], target_mu=0.5)["name"] == "b"
    assert (
        choose_setting([{"name": "x", "settings": {}, "fe": None, "mu": 0.4}], 0.5)["name"] is None
    )

    table = format_tuning(summary)
    assert "| GA | lr=3e-05 | 0.700 | 0.460 |  |" in table
    assert f"| NPO+GD | lr=1e-05 | 0.500 | 0.300 | {NO_POINT_KEEPS_MU} |" in table
    assert "| GD | defaults | 1e-05 | 5 | 0.600 | 0.600 |" in table
    assert table.count("**yes**") == 4

    with pytest.raises(ValueError, match="no MU"):
        tuning_summary({"target": {"metrics": {}}, "methods": results["methods"]})
    with pytest.raises(ValueError, match="no baseline"):
        tuning_summary({**results, "methods": {UNIERASE: _metrics(0.9, 0.5)}})

    # --from-run: the choice redone from a finished run's results.json, no model
    (tmp_path / RESULTS_FILE).write_text(json.dumps(results))
    script = _tune_script()
    script.main(["--from-run", str(tmp_path)])
    assert (
        json.loads((tmp_path / "tuning.json").read_text())["methods"]["GA"]["chosen"]
        == (ga["chosen"])
    )
    assert script.grid(["GA", "NPO+GD"], [1e-5, 1e-4], [3]) == [
        "GA[lr=1e-05,epochs=3]", "GA[lr=0.0001,epochs=3]",
        "NPO+GD[lr=1e-05,epochs=3]", "NPO+GD[lr=0.0001,epochs=3]",
    ]  # fmt: skip
    assert resolve_methods(script.grid(["GA"], [3e-5], [])) == ("GA[lr=3e-05]",)
    assert resolve_methods(script.grid(["RMU[retain_weight=10]"], [3e-5], [])) == (
        "RMU[lr=3e-05,retain_weight=10.0]",
    )


def test_tuning_merges_runs_on_one_target_and_refuses_others(tmp_path):
    from unierase.bench_tuning import merge_runs, tuning_summary

    grid = {**_hand_results(), "preset": "demo", "model": "m"}
    grid["methods"] = {k: v for k, v in grid["methods"].items() if "[" in k}  # the variants
    defaults = {**grid, "methods": {UNIERASE: _metrics(0.95, 0.5),
                                    "GA": _point("GA", {}, 0.35, 0.49)}}  # fmt: skip
    merged = merge_runs([("grid", grid), ("defaults", defaults)])
    assert merged["runs"] == ["grid", "defaults"]
    assert merged["methods"][UNIERASE]["run"] == "defaults"  # the one run that has UniErase
    summary = tuning_summary(merged)
    ga = summary["methods"]["GA"]
    assert [(p["name"], p["run"]) for p in ga["points"]][-1] == ("GA", "defaults")
    assert ga["chosen"]["name"] == "GA[lr=3e-05]" and summary["runs"] == ["grid", "defaults"]
    # another target model (or other items), another preset, a method in both: not one grid
    other = {**defaults, "target": {"metrics": {"paper/forget_efficacy": 0.31,
                                                "paper/model_utility": 0.5}}}  # fmt: skip
    with pytest.raises(ValueError, match="paper/forget_efficacy"):
        merge_runs([("grid", grid), ("other", other)])
    with pytest.raises(ValueError, match="preset"):
        merge_runs([("grid", grid), ("tofu", {**defaults, "preset": "tofu-mini"})])
    with pytest.raises(ValueError, match=r"GA\[lr=1e-05\] is in run grid"):
        merge_runs([("grid", grid), ("again", grid)])
    # the script: --also-run adds the other run's points, and the tables name both runs
    for name, results in (("grid", grid), ("defaults", defaults)):
        (tmp_path / name).mkdir()
        (tmp_path / name / RESULTS_FILE).write_text(json.dumps(results))
    _tune_script().main(["--from-run", str(tmp_path / "grid"), "--also-run",
                         str(tmp_path / "defaults")])  # fmt: skip
    written = json.loads((tmp_path / "grid" / "tuning.json").read_text())
    assert len(written["methods"]["GA"]["points"]) == 4
    table = (tmp_path / "grid" / "tuning.md").read_text()
    assert "Grid points from 2 runs" in table and "Headline ratios against the chosen" in table
    assert written["headline"]["mu_ratio"] is not None


def test_tune_script_runs_the_whole_grid_as_one_bench_run(monkeypatch, tmp_path):
    import unierase.bench as B

    seen = []

    def fake_run_bench(settings, out):
        seen.append(settings)
        settings.out.mkdir(parents=True, exist_ok=True)
        (settings.out / RESULTS_FILE).write_text(json.dumps(_hand_results()))

    monkeypatch.setattr(B, "run_bench", fake_run_bench)
    out = tmp_path / "tune"
    _tune_script().main(["--quick", "--out", str(out), "--seed", "3", "--no-retain-model"])
    (s,) = seen
    assert s.methods == tuple(f"{m}[epochs=1,lr={lr}]" for m in ("GA", "GD")
                              for lr in ("1e-05", "3e-05", "0.0001"))  # fmt: skip
    assert (s.authors, s.forget_items, s.embedding_model, s.seed) == (4, 5, "none", 3)
    assert not s.retain_model and s.out == out
    assert (out / "tiny-model" / "config.json").is_file() and s.model == str(out / "tiny-model")
    assert (out / "tuning.json").is_file() and (out / "tuning.md").is_file()

    with pytest.raises(SystemExit, match="unknown BaselineConfig field"):
        _tune_script().main(["--methods", "GA[nope=1]", "--out", str(out)])
    assert len(seen) == 1  # a bad grid stops before the run


def _row(attack, u, r, b, rec=None):
    row = {"attack": attack}
    for role, v in (("unlearned", u), ("retain", r), ("before", b)):
        row[f"{role}/rouge"], row[f"{role}/p_answer"] = v, v / 2
    if attack != "token_injection":
        row["above_floor"] = u - r
    return {**row, "recovery": rec} if rec is not None else row


def test_attack_block_means_ranking_and_table_by_hand():
    from unierase.bench_attacks import (
        format_attack_table,
        least_leaking,
        least_leaking_text,
        method_entry,
    )

    ga = method_entry([_row("prefill", 0.5, 0.1, 0.9, 0.5), _row("token_ban", 0.3, 0.1, 0.9, 0.25),
                       _row("token_injection", 0.8, 0.8, 0.8)])  # fmt: skip
    prefill = {"rouge": 0.5, "p_answer": 0.25, "above_floor": pytest.approx(0.4), "recovery": 0.5}
    assert ga["attacks"]["prefill"] == prefill
    # token_injection measures kept answers, not leakage: out of the means
    assert ga["mean_recovery"] == pytest.approx(0.375) and ga["mean_rouge"] == pytest.approx(0.4)
    assert ga["mean_above_floor"] == pytest.approx(0.3)
    ue = method_entry(
        [_row("prefill", 0.2, 0.1, 0.9, 0.125), _row("token_ban", 0.1, 0.1, 0.9, 0.0)]
    )
    best = least_leaking({"GA": ga, UNIERASE: ue})
    assert best == {"method": UNIERASE, "by": "mean recovery", "value": pytest.approx(0.0625)}
    # without a floor there is no recovery: the ranking falls back to the forget ROUGE, and says so
    no_floor = {n: {**e, "mean_recovery": None} for n, e in {"GA": ga, UNIERASE: ue}.items()}
    best = least_leaking(no_floor)
    assert best["method"] == UNIERASE and best["by"] == "mean forget ROUGE-L" and best["reason"]
    assert "tied" not in best
    tie = least_leaking({"GA": ue, UNIERASE: ue})
    assert tie["method"] == "GA" and tie["tied"] == ["GA", UNIERASE]
    # the fallback's reason names the least gap it was given
    assert "at least 0.25 ROUGE-L" in least_leaking(no_floor, gap=0.25)["reason"]
    tied_block = {"attacks": ["prefill", "token_ban"], "least_leaking": tie}
    assert "least leaking: GA and UniErase (a tie) (mean recovery" in least_leaking_text(tied_block)
    block = {"attacks": ["prefill", "token_ban"], "items": {"forget": 4, "retain": 3},
             "ceiling": {"prefill": {"rouge": 0.9, "p_answer": 0.45}}, "floor": None,
             "methods": {"GA": ga, UNIERASE: ue}, "min_recovery_gap": 0.1,
             "least_leaking": least_leaking({"GA": ga})}  # fmt: skip
    table = format_attack_table(block)
    assert "| target (ceiling) | 0.90 / 0.45 | - | - | - |" in table and "(floor) |" not in table
    assert "| GA | 0.50 / 0.25, rec 0.50 | 0.30 / 0.15, rec 0.25 | +0.30 | 0.38 |" in table
    assert "at least 0.1 above the floor" in table
    assert "least leaking: GA (mean recovery 0.375 over prefill, token_ban)" in table


def test_bench_attacks_every_method_and_the_references(base_dir, tmp_path, monkeypatch):
    import torch

    import unierase.attacks as A
    from unierase.attacks.run import MIN_RECOVERY_GAP, RECORDS_FILE, SUMMARY_FILE
    from unierase.report import REPORT_FILE

    attacked = []
    real_run_attacks = A.run_attacks

    def run_attacks_unchanged(model, tokenizer, data, config):
        # Relearning fine-tunes a copy: the attacked model must come back as it went in.
        before = {k: v.clone() for k, v in model.state_dict().items()}
        result = real_run_attacks(model, tokenizer, data, config)
        after = model.state_dict()
        assert all(torch.equal(before[k], after[k]) for k in before)
        attacked.append(len(data.forget))
        return result

    monkeypatch.setattr(A, "run_attacks", run_attacks_unchanged)
    out = tmp_path / "bench"
    settings = BenchSettings(
        model=str(base_dir), out=out, methods=("UniErase", "GA"), authors=4, forget=1,
        questions=5, forget_items=5, retain_items=4, probe_items=2, max_new_tokens=4,
        probe_max_new_tokens=2, embedding_model="none",
        finetune_overrides={"epochs": 1, "lr": 1e-3}, baseline_overrides={"epochs": 1, "lr": 1e-3},
        token_overrides=bench_token_settings(),
        edit_overrides=BENCH_EDIT, stats_texts=BENCH_STATS_TEXTS, progress=False,
        attacks=("prefill", "token_ban", "relearn"), attack_items=4,
        attack_overrides={"prefills": ("Sure, ",), "relearn_epochs": 1, "relearn_batch_size": 2},
    )  # fmt: skip
    lines: list[str] = []
    run_bench(settings, lines.append)
    assert attacked == [4, 4, 4, 4]  # retain model, target, UniErase, GA: 4 forget questions each
    block = json.loads((out / RESULTS_FILE).read_text())["attacks"]
    assert block["attacks"] == ["prefill", "token_ban", "relearn"] and block["items"]["forget"] == 4
    assert block["config"]["max_new_tokens"] == 4 and block["config"]["prefills"] == ["Sure, "]
    assert list(block["methods"]) == ["UniErase", "GA"]
    for ref in ("ceiling", "floor"):
        assert set(block[ref]) == set(block["attacks"])
    for name, entry in block["methods"].items():
        assert set(entry["attacks"]) == set(block["attacks"])
        for attack, cells in entry["attacks"].items():
            assert 0 <= cells["rouge"] <= 1 and 0 <= cells["p_answer"] <= 1, (name, attack)
            ceiling, floor = block["ceiling"][attack]["rouge"], block["floor"][attack]["rouge"]
            assert cells["above_floor"] == pytest.approx(cells["rouge"] - floor)
            if ceiling - floor >= MIN_RECOVERY_GAP:  # recovery as attacks.compare computes it
                assert cells["recovery"] == pytest.approx(
                    (cells["rouge"] - floor) / (ceiling - floor)
                )
            else:
                assert cells["recovery"] is None
        directory = out / "methods" / method_dir_name(name) / "attacks"
        summary = json.loads((directory / SUMMARY_FILE).read_text())
        assert set(summary["models"]) == {"unlearned", "retain", "before"}
        # the references' records stay in their own directories
        roles = {json.loads(line)["model"] for line in (directory / RECORDS_FILE).open()}
        assert roles == {"unlearned"}
    best = block["least_leaking"]
    assert best["method"] in block["methods"] and best["value"] is not None
    records = [
        json.loads(line) for line in (out / "methods/UniErase/attacks" / RECORDS_FILE).open()
    ]
    assert {r["variant"] for r in records if r["attack"] == "token_ban"} == {"banned"}
    for ref in ("target", "retain_model"):
        assert (out / ref / "attacks" / SUMMARY_FILE).is_file()
    table = (out / TABLE_FILE).read_text()
    assert "| target (ceiling) |" in table and "| retain model (floor) |" in table
    assert "least leaking: " in table and "| GA | " in table
    assert "<h2>Attacks</h2>" in (out / REPORT_FILE).read_text()
    assert sum(line.startswith("[attack]") for line in lines) == 4


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
    assert (s.authors, s.questions) == (10, 10)  # the demo set's defaults when not given

    seen.clear()
    argv = [
        "bench",
        "--methods",
        "GA[lr=3e-5,epochs=3], GD,NPO+GD[lr=1e-4]",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    assert seen["s"].methods == ("GA[epochs=3,lr=3e-05]", "GD", "NPO+GD[lr=0.0001]")

    seen.clear()
    assert main(["bench", "--out", str(tmp_path), "--authors", "14", "--questions", "6"]) == 0
    assert (seen["s"].authors, seen["s"].questions) == (14, 6)
    assert seen["s"].attacks == ()  # no attacks unless asked

    seen.clear()
    argv = ["bench", "--out", str(tmp_path), "--attacks", "prefill, token_ban"]
    assert main([*argv, "--attack-items", "7"]) == 0
    assert seen["s"].attacks == ("prefill", "token_ban") and seen["s"].attack_items == 7
    seen.clear()
    assert main(["bench", "--out", str(tmp_path), "--attacks", "all"]) == 0
    assert seen["s"].attacks[:2] == ("direct", "prefill") and "membership" in seen["s"].attacks


def test_cli_bench_edit_settings_are_typed_edit_config_overrides(monkeypatch, tmp_path, capsys):
    import unierase.bench as B
    from unierase.cli import main

    seen = {}
    monkeypatch.setattr(B, "run_bench", lambda settings, out: seen.setdefault("s", settings))
    edits = ["deep_weight=0.2", "deep_answer_tokens=4", "deep_prefills=Sure, |Well,", "layers=3|4"]
    argv = ["bench", "--methods", "UniErase-deep", "--out", str(tmp_path)]
    assert main([*argv, *(x for e in edits for x in ("--edit-setting", e))]) == 0
    want = {"deep_weight": 0.2, "deep_answer_tokens": 4, "deep_prefills": ("Sure,", "Well,"),
            "layers": (3, 4)}  # items are stripped  # fmt: skip
    assert seen["s"].edit_overrides == want
    seen.clear()
    assert main(["bench", "--out", str(tmp_path)]) == 0 and seen["s"].edit_overrides == {}
    for bad, said in (("deep_weight", "not field=value"), ("nope=1", "unknown EditConfig field"),
                      ("deep_answer_tokens=many", "takes an integer"),
                      ("layers=a|b", "takes ints"), ("deep=maybe", "true or false")):  # fmt: skip
        assert main(["bench", "--out", str(tmp_path), "--edit-setting", bad]) == 2, bad
        assert said in capsys.readouterr().out, bad
    twice = ["--edit-setting", "v_lr=0.1", "--edit-setting", "v_lr=0.2"]
    assert main(["bench", "--out", str(tmp_path), *twice]) == 2
    assert "v_lr is set twice" in capsys.readouterr().out


def test_cli_bench_rejects_unknown_attacks_and_attacks_outside_batch_mode(tmp_path, capsys):
    from unierase.cli import main

    assert main(["bench", "--attacks", "prefill,nope", "--out", str(tmp_path)]) == 2
    assert "unknown attack(s) nope" in capsys.readouterr().out
    argv = ["bench", "--attacks", "prefill", "--mode", "precise", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "batch mode only" in capsys.readouterr().out
    argv = ["bench", "--methods", "UniErase-deep", "--mode", "sequential", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "UniErase-deep runs in batch mode only" in capsys.readouterr().out


def test_cli_bench_sizes_only_the_demo_set(tmp_path, capsys):
    from unierase.cli import main

    assert main(["bench", "--preset", "tofu-mini", "--authors", "12", "--out", str(tmp_path)]) == 2
    assert "demo preset's synthetic set only" in capsys.readouterr().out


def test_cli_bench_rejects_an_unknown_method(tmp_path, capsys):
    from unierase.cli import main

    assert main(["bench", "--methods", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown baseline" in capsys.readouterr().out
    assert main(["bench", "--methods", "GA,UniErase[lr=1e-5]", "--out", str(tmp_path)]) == 2
    assert "UniErase takes no [settings] variants" in capsys.readouterr().out
    assert main(["bench", "--methods", "GA[lr=1e-5,GD", "--out", str(tmp_path)]) == 2
    assert "unclosed" in capsys.readouterr().out


def test_cli_bench_rejects_a_learning_rate_that_is_not_positive(tmp_path, capsys):
    from unierase.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["bench", "--baseline-lr", "0", "--out", str(tmp_path)])
    assert stop.value.code == 2 and "must be > 0" in capsys.readouterr().err
