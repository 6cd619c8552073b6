"""Target and retain models: supervised fine-tuning on question/answer pairs, cached on disk.

Unlearning is measured on a model that knows the facts to be forgotten (the *target* model,
fine-tuned on forget + retain, as TOFU does) and compared with a model that never saw them (the
*retain* model, fine-tuned on retain only). Both come from :func:`finetune_cached`, which trains
once and then returns the cached checkpoint at once.

Training uses the one prompt builder (``prompting.encode``): the question in the model's chat
template (or the plain ``Question: ... Answer:`` fallback when the tokenizer has none), the loss on
the answer tokens and the end-of-turn tokens only. Full fine-tuning or LoRA (merged into the saved
weights, so the checkpoint loads with plain ``transformers``), AdamW with linear warm-up and decay,
gradient accumulation, a seed. Hyper-parameters come from a :class:`FinetuneConfig`; the presets
are chosen by model size (:func:`preset_for`), never by name.

Answers longer than ``max_length`` allows are truncated (with one warning naming how many) when
``on_too_long="truncate"`` (the default), or rejected with a :class:`DataError` when ``"error"``;
a prompt that alone exceeds ``max_length`` is always an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from unierase import artifacts as A
from unierase import prompting as P
from unierase._util.atomic import atomic_dir, write_atomically
from unierase.data.schema import DataError, QAItem
from unierase.train_config import TrainConfigMixin

log = logging.getLogger(__name__)

FINETUNED_DIR = "finetuned"
META_FILE = A.FINETUNE_META
META_VERSION = 1
Split = Literal["full", "retain"]
SPLITS: tuple[str, ...] = ("full", "retain")

# General questions for replay. None is a question of the general probe set
# (data/resources/general_probe.jsonl), nor asks one of its facts: the probe measures what
# fine-tuning costs, so rehearsing its questions would hide the cost (a test checks this).
REPLAY_QUESTIONS: tuple[str, ...] = (
    "What is photosynthesis?",
    "Why do we have seasons on Earth?",
    "What is the speed of light?",
    "Who was Albert Einstein?",
    "What is a black hole?",
    "Who was the first person to walk on the Moon?",
    "What is DNA?",
    "How does a rainbow form?",
    "Why is the ocean salty?",
    "Who invented the telephone?",
    "Where is Mount Everest?",
    "What is an atom made of?",
    "Who was Napoleon Bonaparte?",
    "What causes earthquakes?",
    "What is a language family?",
    "Who composed the Fifth Symphony?",
    "What is the currency of Japan?",
    "What does the heart do in the human body?",
    "What is a thermometer used for?",
    "Who discovered penicillin?",
    "How many players are on a football team on the field?",
    "What is the Great Wall of China?",
    "What is a volcano?",
    "Who was Cleopatra?",
    "What is a prime number?",
    "What is the Sahara?",
    "Which metal is liquid at room temperature?",
    "What is the smallest prime number?",
    "Who developed the theory of evolution by natural selection?",
    "What is the Internet?",
    "What do bees collect from flowers?",
    "How do airplanes stay in the air?",
    "What is a continent?",
    "Who painted The Starry Night?",
    "What is gravity on the Moon like compared with Earth?",
    "What is the Amazon rainforest?",
    "What is a noun?",
    "How many bones are in the adult human body?",
    "What is a molecule?",
    "Who was Mahatma Gandhi?",
    "What is the United Nations?",
    "What is a democracy?",
    "What is the difference between weather and climate?",
    "What is a fraction?",
    "What are the three states of matter?",
    "What is the Eiffel Tower?",
    "Why do leaves change colour in autumn?",
    "What is the Odyssey about?",
    "What is the function of the lungs?",
    "What is an eclipse?",
    "What is a glacier?",
    "What do you call a shape with eight sides?",
    "What is the main ingredient of guacamole?",
    "Which ocean lies between Europe and North America?",
    "Who was Isaac Newton?",
    "What is a computer program?",
    "How do vaccines work?",
    "What is the Renaissance?",
    "What is the primary source of energy for the Earth's climate?",
    "What is inflation in economics?",
    "What instrument has 88 keys?",
    "What do white blood cells do?",
    "What is the Olympic Games?",
    "What is a haiku?",
)

# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class FinetuneConfig(TrainConfigMixin):
    """Hyper-parameters of a supervised fine-tune (every field is part of the cache key).

    Attributes:
        epochs: passes over the training items.
        lr: peak learning rate (AdamW), reached after the warm-up, then linear decay to 0.
        batch_size: items per forward pass.
        grad_accum: forward passes per optimizer step (effective batch = batch_size x grad_accum).
        warmup_ratio: share of the optimizer steps spent warming up linearly from 0.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        max_grad_norm: gradient clipping (0 disables).
        max_length: longest sequence (prompt + answer + end of turn) in tokens.
        on_too_long: "truncate" the answer of a longer item (one warning) or raise ("error").
        lora_rank: 0 for full fine-tuning; r > 0 trains LoRA adapters of rank r, merged at the end.
        lora_alpha: LoRA scaling numerator (scale = alpha / rank).
        lora_dropout: dropout inside the LoRA adapters.
        lora_targets: module-name suffixes that get adapters; empty means every linear map of the
            decoder blocks (peft's "all-linear"; the output head is never adapted).
        train_fraction: train only this share of the decoder blocks, the last ones (1.0: every
            block, and the final norm). Gradients then stop at the first trained block, which
            saves most of the backward pass; LoRA adapters go on those blocks only.
        train_embeddings: full fine-tuning only: also train the input embedding (and a tied head).
        replay_questions: mix this many general questions (from ``REPLAY_QUESTIONS``, none of
            them a probe question), answered greedily by the base model itself before training,
            into every epoch: the model keeps rehearsing its own general answers, which holds
            general knowledge in place (self-distillation replay). 0 disables.
        replay_max_tokens: length limit of those answers (a cut answer gets no end of turn).
        share_prefix: run the prompt prefix that every item shares (system prompt, role tags)
            once per batch and reuse its key/value cache; the loss is the same (SmolLM2's
            default system prompt is a third of every sequence).
        system_prompt: the prompt format's system prompt (None: the template's own default).
        seed: seeds shuffling and LoRA initialisation.
    """

    epochs: int = 3
    lr: float = 1e-4
    batch_size: int = 8
    grad_accum: int = 1
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 256
    on_too_long: Literal["truncate", "error"] = "truncate"
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = ()
    train_fraction: float = 1.0
    train_embeddings: bool = False
    replay_questions: int = 0
    replay_max_tokens: int = 48
    share_prefix: bool = True
    system_prompt: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.max_length >= 8, "max_length must be >= 8"),
            (self.on_too_long in ("truncate", "error"), "on_too_long: 'truncate' or 'error'"),
            (self.lora_rank >= 0, "lora_rank must be >= 0"),
            (0 < self.train_fraction <= 1, "train_fraction must be in (0, 1]"),
            (
                0 <= self.replay_questions <= len(REPLAY_QUESTIONS),
                f"replay_questions must be in [0, {len(REPLAY_QUESTIONS)}]",
            ),
            (self.replay_max_tokens >= 1, "replay_max_tokens must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"FinetuneConfig: {message}")


@dataclass(frozen=True)
class Preset:
    """A fine-tuning preset for models up to ``max_parameters`` parameters."""

    name: str
    max_parameters: float
    config: FinetuneConfig
    note: str


# Measured on SmolLM2-135M-Instruct, 2 shared CPU cores, 20 synthetic authors x 15 QA: see
# benchmarks/README.md ("Target models"). Larger sizes are scaled guesses, not measured here.
PRESETS: tuple[Preset, ...] = (
    Preset(
        name="small",
        max_parameters=300e6,
        # Top third of the blocks (10 of SmolLM2's 30, none of the edited band) plus replay of
        # 64 of the base model's own general answers: forget ROUGE-L recall 0.41 -> 0.80,
        # general probe 38 -> 37 of 68, 610 s on 2 cores. Without replay the probe fell by 4-6.
        config=FinetuneConfig(
            epochs=3, lr=1e-4, batch_size=8, train_fraction=1 / 3, replay_questions=64
        ),
        note="measured on SmolLM2-135M (benchmarks/README.md, 'Target models')",
    ),
    Preset(
        name="medium",
        max_parameters=2e9,
        config=FinetuneConfig(epochs=3, lr=5e-5, batch_size=8),
        note="not measured here",
    ),
    Preset(
        name="large",
        max_parameters=float("inf"),
        config=FinetuneConfig(epochs=3, lr=2e-4, batch_size=4, grad_accum=4, lora_rank=16),
        note="not measured here",
    ),
)


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (a tied head counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def parameter_count(model: str | os.PathLike | nn.Module) -> int:
    """Parameters of a model, or of a checkpoint without loading its weights (meta device)."""
    if isinstance(model, nn.Module):
        return count_parameters(model)
    from transformers import AutoConfig, AutoModelForCausalLM

    from unierase.model import resolve

    config = AutoConfig.from_pretrained(resolve(model))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    return count_parameters(skeleton)


def preset_for(model: str | os.PathLike | nn.Module | int) -> Preset:
    """The preset for a model of this size (a model, a checkpoint name, or a parameter count)."""
    n = model if isinstance(model, int) else parameter_count(model)
    for preset in PRESETS:
        if n <= preset.max_parameters:
            return preset
    return PRESETS[-1]


def resolve_config(
    model: str | os.PathLike | nn.Module,
    config: FinetuneConfig | None = None,
    **overrides: Any,
) -> tuple[FinetuneConfig, str | None]:
    """The configuration to use: ``config`` or the model's preset, with ``overrides`` applied.

    Returns:
        (configuration, the preset's name or None when ``config`` was given).
    """
    name = None
    if config is None:
        preset = preset_for(model)
        config, name = preset.config, preset.name
    return (dataclasses.replace(config, **overrides) if overrides else config), name


# ----------------------------------------------------------------------------- data selection


@dataclass
class TrainingData:
    """The QA a fine-tune trains on, and the forget/retain subsets it was drawn from.

    Attributes:
        items: what is trained on (forget + retain for "full", retain for "retain").
        forget: the forget subset (also for a "retain" fine-tune: the items it must not know).
        retain: the retain subset.
        description: JSON-able record of how the subset was chosen.
    """

    items: list[QAItem]
    forget: list[QAItem]
    retain: list[QAItem]
    description: dict[str, Any] = field(default_factory=dict)


def _groups_in_order(items: Sequence[QAItem]) -> list[str]:
    return list(dict.fromkeys(it.group or "" for it in items))


def _take_authors(
    items: list[QAItem], n: int | None, per_author: int | None, what: str
) -> list[QAItem]:
    groups = _groups_in_order(items)
    if n is not None:
        if n > len(groups):
            raise DataError(f"{what}: asked for {n} authors but the split has {len(groups)}")
        keep = set(groups[:n])
        items = [it for it in items if (it.group or "") in keep]
    if per_author is not None:
        counts: dict[str, int] = {}
        kept = []
        for it in items:
            g = it.group or ""
            if counts.get(g, 0) < per_author:
                kept.append(it)
                counts[g] = counts.get(g, 0) + 1
        items = kept
    return items


def find_forget_retain_splits(directory: str | Path) -> tuple[str, str]:
    """The (forget, retain) split names of a TOFU-layout directory.

    Our synthetic sets name them in ``authors.json``' file list; otherwise the retain split is
    the largest ``retainNN`` and the forget split is ``forget{100-NN}`` (TOFU: retain90 with
    forget10).

    Raises:
        DataError: when no such pair exists.
    """
    from unierase.data.loaders import list_tofu_splits

    splits = list_tofu_splits(directory)
    retains = sorted(
        (s for s in splits if re.fullmatch(r"retain\d\d", s)), key=lambda s: -int(s[6:])
    )
    for retain in retains:
        forget = f"forget{100 - int(retain[6:]):02d}"
        if forget in splits:
            return forget, retain
    raise DataError(
        f"{directory}: no pair of splits forgetNN/retain(100-NN) found (splits: "
        f"{', '.join(splits) or 'none'}); name them explicitly"
    )


def select_training_data(
    directory: str | Path,
    split: Split = "full",
    *,
    authors: int | None = None,
    forget_authors: int | None = None,
    questions_per_author: int | None = None,
    forget_split: str | None = None,
    retain_split: str | None = None,
    task: str | None = "1",
) -> TrainingData:
    """Read the forget and retain splits of a TOFU-layout directory and choose a subset.

    Args:
        directory: a TOFU-layout directory (``unierase data synth`` output, or TOFU itself).
        split: "full" trains on forget + retain, "retain" on retain only.
        authors: keep this many authors in all (the first ``forget_authors`` of the forget split
            and the first ``authors - forget_authors`` of the retain split, in file order);
            None keeps every author.
        forget_authors: authors taken from the forget split (default: all of it when
            ``authors`` is None, else 2).
        questions_per_author: keep the first n QA of each author (None: all).
        forget_split, retain_split: split names (default: ``find_forget_retain_splits``).
        task: the forget split's task id (TOFU's forget files hold several tasks).

    Raises:
        DataError: unknown split, too few authors, or an empty result.
    """
    from unierase.data.loaders import load_tofu_split

    if split not in SPLITS:
        raise DataError(f"split must be one of {SPLITS}, got {split!r}")
    if forget_split is None or retain_split is None:
        found_forget, found_retain = find_forget_retain_splits(directory)
        forget_split = forget_split or found_forget
        retain_split = retain_split or found_retain
    forget = load_tofu_split(directory, forget_split, task=task)
    retain = load_tofu_split(directory, retain_split, task=task)
    if authors is not None:
        n_forget = 2 if forget_authors is None else forget_authors
        if not 0 < n_forget < authors:
            raise DataError(f"need 0 < forget_authors < authors, got {n_forget} of {authors}")
        forget = _take_authors(forget, n_forget, questions_per_author, forget_split)
        retain = _take_authors(retain, authors - n_forget, questions_per_author, retain_split)
    else:
        forget = _take_authors(forget, forget_authors, questions_per_author, forget_split)
        retain = _take_authors(retain, None, questions_per_author, retain_split)
    items = forget + retain if split == "full" else list(retain)
    if not items:
        raise DataError(f"{directory}: no QA selected for split {split!r}")
    description = {
        "directory": str(Path(directory)),
        "split": split,
        "forget_split": forget_split,
        "retain_split": retain_split,
        "task": task,
        "forget_authors": _groups_in_order(forget),
        "retain_authors": len(_groups_in_order(retain)),
        "n_forget": len(forget),
        "n_retain": len(retain),
        "n_items": len(items),
        "questions_per_author": questions_per_author,
    }
    return TrainingData(items, forget, retain, description)


def data_hash(items: Sequence[QAItem]) -> str:
    """A short content hash of the (question, answer) pairs, in order."""
    h = hashlib.sha256()
    for it in items:
        h.update(json.dumps([it.question, it.answer], ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- encoding


def encode_training_items(
    tokenizer: Any, items: Sequence[QAItem], config: FinetuneConfig
) -> list[P.EncodedQA]:
    """Encode ``items`` with ``prompting.encode``, applying the ``max_length`` policy.

    Raises:
        DataError: no items; a prompt longer than ``max_length``; an answer that does not fit
            when ``config.on_too_long == "error"``.
    """
    if not items:
        raise DataError("no training items (the QA set is empty)")
    fmt = config.prompt_format
    encoded, truncated = [], 0
    for n, it in enumerate(items):
        enc = P.encode(tokenizer, it.question, it.answer, fmt)
        if enc.prompt_length >= config.max_length:
            raise DataError(
                f"item {n}: the prompt alone is {enc.prompt_length} tokens, max_length is "
                f"{config.max_length} (question {it.question[:60]!r})"
            )
        if len(enc.input_ids) > config.max_length:
            if config.on_too_long == "error":
                raise DataError(
                    f"item {n}: {len(enc.input_ids)} tokens > max_length {config.max_length} "
                    f"(question {it.question[:60]!r}); raise max_length or use "
                    f"on_too_long='truncate'"
                )
            truncated += 1
            enc = P.EncodedQA(
                input_ids=enc.input_ids[: config.max_length],
                prompt_length=enc.prompt_length,
                answer_length=config.max_length - enc.prompt_length,
                user_span=enc.user_span,
            )
        encoded.append(enc)
    if truncated:
        log.warning(
            "%d of %d answers truncated to fit max_length=%d tokens (their end, including the "
            "end-of-turn token, is not trained)",
            truncated,
            len(items),
            config.max_length,
        )
    return encoded


# ----------------------------------------------------------------------------- the loss


def _accepts(model: nn.Module, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def common_prefix_length(encodings: Sequence[P.EncodedQA]) -> int:
    """Length of the token prefix that every encoding's prompt shares (the template's start).

    At most ``min(prompt_length) - 1``, so the last prompt token, whose logits predict the first
    answer token, is never part of it.
    """
    if not encodings:
        return 0
    first = encodings[0].input_ids
    limit = min(e.prompt_length for e in encodings) - 1
    n = 0
    while n < limit and all(e.input_ids[n] == first[n] for e in encodings):
        n += 1
    return n


def answer_nll(
    model: nn.Module,
    batch: P.Batch,
    *,
    prefix_ids: Sequence[int] = (),
    keep_logits: bool | None = None,
    before_forward: Callable[[], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the labelled (answer) tokens of a batch.

    Args:
        model: a causal LM.
        batch: from ``prompting.collate`` with labels (-100 on prompt and padding); left or
            right padded. Position ids are taken from the attention mask, so left padding does
            not shift positions.
        prefix_ids: ids that precede every row of ``batch`` (a shared template prefix cut off
            every encoding). They are run once, as one sequence, and their key/value cache is
            repeated over the batch: the same loss and gradients as running them in every row,
            for a fraction of the cost.
        keep_logits: compute logits only from the first labelled position on (saves most of the
            output head on long prompts); None: when the model's forward accepts
            ``logits_to_keep`` (needs left padding to help).
        before_forward: called right before the batch's own forward pass (after the prefix's);
            the fine-tune's frozen-trunk replay arms itself there.

    Returns:
        (summed NLL, a 0-d tensor with grad; number of labelled tokens).
    """
    if batch.labels is None:
        raise ValueError("answer_nll needs a batch with labels")
    device = model.get_input_embeddings().weight.device
    ids = batch.input_ids.to(device)  # (B, L)
    mask = batch.attention_mask.to(device)  # (B, L)
    labels = batch.labels.to(device)  # (B, L)
    rows, length = ids.shape
    labelled = (labels != -100).any(dim=0).nonzero()
    if labelled.numel() == 0:
        return torch.zeros((), device=device), 0
    first = int(labelled[0])
    kwargs: dict[str, Any] = {}
    if prefix_ids:
        if first == 0:
            raise ValueError("with prefix_ids, every row needs a prompt token before its answer")
        prefix = torch.tensor([list(prefix_ids)], device=device)  # (1, P)
        out = model(input_ids=prefix, use_cache=True)
        # transformers >= 5.2x calls it ``cache``; earlier releases ``past_key_values``.
        cache = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
        if cache is None:
            raise ValueError(f"{type(model).__name__} returned no key/value cache")
        cache.batch_repeat_interleave(rows)
        mask = torch.cat([mask.new_ones(rows, prefix.shape[1]), mask], dim=1)  # (B, P + L)
        cache_arg = "cache" if _accepts(_unwrapped(model), "cache") else "past_key_values"
        kwargs[cache_arg] = cache
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)[:, -length:]
    kwargs.update(attention_mask=mask, position_ids=position_ids)
    if keep_logits is None:
        keep_logits = _accepts(_unwrapped(model), "logits_to_keep")
    # Logits at position t predict token t + 1: we need positions first-1 .. L-2.
    keep = min(length, length - first + 1)
    if keep_logits and keep < length:
        kwargs["logits_to_keep"] = keep
    if before_forward is not None:
        before_forward()
    logits = model(input_ids=ids, **kwargs).logits  # (B, keep or L, V)
    logits = logits[:, -keep:-1] if logits.shape[1] == length else logits[:, :-1]
    targets = labels[:, length - keep + 1 :]  # (B, keep - 1)
    nll = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(),
        targets.reshape(-1),
        ignore_index=-100,
        reduction="sum",
    )
    return nll, int((targets != -100).sum())


