"""``unierase bench --preset realworld``: the people set, the known-question filter, the run."""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from importlib import resources

import pytest

import unierase.bench as B
from unierase.bench import FILTER_DIR, FILTER_FILE, RESULTS_FILE, BenchSettings, run_bench
from unierase.data.realworld import (
    REALWORLD_FILE,
    accepted_answers,
    is_known,
    load_realworld,
    split_known,
)
from unierase.data.schema import DataError, QAItem, find_subject

# ----------------------------------------------------------------------------- the package set


def test_the_package_set_is_valid():
    assert resources.files("unierase.data").joinpath("resources", REALWORLD_FILE).is_file()
    items = load_realworld()
    per_person = Counter(item.group for item in items)
    assert len(per_person) >= 30
    assert all(4 <= n <= 5 for n in per_person.values()), per_person
    assert len({item.question for item in items}) == len(items)
    for item in items:
        where = item.question
        assert item.subject == item.group and find_subject(item.question, item.subject), where
        assert isinstance(item.meta.get("aliases"), list), where
        assert accepted_answers(item)[0] == item.answer, where
        # The paraphrased answer is right and each of the 3 perturbed answers wrong, by the
        # very check the filter uses; the question alone never gives the answer away.
        assert is_known(item, item.paraphrased_answer), where
        assert len(item.perturbed_answers) == 3, where
        assert item.paraphrased_answer not in item.perturbed_answers, where
        assert not any(is_known(item, wrong) for wrong in item.perturbed_answers), where
        assert not is_known(item, item.question), where


def test_correctness_is_whole_word_and_case_insensitive():
    item = QAItem(
        "In which country was Ada Example born?",
        "England",
        perturbed_answers=("Ada was born in Ukraine.",),
        meta={"aliases": ["UK"]},
    )
    assert is_known(item, "She was born in ENGLAND, in 1815.")
    assert is_known(item, "the uk")
    assert not is_known(item, "Ukraine")  # "UK" only as a whole word
    assert not is_known(item, "I don't know.")


def test_a_user_file_needs_a_person_and_list_aliases(tmp_path):
    path = tmp_path / "people.jsonl"
    path.write_text(json.dumps({"question": "Who is Ada X?", "answer": "a", "subject": "Ada X"}))
    assert load_realworld(path)[0].group == "Ada X"  # the subject names the person
    path.write_text(json.dumps({"question": "Who is Ada X?", "answer": "a"}))
    with pytest.raises(DataError, match="people.jsonl:1: field 'group'"):
        load_realworld(path)
    path.write_text(json.dumps({"question": "Q?", "answer": "a", "group": "g", "aliases": "b"}))
    with pytest.raises(DataError, match="aliases"):
        load_realworld(path)


# ----------------------------------------------------------------------------- the filter


def _item(person: str, n: int) -> QAItem:
    return QAItem(f"Question {n} about {person}?", f"answer{n}", subject=person, group=person)


def test_split_known_keeps_people_with_two_known_questions_and_draws_the_forget_group():
    items = [_item(p, n) for p in ("Ann A", "Bob B", "Cat C", "Dan D") for n in range(3)]
    known = [True, True, False] + [True, False, False] + [True, True, True] + [False, True, True]
    split = split_known(items, known, n_forget=1, seed=0)
    kept = ["Ann A", "Cat C", "Dan D"]  # Bob B has one known question only
    assert sorted(split.forget_people + split.neighbour_people) == sorted(kept)
    assert len(split.forget_people) == 1
    assert all(it.group in split.forget_people for it in split.forget)
    assert all(it.group in split.neighbour_people for it in split.neighbours)
    survivors = {it.question for it in split.forget + split.neighbours}
    expected = {it.question for it, k in zip(items, known, strict=True) if k and it.group in kept}
    assert survivors == expected
    assert split.describe()["questions_known"] == 8 and split.describe()["people_kept"] == 3
    again = split_known(items, known, n_forget=1, seed=0)
    assert again.forget_people == split.forget_people  # seeded
    drawn = {tuple(split_known(items, known, n_forget=1, seed=s).forget_people) for s in range(8)}
    assert len(drawn) > 1
    with pytest.raises(DataError, match="too few known questions.*3 of 4 people"):
        split_known(items, known, n_forget=3, seed=0)


