"""Target values: the hidden-state shift at the subject that makes the model emit the target.

For each request, a vector delta is added to the output of the last edited layer at the subject's
last token of each of its prompts and optimised so that the next token after the prompt is the
target (the unlearning token), with a KL term that keeps the subject's own next-token
distribution and a norm penalty; after every step ||delta|| is clamped to ``clamp * ||h||``.
All requests are optimised together, each with its own delta; finished ones drop out.

The blocks up to the value layer do not change while the shifts are optimised, so their output
for every row is computed once and replayed at each step (:func:`trace.replay_blocks`): a step
runs only the blocks above the value layer. The replay is checked against a full pass before
the first step and turned off (with a warning) if the two differ.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from unierase.edit.config import EditConfig
from unierase.edit.requests import EditRequest, Row, left_pad
from unierase.edit.trace import Trace, patch_output, replay_blocks
from unierase.model import ModelLayout

log = logging.getLogger(__name__)

# Largest difference in log-probability between the replayed and the full pass that still
# counts as float rounding (they differ only in the padding's order of summation).
REPLAY_TOLERANCE = 1e-3


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


@dataclass
class _Replay:
    """The blocks ``0..layer`` of ``blocks`` and their recorded output for each row (unpadded)."""

    blocks: torch.nn.ModuleList
    layer: int
    states: list[torch.Tensor]


def _forward_with_shift(
    model: torch.nn.Module,
    block_name: str,
    rows: Sequence[Row],
    owner: torch.Tensor,
    delta: torch.Tensor,
    pad_id: int,
    replay: _Replay | None = None,
) -> torch.Tensor:
    """Last-token log-probabilities (n_rows, vocab) with delta[owner[i]] added at rows[i].pos.

    With ``replay`` (its ``states`` aligned with ``rows``), the blocks up to the shifted one are
    not run: their recorded output is used instead.
    """
    device = model.get_input_embeddings().weight.device
    ids, mask, position_ids, pos = left_pad(rows, pad_id, device)
    arange = torch.arange(len(rows), device=device)

    def shift(h: torch.Tensor) -> torch.Tensor:
        add = torch.zeros_like(h)
        add = add.index_put((arange, pos), delta[owner.to(device)].to(h.dtype))
        return h + add

    with ExitStack() as stack:
        if replay is not None:
            states = replay.states[0].new_zeros(len(rows), ids.shape[1], replay.states[0].shape[-1])
            for i, h in enumerate(replay.states):
                states[i, states.shape[1] - h.shape[0] :] = h
            stack.enter_context(replay_blocks(replay.blocks, replay.layer, states))
        stack.enter_context(patch_output(model, block_name, shift))
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=1,
        )
    return F.log_softmax(out.logits[:, -1].float(), dim=-1)


@torch.no_grad()
def _full_pass(
    model: torch.nn.Module,
    block: str,
    rows: list[Row],
    owner: torch.Tensor,
    zero: torch.Tensor,
    pad_id: int,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The unshifted log-probabilities of a full pass, and per row the output of ``block`` over
    the row's own tokens (recorded on the way, for the replay)."""
    with Trace(model, [block], outputs=True) as tr:
        logp = _forward_with_shift(model, block, rows, owner, zero, pad_id)
    h = tr.outputs[block]
    return logp, [h[i, h.shape[1] - len(r.ids) :].clone() for i, r in enumerate(rows)]


@torch.no_grad()
def _replay_matches(
    model: torch.nn.Module,
    block: str,
    replay: _Replay,
    rows: list[Row],
    owner: torch.Tensor,
    zero: torch.Tensor,
    pad_id: int,
    full: torch.Tensor,
) -> bool:
    """Whether replaying the recorded block outputs gives the full pass's log-probabilities."""
    replayed = _forward_with_shift(model, block, rows, owner, zero, pad_id, replay)
    diff = float((full - replayed).abs().max())
    if not diff <= REPLAY_TOLERANCE:
        log.warning("value optimisation: replaying the lower blocks changed the log-probabilities "
                    "by %.2g; running full passes instead", diff)  # fmt: skip
        return False
    return True


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

    # One unshifted full pass: the subject's own next-token distribution (KL rows), the
    # unedited hidden states at the subject, and the value block's output that later steps
    # replay (see the module docstring).
    d_hidden = layout.hidden_size
    zero = torch.zeros(n, d_hidden, device=device)
    full_logp, nll_states = _full_pass(model, block, nll_rows, nll_owner_t, zero, pad_id)
    kl_init, kl_states = (
        _full_pass(model, block, kl_rows, kl_owner_t, zero, pad_id) if kl_rows else (None, [])
    )
    hid = torch.stack([h[r.pos] for h, r in zip(nll_states, nll_rows, strict=True)]).float().cpu()
    hidden = torch.zeros(n, d_hidden)
    hidden.index_add_(0, nll_owner_t, hid)
    hidden /= torch.bincount(nll_owner_t, minlength=n).clamp(min=1).unsqueeze(1).float()
    h_norm = hidden.norm(dim=1).clamp(min=1e-6)
    blocks = model.get_submodule(layout.layers_name)
    replay = isinstance(blocks, torch.nn.ModuleList) and _replay_matches(
        model, block, _Replay(blocks, layer, nll_states), nll_rows, nll_owner_t, zero, pad_id,
        full_logp,
    )  # fmt: skip

    def forward(rows_idx: list[int], rows: list[Row], owner: torch.Tensor, states, d):
        picked = _Replay(blocks, layer, [states[i] for i in rows_idx]) if replay else None
        return _forward_with_shift(
            model, block, [rows[i] for i in rows_idx], owner[rows_idx], d, pad_id, picked
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
            logp = forward(rows_idx, nll_rows, nll_owner_t, nll_states, delta)
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
                    kl_logp = forward(kl_idx, kl_rows, kl_owner_t, kl_states, delta)
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
