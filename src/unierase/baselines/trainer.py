"""The one trainer every fine-tuning baseline runs on.

Each epoch is one pass over the forget set in shuffled batches; every forget batch is paired with
a batch of as many retain items drawn at random (seeded), and with the refusal versions of both
when the method needs them. Questions and answers go through ``prompting.encode`` exactly as the
target model's fine-tune saw them (``finetune.encode_training_items``), so the loss covers the
answer tokens (and end of turn) only.

The loop is built on ``accelerate``: by default it runs in this process on the CPU (or on the one
accelerator ``accelerate`` finds); ``accelerate launch`` runs the same code data-parallel on
several devices. AdamW, linear warm-up then a constant learning rate, gradient accumulation,
gradient clipping, a seed, and a progress bar.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from unierase import prompting as P
from unierase.baselines.common import LossContext, TrainBatches, forward_answers, mean_nll
from unierase.baselines.config import BaselineConfig
from unierase.baselines.registry import Method, get_method
from unierase.data.schema import DataError, QAItem

log = logging.getLogger(__name__)


@dataclass
class BaselineReport:
    """What a baseline run did (JSON-ready through ``to_dict``).

    Attributes:
        method: the method's name.
        config: every setting of the run.
        steps: optimizer steps taken.
        losses: per optimizer step, the mean total loss and its forget and retain terms.
        seconds: wall time of the training loop.
        cpu_seconds: CPU time of this process over the same span.
        n_forget, n_retain: items in the forget and retain sets.
        trainable_parameters: parameters that were trained.
        forget_nll_before, forget_nll_after: mean answer-token NLL of the forget answers.
        retain_nll_before, retain_nll_after: the same on the retain answers (None without any).
        device: where training ran; num_processes: how many processes shared it.
        state: what the method prepared (e.g. RMU's layer and the hidden-state norm it scaled by).
    """

    method: str
    config: dict[str, Any]
    steps: int = 0
    losses: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    n_forget: int = 0
    n_retain: int = 0
    trainable_parameters: int = 0
    forget_nll_before: float | None = None
    forget_nll_after: float | None = None
    retain_nll_before: float | None = None
    retain_nll_after: float | None = None
    device: str = "cpu"
    num_processes: int = 1
    state: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- data


def _encode(tokenizer: Any, items: Sequence[QAItem], config: BaselineConfig) -> list[P.EncodedQA]:
    from unierase.finetune import FinetuneConfig, encode_training_items

    encoding = FinetuneConfig(max_length=config.max_length, system_prompt=config.system_prompt)
    return encode_training_items(tokenizer, items, encoding)


def _with_refusals(items: Sequence[QAItem], config: BaselineConfig) -> list[QAItem]:
    from unierase.data.refusals import assign_refusals

    refusals = assign_refusals(
        [it.question for it in items], config.seed, list(config.refusals) or None
    )
    return [dataclasses.replace(it, answer=r) for it, r in zip(items, refusals, strict=True)]


def _pad_id(tokenizer: Any) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")
    return pad


class _Collate:
    """Builds a step's ``TrainBatches`` from a list of forget indices (picklable for workers)."""

    def __init__(
        self,
        encoded: dict[str, list[P.EncodedQA]],
        batches: Sequence[str],
        pad_id: int,
        seed: int,
    ) -> None:
        self.encoded = encoded
        self.batches = tuple(batches)
        self.pad_id = pad_id
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, forget_indices: list[int]) -> TrainBatches:
        def take(name: str, indices: Sequence[int]) -> P.Batch | None:
            if name not in self.batches:
                return None
            return P.collate([self.encoded[name][i] for i in indices], self.pad_id)

        retain_indices: list[int] = []
        if "retain" in self.batches:
            n = len(self.encoded["retain"])
            retain_indices = torch.randint(
                n, (len(forget_indices),), generator=self.generator
            ).tolist()
        return TrainBatches(
            forget=take("forget", forget_indices),
            retain=take("retain", retain_indices),
            forget_idk=take("forget_idk", forget_indices),
            retain_idk=take("retain_idk", retain_indices),
        )


@torch.no_grad()
def mean_answer_nll(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[QAItem],
    config: BaselineConfig | None = None,
    *,
    batch_size: int = 16,
) -> float:
    """Mean answer-token NLL of ``items`` under ``model`` (the prompt format of ``config``)."""
    encoded = _encode(tokenizer, items, config or BaselineConfig())
    device = model.get_input_embeddings().weight.device
    pad = _pad_id(tokenizer)
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    for start in range(0, len(encoded), batch_size):
        batch = P.collate(encoded[start : start + batch_size], pad)
        batch = TrainBatches(batch).to(device).forget
        out = forward_answers(model, batch)
        n = int(out.mask.sum())
        total += float(mean_nll(out.token_logprobs(), out.mask)) * n
        count += n
    model.train(was_training)
    return total / max(1, count)


# ----------------------------------------------------------------------------- training


def _accelerator(config: BaselineConfig) -> Any:
    try:
        from accelerate import Accelerator
    except ImportError as err:  # pragma: no cover - accelerate is an optional dependency
        raise ImportError(
            "the baselines need accelerate: pip install 'unierase[train]' (or pip install "
            "accelerate)"
        ) from err
    return Accelerator(cpu=bool(config.cpu), gradient_accumulation_steps=config.grad_accum)


def _mark_trainable(model: nn.Module, method: Method, config: BaselineConfig) -> int:
    names = method.trainable(model, config) if method.trainable is not None else None
    seen: set[int] = set()
    count = 0
    for name, p in model.named_parameters():
        p.requires_grad_(names is None or name in names)
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            count += p.numel()
    if count == 0:
        raise ValueError(f"{method.name}: no parameter to train")
    return count