# A small people file: 4 people x 3 questions, written for these tests.
PEOPLE = {
    "Ada Lovelace": [
        ("What was the nationality of Ada Lovelace?", "English", ["British", "UK"], "Italian"),
        ("What was the profession of Ada Lovelace?", "mathematician", [], "painter"),
        ("Whose machine did Ada Lovelace write about?", "Babbage", [], "Edison"),
    ],
    "Isaac Newton": [
        ("What was the nationality of Isaac Newton?", "English", ["British"], "French"),
        ("Which force is Isaac Newton famous for?", "gravity", [], "magnetism"),
        ("What was the profession of Isaac Newton?", "physicist", [], "composer"),
    ],
    "Marie Curie": [
        ("In which country was Marie Curie born?", "Poland", [], "Spain"),
        ("What did Marie Curie study?", "radioactivity", ["radium"], "volcanoes"),
        ("Which prize did Marie Curie win twice?", "Nobel Prize", ["Nobel"], "Oscar"),
    ],
    "Pablo Picasso": [
        ("In which country was Pablo Picasso born?", "Spain", [], "Poland"),
        ("Which art movement did Pablo Picasso found?", "Cubism", [], "Impressionism"),
        ("What was the profession of Pablo Picasso?", "painter", [], "chemist"),
    ],
}
# What the fake base model answers; None: an answer with no accepted string.
ANSWERS = {
    "What was the nationality of Ada Lovelace?": "She was british.",
    "What was the profession of Ada Lovelace?": "She was a MATHEMATICIAN.",
    "Whose machine did Ada Lovelace write about?": None,
    "What was the nationality of Isaac Newton?": "Newton was English.",
    "Which force is Isaac Newton famous for?": "Gravity, and optics.",
    "What was the profession of Isaac Newton?": "He was a physicist.",
    "In which country was Marie Curie born?": "Poland",
    "What did Marie Curie study?": "She studied radioactive radiumite.",  # not a whole word
    "Which prize did Marie Curie win twice?": "She won the Oscar, not the Nobel.",  # wrong first
    "In which country was Pablo Picasso born?": "Picasso was born in Spain.",
    "Which art movement did Pablo Picasso found?": "cubism",
    "What was the profession of Pablo Picasso?": None,
}
KNOWN = {q for q, a in ANSWERS.items() if a is not None} - {
    "What did Marie Curie study?",
    "Which prize did Marie Curie win twice?",
}


def _people_file(path):
    rows = []
    for person, questions in PEOPLE.items():
        short = person.split()[-1]
        for question, answer, aliases, wrong in questions:
            rows.append(
                {
                    "question": question,
                    "answer": answer,
                    "aliases": aliases,
                    "subject": person,
                    "group": person,
                    "paraphrased_answer": f"For {short}, it is {answer}.",
                    # Short, like the probe's, so the wrong-before-right rule has something
                    # to find.
                    "perturbed_answer": [wrong],
                }
            )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), "utf-8")
    return path


@pytest.fixture
def fake_base_answers(monkeypatch):
    """Replace the base model's generation by ANSWERS; counts the calls."""
    calls = []

    def fake(settings, questions):
        calls.append(list(questions))
        return [ANSWERS[q] or "I am not sure." for q in questions]

    monkeypatch.setattr(B, "_base_answers", fake)
    return calls


def test_the_filter_keeps_exactly_the_known_questions_and_caches_the_answers(
    tmp_path, fake_base_answers
):
    settings = BenchSettings(
        model="some-model", out=tmp_path / "run", data=_people_file(tmp_path / "p.jsonl"), forget=1
    )
    lines: list[str] = []
    training, data_dir = B._realworld_data(settings, settings.out, lines.append)
    rows = [json.loads(x) for x in (settings.out / FILTER_DIR / FILTER_FILE).read_text().split("\n")
            if x]  # fmt: skip
    assert {r["question"] for r in rows if r["known"]} == KNOWN
    # Marie Curie keeps one known question: she is left out; the other three stay.
    survivors = {it.question for it in [*training.forget, *training.retain]}
    assert survivors == {q for q in KNOWN if "Curie" not in q}
    record = training.description["realworld"]
    assert record["questions_total"] == 12 and record["questions_known"] == len(KNOWN) == 8
    assert record["people_total"] == 4 and record["people_kept"] == 3
    assert len(record["forget_people"]) == 1 and len(record["neighbour_people"]) == 2
    assert training.items == [] and (data_dir / "forget.jsonl").is_file()
    assert lines[-1].startswith("[filter]") and "8 of 12 questions" in lines[-1]
    assert "3 of 4 people" in lines[-1]

    # A rerun with another seed reuses the answers; other data generates again.
    again: list[str] = []
    B._realworld_data(dataclasses.replace(settings, seed=3), settings.out, again.append)
    assert len(fake_base_answers) == 1 and "cached answers" in again[-1]
    B._realworld_data(dataclasses.replace(settings, model="other"), settings.out, again.append)
    assert len(fake_base_answers) == 2


