"""What every baseline loss reads: answer-token log-probabilities, logits and hidden states.

Batches come from ``prompting.collate`` (right padding, labels -100 on the prompt and padding),
so every loss sees only answer tokens (the answer and its end-of-turn ids). A
:class:`LossContext` runs each (model, batch) pair at most once per step and hands the outputs to
whichever terms need them; the reference model runs without gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unierase import prompting as P


@dataclass
class TrainBatches:
    """The batches of one training step.

    Attributes:
        forget: forget questions with their true answers.
        retain: retain questions with their answers (None when the method needs none).
        forget_idk: forget questions with a refusal as the answer (IdkDPO, IDK).
        retain_idk: retain questions with a refusal as the answer (answer preservation).
    """

    forget: P.Batch
    retain: P.Batch | None = None
    forget_idk: P.Batch | None = None
    retain_idk: P.Batch | None = None

    def to(self, device: Any, non_blocking: bool = False) -> TrainBatches:
        """The same batches on ``device`` (``accelerate`` calls this for prepared loaders)."""

        def move(b: P.Batch | None) -> P.Batch | None:
            if b is None:
                return None
            return P.Batch(
                input_ids=b.input_ids.to(device, non_blocking=non_blocking),
                attention_mask=b.attention_mask.to(device, non_blocking=non_blocking),
                labels=None if b.labels is None else b.labels.to(device, non_blocking=non_blocking),
                offsets=b.offsets.to(device, non_blocking=non_blocking),
            )

        return TrainBatches(
            move(self.forget), move(self.retain), move(self.forget_idk), move(self.retain_idk)
        )


@dataclass
class AnswerOutputs:
    """A model's outputs on a batch, aligned with the answer tokens they predict.

    Attributes:
        logits: (B, L-1, V) logits at positions 0..L-2, each predicting the next token.
        targets: (B, L-1) the token each position predicts; -100 where there is no loss.
        answer_mask: (B, L) True at answer tokens (the positions whose own hidden state RMU
            reads).
        hidden_states: the model's hidden states (embeddings, then each block's output), each
            (B, L, D), when requested.
    """

    logits: torch.Tensor
    targets: torch.Tensor
    answer_mask: torch.Tensor
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def mask(self) -> torch.Tensor:
        """(B, L-1) True where a target is an answer token."""
        return self.targets != -100

    def token_logprobs(self) -> torch.Tensor:
        """(B, L-1) log-probability of each target token (0 where there is no target)."""
        logp = torch.log_softmax(self.logits.float(), dim=-1)
        safe = self.targets.clamp(min=0).unsqueeze(-1)
        return logp.gather(-1, safe).squeeze(-1) * self.mask

    def sequence_logprob(self) -> torch.Tensor:
        """(B,) summed log-probability of each row's answer."""
        return self.token_logprobs().sum(-1)

    def answer_lengths(self) -> torch.Tensor:
        """(B,) number of answer tokens per row."""
        return self.mask.sum(-1)


def forward_answers(
    model: nn.Module, batch: P.Batch, *, hidden_states: bool = False
) -> AnswerOutputs:
    """Run ``model`` on a labelled batch and align its logits with the answer tokens."""
    if batch.labels is None:
        raise ValueError("a baseline batch needs labels (answer tokens only)")
    out = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        output_hidden_states=hidden_states,
        use_cache=False,
    )
    return AnswerOutputs(
        logits=out.logits[:, :-1],
        targets=batch.labels[:, 1:],
        answer_mask=batch.labels != -100,
        hidden_states=tuple(out.hidden_states) if hidden_states else None,
    )


# ----------------------------------------------------------------------------- token-level maths


def mean_nll(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood over every answer token of the batch.

    Args:
        token_logprobs: (B, T) log-probabilities of the targets.
        mask: (B, T) True at answer tokens.
    """
    return -(token_logprobs * mask).sum() / mask.sum().clamp(min=1)


def entropy_gap(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over answer positions of log V - H(p): the KL divergence from p to uniform.

    Args:
        logits: (B, T, V).
        mask: (B, T) True at answer positions.

    Zero exactly when every answer position predicts the uniform distribution.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, T)
    gap = math.log(logits.shape[-1]) - entropy
    return (gap * mask).sum() / mask.sum().clamp(min=1)


def kl_to_reference(
    logits: torch.Tensor, reference_logits: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean over answer positions of KL(p_reference || p_model).

    Args:
        logits: (B, T, V) of the model being trained.
        reference_logits: (B, T, V) of the frozen reference.
        mask: (B, T) True at answer positions.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)
    ref_logp = torch.log_softmax(reference_logits.float(), dim=-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # (B, T)
    return (kl * mask).sum() / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- the step context


@dataclass
class LossContext:
    """Everything a loss term may read during one step; each forward runs at most once.

    Attributes:
        model: the model being trained (possibly wrapped by ``accelerate``).
        reference: the frozen original model, or None when the method needs none.
        batches: this step's batches.
        config: the run's ``BaselineConfig``.
        state: per-run values a method prepared before training (RMU's control vector).
    """

    model: nn.Module
    reference: nn.Module | None
    batches: TrainBatches
    config: Any
    state: dict[str, Any] = field(default_factory=dict)
    _cache: dict[tuple[str, str], AnswerOutputs] = field(default_factory=dict)

    def batch(self, name: str) -> P.Batch:
        b = getattr(self.batches, name)
        if b is None:
            raise ValueError(f"this method needs the {name!r} batch, which was not built")
        return b

    def outputs(self, name: str, *, hidden_states: bool = False) -> AnswerOutputs:
        """The trained model's outputs on batch ``name`` ("forget", "retain", ...)."""
        return self._run("model", name, hidden_states)

    def reference_outputs(self, name: str, *, hidden_states: bool = False) -> AnswerOutputs:
        """The reference model's outputs on batch ``name``, without gradients."""
        if self.reference is None:
            raise ValueError("this method needs a reference model")
        with torch.no_grad():
            return self._run("reference", name, hidden_states)

    def _run(self, which: str, name: str, hidden_states: bool) -> AnswerOutputs:
        key = (which, name)
        cached = self._cache.get(key)
        if cached is None or (hidden_states and cached.hidden_states is None):
            model = self.model if which == "model" else self.reference
            cached = forward_answers(model, self.batch(name), hidden_states=hidden_states)
            self._cache[key] = cached
        return cached
