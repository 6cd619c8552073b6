"""The null-space-constrained closed-form edit (AlphaEdit), spread over several layers.

For edited layers l_1..l_L in order, with the current (partly edited) weights:
    K = keys of the requests at layer l                    (d_mlp x n)
    R = (Z - H_current) / (layers left)                    (d_hidden x n)
    solve (P (K K^T + C_prev) + lambda I) Delta^T = P K R^T   in float64
    W_l += Delta                                            (d_hidden x d_mlp)
P projects onto the null space of general text's keys, so P Delta^T = Delta^T: the edit leaves
any key in the protected subspace unchanged. C_prev holds K K^T of earlier edits so they are kept.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from unierase.edit.keys import read_rows, request_keys_and_hidden
from unierase.edit.requests import EditRequest
from unierase.model import ModelLayout

log = logging.getLogger(__name__)


def solve_update(
    keys: torch.Tensor,
    residual: torch.Tensor,
    projector: torch.Tensor,
    c_prev: torch.Tensor | None,
    lambda_: float,
) -> torch.Tensor:
    """The AlphaEdit update for one layer.

    Args:
        keys: (n, d_mlp) request keys.
        residual: (n, d_hidden) the output change each key should produce at this layer.
        projector: (d_mlp, d_mlp) null-space projector P.
        c_prev: (d_mlp, d_mlp) sum of K K^T of earlier edits, or None.
        lambda_: ridge weight.

    Returns:
        (d_hidden, d_mlp) float64 Delta to add to the weight in out x in orientation.
    """
    k = keys.to(torch.float64).T  # d_mlp x n
    r = residual.to(torch.float64).T  # d_hidden x n
    p = projector.to(torch.float64)
    gram = k @ k.T
    if c_prev is not None:
        gram = gram + c_prev.to(torch.float64)
    lhs = p @ gram + lambda_ * torch.eye(p.shape[0], dtype=torch.float64)
    rhs = p @ k @ r.T  # d_mlp x d_hidden
    return torch.linalg.solve(lhs, rhs).T


@dataclass
class EditResult:
    """What one edit did.

    Attributes:
        deltas: layer -> (d_hidden, d_mlp) float32 weight change (out x in orientation).
        key_moments: layer -> (d_mlp, d_mlp) float64 K K^T of this edit's keys, to add to C_prev.
        realised: fraction of the requested hidden shift reached at the value layer after the
            edit (1.0 = all of it), per request.
        seconds: wall time of the solve (without the value optimisation).
    """

    deltas: dict[int, torch.Tensor] = field(default_factory=dict)
    key_moments: dict[int, torch.Tensor] = field(default_factory=dict)
    realised: torch.Tensor | None = None
    seconds: float = 0.0


def add_to_down_proj(
    model: torch.nn.Module, layout: ModelLayout, layer: int, delta: torch.Tensor, sign: float = 1.0
) -> None:
    """Add ``sign * delta`` (d_hidden x d_mlp, out x in) to a down-projection in place."""
    weight = layout.down_proj_weight(model, layer)  # a view in out x in orientation
    with torch.no_grad():
        weight.add_(sign * delta.to(device=weight.device, dtype=weight.dtype))


@torch.no_grad()
def compute_alphaedit(
    model: torch.nn.Module,
    layout: ModelLayout,
    requests: Sequence[EditRequest],
    target_hidden: torch.Tensor,
    layers: Sequence[int],
    projectors: dict[int, torch.Tensor],
    c_prev: dict[int, torch.Tensor] | None,
    *,
    lambda_: float = 10.0,
    plain_weight: float = 0.5,
    pad_id: int = 0,
) -> EditResult:
    """Compute the multi-layer edit for ``requests``; the model is left as it was found.

    The layers are edited in order inside this function (each layer's keys depend on the
    earlier layers' edits) and restored before returning; apply the returned deltas with
    ``apply_deltas``.

    Args:
        target_hidden: (n, d_hidden) target values Z at the last layer of ``layers``.
        projectors: layer -> (d_mlp, d_mlp) null-space projector.
        c_prev: layer -> accumulated K K^T of earlier edits (None: no earlier edits).
    """
    start = time.perf_counter()
    value_layer = layers[-1]
    result = EditResult()
    h_before = None
    # Restore by copy, not by subtracting: W + D - D is not bit-identical to W in floating point.
    originals = {layer: layout.down_proj_weight(model, layer).detach().clone() for layer in layers}
    try:
        for i, layer in enumerate(layers):
            keys, hidden = request_keys_and_hidden(
                model,
                layout,
                requests,
                layer,
                value_layer,
                plain_weight=plain_weight,
                pad_id=pad_id,
            )
            if h_before is None:
                h_before = hidden
            residual = (target_hidden - hidden) / (len(layers) - i)
            prev = c_prev.get(layer) if c_prev else None
            delta = solve_update(keys, residual, projectors[layer], prev, lambda_)
            add_to_down_proj(model, layout, layer, delta)
            result.deltas[layer] = delta.float()
            k64 = keys.to(torch.float64)
            result.key_moments[layer] = k64.T @ k64
        _, h_after = request_keys_and_hidden(
            model,
            layout,
            requests,
            value_layer,
            value_layer,
            plain_weight=plain_weight,
            pad_id=pad_id,
        )
        wanted = (target_hidden - h_before).norm(dim=1).clamp(min=1e-12)
        result.realised = 1 - (target_hidden - h_after).norm(dim=1) / wanted
    finally:
        for layer, weight in originals.items():
            layout.down_proj_weight(model, layer).copy_(weight)
    result.seconds = time.perf_counter() - start
    return result


def apply_deltas(model: torch.nn.Module, layout: ModelLayout, deltas: dict[int, torch.Tensor]):
    """Apply the weight changes of an EditResult to the model, in place."""
    for layer, delta in deltas.items():
        add_to_down_proj(model, layout, layer, delta)


@torch.no_grad()
def first_tokens(
    model: torch.nn.Module,
    layout: ModelLayout,
    requests: Sequence[EditRequest],
    pad_id: int = 0,
) -> list[list[int]]:
    """The greedy first answer token of every plain prompt of every request."""
    rows = [row for req in requests for row in req.prompts]
    _, _, logits = read_rows(model, layout, rows, pad_id=pad_id)
    top = logits.argmax(dim=-1).tolist()
    out, i = [], 0
    for req in requests:
        out.append(top[i : i + len(req.prompts)])
        i += len(req.prompts)
    return out
