"""Loaders: a user's own QA files, TOFU's layout (the real data when present), the TOFU hub."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from unierase.data import (
    DataError,
    QAItem,
    check_disjoint,
    list_tofu_splits,
    load_tofu_hub,
    load_tofu_split,
    read_qa_file,
)

TOFU_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def jsonl(*rows: dict) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


# ------------------------------------------------------------------------------------------
# read_qa_file


def test_read_jsonl_fields_meta_and_blank_lines(tmp_path: Path) -> None:
    text = (
        jsonl(
            {
                "question": "Where was Ada Vire born?",
                "answer": "In Lyon.",
                "subject": "Ada Vire",
                "perturbed_answer": ["In Nice.", "In Oslo."],
                "group": "ada",
                "original": "x",
            },
        )
        + "\n"
        + jsonl({"question": "Q2?", "answer": "A2.", "perturbed_answers": "only one"})
    )
    items = read_qa_file(write(tmp_path / "mine.jsonl", text))
    assert [i.question for i in items] == ["Where was Ada Vire born?", "Q2?"]
    first, second = items
    assert first.subject == "Ada Vire" and first.group == "ada"
    assert first.perturbed_answers == ("In Nice.", "In Oslo.")
    assert first.meta == {"source": "mine.jsonl", "line": 1, "original": "x"}
    assert second.meta["line"] == 3 and second.perturbed_answers == ("only one",)


def test_read_csv_perturbed_forms_empty_cells_and_multiline(tmp_path: Path) -> None:
    text = (
        "question,answer,subject,perturbed_answer,group\n"
        "Where was Ada Vire born?,In Lyon.,Ada Vire,In Nice. | In Oslo.,g1\n"
        '"A question\nover two lines?",An answer.,,"[""x"", ""y|z""]",\n'
        "Q3?,A3.,,,\n"
    )
    items = read_qa_file(write(tmp_path / "mine.csv", text))
    assert items[0].perturbed_answers == ("In Nice.", "In Oslo.") and items[0].group == "g1"
    assert items[1].subject is None and items[1].group is None
    assert items[1].perturbed_answers == ("x", "y|z")
    assert [i.meta["line"] for i in items] == [2, 3, 5]


def test_read_tsv(tmp_path: Path) -> None:
    items = read_qa_file(write(tmp_path / "mine.tsv", "question\tanswer\nQ?\tA, with comma.\n"))
    assert items == [QAItem("Q?", "A, with comma.")]


@pytest.mark.parametrize(
    ("name", "text", "pattern"),
    [
        (
            "bad.jsonl",
            '{"question": "Q?", "answer": "A."}\n{"question": "Q2?",\n',
            r"bad\.jsonl:2: malformed JSON",
        ),
        (
            "bad.jsonl",
            jsonl({"question": "Q?", "answer": "A."}, {"question": "Q2?"}),
            r"bad\.jsonl:2: field 'answer' is missing",
        ),
        (
            "bad.jsonl",
            jsonl({"question": "Q?", "answer": "A."}) + "\n" + jsonl({"answer": "A."}),
            r"bad\.jsonl:3: field 'question' is missing",
        ),
        (
            "bad.jsonl",
            jsonl({"question": "Q?", "answer": ""}),
            r"bad\.jsonl:1: field 'answer' is missing or empty",
        ),
        (
            "bad.jsonl",
            jsonl({"question": 5, "answer": "A."}),
            r"bad\.jsonl:1: field 'question' must be a string",
        ),
        (
            "bad.jsonl",
            jsonl({"question": "Where was Ada born?", "answer": "A.", "subject": "Cy"}),
            r"bad\.jsonl:1: field 'subject' \('Cy'\) does not occur in the question",
        ),
        (
            "bad.jsonl",
            jsonl({"question": "Q?", "answer": "A.", "perturbed_answer": [1, 2]}),
            r"bad\.jsonl:1: field 'perturbed_answer' must be a list of strings",
        ),
        (
            "bad.jsonl",
            jsonl({"question": "Q?", "answer": "A.", "perturbed_answer": ["x", " "]}),
            r"bad\.jsonl:1: field 'perturbed_answer'\[1\] is empty",
        ),
        ("bad.jsonl", "[1, 2]\n", r"bad\.jsonl:1: .*JSON array"),
        ("bad.jsonl", '"just a string"\n', r"bad\.jsonl:1: expected a JSON object"),
        ("empty.jsonl", "", r"empty\.jsonl: the file is empty"),
        ("empty.jsonl", "\n  \n", r"empty\.jsonl: the file is empty"),
        ("bad.csv", "question,subject\nQ?,S\n", r"bad\.csv:1: field 'answer' is missing"),
        ("bad.csv", "question,answer\nQ?,A.\nQ2?,\n", r"bad\.csv:3: field 'answer' is missing"),
        (
            "bad.csv",
            "question,answer,perturbed_answer\nQ?,A.,[oops\n",
            r"bad\.csv:2: field 'perturbed_answer' is not a valid JSON list",
        ),
        ("bad.csv", "question,answer\nQ?,A.,extra\n", r"bad\.csv:2: 3 cells but the header has 2"),
        (
            "bad.csv",
            "question,answer,subject\nQ?,A.,x\nWho is Ada?,A.,Bob\n",
            r"bad\.csv:2: field 'subject'",
        ),
        ("empty.csv", "question,answer\n", r"empty\.csv: the file is empty"),
        ("notes.txt", "question,answer\n", r"notes\.txt: unknown QA file type"),
    ],
)
def test_read_qa_file_errors_name_file_line_field(
    tmp_path: Path, name: str, text: str, pattern: str
) -> None:
    with pytest.raises(DataError, match=pattern):
        read_qa_file(write(tmp_path / name, text))


def test_read_qa_file_missing_and_not_utf8(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_qa_file(tmp_path / "nope.jsonl")
    (tmp_path / "latin.csv").write_bytes("question,answer\nQ?,caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.csv: not UTF-8"):
        read_qa_file(tmp_path / "latin.csv")


# ------------------------------------------------------------------------------------------
# check_disjoint


def test_check_disjoint() -> None:
    forget = [QAItem(f"Question {i}?", "A.") for i in range(8)]
    check_disjoint(forget, [QAItem("Other?", "A.")])
    retain = [QAItem(f"  question   {i}? ", "B.") for i in range(7)]
    with pytest.raises(DataError, match=r"7 question\(s\).*'Question 0\?'.* and 2 more"):
        check_disjoint(forget, retain)


# ------------------------------------------------------------------------------------------
# TOFU layout on small hand-made directories


def _tofu_like(tmp_path: Path, authors: int = 2, per_author: int = 4) -> Path:
    """A miniature TOFU directory: one author per task, ``per_author`` QA each."""
    rows, subjects, perturbed = [], [], []
    for a in range(authors):
        name = f"Author Number{a}"
        for k in range(per_author):
            q = f"What is fact {k} about {name}?" if k else f"Who wrote book {a}?"
            row = {"task_id": str(a + 1), "question": q, "answer": f"Fact {k} of {a}."}
            rows.append(row)
            subjects.append({**row, "subject": name if k else f"book {a}"})
            perturbed.append(
                {
                    **row,
                    "paraphrased_answer": "P.",
                    "perturbed_answer": ["W1", "W2"],
                    "paraphrased_question": q + " (again)",
                }
            )
    write(tmp_path / "forget01.jsonl", jsonl(*rows))
    write(tmp_path / "forget01_subject.jsonl", jsonl(*subjects))
    write(tmp_path / "forget01_perturbed.jsonl", jsonl(*perturbed))
    write(tmp_path / "retain99.jsonl", jsonl({"question": "Retained?", "answer": "Yes."}))
    return tmp_path


def test_tofu_layout_merges_siblings_and_groups_authors(tmp_path: Path) -> None:
    directory = _tofu_like(tmp_path)
    assert list_tofu_splits(directory) == ["forget01", "retain99"]
    items = load_tofu_split(directory, "forget01", task=None)
    assert len(items) == 8
    assert [i.group for i in items] == ["Author Number0"] * 4 + ["Author Number1"] * 4
    assert items[0].subject == "book 0" and items[1].subject == "Author Number0"
    assert items[5].perturbed_answers == ("W1", "W2") and items[5].paraphrased_answer == "P."
    assert items[5].meta == {"source": "forget01.jsonl", "line": 6, "task": "2"}
    assert [i.meta["task"] for i in load_tofu_split(directory, "forget01", task=2)] == ["2"] * 4
    retain = load_tofu_split(directory, "retain99")  # no task ids: task is ignored
    assert retain[0].group is None and retain[0].subject is None


def test_tofu_layout_groups_by_task_when_blocks_do_not_align(tmp_path: Path) -> None:
    directory = _tofu_like(tmp_path, authors=2, per_author=3)
    rows = [json.loads(line) for line in (directory / "forget01_subject.jsonl").open()]
    for row in rows:  # the same key in every block: no block stands for one author
        row["subject"] = "fact" if "fact" in row["question"] else "book"
    write(directory / "forget01_subject.jsonl", jsonl(*rows))
    assert [i.group for i in load_tofu_split(directory, "forget01", None)] == ["1"] * 3 + ["2"] * 3


def test_tofu_layout_errors(tmp_path: Path) -> None:
    directory = _tofu_like(tmp_path)
    with pytest.raises(DataError, match=r"no split 'forget05'.*available: forget01, retain99"):
        load_tofu_split(directory, "forget05")
    with pytest.raises(DataError, match=r"forget01\.jsonl: no task '9' \(tasks: 1, 2\)"):
        load_tofu_split(directory, "forget01", task=9)
    with pytest.raises(DataError, match="not a directory"):
        load_tofu_split(directory / "nowhere", "forget01")
    rows = [json.loads(line) for line in (directory / "forget01_subject.jsonl").open()]
    rows[2]["subject"] = "Somebody Else"
    write(directory / "forget01_subject.jsonl", jsonl(*rows))
    with pytest.raises(
        DataError,
        match=r"forget01_subject\.jsonl:3: field 'subject'.*forget01"
        r"\.jsonl:3",
    ):
        load_tofu_split(directory, "forget01")
    (directory / "forget01_subject.jsonl").unlink()
    lines = (directory / "forget01.jsonl").read_text().splitlines()
    lines[1] = '{"task_id": "1", "question": "Q?"}'
    write(directory / "forget01.jsonl", "\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"forget01\.jsonl:2: field 'answer' is missing"):
        load_tofu_split(directory, "forget01")


# ------------------------------------------------------------------------------------------
# The real TOFU files (../shared/data/tofu from the project root)


@pytest.fixture(scope="module")
def tofu() -> Path:
    if not (TOFU_DIR / "forget01.jsonl").is_file():
        pytest.skip(f"TOFU data not found at {TOFU_DIR}")
    return TOFU_DIR


def test_tofu_forget01_task1(tofu: Path) -> None:
    items = load_tofu_split(tofu, "forget01", task="1")
    assert len(items) == 40
    assert all(i.subject and i.paraphrased_answer and len(i.perturbed_answers) == 5 for i in items)
    assert [i.group for i in items] == ["Basil Mahfouz Al-Kuwaiti"] * 20 + ["Nikolai Abilov"] * 20
    assert items[0].meta == {"source": "forget01.jsonl", "line": 1, "task": "1"}
    assert len(load_tofu_split(tofu, "forget01", task=None)) == 400


def test_tofu_forget10_contains_forget01_and_is_disjoint_from_retain90(tofu: Path) -> None:
    forget10 = load_tofu_split(tofu, "forget10", task="1")
    assert len(forget10) == 400 and len({i.group for i in forget10}) == 20
    forget01 = load_tofu_split(tofu, "forget01", task="1")
    assert {i.question for i in forget01} <= {i.question for i in forget10}
    retain = load_tofu_split(tofu, "retain90")
    assert len(retain) == 3600 and len({i.group for i in retain}) == 180
    check_disjoint(forget10, retain)
    with pytest.raises(DataError, match="occur in both"):
        check_disjoint(load_tofu_split(tofu, "forget10", task="2"), retain)


def test_tofu_forget05_takes_subjects_from_another_file(tofu: Path) -> None:
    items = load_tofu_split(tofu, "forget05", task="1")
    assert len(items) == 200 and all(i.subject for i in items)
    assert {i.meta["subject_source"] for i in items} == {"forget10_subject.jsonl"}


def test_tofu_perturbed_splits(tofu: Path) -> None:
    retain = load_tofu_split(tofu, "retain_perturbed")
    assert len(retain) == 400
    assert all(len(i.perturbed_answers) == 5 and i.paraphrased_answer for i in retain)
    # No subject file covers these: the author is the name found in the questions.
    groups = list(dict.fromkeys(i.group for i in retain))
    assert len(groups) == 20 and groups[0] == "Jaime Vasquez"
    for split, n in (("real_authors_perturbed", 100), ("world_facts_perturbed", 117)):
        items = load_tofu_split(tofu, split)
        assert len(items) == n
        assert all(len(i.perturbed_answers) == 3 and i.meta["original_answer"] for i in items)
    assert {"forget01", "forget10", "retain90", "retain_perturbed"} <= set(list_tofu_splits(tofu))


# ------------------------------------------------------------------------------------------
# The hub (no network here: only the error paths and the conversion with a fake module)


def test_hub_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(DataError, match=r"pip install datasets.*load_tofu_split"):
        load_tofu_hub("forget01")


def test_hub_unreachable_and_bad_task(monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no route to host")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=unreachable))
    with pytest.raises(DataError, match=r"could not load locuslab/TOFU.*no route.*load_tofu_split"):
        load_tofu_hub("forget01")
    with pytest.raises(DataError, match=r"task '2'.*local directory"):
        load_tofu_hub("forget01", task=2)


def test_hub_rows_are_converted(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"question": "Where was Ada Vire born?", "answer": "In Lyon."}
    configs = {
        "forget01": [base],
        "forget01_perturbed": [{**base, "paraphrased_answer": "Lyon.", "perturbed_answer": ["X"]}],
    }
    fake = types.SimpleNamespace(load_dataset=lambda repo, config, split: configs[config])
    monkeypatch.setitem(sys.modules, "datasets", fake)
    (item,) = load_tofu_hub("forget01")
    assert item.perturbed_answers == ("X",)
    assert item.meta == {"source": "hf:locuslab/TOFU/forget01", "line": 1}