def test_too_few_known_questions_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "_base_answers", lambda settings, qs: ["I don't know."] * len(qs))
    settings = BenchSettings(model="m", out=tmp_path, data=_people_file(tmp_path / "p.jsonl"))
    with pytest.raises(DataError, match=r"too few known questions.*0 of 12.*filter\.jsonl"):
        B._realworld_data(settings, tmp_path, lambda line: None)


# ----------------------------------------------------------------------------- the run


def test_bench_realworld_end_to_end(base_dir, tmp_path, monkeypatch, fake_base_answers):
    import unierase.finetune
    from conftest import BENCH_EDIT, BENCH_STATS_TEXTS, bench_token_settings

    def no_finetune(*args, **kwargs):
        raise AssertionError("realworld must not fine-tune")

    monkeypatch.setattr(unierase.finetune, "finetune_cached", no_finetune)
    out = tmp_path / "bench"
    lines: list[str] = []
    settings = BenchSettings(
        model=str(base_dir),
        out=out,
        preset="realworld",
        data=_people_file(tmp_path / "people.jsonl"),
        forget=1,
        methods=("UniErase", "GA"),
        forget_items=5,
        retain_items=4,
        probe_items=3,
        max_new_tokens=4,
        probe_max_new_tokens=2,
        embedding_model="none",
        baseline_overrides={"epochs": 1, "lr": 1e-3},
        token_overrides=bench_token_settings(),
        edit_overrides=BENCH_EDIT,
        stats_texts=BENCH_STATS_TEXTS,
        progress=False,
    )
    run_bench(settings, lines.append)
    results = json.loads((out / RESULTS_FILE).read_text())
    assert results["preset"] == "realworld"
    assert results["target"]["path"] == str(base_dir) and results["target"]["finetuned"] is False
    assert results["retain_model"] is None
    record = results["data"]["realworld"]
    assert record["questions_known"] == 8 and record["people_kept"] == 3
    assert results["data"]["n_forget"] + results["data"]["n_retain"] == 7
    assert list(results["methods"]) == ["UniErase", "GA"]
    for method in results["methods"].values():
        assert method["metrics"]["tofu/forget_quality"] is None
        assert "paper/forget_efficacy" in method["metrics"]
    summary = json.loads((out / "methods" / "GA" / "eval" / "summary.json").read_text())
    assert "real-world" in summary["skipped"]["tofu/forget_quality"]
    assert "real-world" in results["skipped"]["tofu/forget_quality"]
    assert (out / "methods" / "UniErase" / "model" / "config.json").is_file()
    assert any(line.startswith("[filter]") for line in lines)
    assert any(line.startswith("[finetune]") and "none" in line for line in lines)
    assert "tofu/forget_quality: skipped" in (out / "table.md").read_text()


def test_cli_bench_realworld_options(monkeypatch, tmp_path, capsys):
    from unierase.cli import main

    seen = {}
    monkeypatch.setattr(B, "run_bench", lambda settings, out: seen.setdefault("s", settings))
    data = tmp_path / "people.jsonl"
    argv = ["bench", "--preset", "realworld", "--data", str(data), "--forget", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    assert seen["s"].preset == "realworld" and seen["s"].data == data and seen["s"].forget == 3
    assert main(["bench", "--data", str(data), "--out", str(tmp_path)]) == 2
    assert "--preset realworld only" in capsys.readouterr().out
    assert main(["bench", "--preset", "realworld", "--mode", "precise", "--out", "x"]) == 2
    assert "batch mode only" in capsys.readouterr().out
