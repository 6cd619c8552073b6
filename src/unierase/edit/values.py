"""Target values: the hidden-state shift at the subject that makes the model emit the target.

For each request, a vector delta is added to the output of the last edited layer at the subject's
last token of each of its prompts and optimised so that the next token after the prompt is the
target (the unlearning token), with a KL term that keeps the subject's own next-token
distribution and a norm penalty; after every step ||delta|| is clamped to ``clamp * ||h||``.
All requests are optimised together, each with its own delta; finished ones drop out.

With deep forgetting (``config.deep``) the same shift must also produce the target behind answer
pre-fills, and make the true answer unlikely at every teacher-forced position (an unlikelihood
term), so that skipping the first-token gate does not recover the answer.

The blocks up to the value layer do not change while the shifts are optimised, so their output
for every row is computed once and replayed at each step (:func:`trace.replay_blocks`): a step
runs only the blocks above the value layer. The replay is checked against a full pass before
the first step and turned off (with a warning) if the two differ; with deep forgetting the
pre-fill and answer rows are recorded and checked the same way, and any mismatch turns the
replay off for all rows.
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
from unierase.edit.requests import AnswerRow, EditRequest, Row, left_pad
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
        prefill_nll: (n_requests,) final mean NLL of the target behind the pre-fills (deep only).
        answer_p: (n_requests,) final mean probability of the true answer tokens (deep only).
        refusal_nll: (n_requests,) final mean NLL of the refusal after the target token, with
            the shift applied (only with ``v_refusal_weight``).
    """

    delta: torch.Tensor
    hidden: torch.Tensor
    nll: torch.Tensor
    steps: torch.Tensor
    seconds: float
    prefill_nll: torch.Tensor | None = None
    answer_p: torch.Tensor | None = None
    refusal_nll: torch.Tensor | None = None

    @property
    def target(self) -> torch.Tensor:
        return self.hidden + self.delta


@dataclass
class _Replay:
    """The blocks ``0..layer`` of ``blocks`` and their recorded output for each row (unpadded)."""

    blocks: torch.nn.ModuleList
    layer: int
    states: list[torch.Tensor]


def _shifted_logits(
    model: torch.nn.Module,
    block_name: str,
    rows: Sequence[Row],
    owner: torch.Tensor,
    delta: torch.Tensor,
    pad_id: int,
    keep: int,
    replay: _Replay | None = None,
) -> torch.Tensor:
    """Logits (n_rows, keep, vocab) of the last ``keep`` columns of the left-padded rows, with
    delta[owner[i]] added at rows[i].pos.

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
            logits_to_keep=keep,
        )
    return out.logits


def _forward_with_shift(
    model: torch.nn.Module,
    block_name: str,
    rows: Sequence[Row],
    owner: torch.Tensor,
    delta: torch.Tensor,
    pad_id: int,
    replay: _Replay | None = None,
) -> torch.Tensor:
    """Last-token log-probabilities (n_rows, vocab) with delta[owner[i]] added at rows[i].pos
    (``replay``: see :func:`_shifted_logits`)."""
    logits = _shifted_logits(model, block_name, rows, owner, delta, pad_id, 1, replay)
    return F.log_softmax(logits[:, -1].float(), dim=-1)


def _forward_at_positions_with_shift(
    model: torch.nn.Module,
    block_name: str,
    rows: Sequence[Row],
    positions: Sequence[Sequence[int]],
    owner: torch.Tensor,
    delta: torch.Tensor,
    pad_id: int,
    replay: _Replay | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities at ``positions[i]`` of ``rows[i]`` (indices into its ids), with
    delta[owner[i]] added at rows[i].pos (``replay``: see :func:`_shifted_logits`).

    Returns:
        log-probabilities (n_rows, n_pos, vocab), n_pos the longest list, and a mask
        (n_rows, n_pos) that is False where a shorter list was padded (with its last position).
    """
    width = max(len(r.ids) for r in rows)
    n_pos = max(len(p) for p in positions)
    padded = [list(p) + [p[-1]] * (n_pos - len(p)) for p in positions]
    mask = torch.tensor([[True] * len(p) + [False] * (n_pos - len(p)) for p in positions])
    # Left padding: index j of a row sits at column j + width - len(row).
    offsets = [width - len(r.ids) for r in rows]
    cols = torch.tensor([[o + q for q in p] for o, p in zip(offsets, padded, strict=True)])
    # Only the columns from the earliest position on are needed.
    keep = width - int(cols.min())
    logits = _shifted_logits(model, block_name, rows, owner, delta, pad_id, keep, replay)
    picked = logits[torch.arange(len(rows)).unsqueeze(1), cols - (width - keep)]
    return F.log_softmax(picked.float(), dim=-1), mask.to(logits.device)


