"""Real-world knowledge: well-known people that a small instruct model may already know.

The paper's real-world setting unlearns people the original model learned in pre-training, with
no fine-tuning first. The package's set (``resources/realworld_people.jsonl``) is the project's
own: about 50 world-famous scientists, writers, musicians, artists, leaders, athletes and founders,
4-5 short factual questions each (nationality, country of birth, profession, a famous work, ...).
Every row is a QA item of the common schema: ``subject`` and ``group`` are the person's name, the
``answer`` is short ("Germany"), ``aliases`` lists the other accepted answers ("Britain", "UK"),
``paraphrased_answer`` is the answer as a sentence and ``perturbed_answer`` the same sentence with
three wrong fills (for the truth ratio).

Which questions a model knows is decided from its greedy answers (:func:`is_known`); the
generation itself happens in ``unierase.bench``, since this package knows no model.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unierase.data.loaders import item_from_record
from unierase.data.probes import check_aliases, probe_is_correct, resource_records
from unierase.data.schema import DataError, QAItem

REALWORLD_FILE = "realworld_people.jsonl"
MIN_KNOWN_QUESTIONS = 2  # a person stays when the model answers at least this many correctly


def load_realworld(path: str | Path | None = None) -> list[QAItem]:
    """The real-world people set: the package's, or a user's JSONL file in the same schema.

    Rows need ``question`` and ``answer``; ``group`` names the person (falls back to
    ``subject``); ``aliases`` (optional) is a list of further accepted answers, kept in
    ``meta["aliases"]``.

    Raises:
        DataError: a bad row (naming file, line and field), or a row with no person.
    """
    records, source = resource_records(REALWORLD_FILE, path)
    items = []
    for line, record in records:
        where = f"{source}:{line}"
        check_aliases(record, where)
        if record.get("group") is None and record.get("subject") is None:
            raise DataError(f"{where}: field 'group' (the person) is missing (and no 'subject')")
        item = item_from_record(record, source, line)
        if item.group is None:
            item = dataclasses.replace(item, group=item.subject)
        items.append(item)
    return items


def accepted_answers(item: QAItem) -> list[str]:
    """The reference answer and its aliases, in that order, without repeats."""
    return list(dict.fromkeys([item.answer, *item.meta.get("aliases", ())]))


def is_known(item: QAItem, generated_text: str) -> bool:
    """Whether a generated answer to ``item`` is correct: an accepted answer occurs in it.

    Matching is case- and accent-insensitive, on whole words or phrases ("UK" does not match
    "Ukraine"), and an answer that names a wrong alternative (``perturbed_answers``) before the
    right one is wrong (:func:`unierase.data.probes.probe_is_correct`).
    """
    return probe_is_correct(item, generated_text)


@dataclass
class KnownSplit:
    """The questions a model knows, split by person into a forget and a neighbour group.

    Attributes:
        forget: the known questions of the people to forget.
        neighbours: the known questions of every other kept person (the retain set).
        forget_people, neighbour_people: the kept people (>= ``min_questions`` known), in
            data order.
        questions_total, questions_known: questions asked, and answered correctly.
        people_total: people in the data.
        min_questions: known questions a person needs to be kept.
    """

    forget: list[QAItem]
    neighbours: list[QAItem]
    forget_people: list[str]
    neighbour_people: list[str]
    questions_total: int
    questions_known: int
    people_total: int
    min_questions: int = MIN_KNOWN_QUESTIONS

    def describe(self) -> dict[str, Any]:
        """A JSON-ready record of what survived the filter and how it was split."""
        return {
            "questions_total": self.questions_total,
            "questions_known": self.questions_known,
            "people_total": self.people_total,
            "people_kept": len(self.forget_people) + len(self.neighbour_people),
            "min_known_questions": self.min_questions,
            "forget_people": list(self.forget_people),
            "neighbour_people": list(self.neighbour_people),
            "n_forget": len(self.forget),
            "n_neighbours": len(self.neighbours),
        }


def split_known(
    items: Sequence[QAItem],
    known: Sequence[bool],
    *,
    n_forget: int = 2,
    seed: int = 0,
    min_questions: int = MIN_KNOWN_QUESTIONS,
) -> KnownSplit:
    """Keep the known questions, keep people with at least ``min_questions`` of them, and draw
    ``n_forget`` of those people (seeded) to forget; every other kept person is a neighbour.

    Args:
        items: the questions (``group`` = the person).
        known: per item, whether the model answered it correctly (:func:`is_known`).
        n_forget: people to forget (at least one other kept person must remain).
        seed: seeds the choice of the forget people.
        min_questions: known questions a person needs to be kept.

    Raises:
        DataError: fewer than ``n_forget + 1`` people keep enough known questions.
    """
    if len(known) != len(items):
        raise ValueError(f"{len(known)} verdicts for {len(items)} items")
    if n_forget < 1:
        raise ValueError(f"n_forget must be >= 1, got {n_forget}")
    by_person: dict[str, list[QAItem]] = {}
    for item, ok in zip(items, known, strict=True):
        by_person.setdefault(item.group or "", [])
        if ok:
            by_person[item.group or ""].append(item)
    kept = [p for p, qs in by_person.items() if len(qs) >= min_questions]
    n_known = sum(bool(k) for k in known)
    if len(kept) < n_forget + 1:
        raise DataError(
            f"too few known questions: the model answered {n_known} of {len(items)} questions "
            f"correctly and {len(kept)} of {len(by_person)} people have at least {min_questions} "
            f"of them; forgetting {n_forget} people needs at least {n_forget + 1} (the forget "
            "group and at least one neighbour). Use a model that knows more of these people, a "
            "data file with questions it can answer, or forget fewer people."
        )
    chosen = set(random.Random(seed).sample(kept, n_forget))
    forget_people = [p for p in kept if p in chosen]
    neighbour_people = [p for p in kept if p not in chosen]
    return KnownSplit(
        forget=[it for p in forget_people for it in by_person[p]],
        neighbours=[it for p in neighbour_people for it in by_person[p]],
        forget_people=forget_people,
        neighbour_people=neighbour_people,
        questions_total=len(items),
        questions_known=n_known,
        people_total=len(by_person),
        min_questions=min_questions,
    )