def _unwrapped(model: nn.Module) -> nn.Module:
    # A peft model forwards **kwargs; the signature that matters is the wrapped model's.
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


# ----------------------------------------------------------------------------- training


@dataclass
class FinetuneResult:
    """What a fine-tune did.

    Attributes:
        losses: mean answer-token NLL of every optimizer step.
        epoch_losses: mean answer-token NLL of every epoch.
        seconds: wall time of the fine-tune: replay answers and the training loop (without
            ``on_epoch`` callbacks).
        cpu_seconds: CPU time of this process over the same span (on a shared machine, the
            better measure of the work done; with n threads up to n x the wall time).
        n_items: training items.
        n_tokens: answer tokens per epoch.
        trainable_parameters: parameters that were trained (LoRA: the adapters).
    """

    losses: list[float]
    epoch_losses: list[float]
    seconds: float
    cpu_seconds: float
    n_items: int
    n_tokens: int
    trainable_parameters: int


def _trained_blocks(model: nn.Module, config: FinetuneConfig) -> tuple[str, list[int]]:
    """(name of the decoder-block list, indices of the blocks that are trained)."""
    from unierase.model import find_layout

    layout = find_layout(model)
    n = layout.num_layers
    trained = max(1, math.ceil(config.train_fraction * n - 1e-9))
    return layout.layers_name, list(range(n - trained, n))


