"""The one QA item type that flows from loaders through both phases to evaluation."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


class DataError(ValueError):
    """Bad input data: the message names the file, line and field where it can."""


@dataclass(frozen=True)
class QAItem:
    """One question/answer pair.

    Attributes:
        question: the question as a user would ask it.
        answer: the reference answer.
        subject: a span of ``question`` that names what the question is about (an author's
            name, a descriptive phrase). Phase II reads its key at the subject's last token.
        paraphrased_question: the same question in other words (for paraphrase attacks).
        paraphrased_answer: the same answer in other words (for the truth ratio).
        perturbed_answers: plausible but wrong answers (for the truth ratio and probability).
        group: what the item belongs to: an author, a task id, a person.
        meta: anything else a loader wants to keep (source file, line).
    """

    question: str
    answer: str
    subject: str | None = None
    paraphrased_question: str | None = None
    paraphrased_answer: str | None = None
    perturbed_answers: tuple[str, ...] = ()
    group: str | None = None
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        # Lists arrive from JSON; a tuple keeps the item hashable and immutable.
        if not isinstance(self.perturbed_answers, tuple):
            object.__setattr__(self, "perturbed_answers", tuple(self.perturbed_answers))

    def validate(self, where: str = "") -> None:
        """Raise DataError naming ``where`` (e.g. ``"forget.jsonl:12"``) if the item is unusable."""
        prefix = f"{where}: " if where else ""
        for name in ("question", "answer"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{prefix}field '{name}' is missing or empty")
        if self.subject is not None:
            if not isinstance(self.subject, str) or not self.subject.strip():
                raise DataError(f"{prefix}field 'subject' is empty")
            if find_subject(self.question, self.subject) is None:
                raise DataError(
                    f"{prefix}field 'subject' ({self.subject!r}) does not occur in the question "
                    f"({self.question!r})"
                )
        for i, p in enumerate(self.perturbed_answers):
            if not isinstance(p, str) or not p.strip():
                raise DataError(f"{prefix}field 'perturbed_answer'[{i}] is empty")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``perturbed_answers`` as a list, empty optional fields dropped)."""
        d = asdict(self)
        d["perturbed_answers"] = list(self.perturbed_answers)
        return {k: v for k, v in d.items() if v not in (None, [], {})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QAItem:
        """Build from a dict using either our field names or TOFU's (``perturbed_answer``)."""
        perturbed = d.get("perturbed_answers", d.get("perturbed_answer", ()))
        if isinstance(perturbed, str):
            perturbed = (perturbed,)
        return cls(
            question=d.get("question"),
            answer=d.get("answer"),
            subject=d.get("subject"),
            paraphrased_question=d.get("paraphrased_question"),
            paraphrased_answer=d.get("paraphrased_answer"),
            perturbed_answers=tuple(perturbed or ()),
            group=None if d.get("group") is None else str(d.get("group")),
            meta=dict(d.get("meta") or {}),
        )


def find_subject(question: str, subject: str) -> tuple[int, int] | None:
    """Character span [start, end) of ``subject`` in ``question``.

    Exact match first, then case-insensitive (TOFU subjects sometimes differ in case). When the
    subject occurs several times, the last occurrence is used: it is the one nearest the end of
    the prompt, whose hidden state the model has most recently built.
    """
    start = question.rfind(subject)
    if start < 0:
        start = question.lower().rfind(subject.lower())
    if start < 0:
        return None
    return start, start + len(subject)
