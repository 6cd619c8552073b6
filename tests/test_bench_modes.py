"""``unierase bench --mode sequential|precise``: the per-round bookkeeping, then both end to end
on a tiny random model (2 rounds of 2 questions; 2 precise items)."""

from __future__ import annotations

import json

import pytest

from conftest import BENCH_EDIT, BENCH_STATS_TEXTS, bench_token_settings
from unierase.bench import RESULTS_FILE, TABLE_FILE, BenchSettings, run_bench
from unierase.bench_modes import (
    HTML_FILE,
    PRECISE_CSV,
    PRECISE_RECORDS,
    ROUNDS_CSV,
    check_resume,
    choose_precise_items,
    drop_repeats,
    markdown_page_html,
    mu_collapse_round,
    neighbours,
    paraphrase_item,
    plan_rounds,
    precise_item_metrics,
)
from unierase.data.schema import DataError, QAItem


def _pool(authors: str = "ABCDE", per_author: int = 3) -> list[QAItem]:
    return [
        QAItem(
            question=f"Q{i} about {a}?",
            answer=f"A{i} of {a}.",
            group=a,
            paraphrased_question=f"Q{i} on {a}?" if i % 2 == 0 else None,
        )
        for a in authors
        for i in range(per_author)
    ]


# ----------------------------------------------------------------------------- bookkeeping


def test_each_round_takes_authors_no_earlier_round_touched():
    pool = _pool("ABCDE", 3)
    plan = plan_rounds(pool, rounds=3, per_round=2, seed=1)
    assert [len(r) for r in plan.rounds] == [2, 2, 2]
    seen: set[str] = set()
    for items, groups in zip(plan.rounds, plan.groups, strict=True):
        assert {it.group for it in items} == set(groups) and not set(groups) & seen
        seen |= set(groups)
    # The authors no round touched are the retain set, whole.
    assert {it.group for it in plan.retain} == set("ABCDE") - seen
    assert len(plan.retain) == 3 * (5 - len(seen)) and plan.skipped == [[], [], []]
    assert plan_rounds(pool, 3, 2, seed=1).rounds == plan.rounds  # seeded
    # A round larger than an author spans the next author; the next round starts a new one.
    plan = plan_rounds(pool, rounds=2, per_round=4, seed=0)
    assert [len(g) for g in plan.groups] == [2, 2] and len(plan.retain) == 3
    with pytest.raises(DataError, match="at least one author must"):
        plan_rounds(pool, rounds=5, per_round=1)
    with pytest.raises(DataError, match="rounds >= 1"):
        plan_rounds(pool, rounds=0, per_round=1)


def test_a_round_that_repeats_a_forgotten_question_is_reported_and_skipped():
    a, b, c = _pool("A", 3)
    kept, skipped = drop_repeats([[a, b], [b, c], [a]], already=[c.question])
    assert kept == [[a, b], [], []]
    assert skipped == [[], [b.question, c.question], [a.question]]


def test_precise_items_spread_over_authors_and_keep_neighbours():
    pool = _pool("ABC", 3)
    items = choose_precise_items(pool, 5, seed=0)
    assert len({it.question for it in items}) == 5
    assert len({it.group for it in items[:3]}) == 3  # one per author before a second
    for g in "ABC":
        assert sum(it.group == g for it in items) <= 2  # one question of each author stays
    assert all(it.paraphrased_question for it in items[:3])  # paraphrased ones first
    near = neighbours(items[0], pool)
    assert len(near) == 2 and all(n.group == items[0].group for n in near)
    assert items[0] not in near
    with pytest.raises(DataError, match="only 6 questions"):
        choose_precise_items(pool, 7)
    para = paraphrase_item(items[0])
    assert para.question == items[0].paraphrased_question and para.answer == items[0].answer
    assert paraphrase_item(QAItem("q?", "a")) is None


def test_mu_collapse_round():
    assert mu_collapse_round([0.8, 0.75, 0.5, 0.9], start=0.85) == 2  # 0.75 < 0.765
    assert mu_collapse_round([0.8, 0.8], start=0.85) is None
    assert mu_collapse_round([0.1], start=None) is None


