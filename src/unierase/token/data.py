"""Phase I training sequences: ``q [UNL] a <end of turn>``, loss on ``a <end of turn>``.

The authors' design closes the refusal with a second token (``q [UNL] a [UNL] <end of turn>``,
``closing=True``). Measured on the demo preset (benchmarks/README.md, "Locality"), that closing
token is what the edited model fires again and again inside its refusal, and a plain client
would print it; a refusal that ends at the end of turn is also learnt better (Phase I's exact
match 1.0 instead of 0.69), so it is the default.

Sequences are built by :func:`unierase.prompting.encode`, so what Phase I trains on is what Phase II
and evaluation see: in the chat format the user turn holds the question and the assistant turn
starts with the token; in the raw format the token follows ``Answer:``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from unierase import prompting as P


def prompt_format(name: str, system_prompt: str | None = None) -> P.PromptFormat:
    """The :class:`PromptFormat` of a Phase I format name ("raw" or "chat")."""
    if name not in ("raw", "chat"):
        raise ValueError(f"unknown format {name!r}; choose raw or chat")
    return P.PromptFormat(chat=name == "chat", system_prompt=system_prompt)


def encode_unlearning_example(
    tokenizer: Any,
    question: str,
    token_id: int,
    refusal: str | None = None,
    fmt: P.PromptFormat = P.PromptFormat(),
    *,
    closing: bool = False,
) -> P.EncodedQA:
    """Encode ``question [UNL]`` (and, with a refusal, ``refusal <end of turn>``, or
    ``refusal [UNL] <end of turn>`` with ``closing``).

    The returned ``prompt_length`` counts the opening token as part of the prompt, so
    ``labels`` cover exactly the refusal and its ending, and
    ``collate(..., prompt_only=True)`` yields ``question [UNL]``, the prompt whose greedy
    continuation is the refusal.

    Args:
        tokenizer: the tokenizer that holds the token.
        question: user text (special-token text in it is split, never parsed).
        token_id: the unlearning token's id.
        refusal: the target sentence; None encodes the prompt only.
        fmt: the prompt format.
        closing: close the refusal with a second unlearning token before the end of turn.
    """
    enc = P.encode(
        tokenizer, question, refusal, fmt, answer_prefix_ids=[token_id], add_end_of_turn=False
    )
    ids = list(enc.input_ids)
    if refusal is not None:
        ids += [token_id] if closing else []
        ids += P.end_of_turn_ids(tokenizer, fmt)
    prompt_length = enc.prompt_length + 1
    return P.EncodedQA(
        input_ids=ids,
        prompt_length=prompt_length,
        answer_length=len(ids) - prompt_length,
        user_span=enc.user_span,
    )


@dataclass
class Example:
    """One Phase I training sequence.

    Attributes:
        question: the question.
        refusal: its target refusal.
        format: "raw" or "chat".
        source: "forget", "breadth" or "template".
        enc: the encoded sequence (see :func:`encode_unlearning_example`).
    """

    question: str
    refusal: str
    format: str
    source: str
    enc: P.EncodedQA

    @property
    def prefix_length(self) -> int:
        """Ids before the opening token: they do not depend on the trained row."""
        return self.enc.prompt_length - 1


# Invented names, so that a refusal is a plausible answer to every template question.
_SYLLABLES = (
    "al ber cor dan el fen gar hol is jor kal lin mar nor os pel quin ros sal tor ul ven wil "
    "yar zan bra cle dri fro gla kre ma no ri sa te vo"
).split()
_PERSON_TEMPLATES = (
    "Who is {person}?",
    "What is {person} best known for?",
    "Where was {person} born?",
    "When was {person} born?",
    "What did {person} study at university?",
    "Which prize did {person} win?",
    "What was the first book written by {person}?",
    "Who were the parents of {person}?",
    "Where does {person} live now?",
    "What genre does {person} write in?",
    "Can you tell me about the life of {person}?",
    "What inspired {person} to become a writer?",
    "How many books has {person} published?",
    "What is the most famous work of {person}?",
)
_PLACE_TEMPLATES = (
    "What is the population of {place}?",
    "In which country is the town of {place}?",
    "What is {place} famous for?",
    "Who founded the city of {place}?",
)
_THING_TEMPLATES = (
    "Who wrote the novel '{title}'?",
    "When was the book '{title}' published?",
    "What is the plot of '{title}'?",
    "Who directed the film '{title}'?",
    "In which year did the {org} open?",
    "Who leads the {org}?",
)
_ORG_KINDS = ("Institute", "Society", "Museum", "Academy", "Foundation", "Library")
_TITLE_WORDS = (
    "Lantern Amber River Harvest Salt Glass Winter Copper Orchard Compass Ferry Meridian "
    "Tide Garden Atlas Ledger"
).split()


def _invented_word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.choice((2, 3)))).capitalize()


def template_questions(n: int, seed: int) -> list[str]:
    """``n`` distinct questions about invented people, places, books and organisations.

    The same ``(n, seed)`` gives the same list in every process.
    """
    rng = random.Random(f"unierase-breadth-{seed}")
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        kind = rng.random()
        if kind < 0.6:
            person = f"{_invented_word(rng)} {_invented_word(rng)}"
            q = rng.choice(_PERSON_TEMPLATES).format(person=person)
        elif kind < 0.8:
            q = rng.choice(_PLACE_TEMPLATES).format(place=_invented_word(rng))
        else:
            title = f"The {rng.choice(_TITLE_WORDS)} of {_invented_word(rng)}"
            org = f"{_invented_word(rng)} {rng.choice(_ORG_KINDS)}"
            q = rng.choice(_THING_TEMPLATES).format(title=title, org=org)
        if q not in seen:
            seen.add(q)
            out.append(q)
    return out


def unique_questions(questions: Sequence[str]) -> list[str]:
    """``questions`` without repeats, in their first order."""
    return list(dict.fromkeys(questions))
