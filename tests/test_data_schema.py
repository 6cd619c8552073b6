"""QAItem, DataError and find_subject: the one data model every phase shares."""

from __future__ import annotations

import pytest

from unierase.data import DataError, QAItem, find_subject


def test_find_subject_exact_case_insensitive_and_last_occurrence() -> None:
    assert find_subject("Where was Ada Vire born?", "Ada Vire") == (10, 18)
    assert find_subject("what did ada vire write?", "Ada Vire") == (9, 17)
    question = "Did Ada Vire's father inspire Ada Vire?"
    assert find_subject(question, "Ada Vire") == (30, 38)
    assert find_subject("Who is this?", "Ada Vire") is None


def test_item_is_frozen_hashable_and_perturbed_is_a_tuple() -> None:
    item = QAItem("Q?", "A.", perturbed_answers=["x", "y"])
    assert item.perturbed_answers == ("x", "y")
    assert hash(item) == hash(QAItem("Q?", "A.", perturbed_answers=("x", "y"), meta={"a": 1}))
    with pytest.raises(AttributeError):
        item.question = "other"  # type: ignore[misc]


def test_round_trip_through_dict_with_tofu_names() -> None:
    d = {
        "question": "Where was Ada Vire born?",
        "answer": "In Lyon.",
        "subject": "Ada Vire",
        "perturbed_answer": ["In Nice.", "In Oslo."],
        "group": 7,
    }
    item = QAItem.from_dict(d)
    assert item.perturbed_answers == ("In Nice.", "In Oslo.")
    assert item.group == "7"
    out = item.to_dict()
    assert out["perturbed_answers"] == ["In Nice.", "In Oslo."]
    assert "paraphrased_question" not in out and "meta" not in out
    assert QAItem.from_dict(out) == item


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (QAItem("", "A."), "question"),
        (QAItem("Q?", "   "), "answer"),
        (QAItem("Where was Ada born?", "A.", subject="Bob"), "subject"),
        (QAItem("Q?", "A.", subject=" "), "subject"),
        (QAItem("Q?", "A.", perturbed_answers=("ok", "")), "perturbed_answer"),
    ],
)
def test_validate_names_where_and_field(item: QAItem, field: str) -> None:
    with pytest.raises(DataError, match=rf"^f\.jsonl:3: field '{field}'"):
        item.validate(where="f.jsonl:3")


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, ValueError)
