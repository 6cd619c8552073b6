"""IDK (Maini et al. 2024): fine-tune the forget questions towards a refusal answer."""

from __future__ import annotations

import torch

from unierase.baselines.common import LossContext, mean_nll


def forget_term(ctx: LossContext) -> torch.Tensor:
    """Mean answer-token NLL of the refusals given the forget questions."""
    out = ctx.outputs("forget_idk")
    return mean_nll(out.token_logprobs(), out.mask)
