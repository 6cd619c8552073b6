"""Refusal detection for generated answers: the refusal list and embedding similarity.

Two detectors, recorded separately per item:

* list: :func:`unierase.data.refusals.is_refusal` (the project's refusal sentences and a few
  common refusal phrasings, matched as text);
* embedding: the highest cosine similarity between the answer (as a whole, and each of its first
  few sentences) and the refusal sentences, under the sentence encoder; a refusal when it reaches
  a threshold.

Threshold (default :data:`DEFAULT_REFUSAL_SIMILARITY` = 0.5), measured with all-MiniLM-L6-v2
against the project's 100 refusal sentences: of TOFU's 99 refusal phrasings (``idontknow.txt``,
none of them in our list) 86% reach 0.5 (95% reach 0.45), while none of 1,500 TOFU retain
answers nor any of the general-probe questions and answers does (their highest: 0.43).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from unierase.data.refusals import is_refusal, load_refusals
from unierase.eval.embeddings import SentenceEmbedder

DEFAULT_REFUSAL_SIMILARITY = 0.5

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def split_sentences(text: str, limit: int) -> list[str]:
    """The first ``limit`` sentences of ``text`` (split after ``.``, ``!`` or ``?``)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s.strip()][:limit]


@dataclass(frozen=True)
class RefusalFlags:
    """Refusal flags of one answer.

    Attributes:
        by_list: the answer matches the refusal list or a common refusal phrasing.
        similarity: highest cosine similarity to a refusal sentence (None: no encoder).
        by_embedding: ``similarity >= threshold`` (None: no encoder).
    """

    by_list: bool
    similarity: float | None
    by_embedding: bool | None

    @property
    def any(self) -> bool:
        """Refusal by either detector."""
        return self.by_list or bool(self.by_embedding)


class RefusalDetector:
    """Flags refusals in generated answers.

    Args:
        embedder: sentence encoder for the similarity detector; None leaves it off.
        refusals: the refusal sentences (default: the project's list).
        threshold: cosine similarity at or above which an answer counts as a refusal.
        max_sentences: how many leading sentences are also compared one by one (a refusal
            followed by other text is still caught).
    """

    def __init__(
        self,
        embedder: SentenceEmbedder | None,
        refusals: Sequence[str] | None = None,
        *,
        threshold: float = DEFAULT_REFUSAL_SIMILARITY,
        max_sentences: int = 4,
    ) -> None:
        if not -1.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be a cosine in [-1, 1], got {threshold}")
        self.refusals = list(refusals) if refusals is not None else load_refusals()
        self.embedder = embedder
        self.threshold = threshold
        self.max_sentences = max_sentences
        self._refusal_embeddings = (
            embedder.encode(self.refusals).astype(np.float64) if embedder is not None else None
        )

    def similarities(self, texts: Sequence[str]) -> np.ndarray:
        """Highest similarity of each text (or of one of its leading sentences) to a refusal.

        Shape ``(len(texts),)``. Empty texts score 0. Raises RuntimeError without an encoder.
        """
        if self.embedder is None or self._refusal_embeddings is None:
            raise RuntimeError("no sentence encoder: embedding similarity is unavailable")
        pieces: list[str] = []
        owner: list[int] = []
        for i, text in enumerate(texts):
            if not text.strip():
                continue
            for piece in dict.fromkeys([text.strip(), *split_sentences(text, self.max_sentences)]):
                pieces.append(piece)
                owner.append(i)
        best = np.zeros(len(texts), dtype=np.float64)
        if pieces:
            sims = self.embedder.encode(pieces).astype(np.float64) @ self._refusal_embeddings.T
            np.maximum.at(best, np.asarray(owner), sims.max(axis=1))
        return best

    def flags(self, texts: Sequence[str]) -> list[RefusalFlags]:
        """Both detectors' verdicts for each text."""
        by_list = [is_refusal(t, self.refusals) for t in texts]
        if self.embedder is None:
            return [RefusalFlags(b, None, None) for b in by_list]
        sims = self.similarities(texts)
        return [
            RefusalFlags(b, float(s), bool(s >= self.threshold))
            for b, s in zip(by_list, sims, strict=True)
        ]