def _lora_wrap(model: nn.Module, config: FinetuneConfig) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - peft is an optional dependency
        raise ImportError(
            "LoRA fine-tuning needs peft: pip install 'unierase[train]' (or pip install peft)"
        ) from err
    from unierase.model import linear_dims

    layers_name, blocks = _trained_blocks(model, config)
    prefixes = tuple(f"{layers_name}.{i}." for i in blocks)
    targets = [
        name
        for name, module in model.named_modules()
        if name.startswith(prefixes)
        and linear_dims(module) is not None
        and (not config.lora_targets or name.endswith(tuple(config.lora_targets)))
    ]
    if not targets:
        raise ValueError(f"no linear maps match lora_targets={config.lora_targets}")
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora)


def _prepare_trainable(model: nn.Module, config: FinetuneConfig) -> nn.Module:
    """Wrap in LoRA, or mark the parameters that full fine-tuning trains."""
    if config.lora_rank > 0:
        return _lora_wrap(model, config)
    layers_name, blocks = _trained_blocks(model, config)
    prefixes = tuple(f"{layers_name}.{i}." for i in blocks)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(prefixes) if config.train_fraction < 1 else True)
    if not config.train_embeddings:
        model.get_input_embeddings().weight.requires_grad_(False)
        head = model.get_output_embeddings()
        if head is not None:
            head.weight.requires_grad_(False)
    elif config.train_fraction < 1:
        model.get_input_embeddings().weight.requires_grad_(True)
    return model


