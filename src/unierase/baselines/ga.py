"""Gradient ascent (GA): raise the forget answers' NLL by descending its negation."""

from __future__ import annotations

import torch

from unierase.baselines.common import LossContext, mean_nll


def gradient_ascent_loss(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The negated mean answer-token NLL.

    Args:
        token_logprobs: (B, T) log-probabilities of the forget answers' tokens.
        mask: (B, T) True at answer tokens.
    """
    return -mean_nll(token_logprobs, mask)


def forget_term(ctx: LossContext) -> torch.Tensor:
    out = ctx.outputs("forget")
    return gradient_ascent_loss(out.token_logprobs(), out.mask)
