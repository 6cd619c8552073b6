"""Invented look-alikes of forget questions (name parts swapped) and EditConfig's checks."""

import pytest

from unierase.data.neighbours import name_neighbours
from unierase.data.schema import QAItem
from unierase.edit.config import EditConfig


def test_neighbours_keep_one_name_part_and_invent_the_others():
    items = [
        QAItem("Where was Mateus Estravelle born?", "Cork.", subject="Mateus Estravelle"),
        QAItem(
            "Who is the author born in Cork in 1970?",
            "M. E.",
            subject="the author born in Cork in 1970",
        ),  # fmt: skip
        QAItem("What is Mateus Estravelle's genre?", "Noir."),  # no subject: nothing to swap
    ]
    out = name_neighbours(items, per_part=2)
    assert len(out) == 4
    surname = [n for n in out if n.subject.endswith(" Estravelle")]
    first = [n for n in out if n.subject.startswith("Mateus ")]
    assert len(surname) == 2 and len(first) == 2
    for n in out:
        assert n.question == f"Where was {n.subject} born?"
        assert n.subject != "Mateus Estravelle" and n.answer == ""
    assert name_neighbours(items, per_part=2) == out  # seeded
    assert name_neighbours(items, per_part=2, seed=1) != out


@pytest.mark.parametrize(
    "field, value",
    [
        ("chunk_size", 0),
        ("v_steps", 0),
        ("layers", ()),
        ("granularity", "author"),
        ("protect_weight", -1.0),
        ("v_clamp", 0.0),
    ],  # fmt: skip
)
def test_edit_config_rejects_values_that_cannot_work(field, value):
    with pytest.raises(ValueError, match=field.rstrip("_")):
        EditConfig(**{field: value})
