"""RMU (Li et al. 2024, WMDP): steer one block's output on the forget answers towards a fixed
random direction, and keep it equal to the original model's on the retain answers.

forget: mean over answer tokens of mean_d (h_l(x_f) - c u)^2, u a seeded random unit vector;
retain: mean over answer tokens of mean_d (h_l(x_r) - h_l^orig(x_r))^2.
Only the MLPs of the few blocks ending at layer l are trained. The length c is
``rmu_steering`` times the mean norm of the original h_l on the forget answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from unierase import prompting as P
from unierase.baselines.common import LossContext, forward_answers


def steered_layer(model: nn.Module, config: Any) -> int:
    """The block whose output RMU steers (``rmu_layer``, default a quarter of the depth)."""
    from unierase.model import find_layout

    n = find_layout(model).num_layers
    layer = config.rmu_layer if config.rmu_layer is not None else max(0, round(n / 4) - 1)
    if not 0 <= layer < n - 1:
        # The last entry of hidden_states is taken after the final norm, not the block output.
        raise ValueError(f"rmu_layer must be in [0, {n - 2}] for {n} blocks, got {layer}")
    return layer


def trainable_parameter_names(model: nn.Module, config: Any) -> set[str]:
    """Names of the parameters RMU trains: the MLPs of the blocks ending at the steered one."""
    from unierase.model import find_layout

    layout = find_layout(model)
    last = steered_layer(model, config)
    first = max(0, last - config.rmu_trained_layers + 1)
    mlps = tuple(layout.down_proj_names[i].rsplit(".", 1)[0] + "." for i in range(first, last + 1))
    return {name for name, _ in model.named_parameters() if name.startswith(mlps)}


def masked_mse(hidden: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens of the mean squared difference over the hidden dimension.

    Args:
        hidden: (B, L, D).
        target: (B, L, D) or (D,).
        mask: (B, L) True at the tokens that count.
    """
    per_token = (hidden.float() - target.float()).pow(2).mean(-1)  # (B, L)
    return (per_token * mask).sum() / mask.sum().clamp(min=1)


@torch.no_grad()
def prepare(
    reference: nn.Module, forget_batches: Sequence[P.Batch], config: Any, device: Any
) -> dict[str, Any]:
    """The steered layer and the control vector c u (D,), from the original model."""
    layer = steered_layer(reference, config)
    total, count = 0.0, 0
    for batch in forget_batches:
        batch = P.Batch(
            batch.input_ids.to(device),
            batch.attention_mask.to(device),
            batch.labels.to(device),
            batch.offsets,
        )
        out = forward_answers(reference, batch, hidden_states=True)
        h = out.hidden_states[layer + 1]  # (B, L, D)
        norms = h.float().norm(dim=-1)  # (B, L)
        total += float((norms * out.answer_mask).sum())
        count += int(out.answer_mask.sum())
    mean_norm = total / max(1, count)
    hidden = reference.get_input_embeddings().weight.shape[1]
    generator = torch.Generator().manual_seed(config.seed)
    direction = torch.rand(hidden, generator=generator)
    direction = direction / direction.norm()
    control = (config.rmu_steering * mean_norm * direction).to(device)
    return {"rmu_layer": layer, "rmu_control": control, "rmu_mean_norm": mean_norm}


def forget_term(ctx: LossContext) -> torch.Tensor:
    layer = ctx.state["rmu_layer"]
    out = ctx.outputs("forget", hidden_states=True)
    return masked_mse(out.hidden_states[layer + 1], ctx.state["rmu_control"], out.answer_mask)


def retain_term(ctx: LossContext) -> torch.Tensor:
    layer = ctx.state["rmu_layer"]
    out = ctx.outputs("retain", hidden_states=True)
    ref = ctx.reference_outputs("retain", hidden_states=True)
    return masked_mse(out.hidden_states[layer + 1], ref.hidden_states[layer + 1], out.answer_mask)
