"""Target values: the hidden-state shift at the subject that makes the model emit the target.

For each request, a vector delta is added to the output of the last edited layer at the subject's
last token of each of its prompts and optimised so that the next token after the prompt is the
target (the unlearning token), with a KL term that keeps the subject's own next-token
distribution and a norm penalty; after every step ||delta|| is clamped to ``clamp * ||h||``.
All requests are optimised together, each with its own delta; finished ones drop out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unierase.edit.config import EditConfig
from unierase.edit.requests import EditRequest, Row, left_pad
from unierase.edit.trace import patch_output
from unierase.model import ModelLayout

log = logging.getLogger(__name__)


@dataclass
class TargetValues:
    """Result of the value optimisation.

    Attributes:
        delta: (n_requests, d_hidden) the optimised shifts.
        hidden: (n_requests, d_hidden) the unedited block outputs at the subject (mean over a
            request's prompts); the target value is ``hidden + delta``.
        nll: (n_requests,) final mean NLL of the target token.
        steps: (n_requests,) steps each request took.
        seconds: wall time.
    """

    delta: torch.Tensor
    hidden: torch.Tensor
    nll: torch.Tensor
    steps: torch.Tensor
    seconds: float

    @property
    def target(self) -> torch.Tensor:
        return self.hidden + self.delta


def _forward_with_shift(
    model: torch.nn.Module,
    block_name: str,
    rows: Sequence[Row],
    owner: torch.Tensor,
    delta: torch.Tensor,
    pad_id: int,
) -> torch.Tensor:
    """Last-token log-probabilities (n_rows, vocab) with delta[owner[i]] added at rows[i].pos."""
    device = model.get_input_embeddings().weight.device
    ids, mask, position_ids, pos = left_pad(rows, pad_id, device)
    arange = torch.arange(len(rows), device=device)

    def shift(h: torch.Tensor) -> torch.Tensor:
        add = torch.zeros_like(h)
        add = add.index_put((arange, pos), delta[owner.to(device)].to(h.dtype))
        return h + add

    with patch_output(model, block_name, shift):
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=1,
        )
    return F.log_softmax(out.logits[:, -1].float(), dim=-1)


def optimise_values(
    model: torch.nn.Module,
    layout: ModelLayout,
    requests: Sequence[EditRequest],
    target_id: int,
    layer: int,
    config: EditConfig,
    *,
    pad_id: int = 0,
    max_prompts: int = 8,
    progress: bool = True,
) -> TargetValues:
    """Optimise one shift per request at the output of decoder block ``layer``.

    Args:
        model: the model (its parameters are not changed; gradients flow only to the shifts).
        layout: its layout.
        requests: edit requests.
        target_id: the token every request's prompts must produce first.
        layer: the last edited layer (the value layer).
        config: v_lr, v_steps, v_loss_stop, v_clamp, v_kl_weight, v_weight_decay are used.
        pad_id: padding id.
        max_prompts: at most this many prompts per request enter the optimisation.
        progress: show a progress bar.
    """
    start = time.perf_counter()
    device = model.get_input_embeddings().weight.device
    block = f"{layout.layers_name}.{layer}"
    n = len(requests)
    nll_rows: list[Row] = []
    nll_owner: list[int] = []
    kl_rows: list[Row] = []
    kl_owner: list[int] = []
    for r, req in enumerate(requests):
        for row in req.prompts[:max_prompts]:
            nll_rows.append(row)
            nll_owner.append(r)
        for row in req.kl_rows:
            kl_rows.append(row)
            kl_owner.append(r)
    nll_owner_t = torch.tensor(nll_owner)
    kl_owner_t = torch.tensor(kl_owner, dtype=torch.long)

    # Unedited hidden states at the subject, and the subject's own next-token distribution.
    from unierase.edit.keys import read_rows

    _, hid, _ = read_rows(
        model, layout, nll_rows, hidden_layers=[layer], pad_id=pad_id, logits=False
    )
    hidden = torch.zeros(n, hid[layer].shape[1])
    hidden.index_add_(0, nll_owner_t, hid[layer])
    hidden /= torch.bincount(nll_owner_t, minlength=n).clamp(min=1).unsqueeze(1).float()
    h_norm = hidden.norm(dim=1).clamp(min=1e-6)
    zero = torch.zeros(n, hidden.shape[1], device=device)
    with torch.no_grad():
        kl_init = (
            _forward_with_shift(model, block, kl_rows, kl_owner_t, zero, pad_id)
            if kl_rows
            else None
        )

    delta = torch.zeros(n, hidden.shape[1], device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.v_lr)
    done = torch.zeros(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    last_nll = torch.full((n,), float("inf"))
    h_norm_d = h_norm.to(device)
    requires = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    bar = tqdm(range(config.v_steps), desc="target values", unit="step", disable=not progress)
    try:
        for _ in bar:
            active = ~done
            rows_idx = [i for i, o in enumerate(nll_owner) if active[o]]
            logp = _forward_with_shift(
                model, block, [nll_rows[i] for i in rows_idx], nll_owner_t[rows_idx], delta, pad_id
            )
            owners = nll_owner_t[rows_idx].to(device)
            row_nll = -logp[:, target_id]
            nll = torch.zeros(n, device=device).index_add(0, owners, row_nll)
            counts = torch.bincount(owners, minlength=n).clamp(min=1)
            nll = nll / counts
            with torch.no_grad():
                for r in active.nonzero().flatten().tolist():
                    last_nll[r] = float(nll[r])
                newly = active & (last_nll < config.v_loss_stop)
            loss = nll[active.to(device)].sum()
            if kl_init is not None and config.v_kl_weight > 0:
                kl_idx = [i for i, o in enumerate(kl_owner) if active[o]]
                if kl_idx:
                    kl_logp = _forward_with_shift(
                        model,
                        block,
                        [kl_rows[i] for i in kl_idx],
                        kl_owner_t[kl_idx],
                        delta,
                        pad_id,
                    )
                    # As ROME: KL(edited || unedited) of the subject's next-token distribution.
                    kl = F.kl_div(kl_init[kl_idx], kl_logp, log_target=True, reduction="none")
                    loss = loss + config.v_kl_weight * kl.sum(-1).sum()
            decay = config.v_weight_decay * delta.norm(dim=1) / h_norm_d**2
            loss = loss + decay[active.to(device)].sum()
            steps[active] += 1
            done |= newly
            bar.set_postfix(active=int((~done).sum()), nll=f"{float(last_nll.max()):.3f}")
            if bool(done.all()):
                break
            opt.zero_grad()
            loss.backward()
            with torch.no_grad():
                delta.grad[done.to(device)] = 0
                frozen = delta[done.to(device)].clone()
                opt.step()
                delta[done.to(device)] = frozen
                limit = config.v_clamp * h_norm_d
                norms = delta.norm(dim=1).clamp(min=1e-12)
                scale = torch.where(norms > limit, limit / norms, torch.ones_like(norms))
                delta.mul_(scale.unsqueeze(1))
    finally:
        for p, flag in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(flag)
    seconds = time.perf_counter() - start
    log.info(
        "target values: %d requests, %d steps max, final NLL max %.3f, %.1f s",
        n,
        int(steps.max()),
        float(last_nll.max()),
        seconds,
    )
    return TargetValues(delta.detach().cpu(), hidden, last_nll, steps, seconds)
