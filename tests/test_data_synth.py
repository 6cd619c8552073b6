"""Synthetic fictitious authors written in TOFU's layout and read back by the TOFU loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unierase.data import (
    DataError,
    check_disjoint,
    find_subject,
    generate_authors,
    list_tofu_splits,
    load_general_probe,
    load_refusals,
    load_tofu_split,
    synthetic_file_names,
    write_synthetic,
)


def test_generate_authors_facts_and_questions() -> None:
    authors = generate_authors(12, seed=5, questions_per_author=15)
    assert len({a.name for a in authors}) == 12
    for author in authors:
        assert len(author.qa) == 15
        assert len({qa.question for qa in author.qa}) == 15
        assert 2 <= len(author.profile["books"]) <= 3
        named = [qa for qa in author.qa if qa.subject == author.name]
        descriptive = [qa for qa in author.qa if qa.subject != author.name]
        assert len(named) == 13 and len(descriptive) == 2
        assert descriptive[0].subject.startswith("the author born in ")
        assert descriptive[1].subject == f"the author of '{author.profile['books'][0]}'"
        for qa in author.qa:
            qa.validate()
            assert find_subject(qa.question, qa.subject) is not None
            assert qa.group == author.name and qa.paraphrased_question != qa.question
            assert len(set(qa.perturbed_answers)) == 5 and qa.answer not in qa.perturbed_answers
            for text in (qa.answer, qa.paraphrased_answer, *qa.perturbed_answers):
                assert 10 <= len(text.split()) <= 30, text


def test_perturbed_answers_swap_in_other_authors_facts() -> None:
    authors = generate_authors(8, seed=1, questions_per_author=20)
    genres = {a.profile["genre"] for a in authors}
    for author in authors:
        for qa in author.qa:
            if qa.meta["fact"] == "genre":
                wrong = [g for p in qa.perturbed_answers for g in genres if f" {g}," in p]
                assert author.profile["genre"] not in wrong and wrong


def test_generate_as_many_authors_as_tofu() -> None:
    authors = generate_authors(200, seed=0, questions_per_author=5)
    assert len({a.name for a in authors}) == 200
    assert len({b for a in authors for b in a.profile["books"]}) == sum(
        len(a.profile["books"]) for a in authors
    )


def test_generate_authors_is_seeded_and_checks_arguments() -> None:
    assert generate_authors(3, seed=7) == generate_authors(3, seed=7)
    assert generate_authors(3, seed=7) != generate_authors(3, seed=8)
    for kwargs in (
        {"n_authors": 0},
        {"n_authors": 2, "questions_per_author": 40},
        {"n_authors": 2, "questions_per_author": 2.5},
        {"n_authors": "3"},
    ):
        with pytest.raises(DataError):
            generate_authors(seed=0, **kwargs)  # type: ignore[arg-type]


def test_round_trip_through_the_tofu_loader(tmp_path: Path) -> None:
    paths = write_synthetic(
        tmp_path / "syn", n_authors=6, n_forget=2, seed=3, questions_per_author=10
    )
    names = synthetic_file_names(6, 2)
    assert {role: p.name for role, p in paths.items()} == names
    assert names["forget"] == "forget33.jsonl" and names["retain"] == "retain67.jsonl"
    assert sorted(p.name for p in (tmp_path / "syn").iterdir()) == sorted(names.values())
    assert list_tofu_splits(tmp_path / "syn") == [
        "forget33",
        "general_probe",
        "retain67",
        "retain_perturbed",
    ]

    authors = generate_authors(6, seed=3, questions_per_author=10)
    forget = load_tofu_split(tmp_path / "syn", "forget33")
    retain = load_tofu_split(tmp_path / "syn", "retain67")
    expected = [qa for a in authors[:2] for qa in a.qa]
    assert forget == expected  # every field but meta survives the trip
    assert [qa.group for qa in forget] == [authors[0].name] * 10 + [authors[1].name] * 10
    assert forget[0].meta == {"source": "forget33.jsonl", "line": 1, "task": "1"}
    expected = [qa for a in authors[2:] for qa in a.qa]
    # The retain split carries subjects; paraphrases and perturbed answers are in
    # retain_perturbed (TOFU's layout), which here holds every retain QA.
    assert [(r.question, r.answer, r.subject, r.group) for r in retain] == [
        (e.question, e.answer, e.subject, e.group) for e in expected
    ]
    check_disjoint(forget, retain)
    retain_perturbed = load_tofu_split(tmp_path / "syn", "retain_perturbed")
    assert [(r.paraphrased_question, r.perturbed_answers, r.group) for r in retain_perturbed] == [
        (e.paraphrased_question, e.perturbed_answers, e.group) for e in expected
    ]

    assert (tmp_path / "syn" / "idontknow.txt").read_text(encoding="utf-8").splitlines() == (
        load_refusals()
    )
    probe = load_tofu_split(tmp_path / "syn", "general_probe")
    assert [p.question for p in probe] == [p.question for p in load_general_probe()]
    manifest = json.loads(paths["authors"].read_text(encoding="utf-8"))
    assert manifest["seed"] == 3 and len(manifest["authors"]) == 6
    assert [a["forget"] for a in manifest["authors"]] == [True, True] + [False] * 4
    assert manifest["authors"][0]["name"] == authors[0].name


@pytest.mark.parametrize("questions_per_author", [5, 6, 12, 20])
def test_loader_finds_the_authors_for_any_block_size(
    tmp_path: Path, questions_per_author: int
) -> None:
    paths = write_synthetic(tmp_path, 7, 3, seed=1, questions_per_author=questions_per_author)
    authors = generate_authors(7, seed=1, questions_per_author=questions_per_author)
    for role, members in (("forget", authors[:3]), ("retain", authors[3:])):
        items = load_tofu_split(tmp_path, paths[role].stem)
        assert [i.group for i in items] == [a.name for a in members for _ in a.qa]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = write_synthetic(tmp_path / "a", seed=11)
    second = write_synthetic(tmp_path / "b", seed=11)
    other = write_synthetic(tmp_path / "c", seed=12)
    for role in first:
        assert first[role].read_bytes() == second[role].read_bytes(), role
    assert first["forget"].read_bytes() != other["forget"].read_bytes()
    raw = first["retain"].read_bytes()
    assert b"\r\n" not in raw and raw.endswith(b"\n")
    row = json.loads(first["forget_perturbed"].read_text(encoding="utf-8").splitlines()[0])
    assert list(row) == [
        "task_id",
        "question",
        "answer",
        "paraphrased_answer",
        "perturbed_answer",
        "paraphrased_question",
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_authors": 1},
        {"n_forget": 0},
        {"n_forget": 20},
        {"n_authors": 300, "n_forget": 1},  # 0.33% rounds to 0%
        {"questions_per_author": 3},
        {"seed": "zero"},
    ],
)
def test_bad_arguments_write_nothing(tmp_path: Path, kwargs: dict) -> None:
    with pytest.raises(DataError):
        write_synthetic(tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_overwrite_rules(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(DataError, match="overwrite=True"):
        write_synthetic(foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    write_synthetic(foreign, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"

    out = tmp_path / "syn"
    out.mkdir()  # an empty directory is fine
    write_synthetic(out, n_authors=20, n_forget=2)
    assert (out / "forget10.jsonl").is_file()
    write_synthetic(out, n_authors=20, n_forget=4)  # an earlier output is replaced
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(synthetic_file_names(20, 4).values())
    with pytest.raises(DataError, match="not a directory"):
        write_synthetic(foreign / "notes.txt")
