"""The unlearning token in the vocabulary: adding it, finding it, stopping generation at it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import StoppingCriteria

from unierase.token.config import DEFAULT_TOKEN_TEXT

log = logging.getLogger(__name__)


class TokenError(ValueError):
    """The unlearning token is missing, splits into pieces, or clashes with the vocabulary."""


def unlearning_token_id(tokenizer: Any, text: str = DEFAULT_TOKEN_TEXT) -> int:
    """The id of the unlearning token ``text``.

    Raises:
        TokenError: the tokenizer has no such single token (train one with ``unierase token``).
    """
    vocab = tokenizer.get_vocab()
    if text not in vocab:
        raise TokenError(
            f"the tokenizer has no unlearning token {text!r}; train one first "
            f"(`unierase token`, or unierase.token.train_unlearning_token), and load the "
            f"checkpoint it saved"
        )
    token_id = vocab[text]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if ids != [token_id]:
        raise TokenError(
            f"the unlearning token {text!r} is in the vocabulary (id {token_id}) but its text "
            f"encodes to {ids}: it is not registered as a special/added token"
        )
    return token_id


def add_unlearning_token(model: nn.Module, tokenizer: Any, text: str = DEFAULT_TOKEN_TEXT) -> int:
    """Add ``text`` as a special token and make room for its row(s) in the model.

    The embedding (and an untied head) grows only when the new id falls outside the matrix;
    models whose matrix already has spare rows (padded vocabularies) keep their shape. Existing
    rows are never touched. The new rows are left for the caller to initialise.

    Returns:
        the new token's id.

    Raises:
        TokenError: ``text`` is already in the vocabulary, or does not encode to one id.
    """
    if text in tokenizer.get_vocab():
        raise TokenError(
            f"{text!r} is already in the vocabulary (id {tokenizer.get_vocab()[text]}); choose "
            f"another token text for a new unlearning token"
        )
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [text]}, replace_extra_special_tokens=False
    )
    token_id = unlearning_token_id(tokenizer, text)
    rows = model.get_input_embeddings().weight.shape[0]
    if token_id >= rows:
        # mean_resizing would draw the new row from the old rows' distribution with the global
        # RNG; the caller initialises explicitly and reproducibly instead.
        model.resize_token_embeddings(token_id + 1, mean_resizing=False)
    new_rows = model.get_input_embeddings().weight.shape[0]
    log.info("added %s as token %d (embedding rows: %d -> %d)", text, token_id, rows, new_rows)
    return token_id


def unlearning_stop_ids(tokenizer: Any, texts: Sequence[str] = (DEFAULT_TOKEN_TEXT,)) -> list[int]:
    """Ids of unlearning tokens that end an answer, for prompts that already hold the opening one.

    Pass them as extra stop ids when generating after ``question [UNL]`` (Phase I's check): the
    refusal is trained to end with the token, so generation stops after the refusal. When the
    model itself writes the opening token (after the Phase II edit), use
    :class:`ClosingTokenStop` instead, which lets the first one through.
    """
    return [unlearning_token_id(tokenizer, t) for t in texts]


class ClosingTokenStop(StoppingCriteria):
    """A ``transformers`` stopping criterion: stop a row at its closing unlearning token.

    After the Phase II edit the model answers a forget question with ``[UNL] refusal [UNL]``;
    the first token opens the refusal, the second closes it. A row is done once the part it
    generated (after ``prompt_width`` ids) holds one of ``token_ids`` anywhere but at its first
    position. Pass it to ``generate(stopping_criteria=StoppingCriteriaList([...]))`` together
    with the usual end-of-turn stop ids.

    Args:
        token_ids: the unlearning token ids.
        prompt_width: width of the (left-padded) prompt batch passed to ``generate``.
    """

    def __init__(self, token_ids: Sequence[int], prompt_width: int) -> None:
        self.token_ids = torch.tensor(sorted(set(token_ids)), dtype=torch.long)
        self.prompt_width = prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: Any = None, **kwargs: Any) -> torch.Tensor:
        """(batch,) bool: which rows have generated a closing unlearning token."""
        generated = input_ids[:, self.prompt_width + 1 :]
        return torch.isin(generated, self.token_ids.to(generated.device)).any(dim=1)
