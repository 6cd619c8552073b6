"""Answer preservation (AP, Yuan et al. 2024): on retain questions, keep the true answer more
likely than a refusal, so that IDK training does not teach the model to refuse everything.

L = -(1 / beta) * mean_i log sigmoid(beta * (log pi(y_i|x_i) - log pi(idk_i|x_i))), reference-free.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unierase.baselines.common import LossContext


def answer_preservation_loss(
    answer_logp: torch.Tensor, refusal_logp: torch.Tensor, beta: float
) -> torch.Tensor:
    """AP loss of a batch.

    Args:
        answer_logp: (B,) summed log-probabilities of the retain answers.
        refusal_logp: (B,) summed log-probabilities of refusals to the same questions.
        beta: inverse temperature.
    """
    return -(1.0 / beta) * F.logsigmoid(beta * (answer_logp - refusal_logp)).mean()


def retain_term(ctx: LossContext) -> torch.Tensor:
    return answer_preservation_loss(
        ctx.outputs("retain").sequence_logprob(),
        ctx.outputs("retain_idk").sequence_logprob(),
        ctx.config.beta,
    )
