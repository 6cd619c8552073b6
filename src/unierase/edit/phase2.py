"""Phase II end to end: statistics, projectors, requests, values, the edit, verification.

The state that a later round needs (the projectors and C_prev of every edited layer, the token,
the layers, what was already edited) lives in ``EditState`` and is saved beside the weights, so
a sequential run can continue exactly where the last one stopped.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unierase import prompting as P
from unierase.data.schema import QAItem
from unierase.edit.alphaedit import apply_deltas, compute_alphaedit, first_tokens
from unierase.edit.config import EditConfig
from unierase.edit.projector import null_space_projector
from unierase.edit.requests import EditRequest, build_requests, generate_prefixes
from unierase.edit.stats import cached_second_moments, collect_second_moments, corpus_sequences
from unierase.edit.values import optimise_values
from unierase.model import ModelLayout, model_fingerprint

log = logging.getLogger(__name__)

STATE_TENSORS = "unierase_state.safetensors"
STATE_JSON = "unierase_state.json"


@dataclass
class EditState:
    """What sequential unlearning carries from one round to the next.

    Attributes:
        token_id: the unlearning token the edit targets.
        layers: the edited layers.
        projectors: layer -> (d_mlp, d_mlp) null-space projector (from the original model).
        c_prev: layer -> (d_mlp, d_mlp) sum of K K^T of every edit so far.
        ranks: layer -> dimension of the null space kept.
        edited_questions: every question edited so far (a repeat is reported and skipped).
        rounds: one summary per round.
        base_fingerprint: fingerprint of the model the statistics were taken on.
        config: the edit configuration of the first round.
    """

    token_id: int
    layers: tuple[int, ...]
    projectors: dict[int, torch.Tensor]
    c_prev: dict[int, torch.Tensor]
    ranks: dict[int, int]
    edited_questions: list[str] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    base_fingerprint: str = ""
    config: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: Path) -> None:
        """Write the state beside a checkpoint (tensors as safetensors, the rest as JSON)."""
        from safetensors.torch import save_file

        tensors = {}
        for layer in self.layers:
            tensors[f"projector.{layer}"] = self.projectors[layer].float().contiguous()
            tensors[f"c_prev.{layer}"] = self.c_prev[layer].to(torch.float64).contiguous()
        save_file(tensors, str(Path(directory) / STATE_TENSORS))
        meta = {
            "token_id": self.token_id,
            "layers": list(self.layers),
            "ranks": {str(k): v for k, v in self.ranks.items()},
            "edited_questions": self.edited_questions,
            "rounds": self.rounds,
            "base_fingerprint": self.base_fingerprint,
            "config": self.config,
        }
        (Path(directory) / STATE_JSON).write_text(json.dumps(meta, indent=2, ensure_ascii=False))

    @classmethod
    def load(cls, directory: Path) -> EditState:
        """Read a state written by ``save``; FileNotFoundError names what is missing."""
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in (STATE_JSON, STATE_TENSORS):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"{directory} holds no {name}: not a unierase output")
        meta = json.loads((directory / STATE_JSON).read_text())
        tensors = load_file(str(directory / STATE_TENSORS))
        layers = tuple(meta["layers"])
        return cls(
            token_id=int(meta["token_id"]),
            layers=layers,
            projectors={layer: tensors[f"projector.{layer}"] for layer in layers},
            c_prev={layer: tensors[f"c_prev.{layer}"] for layer in layers},
            ranks={int(k): v for k, v in meta["ranks"].items()},
            edited_questions=list(meta.get("edited_questions", [])),
            rounds=list(meta.get("rounds", [])),
            base_fingerprint=meta.get("base_fingerprint", ""),
            config=dict(meta.get("config", {})),
        )


def new_state(
    model: torch.nn.Module,
    tokenizer: Any,
    layout: ModelLayout,
    token_id: int,
    config: EditConfig,
    *,
    texts: Sequence[str] | None = None,
    corpus_name: str = "wikipedia",
    fmt: P.PromptFormat = P.PromptFormat(),
    progress: bool = True,
) -> EditState:
    """Statistics and null-space projectors for the edited layers of ``model``.

    Args:
        texts: general text (default: ``config.stats_texts`` Wikipedia summaries).
        corpus_name: name used in the statistics cache key.
    """
    layers = config.resolved_layers(layout.num_layers)
    if texts is None:
        from unierase.data.corpus import wikipedia_summaries

        texts = wikipedia_summaries(limit=config.stats_texts)
    seqs = corpus_sequences(
        tokenizer,
        texts,
        max_length=config.stats_max_length,
        chat_fraction=config.stats_chat_fraction,
        fmt=fmt,
    )
    stats = cached_second_moments(
        model,
        layout,
        layers,
        seqs,
        corpus_name=corpus_name,
        pad_id=_pad_id(tokenizer),
        progress=progress,
    )
    projectors, ranks = {}, {}
    for layer in layers:
        proj = null_space_projector(
            stats[layer].moment, config.null_threshold, relative=config.null_threshold_relative
        )
        projectors[layer] = proj.matrix.float()
        ranks[layer] = proj.rank
        log.info(
            "layer %d: null space of rank %d / %d kept (threshold %.3g, top eigenvalue %.3g)",
            layer,
            proj.rank,
            layout.mlp_size,
            proj.threshold,
            proj.max_eigenvalue,
        )
    zeros = {
        layer: torch.zeros(layout.mlp_size, layout.mlp_size, dtype=torch.float64)
        for layer in layers
    }
    return EditState(
        token_id,
        layers,
        projectors,
        zeros,
        ranks,
        base_fingerprint=model_fingerprint(model),
        config=config.to_dict(),
    )


def protected_moments(
    model: torch.nn.Module,
    tokenizer: Any,
    layout: ModelLayout,
    layers: Sequence[int],
    kept: Sequence[QAItem],
    config: EditConfig,
    *,
    fmt: P.PromptFormat = P.PromptFormat(),
    pad_id: int = 0,
) -> tuple[dict[int, torch.Tensor], int]:
    """``protect_weight * K_r K_r^T`` per layer over every position of the kept items.

    The keys are read once, from the model as it is before this round's edits, over each kept
    question and answer in the prompt format (at most ``config.protect_items`` of them, a seeded
    sample). Returns the (d_mlp, d_mlp) float64 moments and the number of keys counted; empty
    when protection is off or nothing is kept.
    """
    if config.protect_weight <= 0 or not kept:
        return {}, 0
    chosen = list(kept)
    if len(chosen) > config.protect_items:
        order = sorted(random.Random(0).sample(range(len(chosen)), config.protect_items))
        chosen = [chosen[i] for i in order]
    seqs = [P.encode(tokenizer, it.question, it.answer or None, fmt).input_ids for it in chosen]
    stats = collect_second_moments(model, layout, layers, seqs, pad_id=pad_id, progress=False)
    count = next(iter(stats.values())).count
    moments = {k: config.protect_weight * st.moment * st.count for k, st in stats.items()}
    log.info("protecting %d kept items (%d keys) at weight %g", len(chosen), count,
             config.protect_weight)  # fmt: skip
    return moments, count


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@dataclass
class EditReport:
    """Outcome of one Phase II round (all JSON-ready).

    ``deep`` is None for the plain edit; with deep forgetting it holds the settings and the
    worst final pre-fill NLL and answer-token probability of the value optimisation.
    """

    requests: int
    questions: int
    skipped_repeats: list[str]
    success: float
    failed_questions: list[str]
    value_nll_max: float
    realised_min: float
    parameters_changed: int
    parameters_share: float
    seconds: dict[str, float]
    layers: list[int]
    ranks: dict[int, int]
    repairs: int
    deep: dict[str, Any] | None = None
    protected_items: int = 0
    protected_keys: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _success(
    model: torch.nn.Module, layout: ModelLayout, requests: Sequence[EditRequest], token: int, pad
) -> list[list[bool]]:
    return [[t == token for t in row] for row in first_tokens(model, layout, requests, pad)]


def unlearning_edit(
    model: torch.nn.Module,
    tokenizer: Any,
    layout: ModelLayout,
    items: Sequence[QAItem],
    state: EditState,
    config: EditConfig,
    *,
    fmt: P.PromptFormat = P.PromptFormat(),
    refusal_ids: Sequence[int] = (),
    retain: Sequence[QAItem] = (),
    progress: bool = True,
) -> EditReport:
    """Edit ``model`` in place so every item's first answer token is ``state.token_id``.

    ``refusal_ids`` are what the token was trained to produce after it (the refusal and its
    ending): with ``config.v_refusal_weight`` the value shift must keep that continuation.
    ``retain`` are items to keep: with ``config.protect_weight`` their keys join the preserved
    side of every solve of this round (see :func:`protected_moments`).

    Requests are solved chunk by chunk (``config.chunk_size``), each seeing the earlier ones in
    C_prev; requests whose prompts already start with the token are skipped. Afterwards, items
    that still fail get per-question edits (``config.repair_rounds``). ``state`` is updated.
    """
    t_start = time.perf_counter()
    seconds = {"values": 0.0, "solve": 0.0, "verify": 0.0}
    pad = _pad_id(tokenizer)
    seen = set(state.edited_questions)
    repeats = [it.question for it in items if it.question in seen]
    if repeats:
        log.warning(
            "%d questions were already forgotten in an earlier round; skipped", len(repeats)
        )
    todo = [it for it in items if it.question not in seen]
    prefixes = generate_prefixes(model, tokenizer, config.context_prefixes, config.prefix_tokens)
    layers = list(state.layers)
    value_layer = layers[-1]
    deep: dict[str, Any] | None = None
    if config.deep:
        deep = {
            "prefills": list(config.deep_prefills),
            "answer_tokens": config.deep_answer_tokens,
            "weight": config.deep_weight,
            "p_stop": config.deep_p_stop,
            "prefill_nll_max": 0.0,
            "answer_p_max": 0.0,
        }

    kept = [it for it in retain if it.question not in {f.question for f in items}]
    protect, protected_keys = protected_moments(model, tokenizer, layout, layers, kept, config,
                                                fmt=fmt, pad_id=pad)  # fmt: skip
    preserved = {
        layer: state.c_prev[layer].to(torch.float64) + protect.get(layer, 0.0) for layer in layers
    }

    def edit_chunk(chunk: list[EditRequest]) -> tuple[float, float]:
        """Edit one chunk; returns (max value NLL, min realised share), neutral when skipped."""
        t = time.perf_counter()
        ok = _success(model, layout, chunk, state.token_id, pad)
        chunk = [req for req, flags in zip(chunk, ok, strict=True) if not all(flags)]
        seconds["verify"] += time.perf_counter() - t
        if not chunk:
            return 0.0, 1.0
        values = optimise_values(
            model, layout, chunk, state.token_id, value_layer, config, pad_id=pad, progress=progress
        )
        seconds["values"] += values.seconds
        measured = {"prefill_nll_max": values.prefill_nll, "answer_p_max": values.answer_p}
        for key, value in measured.items():
            if deep is not None and value is not None:
                deep[key] = max(deep[key], float(value.max()))
        result = compute_alphaedit(
            model,
            layout,
            chunk,
            values.target,
            layers,
            state.projectors,
            preserved,
            lambda_=config.lambda_,
            plain_weight=config.key_plain_weight,
            pad_id=pad,
        )
        seconds["solve"] += result.seconds
        apply_deltas(model, layout, result.deltas)
        for layer, moment in result.key_moments.items():
            state.c_prev[layer] = state.c_prev[layer].to(torch.float64) + moment
            preserved[layer] = preserved[layer] + moment
        return float(values.nll.max()), float(result.realised.min())

    deep_rows = dict(
        deep=config.deep,
        deep_prefills=config.deep_prefills,
        deep_answer_tokens=config.deep_answer_tokens,
        continuation=[state.token_id, *refusal_ids] if config.v_refusal_weight > 0 else (),
        strip_subject_punctuation=config.strip_subject_punctuation,
    )
    requests = build_requests(
        tokenizer, todo, granularity=config.granularity, prefixes=prefixes, fmt=fmt, **deep_rows
    )
    from tqdm.auto import tqdm

    nll_max, realised_min = 0.0, 1.0
    bar = tqdm(total=len(requests), desc="edit", unit="request", disable=not progress)
    for i in range(0, len(requests), config.chunk_size):
        a, b = edit_chunk(requests[i : i + config.chunk_size])
        nll_max, realised_min = max(nll_max, a), min(realised_min, b)
        bar.update(len(requests[i : i + config.chunk_size]))
    bar.close()

    repairs = 0
    per_question = build_requests(
        tokenizer, todo, granularity="question", prefixes=prefixes, fmt=fmt, **deep_rows
    )
    for _ in range(config.repair_rounds):
        t = time.perf_counter()
        ok = _success(model, layout, per_question, state.token_id, pad)
        seconds["verify"] += time.perf_counter() - t
        failing = [req for req, flags in zip(per_question, ok, strict=True) if not flags[0]]
        if not failing:
            break
        log.info("repair: %d questions do not start with the token yet", len(failing))
        repairs += len(failing)
        for req in failing:
            a, b = edit_chunk([req])
            nll_max, realised_min = max(nll_max, a), min(realised_min, b)

    t = time.perf_counter()
    ok = [flags[0] for flags in _success(model, layout, per_question, state.token_id, pad)]
    seconds["verify"] += time.perf_counter() - t
    failed = [req.items[0].question for req, flag in zip(per_question, ok, strict=True) if not flag]
    state.edited_questions += [it.question for it in todo]
    changed = len(layers) * layout.hidden_size * layout.mlp_size
    seconds["total"] = time.perf_counter() - t_start
    report = EditReport(
        requests=len(requests),
        questions=len(todo),
        skipped_repeats=repeats,
        success=sum(ok) / max(len(ok), 1),
        failed_questions=failed,
        value_nll_max=nll_max,
        realised_min=realised_min,
        parameters_changed=changed,
        parameters_share=changed / sum(p.numel() for p in model.parameters()),
        seconds={k: round(v, 2) for k, v in seconds.items()},
        layers=layers,
        ranks=dict(state.ranks),
        repairs=repairs,
        deep=deep,
        protected_items=len(kept) if protect else 0,
        protected_keys=protected_keys,
    )
    state.rounds.append({k: v for k, v in report.to_dict().items() if k != "failed_questions"})
    return report