def run_baseline(
    name: str | Method,
    model: nn.Module,
    tokenizer: Any,
    forget: Sequence[QAItem],
    retain: Sequence[QAItem] = (),
    config: BaselineConfig | None = None,
    progress: bool = False,
    **overrides: Any,
) -> tuple[nn.Module, BaselineReport]:
    """Unlearn ``forget`` from ``model`` with the fine-tuning baseline ``name``.

    Args:
        name: a key of ``METHODS`` (case-insensitive) or a ``Method``.
        model: a causal LM; trained in place (pass a copy to keep the original).
        tokenizer: its tokenizer.
        forget: the items to forget.
        retain: items to keep (needed by every method with a retain term).
        config: settings (None: the shared defaults with the method's own defaults applied).
        progress: show a progress bar over optimizer steps.
        overrides: BaselineConfig fields that replace those of ``config``.

    Returns:
        (the model in eval mode, unwrapped from ``accelerate``; what the run did).

    Raises:
        DataError: an empty forget set, or no retain items for a method that needs them.
        ValueError: an unknown method or a bad setting.
    """
    method = name if isinstance(name, Method) else get_method(name)
    config = method.config(config, **overrides)
    if not forget:
        raise DataError("the forget set is empty")
    if "retain" in method.batches and not retain:
        raise DataError(f"{method.name} needs retain items (its retain term), got none")

    encoded: dict[str, list[P.EncodedQA]] = {"forget": _encode(tokenizer, forget, config)}
    if "retain" in method.batches:
        encoded["retain"] = _encode(tokenizer, retain, config)
    if "forget_idk" in method.batches:
        encoded["forget_idk"] = _encode(tokenizer, _with_refusals(forget, config), config)
    if "retain_idk" in method.batches:
        encoded["retain_idk"] = _encode(tokenizer, _with_refusals(retain, config), config)
    pad = _pad_id(tokenizer)

    report = BaselineReport(method.name, config.to_dict(), n_forget=len(forget))
    report.n_retain = len(retain)
    report.forget_nll_before = mean_answer_nll(model, tokenizer, forget, config)
    if retain:
        report.retain_nll_before = mean_answer_nll(model, tokenizer, retain, config)

    torch.manual_seed(config.seed)
    accelerator = _accelerator(config)
    device = accelerator.device
    reference = None
    if method.needs_reference:
        reference = copy.deepcopy(model).to(device).eval()
        reference.requires_grad_(False)
    state: dict[str, Any] = {}
    if method.prepare is not None:
        forget_batches = [
            P.collate(encoded["forget"][i : i + config.batch_size], pad)
            for i in range(0, len(encoded["forget"]), config.batch_size)
        ]
        source = reference if reference is not None else model.to(device)
        state = method.prepare(source, forget_batches, config, device)
        report.state = {k: v for k, v in state.items() if isinstance(v, int | float | str)}

    from unierase.finetune import _param_groups

    report.trainable_parameters = _mark_trainable(model, method, config)
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999), eps=1e-8
    )
    loader = torch.utils.data.DataLoader(
        list(range(len(forget))),
        batch_size=config.batch_size,
        shuffle=True,
        generator=torch.Generator().manual_seed(config.seed),
        collate_fn=_Collate(encoded, method.batches, pad, config.seed + accelerator.process_index),
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    steps_per_epoch = math.ceil(len(loader) / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_ratio * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1))
    )
    log.info(
        "%s: %d forget / %d retain items, %d steps on %s (%d process(es)): %s",
        method.name,
        len(forget),
        len(retain),
        total_steps,
        device,
        accelerator.num_processes,
        config,
    )
    bar = tqdm(
        total=total_steps,
        desc=method.name,
        unit="step",
        disable=not progress or not accelerator.is_local_main_process,
    )
    start, cpu_start = time.perf_counter(), time.process_time()
    parts: list[dict[str, float]] = []
    model.train()
    try:
        for _epoch in range(config.epochs):
            for batches in loader:
                with accelerator.accumulate(model):
                    ctx = LossContext(model, reference, batches, config, state)
                    forget_loss = method.forget_term(ctx)
                    loss = config.forget_weight * forget_loss
                    part = {"forget": float(forget_loss.detach())}
                    if method.retain_term is not None:
                        retain_loss = method.retain_term(ctx)
                        loss = loss + config.retain_weight * retain_loss
                        part["retain"] = float(retain_loss.detach())
                    part["loss"] = float(loss.detach())
                    parts.append(part)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and config.max_grad_norm > 0:
                        accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                    optimizer.step()  # a no-op until the accumulation is complete
                    if accelerator.sync_gradients:
                        scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                if accelerator.sync_gradients:
                    mean = {k: sum(p[k] for p in parts) / len(parts) for k in parts[0]}
                    report.losses.append(mean)
                    parts = []
                    bar.update(1)
                    bar.set_postfix({k: f"{v:.3f}" for k, v in mean.items()})
    finally:
        bar.close()
    report.seconds = time.perf_counter() - start
    report.cpu_seconds = time.process_time() - cpu_start
    report.steps = len(report.losses)
    report.device = str(device)
    report.num_processes = accelerator.num_processes

    model = accelerator.unwrap_model(model)
    accelerator.free_memory()
    del reference
    for p in model.parameters():
        p.requires_grad_(True)  # as from_pretrained leaves them
    model.eval()
    report.forget_nll_after = mean_answer_nll(model, tokenizer, forget, config)
    if retain:
        report.retain_nll_after = mean_answer_nll(model, tokenizer, retain, config)
    log.info(
        "%s done in %.1f s: forget NLL %.3f -> %.3f",
        method.name,
        report.seconds,
        report.forget_nll_before,
        report.forget_nll_after,
    )
    return model, report
