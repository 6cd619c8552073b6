"""SimNPO (Fan et al. 2024): reference-free NPO on the length-normalised log-probability.

L = -(2 / beta) * mean_i log sigmoid(-(beta / |y_i|) * log pi(y_i|x_i) - gamma),
with gamma the reward margin (``simnpo_margin``). Normalising by the answer length stops long
answers from dominating, and no reference model is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unierase.baselines.common import LossContext


def simnpo_loss(
    logp: torch.Tensor, lengths: torch.Tensor, beta: float, margin: float = 0.0
) -> torch.Tensor:
    """SimNPO loss of a batch.

    Args:
        logp: (B,) summed answer log-probabilities.
        lengths: (B,) answer lengths in tokens.
        beta: inverse temperature.
        margin: the reward margin gamma.
    """
    mean_logp = logp / lengths.clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(-beta * mean_logp - margin).mean()


def forget_term(ctx: LossContext) -> torch.Tensor:
    out = ctx.outputs("forget")
    return simnpo_loss(
        out.sequence_logprob(), out.answer_lengths(), ctx.config.beta, ctx.config.simnpo_margin
    )