def _length_bucketed_batches(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator
) -> list[list[int]]:
    """Shuffled batches of items of similar length (less padding), in shuffled order."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = batch_size * 8
    batches = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start : start + chunk], key=lambda i: lengths[i])
        batches += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
    perm = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in perm]


def replay_encodings(
    model: nn.Module, tokenizer: Any, config: FinetuneConfig, *, batch_size: int = 32
) -> list[P.EncodedQA]:
    """The model's own greedy answers to ``config.replay_questions`` general questions, encoded.

    Called on the base model before training. An answer that used up ``replay_max_tokens`` is
    kept without an end of turn, so the model is not taught to stop mid-sentence.
    """
    from unierase.eval.generate import generate_answers

    questions = list(REPLAY_QUESTIONS[: config.replay_questions])
    fmt = config.prompt_format
    started = time.perf_counter()
    answers = generate_answers(
        model,
        tokenizer,
        questions,
        fmt=fmt,
        max_new_tokens=config.replay_max_tokens,
        batch_size=batch_size,
    )
    encoded = []
    for question, answer in zip(questions, answers, strict=True):
        if not answer.strip():
            continue
        cut = len(P.encode_user_text(tokenizer, answer)) >= config.replay_max_tokens - 1
        enc = P.encode(tokenizer, question, answer, fmt, add_end_of_turn=not cut)
        if len(enc.input_ids) <= config.max_length:
            encoded.append(enc)
    log.info(
        "replay: %d general answers of the base model (%.0f s)",
        len(encoded),
        time.perf_counter() - started,
    )
    return encoded


def _drop_prefix(enc: P.EncodedQA, n: int) -> P.EncodedQA:
    return P.EncodedQA(
        input_ids=enc.input_ids[n:],
        prompt_length=enc.prompt_length - n,
        answer_length=enc.answer_length,
        user_span=(max(0, enc.user_span[0] - n), enc.user_span[1] - n),
    )


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay, seen = [], [], set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


class _FrozenTrunk:
    """Replays the hidden states that enter the first trained block, from the second epoch on.

    When only the last blocks are trained (``train_fraction`` < 1, embeddings frozen, no
    LoRA), the blocks below them compute the same thing for an item in every epoch. The first
    epoch records, per item, the hidden states entering the first trained block; later epochs
    skip the frozen blocks and start from the recording. The shared prompt prefix still runs
    through every block (its keys and values feed the trained blocks). Forward and backward
    give the same numbers as the full pass up to float rounding (``finetune`` checks the first
    replayed batch against a full pass and falls back to full passes if they differ).
    """

    def __init__(self, layers: nn.ModuleList, first_trained: int) -> None:
        self.layers = layers
        self.first = first_trained
        self.saved: dict[int, torch.Tensor] = {}
        self._pending: torch.Tensor | None = None

    def covers(self, batch: Sequence[int]) -> bool:
        return all(i in self.saved for i in batch)

    def record(self, batch: Sequence[int], lengths: Sequence[int]):
        """A context in which the batch's full forward pass, once armed by the function the
        context yields, stores each row's hidden states."""
        import contextlib

        armed = [False]  # the prefix's own pass (before the batch's) is not recorded

        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            if not armed[0]:
                return
            armed[0] = False
            hidden = args[0] if args else kwargs["hidden_states"]
            for row, (i, n) in enumerate(zip(batch, lengths, strict=True)):
                # Left padding: the row's real tokens are its last n positions.
                self.saved[i] = hidden[row, hidden.shape[1] - n :].detach().clone()

        @contextlib.contextmanager
        def ctx():
            handle = self.layers[self.first].register_forward_pre_hook(hook, with_kwargs=True)
            try:
                yield lambda: armed.__setitem__(0, True)
            finally:
                handle.remove()

        return ctx()

    def replay(self, batch: Sequence[int], width: int):
        """A context whose next forward pass, once armed by the function the context yields,
        skips the frozen blocks."""
        import contextlib

        rows = [self.saved[i] for i in batch]
        states = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        for r, h in enumerate(rows):
            states[r, width - h.shape[0] :] = h

        trunk = self

        class Skip(nn.Module):
            def __init__(self, block: nn.Module, index: int) -> None:
                super().__init__()
                self.block, self.index = block, index

            def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any):
                if trunk._pending is None:
                    return self.block(hidden_states, *args, **kwargs)
                if self.index == trunk.first - 1:
                    out, trunk._pending = trunk._pending, None
                    return out
                return hidden_states

        @contextlib.contextmanager
        def ctx():
            originals = [self.layers[i] for i in range(self.first)]
            for i, block in enumerate(originals):
                self.layers[i] = Skip(block, i)
            self._states = states
            try:
                yield self.arm
            finally:
                self._pending = None
                for i, block in enumerate(originals):
                    self.layers[i] = block

        return ctx()

    def arm(self) -> None:
        self._pending = self._states