def test_a_resume_from_another_models_state_is_refused(tmp_path):
    from unierase.api import ResumeError

    record = {"format": 1, "tokens": [{"text": "<|unlearn|>", "id": 9, "base_model": "/m/one"}]}
    (tmp_path / "unierase_token.json").write_text(json.dumps(record))
    check_resume(tmp_path, "/m/one")
    with pytest.raises(ResumeError, match="not from /m/two"):
        check_resume(tmp_path, "/m/two")
    with pytest.raises(ResumeError, match="cannot resume"):
        check_resume(tmp_path / "missing", "/m/one")


def _rec(group, generation, rouge=0.5, refusal=False, probe=None):
    rec = {"group": group, "generation": generation, "rouge": rouge, "refusal": refusal}
    return rec if probe is None else {**rec, "probe_correct": probe}


def test_precise_metrics_measure_the_item_its_paraphrase_neighbours_and_retain():
    before = {
        "forgotten": _rec("A", "a1", 1.0),
        "paraphrase": _rec("A", "p1", 0.8),
        "neighbours": [_rec("A", "n1"), _rec("A", "n2"), _rec("A", "n3"), _rec("A", "n4")],
        "retain": [_rec("A", "x"), _rec("B", "r1"), _rec("C", "r2")],
        "general": [_rec(None, "g", probe=True), _rec(None, "h", probe=True)],
    }
    after = {
        "forgotten": _rec("A", "I don't know.", 0.0, True),
        "paraphrase": _rec("A", "p1", 0.8),
        "neighbours": [_rec("A", "n1"), _rec("A", "changed", 0.1, True)]
        + [_rec("A", "n3"), _rec("A", "n4")],
        "retain": [_rec("A", "changed"), _rec("B", "r1"), _rec("C", "other", 0.3)],
        "general": [_rec(None, "g", probe=True), _rec(None, "wrong", probe=False)],
    }
    m = precise_item_metrics(after, before, "A")
    assert m["forgotten_refusal"] == 1.0 and m["forgotten_rouge"] == 0.0
    assert m["paraphrase_refusal"] == 0.0 and m["paraphrase_rouge"] == 0.8
    assert m["neighbours_exact"] == 0.75 and m["neighbours_refusal"] == 0.25
    assert m["neighbours_rouge"] == pytest.approx((0.5 * 3 + 0.1) / 4)
    # The retain record of author A is a neighbour, not retain: left out.
    assert m["retain_exact"] == 0.5 and m["retain_rouge"] == pytest.approx(0.4)
    assert m["probe_accuracy"] == 0.5
    page = markdown_page_html("t", "| a | b |\n|---|---|\n| x<y | 1 |\n\n- GA: never", "plot.png")
    assert "<td>x&lt;y</td>" in page and "<li>GA: never</li>" in page and "plot.png" in page


# ----------------------------------------------------------------------------- end to end


