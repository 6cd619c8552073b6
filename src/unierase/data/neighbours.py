"""Look-alike neighbours of a forget set: its questions about people with a name part swapped.

An edit keyed on a person's name reads its key at the name's last token, so a kept person who
shares that token (a surname) looks the same to the edit. Protecting such look-alikes on the
preserved side of the solve teaches the edit to tell them apart. The neighbours are invented
here (names built from syllables, never taken from the caller's data), so that protecting them
says nothing about which real kept people a benchmark evaluates.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from unierase.data.schema import QAItem, find_subject

_SYLLABLES = (
    "al bar cen dor el fa gri hol ist jan kel lom mer nad ost pir quen ras sel tov ur vel wyn "
    "yel zor bre cal dre fin gan"
).split()


def _invented_name_part(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()


def _is_person_name(subject: str) -> bool:
    parts = subject.split()
    return 2 <= len(parts) <= 4 and all(re.fullmatch(r"[A-Z][\w'’-]*", p) for p in parts)


def name_neighbours(items: Sequence[QAItem], per_part: int = 1, seed: int = 0) -> list[QAItem]:
    """Questions of ``items`` with each part of a person-name subject kept and the others swapped.

    For a subject "Mateus Estravelle" the question "Where was Mateus Estravelle born?" gives
    "Where was Kelbar Estravelle born?" (the surname kept) and "Where was Mateus Dorhol born?"
    (the first name kept), ``per_part`` of each. Items whose subject is not a person's name (2-4
    capitalised words found in the question) give none. The answers are empty: only the
    questions matter (their keys). The same ``(items, per_part, seed)`` give the same list.

    Returns:
        neighbour items (group ``"neighbour:<subject>"``), without repeats.
    """
    rng = random.Random(f"unierase-neighbours-{seed}")
    out: dict[str, QAItem] = {}
    for item in items:
        subject = item.subject
        if not subject or not _is_person_name(subject):
            continue
        span = find_subject(item.question, subject)
        if span is None:
            continue
        parts = subject.split()
        for keep in range(len(parts)):
            for _ in range(per_part):
                name = " ".join(
                    p if i == keep else _invented_name_part(rng) for i, p in enumerate(parts)
                )
                question = item.question[: span[0]] + name + item.question[span[1] :]
                if question not in out:
                    out[question] = QAItem(question, "", subject=name, group=f"neighbour:{subject}")
    return list(out.values())