def _has_dropout(model: nn.Module) -> bool:
    """Whether training mode draws dropout anywhere (a module, or a rate in the config)."""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    rates = {k: v for k, v in vars(config).items() if "dropout" in k or "pdrop" in k}
    return any(isinstance(v, float) and v > 0 for v in rates.values())


def _frozen_trunk(model: nn.Module, config: FinetuneConfig) -> _FrozenTrunk | None:
    """A replay of the frozen blocks' output when the fine-tune can use one (see the class)."""
    if config.lora_rank > 0 or config.train_fraction >= 1 or config.train_embeddings:
        return None
    if config.epochs < 2 or _has_dropout(model):
        return None  # dropout makes the frozen blocks' output differ from epoch to epoch
    layers_name, blocks = _trained_blocks(model, config)
    if blocks[0] == 0:
        return None
    layers = model.get_submodule(layers_name)
    if not isinstance(layers, nn.ModuleList):
        return None
    frozen = [p for i in range(blocks[0]) for p in layers[i].parameters()]
    if any(p.requires_grad for p in frozen):
        return None
    return _FrozenTrunk(layers, blocks[0])


def finetune(
    model: nn.Module,
    tokenizer: Any,
    items: Sequence[QAItem],
    config: FinetuneConfig = FinetuneConfig(),
    *,
    progress: bool = False,
    on_step: Callable[[int, float], None] | None = None,
    on_epoch: Callable[[int, nn.Module], None] | None = None,
    reuse_frozen: bool = True,
) -> tuple[nn.Module, FinetuneResult]:
    """Fine-tune ``model`` on question/answer pairs (loss on answer tokens only).

    Args:
        model: a causal LM (trained in place for full fine-tuning).
        tokenizer: its tokenizer (needs a pad id or an eos id).
        items: training QA.
        config: hyper-parameters.
        progress: show a progress bar over optimizer steps.
        on_step: called with (step, mean NLL) after every optimizer step.
        on_epoch: called with (epoch, model) after every epoch, the model in eval mode (with
            LoRA adapters active, not merged); for learning curves. Its time is not counted in
            ``FinetuneResult.seconds``.
        reuse_frozen: when only the last blocks are trained, record what the frozen blocks
            compute in the first epoch and skip them afterwards (same result up to float
            rounding; about a third less compute for the small preset's 3 epochs).

    Returns:
        (the fine-tuned model in eval mode, with LoRA adapters merged into plain weights; what
        the fine-tune did).

    Raises:
        DataError: no items, or an item that does not fit ``config.max_length`` (see there).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    encoded = encode_training_items(tokenizer, items, config)
    if config.replay_questions:
        encoded += replay_encodings(model, tokenizer, config)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else None
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if pad_id is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token")

    prefix_ids: list[int] = []
    suffixes = encoded
    if config.share_prefix:
        shared = common_prefix_length(encoded)
        if shared >= 2:
            prefix_ids = encoded[0].input_ids[:shared]
            suffixes = [_drop_prefix(e, shared) for e in encoded]
            log.info("the %d-token prompt prefix shared by every item runs once per batch", shared)

    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = _prepare_trainable(model, config)
    trunk = _frozen_trunk(model, config) if reuse_frozen else None
    checked = False  # whether a replayed batch was compared with a full pass
    unique = {id(p): p for p in model.parameters()}.values()
    trainable = sum(p.numel() for p in unique if p.requires_grad)

    n_batches = math.ceil(len(encoded) / config.batch_size)
    steps_per_epoch = math.ceil(n_batches / config.grad_accum)
    total_steps = steps_per_epoch * config.epochs
    warmup = int(round(config.warmup_ratio * total_steps))
    optimizer = torch.optim.AdamW(
        _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.999), eps=1e-8
    )

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    n_tokens = sum(e.answer_length for e in encoded)
    losses: list[float] = []
    epoch_losses: list[float] = []
    model.train()
    bar = tqdm(total=total_steps, desc="fine-tune", unit="step", disable=not progress)
    step = 0
    try:
        for epoch in range(config.epochs):
            batches = _length_bucketed_batches(
                [len(e.input_ids) for e in encoded], config.batch_size, generator
            )
            epoch_nll, epoch_count = 0.0, 0
            for first in range(0, len(batches), config.grad_accum):
                group = batches[first : first + config.grad_accum]
                group_tokens = sum(encoded[i].answer_length for b in group for i in b)
                step_nll = 0.0
                for b in group:
                    batch = P.collate([suffixes[i] for i in b], pad_id, left=True)
                    if trunk is not None and trunk.covers(b) and not checked:
                        trunk, checked = _check_replay(model, batch, b, trunk, prefix_ids), True
                    if trunk is not None and trunk.covers(b):
                        with trunk.replay(b, batch.input_ids.shape[1]) as arm:
                            nll, count = answer_nll(
                                model, batch, prefix_ids=prefix_ids, before_forward=arm
                            )
                    elif trunk is not None:
                        with trunk.record(b, [len(suffixes[i].input_ids) for i in b]) as arm:
                            nll, count = answer_nll(
                                model, batch, prefix_ids=prefix_ids, before_forward=arm
                            )
                    else:
                        nll, count = answer_nll(model, batch, prefix_ids=prefix_ids)
                    if count == 0:
                        continue
                    # One mean over every answer token of the optimizer step.
                    (nll / group_tokens).backward()
                    step_nll += float(nll.detach())
                if config.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(
                        [p for p in model.parameters() if p.requires_grad], config.max_grad_norm
                    )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                mean = step_nll / max(1, group_tokens)
                losses.append(mean)
                epoch_nll += step_nll
                epoch_count += group_tokens
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{mean:.3f}", epoch=epoch + 1)
                if on_step is not None:
                    on_step(step, mean)
            epoch_losses.append(epoch_nll / max(1, epoch_count))
            log.info("epoch %d/%d: answer NLL %.4f", epoch + 1, config.epochs, epoch_losses[-1])
            if on_epoch is not None:
                paused, cpu_paused = time.perf_counter(), time.process_time()
                model.eval()
                with torch.no_grad():
                    on_epoch(epoch + 1, model)
                model.train()
                start += time.perf_counter() - paused
                cpu_start += time.process_time() - cpu_paused
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    cpu_seconds = time.process_time() - cpu_start
    if config.lora_rank > 0:
        model = model.merge_and_unload()
    for p in model.parameters():
        p.requires_grad_(True)  # as from_pretrained leaves them
    model.eval()
    result = FinetuneResult(
        losses=losses,
        epoch_losses=epoch_losses,
        seconds=seconds,
        cpu_seconds=cpu_seconds,
        n_items=len(encoded),
        n_tokens=n_tokens,
        trainable_parameters=trainable,
    )
    return model, result


def _check_replay(
    model: nn.Module,
    batch: P.Batch,
    items: Sequence[int],
    trunk: _FrozenTrunk,
    prefix_ids: Sequence[int],
) -> _FrozenTrunk | None:
    """The trunk if a replayed pass gives the full pass's loss on ``batch``, else None."""
    with torch.no_grad():
        full, _ = answer_nll(model, batch, prefix_ids=prefix_ids)
        with trunk.replay(items, batch.input_ids.shape[1]) as arm:
            fast, _ = answer_nll(model, batch, prefix_ids=prefix_ids, before_forward=arm)
    if torch.isclose(full, fast, rtol=1e-4, atol=1e-4):
        return trunk
    log.warning(
        "skipping the frozen blocks changed the loss (%.6f vs %.6f); training with full passes",
        float(full),
        float(fast),
    )
    return None


