"""Maximum entropy (ME, Yuan et al. 2024): push every forget answer position towards the uniform
distribution, i.e. minimise the mean of log V - H(p) (the KL divergence from p to uniform)."""

from __future__ import annotations

import torch

from unierase.baselines.common import LossContext, entropy_gap


def forget_term(ctx: LossContext) -> torch.Tensor:
    out = ctx.outputs("forget")
    return entropy_gap(out.logits, out.mask)