def _settings(base_dir, out, **kw) -> BenchSettings:
    return BenchSettings(
        model=str(base_dir),
        out=out,
        methods=("UniErase", "GA"),
        authors=4,
        forget=1,
        questions=5,
        retain_items=3,
        probe_items=2,
        max_new_tokens=4,
        probe_max_new_tokens=2,
        embedding_model="none",
        finetune_overrides={"epochs": 1, "lr": 1e-3},
        baseline_overrides={"epochs": 1, "lr": 1e-3},
        token_overrides=bench_token_settings(),
        edit_overrides=BENCH_EDIT,
        stats_texts=BENCH_STATS_TEXTS,
        progress=False,
        **kw,
    )


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_sequential_bench_end_to_end(base_dir, tmp_path):
    out = tmp_path / "seq"
    lines: list[str] = []
    run_bench(_settings(base_dir, out, mode="sequential", rounds=2, per_round=2), lines.append)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["mode"] == "sequential"
    rounds = results["plan"]["rounds"]
    assert [len(r) for r in rounds] == [2, 2] and not set(rounds[0]) & set(rounds[1])
    assert results["target"]["mu"] is not None and len(results["target"]["fe_by_round"]) == 2
    for name in ("UniErase", "GA"):
        records = results["methods"][name]["rounds"]
        assert [r["round"] for r in records] == [1, 2]
        assert [len(r["fe_by_round"]) for r in records] == [1, 2]
        assert records[1]["fe_earlier"] == records[1]["fe_by_round"][0]
        assert {"fe", "mu", "probe_accuracy", "retain_refusal"} <= set(records[0])
        # Every round re-evaluates the forget questions of all earlier rounds.
        method_dir = out / "methods" / name / "rounds"
        assert [r["question"] for r in _jsonl(method_dir / "01" / "eval" / "forget.jsonl")] == (
            rounds[0]
        )
        assert [r["question"] for r in _jsonl(method_dir / "02" / "eval" / "forget.jsonl")] == (
            rounds[0] + rounds[1]
        )
        # Retain questions come from the authors no round touched.
        retain = _jsonl(method_dir / "02" / "eval" / "retain.jsonl")
        assert {r["group"] for r in retain} <= set(results["plan"]["retain_groups"])
        assert "mu_collapse_round" in results["methods"][name]
    # UniErase resumed its own state: two rounds in its saved edit state.
    report = results["methods"]["UniErase"]["rounds"][1]["report"]
    assert report["mode"] == "sequential" and report["rounds"] == 2
    assert (out / "methods" / "UniErase" / "model" / "unierase_state.json").is_file()
    csv_lines = (out / ROUNDS_CSV).read_text().splitlines()
    assert csv_lines[0].startswith("method,round,fe,mu") and len(csv_lines) == 1 + 2 * 3
    table = (out / TABLE_FILE).read_text()
    assert "| target (before) | 0 |" in table and "| GA | 2 |" in table and "- GA:" in table
    assert "<table>" in (out / HTML_FILE).read_text()
    assert (out / "plot.png").is_file() == (results["files"]["plot"] is not None)
    assert any(line.startswith("[GA]") and "round 2" in line for line in lines)


def test_precise_bench_end_to_end(base_dir, tmp_path):
    out = tmp_path / "precise"
    run_bench(_settings(base_dir, out, mode="precise", precise_items=2), lambda _line: None)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["mode"] == "precise" and len(results["items"]) == 2
    assert results["token"]["token_id"] is not None  # Phase I once for every item
    for name in ("UniErase", "GA"):
        rows = _jsonl(out / "methods" / name / PRECISE_RECORDS)
        assert [r["question"] for r in rows] == [it["question"] for it in results["items"]]
        for row in rows:
            # Neighbours: every other question of the forgotten question's author (5 per author).
            near = row["records"]["neighbours"]
            assert len(near) == 4 and all(n["group"] == row["group"] for n in near)
            assert row["question"] not in {n["question"] for n in near}
            assert row["records"]["forgotten"]["question"] == row["question"]
            assert row["metrics"]["neighbours_exact"] is not None
        summary = results["methods"][name]["summary"]
        assert summary["forgotten_refusal"] is not None and summary["retain_exact"] is not None
    # Each UniErase item is one question-level edit of the token checkpoint, not a resume.
    report = results["methods"]["UniErase"]["items"][0]["report"]
    assert report["mode"] == "precise" and report["token"]["reused"] and report["rounds"] == 1
    assert results["target"]["summary"]["neighbours_exact"] == 1.0
    assert (out / PRECISE_CSV).read_text().startswith("method,forgotten_refusal")
    assert "| UniErase |" in (out / TABLE_FILE).read_text()


def test_cli_bench_mode_options_reach_the_settings(monkeypatch, tmp_path):
    import unierase.bench as B
    from unierase.cli import main

    seen = {}
    monkeypatch.setattr(B, "run_bench", lambda settings, out: seen.setdefault("s", settings))
    argv = ["bench", "--mode", "sequential", "--rounds", "3", "--per-round", "2"]
    assert main([*argv, "--precise-items", "7", "--out", str(tmp_path)]) == 0
    s = seen["s"]
    assert (s.mode, s.rounds, s.per_round, s.precise_items) == ("sequential", 3, 2, 7)
    with pytest.raises(SystemExit):
        main(["bench", "--mode", "nope"])