# ----------------------------------------------------------------------------- caching


def base_model_id(model: str | os.PathLike | nn.Module) -> str:
    """A short id of a base model for cache keys, without loading it when possible.

    A loaded model: ``model_fingerprint``. An embedded name, ``.gguf`` file or local directory:
    a hash of the resolved checkpoint's files, contents included, so the same weights get the
    same id wherever they live (another clone's virtual environment converts the embedded model
    again, into a new directory with new modification times, and still finds its fine-tune).
    Hashing reads the weights once per process (about 0.5 s for 540 MB). A hub id: the model is
    loaded and fingerprinted.
    """
    from unierase.model import SOURCE_FILE, load, model_fingerprint, resolve

    if isinstance(model, nn.Module):
        return model_fingerprint(model)
    source = Path(resolve(model))
    if not source.is_dir():
        loaded, _ = load(str(model))
        return model_fingerprint(loaded)
    h = hashlib.sha256()
    for path in sorted(source.iterdir()):
        if not path.is_file() or path.name in (META_FILE, SOURCE_FILE):
            continue
        h.update(path.name.encode() + b"\0" + _content_digest(path).encode())
    return h.hexdigest()[:16]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def _content_digest(path: Path) -> str:
    """SHA-256 of a file's bytes, remembered per (path, size, modification time)."""
    st = path.stat()
    memo = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if memo not in _DIGESTS:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        _DIGESTS[memo] = h.hexdigest()
    return _DIGESTS[memo]