def _per_request_mean(values: torch.Tensor, owners: torch.Tensor, n: int) -> torch.Tensor:
    """(n,) mean of ``values`` (n_rows,) over the rows of each request (0 where it has none)."""
    total = torch.zeros(n, device=values.device).index_add(0, owners, values)
    return total / torch.bincount(owners, minlength=n).clamp(min=1)


def _answer_nll(logp: torch.Tensor, mask: torch.Tensor, rows: Sequence[AnswerRow]) -> torch.Tensor:
    """Per row: mean over its positions of -log p(label)."""
    n_pos = mask.shape[1]
    labels = torch.tensor([r.labels + [r.labels[-1]] * (n_pos - len(r.labels)) for r in rows])
    lp = logp.gather(-1, labels.to(logp.device).unsqueeze(-1)).squeeze(-1)
    weight = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return -(lp * weight).sum(dim=1)


def _answer_unlikelihood(
    logp: torch.Tensor, mask: torch.Tensor, rows: Sequence[AnswerRow]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: mean over its answer positions of -log(1 - p(y_t)), and mean p(y_t)."""
    n_pos = mask.shape[1]
    labels = torch.tensor([r.labels + [r.labels[-1]] * (n_pos - len(r.labels)) for r in rows])
    lp = logp.gather(-1, labels.to(logp.device).unsqueeze(-1)).squeeze(-1)
    p = lp.exp().clamp(max=1 - 1e-6)
    weight = mask.float() / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return (-torch.log1p(-p) * weight).sum(dim=1), (p * weight).sum(dim=1)


@torch.no_grad()
def _full_pass(
    model: torch.nn.Module,
    block: str,
    rows: list[Row],
    owner: torch.Tensor,
    zero: torch.Tensor,
    pad_id: int,
    positions: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The unshifted log-probabilities of a full pass, and per row the output of ``block`` over
    the row's own tokens (recorded on the way, for the replay).

    The log-probabilities are the last token's (n_rows, vocab), or with ``positions`` those at
    each row's positions (n_rows, n_pos, vocab; see :func:`_forward_at_positions_with_shift`).
    """
    with Trace(model, [block], outputs=True) as tr:
        if positions is None:
            logp = _forward_with_shift(model, block, rows, owner, zero, pad_id)
        else:
            logp, _ = _forward_at_positions_with_shift(
                model, block, rows, positions, owner, zero, pad_id
            )
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
    positions: Sequence[Sequence[int]] | None = None,
) -> bool:
    """Whether replaying the recorded block outputs gives the full pass's log-probabilities
    (``positions``: as in :func:`_full_pass`)."""
    if positions is None:
        replayed = _forward_with_shift(model, block, rows, owner, zero, pad_id, replay)
    else:
        replayed, _ = _forward_at_positions_with_shift(
            model, block, rows, positions, owner, zero, pad_id, replay
        )
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
    max_prompts: int | None = None,
    progress: bool = True,
) -> TargetValues:
    """Optimise one shift per request at the output of decoder block ``layer``.

    Args:
        model: the model (its parameters are not changed; gradients flow only to the shifts).
        layout: its layout.
        requests: edit requests.
        target_id: the token every request's prompts must produce first.
        layer: the last edited layer (the value layer).
        config: v_lr, v_steps, v_loss_stop, v_clamp, v_kl_weight, v_weight_decay are used;
            with ``deep``, also deep_weight and deep_p_stop (the requests must then carry
            pre-fill and answer rows: ``build_requests(..., deep=True)``).
        pad_id: padding id.
        max_prompts: at most this many prompts per request enter the optimisation (with their
            pre-fill, answer and refusal rows); None: all. The unedited hidden state is
            averaged over all prompts either way, as the solve's residual is.
        progress: show a progress bar.
    """
    if config.deep and any(not req.answer_rows for req in requests):
        raise ValueError("deep value optimisation needs requests built with deep=True")
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
    pre_rows: list[Row] = []
    pre_owner: list[int] = []
    ans_rows: list[AnswerRow] = []
    ans_owner: list[int] = []
    if config.deep:
        for r, req in enumerate(requests):
            for rows in req.prefill_rows[:max_prompts]:
                pre_rows += rows
                pre_owner += [r] * len(rows)
            for row in req.answer_rows[:max_prompts]:
                ans_rows.append(row)
                ans_owner.append(r)
    ans_positions = [r.positions for r in ans_rows]
    ref_rows: list[AnswerRow] = []
    ref_owner: list[int] = []
    if config.v_refusal_weight > 0:
        for r, req in enumerate(requests):
            cap = (
                config.v_refusal_prompts
                if max_prompts is None
                else min(max_prompts, config.v_refusal_prompts)
            )
            for row in req.refusal_rows[:cap]:
                ref_rows.append(row)
                ref_owner.append(r)
    ref_positions = [r.positions for r in ref_rows]
    ref_owner_t = torch.tensor(ref_owner, dtype=torch.long)
    nll_owner_t = torch.tensor(nll_owner)
    pre_owner_t = torch.tensor(pre_owner, dtype=torch.long)
    ans_owner_t = torch.tensor(ans_owner, dtype=torch.long)
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

    def recorded(rows: list[Row], owner: torch.Tensor, positions=None):
        """(replay still usable, the rows' recorded block outputs, their unshifted
        log-probabilities) for the deep and refusal rows."""
        full, states = _full_pass(model, block, rows, owner, zero, pad_id, positions)
        ok = _replay_matches(
            model, block, _Replay(blocks, layer, states), rows, owner, zero, pad_id, full, positions
        )
        return ok, states, full

    # The deep rows are replayed too, once they pass the same check; otherwise nothing is.
    pre_states: list[torch.Tensor] = []
    ans_states: list[torch.Tensor] = []
    if replay and pre_rows:
        replay, pre_states, _ = recorded(pre_rows, pre_owner_t)
    if replay and ans_rows:
        replay, ans_states, _ = recorded(ans_rows, ans_owner_t, ans_positions)
    ref_states: list[torch.Tensor] = []
    ref_init = None
    if ref_rows:
        ok, ref_states, full = recorded(ref_rows, ref_owner_t, ref_positions)
        replay = replay and ok
        mask = torch.tensor(
            [[True] * len(p) + [False] * (full.shape[1] - len(p)) for p in ref_positions]
        )
        ref_init = _per_request_mean(
            _answer_nll(full, mask.to(full.device), ref_rows), ref_owner_t.to(full.device), n
        ).cpu()

    def forward(rows_idx: list[int], rows: list[Row], owner: torch.Tensor, states, d):
        picked = _Replay(blocks, layer, [states[i] for i in rows_idx]) if replay else None
        return _forward_with_shift(
            model, block, [rows[i] for i in rows_idx], owner[rows_idx], d, pad_id, picked
        )

    def forward_answers(rows_idx: list[int], d, rows=ans_rows, owner=ans_owner_t, states=None):
        states = ans_states if states is None else states
        picked = _Replay(blocks, layer, [states[i] for i in rows_idx]) if replay else None
        return _forward_at_positions_with_shift(
            model, block, [rows[i] for i in rows_idx], [rows[i].positions for i in rows_idx],
            owner[rows_idx], d, pad_id, picked,
        )  # fmt: skip

    delta = torch.zeros(n, hidden.shape[1], device=device, requires_grad=True)
    opt = torch.optim.Adam([delta], lr=config.v_lr)
    done = torch.zeros(n, dtype=torch.bool)
    steps = torch.zeros(n, dtype=torch.long)
    last_nll = torch.full((n,), float("inf"))
    last_pre = torch.full((n,), float("inf"))
    last_p = torch.ones(n)
    last_ref = torch.full((n,), float("inf"))
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
            nll = _per_request_mean(-logp[:, target_id], nll_owner_t[rows_idx].to(device), n)
            loss = nll[active.to(device)].sum()
            pre_nll = ans_p = None
            if pre_rows:
                idx = [i for i, o in enumerate(pre_owner) if active[o]]
                pre_logp = forward(idx, pre_rows, pre_owner_t, pre_states, delta)
                pre_nll = _per_request_mean(-pre_logp[:, target_id], pre_owner_t[idx].to(device), n)
                loss = loss + pre_nll[active.to(device)].sum()
            if ans_rows:
                idx = [i for i, o in enumerate(ans_owner) if active[o]]
                ans_logp, ans_mask = forward_answers(idx, delta)
                row_ul, row_p = _answer_unlikelihood(ans_logp, ans_mask, [ans_rows[i] for i in idx])
                owners = ans_owner_t[idx].to(device)
                ans_ul = _per_request_mean(row_ul, owners, n)
                ans_p = _per_request_mean(row_p, owners, n)
                loss = loss + config.deep_weight * ans_ul[active.to(device)].sum()
            ref_nll = None
            if ref_rows:
                idx = [i for i, o in enumerate(ref_owner) if active[o]]
                ref_logp, ref_mask = forward_answers(idx, delta, ref_rows, ref_owner_t, ref_states)
                row_nll = _answer_nll(ref_logp, ref_mask, [ref_rows[i] for i in idx])
                ref_nll = _per_request_mean(row_nll, ref_owner_t[idx].to(device), n)
                loss = loss + config.v_refusal_weight * ref_nll[active.to(device)].sum()
            with torch.no_grad():
                for r in active.nonzero().flatten().tolist():
                    last_nll[r] = float(nll[r])
                    if ref_nll is not None:
                        last_ref[r] = float(ref_nll[r])
                    if pre_nll is not None:
                        last_pre[r] = float(pre_nll[r])
                    if ans_p is not None:
                        last_p[r] = float(ans_p[r])
                newly = active & (last_nll < config.v_loss_stop)
                if pre_rows:
                    newly &= last_pre < config.v_loss_stop
                if ans_rows:
                    newly &= last_p < config.deep_p_stop
                if ref_rows:
                    newly &= last_ref < config.v_refusal_stop
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
    deep = ""
    if pre_rows:
        deep += f", pre-fill NLL max {float(last_pre.max()):.3f}"
    if ans_rows:
        deep += f", answer-token p max {float(last_p.max()):.3f}"
    if ref_rows:
        deep += (f", refusal NLL max {float(last_ref.max()):.3f} "
                 f"(unshifted {float(ref_init.max()):.3f})")  # fmt: skip
    log.info(
        "target values: %d requests, %d steps max, final NLL max %.3f%s, %.1f s",
        n,
        int(steps.max()),
        float(last_nll.max()),
        deep,
        seconds,
    )
    return TargetValues(
        delta.detach().cpu(),
        hidden,
        last_nll,
        steps,
        seconds,
        prefill_nll=last_pre if pre_rows else None,
        answer_p=last_p if ans_rows else None,
        refusal_nll=last_ref if ref_rows else None,
    )
