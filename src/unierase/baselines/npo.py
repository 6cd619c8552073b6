"""Negative preference optimisation (NPO, Zhang et al. 2024): DPO with only a losing answer.

L = -(2 / beta) * mean_i log sigmoid(-beta * (log pi(y_i|x_i) - log pi_ref(y_i|x_i))),
with sequence log-probabilities summed over the answer tokens. It behaves like gradient ascent
while the model is close to the reference and fades once the answer is unlikely, which slows the
collapse that plain GA runs into.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unierase.baselines.common import LossContext


def npo_loss(logp: torch.Tensor, reference_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO loss of a batch.

    Args:
        logp: (B,) summed answer log-probabilities under the trained model.
        reference_logp: (B,) the same under the reference model.
        beta: inverse temperature.
    """
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - reference_logp)).mean()


def forget_term(ctx: LossContext) -> torch.Tensor:
    logp = ctx.outputs("forget").sequence_logprob()
    ref = ctx.reference_outputs("forget").sequence_logprob()
    return npo_loss(logp, ref, ctx.config.beta)
