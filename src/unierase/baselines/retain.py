"""Retain regularisers shared by several methods: NLL on retain answers (GD) and KL to the
original model on retain answers (KL)."""

from __future__ import annotations

import torch

from unierase.baselines.common import LossContext, kl_to_reference, mean_nll


def nll_term(ctx: LossContext) -> torch.Tensor:
    """Gradient descent on the retain answers: their mean answer-token NLL."""
    out = ctx.outputs("retain")
    return mean_nll(out.token_logprobs(), out.mask)


def kl_term(ctx: LossContext) -> torch.Tensor:
    """KL(original || model) of the next-token distributions at the retain answer positions."""
    out = ctx.outputs("retain")
    ref = ctx.reference_outputs("retain")
    return kl_to_reference(out.logits, ref.logits, out.mask)
