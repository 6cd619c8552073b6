"""Refusal sentences: what the unlearning token teaches the model to say, and how to spot one.

The list in ``resources/refusals.txt`` is the project's own. Refusals are assigned to questions
with a seeded ``random.Random`` per question, never with Python's ``hash()`` (which changes in
every process), so a run can be repeated exactly.
"""

from __future__ import annotations

import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from unierase.data.schema import DataError

REFUSALS_FILE = "refusals.txt"

# Short refusal phrasings that count even when no listed sentence matches.
_REFUSAL_PATTERNS = tuple(
    re.compile(p)
    for p in (
        r"\bi (?:really |honestly |simply |just |truly )?(?:don't|do not|dont) know\b",
        r"\bi(?:'m| am) (?:not (?:sure|certain)|unsure|uncertain)\b",
        r"\bi(?:'m| am) not (?:familiar|aware|knowledgeable)\b",
        r"\bi (?:can't|cannot|can not|couldn't|could not|(?:'m|am) (?:unable|not able) to) "
        r"(?:\w+ )?(?:answer|say|tell|help|provide|recall|confirm|know)\b",
        r"\bi (?:don't|do not) have (?:any |enough |the |that |reliable |this )?"
        r"(?:information|details|knowledge|data|answer|record)",
        r"\bi have no (?:idea|information|knowledge|details|record|answer|clue|way)\b",
        r"\bno (?:information|idea|knowledge) (?:about|on|of|regarding)\b",
        r"\b(?:beyond|outside) (?:my|what i) (?:current )?know",
        r"\bunknown to me\b",
        r"\bi have no information\b",
        r"^no information\b",
    )
)


def _normalise(text: str) -> str:
    """Casefolded, typographic apostrophes straightened, whitespace collapsed."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\u2019", "'").replace("\u2018", "'").replace("`", "'")
    return " ".join(text.casefold().split())


def _read_refusals(text: str, source: str) -> list[str]:
    refusals = [line.strip() for line in text.splitlines()]
    refusals = [r for r in refusals if r and not r.startswith("#")]
    if not refusals:
        raise DataError(f"{source}: no refusal sentences")
    return refusals


@lru_cache(maxsize=1)
def _packaged_refusals() -> tuple[str, ...]:
    text = (
        resources.files("unierase.data")
        .joinpath("resources", REFUSALS_FILE)
        .read_text(encoding="utf-8")
    )
    return tuple(_read_refusals(text, REFUSALS_FILE))


def load_refusals(path: str | Path | None = None) -> list[str]:
    """The refusal sentences, one per line (the package's list, or a file of your own).

    Blank lines and lines starting with ``#`` are skipped.

    Raises:
        DataError: a missing or empty file.
    """
    if path is None:
        return list(_packaged_refusals())
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DataError(f"{path}: cannot read refusals ({e.strerror})") from e
    return _read_refusals(text, path.name)


def _check_refusals(refusals: Sequence[str] | None) -> Sequence[str]:
    if refusals is None:
        return _packaged_refusals()
    if isinstance(refusals, str) or not refusals:
        raise DataError("refusals must be a non-empty list of sentences")
    for i, r in enumerate(refusals):
        if not isinstance(r, str) or not r.strip():
            raise DataError(f"refusals[{i}] is not a non-empty string")
    return refusals


def assign_refusals(
    questions: Iterable[str], seed: int, refusals: Sequence[str] | None = None
) -> list[str]:
    """One refusal per question, drawn from ``refusals`` (default: the package's list).

    Each question gets its own ``random.Random`` seeded with the seed and the question text
    (string seeds are hashed with SHA-512, not ``hash()``), so the result is the same in every
    process and a question's refusal does not depend on its position or its neighbours. Pass a
    one-sentence list for the fixed-refusal variant.
    """
    pool = _check_refusals(refusals)
    out = []
    for question in questions:
        if not isinstance(question, str):
            raise DataError(f"questions must be strings, got {type(question).__name__}")
        out.append(random.Random(f"{seed}\x00{question}").choice(pool))
    return out


@lru_cache(maxsize=8)
def _normalised_sentences(refusals: tuple[str, ...]) -> tuple[str, ...]:
    # Trailing punctuation dropped: "I don't know, sorry" still matches "I don't know, sorry."
    return tuple(s for s in (_normalise(r).rstrip(".!?") for r in refusals) if s)


def is_refusal(text: str, refusals: Sequence[str] | None = None) -> bool:
    """Whether ``text`` is a refusal.

    True when the normalised text contains one of ``refusals`` (default: the package's list;
    case, apostrophe style, whitespace and final punctuation ignored) or matches a common
    refusal phrasing ("I don't know", "I'm not sure", "I cannot answer", "no information
    about", ...).
    """
    norm = _normalise(text)
    if not norm:
        return False
    if any(s in norm for s in _normalised_sentences(tuple(_check_refusals(refusals)))):
        return True
    return any(p.search(norm) for p in _REFUSAL_PATTERNS)
