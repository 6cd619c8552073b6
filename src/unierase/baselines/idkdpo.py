"""IdkDPO (Maini et al. 2024): DPO with a refusal as the preferred answer and the true answer
as the dispreferred one, on the forget questions.

L = -(2 / beta) * mean_i log sigmoid(beta * ((log pi(idk) - log pi_ref(idk))
                                           - (log pi(y) - log pi_ref(y)))).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unierase.baselines.common import LossContext


def dpo_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    reference_chosen_logp: torch.Tensor,
    reference_rejected_logp: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO loss of a batch; every argument but ``beta`` is (B,) summed answer log-probabilities."""
    margin = (chosen_logp - reference_chosen_logp) - (rejected_logp - reference_rejected_logp)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


def forget_term(ctx: LossContext) -> torch.Tensor:
    return dpo_loss(
        ctx.outputs("forget_idk").sequence_logprob(),
        ctx.outputs("forget").sequence_logprob(),
        ctx.reference_outputs("forget_idk").sequence_logprob(),
        ctx.reference_outputs("forget").sequence_logprob(),
        ctx.config.beta,
    )