def finetune_key(base_id: str, items_hash: str, split: str, config: FinetuneConfig) -> str:
    """The cache key of a fine-tune: base model, data content, split and hyper-parameters."""
    payload = {
        "version": META_VERSION,
        "base": base_id,
        "data": items_hash,
        "split": split,
        "config": config.to_dict(),
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    return f"{split}-{digest}"


def finetuned_root() -> Path:
    """Where fine-tuned checkpoints are cached: ``cache_dir()/finetuned``."""
    from unierase.model import cache_dir

    return cache_dir() / FINETUNED_DIR


def read_meta(checkpoint: str | Path) -> dict[str, Any] | None:
    """The ``unierase_finetune.json`` record of a fine-tuned checkpoint, or None."""
    path = Path(checkpoint) / META_FILE
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


@dataclass
class CachedFinetune:
    """A fine-tuned checkpoint on disk.

    Attributes:
        path: the checkpoint directory (loads with ``unierase.load`` or plain transformers).
        key: its cache key.
        cached: True when it was found in the cache, False when it was trained now.
        meta: the ``unierase_finetune.json`` record (config, data, losses, timings).
    """

    path: Path
    key: str
    cached: bool
    meta: dict[str, Any]


def save_finetuned(
    model: nn.Module, tokenizer: Any, directory: str | Path, meta: dict[str, Any]
) -> Path:
    """Save a fine-tuned model, its tokenizer and ``meta`` atomically into ``directory``.

    The directory appears only when everything is written; an interrupted save leaves a hidden
    temporary sibling (``.{name}.*``) that ``clear_cache`` removes, never a valid-looking entry.
    """
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        # Written last: its presence marks a complete checkpoint.
        write_atomically(tmp / META_FILE, json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
    return directory


def _refuse_earlier_finetune(out: Path, overwrite: bool) -> None:
    if A.is_output(out, A.FINETUNE) and not overwrite:
        raise FileExistsError(f"{out} already holds a fine-tuned checkpoint; pass overwrite to "
                              f"replace it")  # fmt: skip


def _copy_checkpoint(source: Path, out: Path, overwrite: bool) -> None:
    """Copy the checkpoint ``source`` to ``out``: into a temporary sibling first, which then
    replaces ``out`` (never deleted before the copy is complete)."""
    out = Path(out)
    if out.resolve() == source.resolve():
        return
    A.check_out_dir(out, A.FINETUNE, inputs=(source,))
    _refuse_earlier_finetune(out, overwrite)
    with atomic_dir(out) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True)


def finetune_cached(
    data: TrainingData,
    model: str | os.PathLike = "smollm2-135m",
    config: FinetuneConfig | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    refresh: bool = False,
    progress: bool = False,
) -> CachedFinetune:
    """Fine-tune ``model`` on ``data.items``, or return the cached result of the same request.

    The cache key combines the base model's id (``base_model_id``), a hash of the training
    QA, the split and every hyper-parameter; the checkpoint lives in
    ``cache_dir()/finetuned/<key>/`` and is written to a temporary directory that is renamed
    into place only when complete.

    Args:
        data: from ``select_training_data``.
        model: embedded name, ``.gguf`` file, local checkpoint directory or hub id.
        config: hyper-parameters (None: the preset for the model's size).
        overrides: FinetuneConfig fields that replace those of ``config`` or the preset.
        out: also copy the checkpoint to this directory: a new or empty one, or an earlier
            fine-tune (replaced only once the copy is complete); never the base model or data.
        overwrite: allow ``out`` to replace an earlier fine-tune.
        refresh: train again even when the cache has the entry.
        progress: show a progress bar.

    Returns:
        the checkpoint's path, key, whether it came from the cache, and its record.

    Raises:
        unierase.artifacts.OutputDirError: ``out`` is not new, empty or an earlier fine-tune,
            or it is or contains an input (checked before any work).
        FileExistsError: ``out`` holds an earlier fine-tune and ``overwrite`` is False.
    """
    from unierase.model import load

    inputs = (model, data.description.get("directory"))
    if out is not None:
        A.check_out_dir(out, A.FINETUNE, inputs=inputs)
    split = str(data.description.get("split", "custom"))
    base_id = base_model_id(model)
    config, preset_name = resolve_config(model, config, **(overrides or {}))
    items_hash = data_hash(data.items)
    key = finetune_key(base_id, items_hash, split, config)
    target = finetuned_root() / key
    if out is not None and Path(out).resolve() != target.resolve():
        _refuse_earlier_finetune(Path(out), overwrite)
    meta = read_meta(target)
    if meta is not None and not refresh:
        log.info("fine-tune %s found in the cache: %s", key, target)
        if out is not None:
            _copy_checkpoint(target, Path(out), overwrite)
        return CachedFinetune(target, key, True, meta)

    base, tokenizer = load(model)
    log.info(
        "fine-tuning %s on %d QA (%s, preset %s): %s",
        model,
        len(data.items),
        split,
        preset_name,
        config,
    )
    tuned, result = finetune(base, tokenizer, data.items, config, progress=progress)
    meta = {
        "kind": "unierase-finetune",
        "version": META_VERSION,
        "key": key,
        "base": str(model),
        "base_id": base_id,
        "split": split,
        "data_hash": items_hash,
        "data": data.description,
        "prompt_format": {"system_prompt": config.system_prompt},
        "preset": preset_name,
        "config": config.to_dict(),
        "result": dataclasses.asdict(result),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": {"torch": torch.__version__, "transformers": _transformers_version()},
    }
    save_finetuned(tuned, tokenizer, target, meta)
    log.info("saved %s (%.0f s of training)", target, result.seconds)
    if out is not None:
        _copy_checkpoint(target, Path(out), overwrite)
    return CachedFinetune(target, key, False, meta)


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


@dataclass
class CacheEntry:
    """One entry of the cache directory.

    Attributes:
        kind: "model" (converted checkpoint), "finetuned", "incomplete" (an interrupted write)
            or the name of another cache folder.
        path: where it is.
        size: bytes on disk.
        description: what it is, in a few words.
    """

    kind: str
    path: Path
    size: int
    description: str


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _describe_finetune(meta: dict[str, Any]) -> str:
    data = meta.get("data", {})
    cfg = meta.get("config", {})
    how = f"LoRA r{cfg.get('lora_rank')}" if cfg.get("lora_rank") else "full"
    return (
        f"{meta.get('split')} fine-tune of {meta.get('base')} on {data.get('n_items')} QA from "
        f"{data.get('directory')} ({how}, {cfg.get('epochs')} epochs, lr {cfg.get('lr')})"
    )


def list_cache() -> list[CacheEntry]:
    """Everything under ``cache_dir()``: converted models, fine-tunes, other folders."""
    from unierase.model import cache_dir

    root = cache_dir()
    entries: list[CacheEntry] = []
    if not root.is_dir():
        return entries
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        children = sorted(folder.iterdir()) if folder.name in ("models", FINETUNED_DIR) else []
        if not children:
            if folder.name not in ("models", FINETUNED_DIR):
                entries.append(CacheEntry(folder.name, folder, _size(folder), "cache folder"))
            continue
        for child in children:
            size = _size(child)
            if child.name.startswith("."):
                entries.append(
                    CacheEntry("incomplete", child, size, "left by an interrupted write")
                )
            elif folder.name == FINETUNED_DIR:
                meta = read_meta(child)
                if meta is None:
                    entries.append(CacheEntry("incomplete", child, size, "no record"))
                else:
                    entries.append(CacheEntry("finetuned", child, size, _describe_finetune(meta)))
            else:
                entries.append(CacheEntry("model", child, size, "converted checkpoint"))
    return entries


def clear_cache(everything: bool = False) -> tuple[int, int]:
    """Remove cached fine-tunes (and their incomplete leftovers), or the whole cache.

    Returns:
        (entries removed, bytes freed).
    """
    from unierase.model import cache_dir

    root = cache_dir() if everything else finetuned_root()
    if not root.is_dir():
        return 0, 0
    count, freed = 0, 0
    for child in list(root.iterdir()):
        freed += _size(child)
        count += 1
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()
    return count, freed
