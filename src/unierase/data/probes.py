"""General-knowledge probe set: short questions a small instruct model can answer.

Used to measure what an edit or a fine-tune costs in general ability, and how often a model
refuses questions it must not refuse. The set is the project's own (``resources/``).
"""

from __future__ import annotations

import re
import unicodedata
from importlib import resources
from pathlib import Path

from unierase.data.loaders import item_from_record, read_jsonl_records
from unierase.data.schema import DataError, QAItem

GENERAL_PROBE_FILE = "general_probe.jsonl"


def general_probe_text() -> str:
    """The probe set's JSONL text exactly as shipped in the package."""
    resource = resources.files("unierase.data").joinpath("resources", GENERAL_PROBE_FILE)
    return resource.read_text(encoding="utf-8")


def load_general_probe(path: str | Path | None = None) -> list[QAItem]:
    """The general-knowledge probe items (the package's set, or a file in the same format).

    Each item has a short ``answer`` ("Paris"), three wrong ``perturbed_answers`` and in
    ``meta["aliases"]`` the other accepted spellings ("Washington", "Washington DC").

    Raises:
        DataError: a bad row (naming file, line and field).
    """
    records, source = resource_records(GENERAL_PROBE_FILE, path)
    items = []
    for line, record in records:
        check_aliases(record, f"{source}:{line}")
        items.append(item_from_record(record, source, line))
    return items


def resource_records(
    name: str, path: str | Path | None = None
) -> tuple[list[tuple[int, dict]], str]:
    """(numbered JSONL records, source label) of the package resource ``name``, or of the
    user's file ``path`` in its place."""
    if path is not None:
        return read_jsonl_records(path), Path(path).name
    with resources.as_file(resources.files("unierase.data").joinpath("resources", name)) as res:
        return read_jsonl_records(res), name


def check_aliases(record: dict, where: str) -> None:
    """DataError unless the record's optional ``aliases`` is a list of non-empty strings."""
    aliases = record.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise DataError(f"{where}: field 'aliases' must be a list of non-empty strings")


def _normalise(text: str) -> str:
    """Casefolded, accents and typographic quotes removed, whitespace collapsed."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.casefold().split())


def _phrase_pattern(phrase: str) -> re.Pattern[str]:
    words = [re.escape(w) for w in _normalise(phrase).split()]
    # A whole word or phrase: not inside a longer word or number ("4" does not match "42").
    return re.compile(r"(?<!\w)" + r"\s+".join(words) + r"(?!\w)")


def _spans(text: str, phrases: list[str]) -> list[tuple[int, int]]:
    return [m.span() for p in phrases if p.strip() for m in _phrase_pattern(p).finditer(text)]


def probe_is_correct(item: QAItem, generated_text: str) -> bool:
    """Whether ``generated_text`` answers the probe ``item`` correctly.

    Correct means: the answer or one of ``meta["aliases"]`` occurs as a whole word or phrase
    (case- and accent-insensitive), and no wrong alternative (``perturbed_answers``) is
    mentioned before it ("Marseille, no, Paris" is wrong; "Paris, not Lyon" is right). A
    negation ("not Paris") is not recognised.
    """
    text = _normalise(generated_text)
    correct = _spans(text, [item.answer, *item.meta.get("aliases", ())])
    if not correct:
        return False
    first = min(start for start, _ in correct)
    wrong = _spans(text, list(item.perturbed_answers))
    return not any(end <= first for _, end in wrong)
