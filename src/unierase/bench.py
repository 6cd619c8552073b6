"""``unierase bench``: UniErase and the fine-tuning baselines side by side, on one target model.

Stages:

1. ``[data]``     the demo's fictitious authors (``--preset demo``), a subset of the real TOFU
                  files (``--preset tofu-mini``) or well-known real people (``--preset
                  realworld``, ``unierase.data.realworld``; ``--data FILE`` replaces them);
   ``[filter]``   realworld only: the base model's greedy answers decide which questions it
                  knows; people with at least 2 known questions stay, a seeded draw of
                  ``forget`` of them is the forget group and the others are the neighbours (the
                  retain set). The answers are cached in ``<out>/filter``;
2. ``[finetune]`` the target model (every author) and the retain model (the kept authors only),
                  both cached. realworld fine-tunes nothing: the target is the base model, and
                  there is no retain model (its forget quality is reported as skipped);
3. ``[eval]``     the target model and the retain model (the retain model's forget truth ratios
                  are the reference of TOFU's forget quality);
4. one stage per method: UniErase (``api.unlearn``) or a baseline (``baselines.run_baseline``)
                  on the target model, then the same evaluation; wall time and peak memory. A
                  baseline variant (``GA[lr=3e-5]``, ``unierase.bench_variants``) is a method
                  of its own, so one run can compare settings of a baseline (a tuning grid:
                  ``benchmarks/tune_baselines.py``);
5. the outputs: ``results.json`` (every metric of every method, its time and memory),
   ``table.md`` and, per method, the evaluation records under ``methods/<name>/eval``.

With ``attacks`` (``--attacks``), the same attacks run on the target model, the retain model and
every method's model right after each one's evaluation (``unierase.bench_attacks``): records
under ``methods/<name>/attacks``, an ``attacks`` block in ``results.json`` (recovery per method
and attack, the method that leaks least) and an attack table in ``table.md``.

Every method gets the same forget set, the same retain items and the same evaluation items.
UniErase's checkpoint is kept (``methods/UniErase/model``); the baselines' models are evaluated in
memory and not saved. The batch run ends with an HTML report (``unierase.report``).
``--mode sequential`` and ``--mode precise`` run ``unierase.bench_modes`` instead.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unierase import artifacts as A
from unierase._util.atomic import write_atomically

log = logging.getLogger(__name__)

UNIERASE = "UniErase"
# UniErase with Phase II's deep option (EditConfig.deep): batch mode only, run only when named.
UNIERASE_DEEP = "UniErase-deep"
UNIERASE_METHODS = (UNIERASE, UNIERASE_DEEP)
REALWORLD = "realworld"
PRESETS = ("demo", "tofu-mini", REALWORLD)
DEFAULT_OUT = Path("runs/bench")
DEFAULT_TOFU = Path("../shared/data/tofu")
# tofu-mini: TOFU's first 2 forget10 authors and 8 retain authors, 10 QA each (100 QA), sized
# for 2 CPU cores like the demo's synthetic set.
TOFU_MINI = {"authors": 10, "forget_authors": 2, "questions_per_author": 10}
RESULTS_FILE = A.BENCH_RESULTS
TABLE_FILE = A.BENCH_TABLE
ATTACK_DIR = "attacks"  # per model, beside its eval directory (``--attacks``)
FILTER_DIR = "filter"  # realworld: the base model's answers and which questions it knows
FILTER_FILE = "filter.jsonl"
PROBE_ROLES = ("general", "real_authors", "world_facts")  # the general-knowledge evaluation splits
NO_RETAIN_MODEL = (
    "not defined in the real-world setting: the base model learned these people in "
    "pre-training, so there is no retain model that never saw them"
)

# (column label, summary key) of the Markdown table.
TABLE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("FE", "paper/forget_efficacy"),
    ("MU", "paper/model_utility"),
    ("forget quality", "tofu/forget_quality"),
    ("TOFU MU", "tofu/model_utility"),
    ("forget ROUGE", "forget/rouge"),
    ("forget prob", "forget/prob"),
    ("forget refusal", "forget/refusal_rate"),
    ("retain ROUGE", "retain/rouge"),
    ("probe acc.", "general/accuracy"),
    ("over-refusal", "over_refusal/rate"),
)


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark runs (the CLI fills it from its options).

    Attributes:
        model: base model, anything ``unierase.load`` accepts.
        out: output directory.
        preset: "demo" (synthetic authors, like ``unierase demo``), "tofu-mini" or "realworld"
            (well-known people the base model already knows; no fine-tune).
        methods: "UniErase" and baseline names (``unierase.baselines.METHODS``), in order; a
            baseline variant (``GA[lr=3e-5]``, ``unierase.bench_variants``) is a method of its
            own, its settings applied over ``baseline_overrides``.
        tofu_dir: the TOFU files for "tofu-mini".
        authors, forget, questions: the demo preset's synthetic set; ``forget`` is also the
            number of people realworld forgets.
        data: realworld: a JSONL file of people questions in the package set's schema
            (``unierase.data.realworld``) instead of the package's set.
        seed: data, fine-tunes, baselines and UniErase's Phase I.
        forget_items, retain_items, probe_items: evaluation caps (seeded samples).
        max_new_tokens, probe_max_new_tokens: generation budgets of the evaluation.
        embedding_model: sentence encoder for the evaluation ("default", a directory, "none").
        finetune_overrides: FinetuneConfig fields for the target and retain models.
        baseline_overrides: BaselineConfig fields applied to every baseline (a variant's own
            settings win).
        token_overrides, edit_overrides, stats_texts: passed to ``api.unlearn``.
        retain_model: fine-tune and evaluate a retain model (TOFU's forget quality needs it).
        threads: torch CPU threads (None: torch's default).
        progress: progress bars.
        mode: "batch" (one forget set), "sequential" (``rounds`` rounds of ``per_round``
            questions) or "precise" (``precise_items`` single questions); see
            ``unierase.bench_modes``.
        attacks: batch mode: attacks (``unierase.attacks.ATTACK_NAMES``) run on every model
            after its evaluation (empty: none); see ``unierase.bench_attacks``.
        attack_items: forget (and retain) questions attacked, a seeded sample of the evaluated
            ones.
        attack_overrides: further ``AttackConfig`` fields (the relearning's epochs, ...).
    """

    model: str = "smollm2-135m"
    out: Path = DEFAULT_OUT
    preset: str = "demo"
    methods: tuple[str, ...] = ()
    tofu_dir: Path | None = None
    data: Path | None = None
    authors: int = 10
    forget: int = 2
    questions: int = 10
    seed: int = 0
    forget_items: int = 40
    retain_items: int = 20
    probe_items: int = 40
    max_new_tokens: int = 48
    probe_max_new_tokens: int = 16
    embedding_model: str = "default"
    finetune_overrides: Mapping[str, Any] = field(default_factory=dict)
    baseline_overrides: Mapping[str, Any] = field(default_factory=dict)
    token_overrides: Mapping[str, Any] = field(default_factory=dict)
    edit_overrides: Mapping[str, Any] = field(default_factory=dict)
    stats_texts: Sequence[str] | None = None
    retain_model: bool = True
    threads: int | None = None
    progress: bool = True
    mode: str = "batch"
    rounds: int = 5
    per_round: int = 4
    precise_items: int = 20
    attacks: tuple[str, ...] = ()
    attack_items: int = 20
    attack_overrides: Mapping[str, Any] = field(default_factory=dict)


def all_methods() -> tuple[str, ...]:
    """UniErase first, then every registered baseline."""
    from unierase.baselines import METHODS

    return (UNIERASE, *METHODS)


def resolve_methods(names: Sequence[str]) -> tuple[str, ...]:
    """Canonical method names (empty: every method but UniErase-deep, which runs only when
    named), duplicates dropped; a ValueError names an unknown one.

    A baseline may carry its own settings, ``GA[lr=3e-5,epochs=3]``
    (``unierase.bench_variants``): each such variant is a method of its own, named canonically
    (``GA[epochs=3,lr=3e-05]``).
    """
    from unierase.bench_variants import canonical_variant, split_variant_text

    if not names:
        return all_methods()
    ours = {m.lower(): m for m in UNIERASE_METHODS}
    out = []
    for name in names:
        head, settings = split_variant_text(name)
        if head.lower() in ours and settings is not None:
            raise ValueError(
                f"{name!r}: {ours[head.lower()]} takes no [settings] variants (only the "
                "baselines do); its settings are the run's Phase I and Phase II overrides "
                "(unierase bench --edit-setting KEY=VALUE)"
            )
        canonical = ours.get(name.lower()) or canonical_variant(name)
        if canonical not in out:
            out.append(canonical)
    return tuple(out)


def method_dir_name(name: str) -> str:
    """A file-system name for a method ("NPO+GD" -> "NPO_GD", "GA[epochs=3,lr=3e-05]" ->
    "GA__epochs=3__lr=3e-05")."""
    from unierase.bench_variants import variant_dir_name

    return variant_dir_name(name)


def baseline_run_settings(
    name: str, settings: BenchSettings, seed: int | None = None
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """How the baseline or variant ``name`` runs: (its registry name, the variant's own settings
    ({} for a plain baseline), the ``run_baseline`` overrides). The overrides are the seed
    (``settings.seed`` unless given), then ``settings.baseline_overrides``, then the variant's
    own settings, which win."""
    from unierase.bench_variants import parse_variant

    method, own = parse_variant(name)
    seed = settings.seed if seed is None else seed
    return method, own, {"seed": seed, **settings.baseline_overrides, **own}


# ----------------------------------------------------------------------------- measuring


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory over a ``with`` block: the accelerator's allocator peak when one is in use,
    else the process's resident set size sampled every ``interval`` seconds (Linux), else the
    process's lifetime peak (``ru_maxrss``, an upper bound)."""

    def __init__(self, interval: float = 0.05) -> None:
        self.interval = interval
        self.peak_bytes: int | None = None
        self.kind = "rss"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        import torch

        if torch.cuda.is_available():
            self.kind = "cuda_allocated"
            torch.cuda.reset_peak_memory_stats()
            return self
        if _rss_bytes() is None:
            self.kind = "ru_maxrss"
            return self
        self.peak_bytes = _rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes() or 0
            self.peak_bytes = max(self.peak_bytes or 0, rss)

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.kind == "cuda_allocated":
            self.peak_bytes = int(torch.cuda.max_memory_allocated())
        elif self.kind == "ru_maxrss":
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes or 0, _rss_bytes() or 0)


# ----------------------------------------------------------------------------- the run


@dataclass
class BenchResult:
    """What ``run_bench`` wrote: ``results`` is the content of ``results.json``."""

    results: dict[str, Any]
    table: str
    out: Path


def _status(stage: str, text: str, seconds: float | None = None) -> str:
    tail = f"  ({seconds:.1f} s)" if seconds is not None else ""
    return f"{f'[{stage}]':<11} {text}{tail}"


def _finetune(training: Any, settings: BenchSettings, role: str, out: Callable[[str], None]) -> Any:
    """Fine-tune (or take from the cache) the ``role`` model ("target", "retain") on ``training``.

    Writes its ``[finetune]`` status line; returns ``finetune_cached``'s checkpoint.
    """
    from unierase.finetune import finetune_cached

    t = time.perf_counter()
    overrides = {"seed": settings.seed, **settings.finetune_overrides}
    checkpoint = finetune_cached(
        training, settings.model, overrides=overrides, progress=settings.progress
    )
    state = "cached" if checkpoint.cached else "trained"
    out(_status("finetune", f"{role} model ({state}): {checkpoint.path}", time.perf_counter() - t))
    return checkpoint


def _capped_splits(
    sources: Mapping[str, Any], settings: BenchSettings, roles: Collection[str] | None = None
) -> dict[str, Any]:
    """Seeded samples of the evaluation splits, capped by ``settings``' ``*_items``.

    Keeps the roles in ``roles`` (None: every capped role: forget, retain and the probes).
    """
    from unierase.demo import _sample
    from unierase.eval import suite

    caps = {
        "forget": settings.forget_items,
        "retain": settings.retain_items,
        **dict.fromkeys(PROBE_ROLES, settings.probe_items),
    }
    keep = caps.keys() if roles is None else roles
    return {
        role: suite.EvalSplit(role, _sample(sp.items, caps[role], settings.seed), sp.source)
        for role, sp in sources.items()
        if role in keep
    }


def _eval_config(settings: BenchSettings) -> Any:
    """The evaluation settings every model of a bench run is scored with."""
    from unierase import prompting as P
    from unierase.demo import EVAL_BATCH_SIZE
    from unierase.eval import suite

    return suite.EvalConfig(
        max_new_tokens=settings.max_new_tokens,
        probe_max_new_tokens=settings.probe_max_new_tokens,
        batch_size=EVAL_BATCH_SIZE,
        fmt=P.PromptFormat(),  # the format the fine-tunes, the baselines and api.unlearn use
        progress=settings.progress,
    )


def _training_data(settings: BenchSettings, data_dir: Path) -> tuple[Any, Path, str]:
    """(TrainingData of the full set, the TOFU-layout directory, the forget split name)."""
    from unierase.data.schema import DataError
    from unierase.data.synth import synthetic_file_names, write_synthetic
    from unierase.finetune import find_forget_retain_splits, select_training_data

    if settings.preset == "demo":
        write_synthetic(
            data_dir,
            n_authors=settings.authors,
            n_forget=settings.forget,
            seed=settings.seed,
            questions_per_author=settings.questions,
        )
        forget_split = synthetic_file_names(settings.authors, settings.forget)["forget"]
        return select_training_data(data_dir, "full"), data_dir, forget_split.removesuffix(".jsonl")
    if settings.preset == "tofu-mini":
        tofu = Path(settings.tofu_dir) if settings.tofu_dir is not None else DEFAULT_TOFU
        if not tofu.is_dir():
            raise DataError(f"tofu-mini needs the TOFU files: {tofu} is not a directory")
        forget_split, _retain = find_forget_retain_splits(tofu)
        return select_training_data(tofu, "full", **TOFU_MINI), tofu, forget_split
    raise ValueError(f"unknown preset {settings.preset!r}; choose from {', '.join(PRESETS)}")


def _base_answers(settings: BenchSettings, questions: Sequence[str]) -> list[str]:
    """The base model's greedy answers to ``questions``, in the prompt format and with the
    answer budget the evaluation uses (so the filter sees what the target's evaluation sees)."""
    import unierase
    from unierase import prompting as P
    from unierase.eval.generate import generate

    model, tokenizer = unierase.load(settings.model)
    model.eval()
    generations = generate(
        model,
        tokenizer,
        questions,
        fmt=P.PromptFormat(),
        max_new_tokens=settings.max_new_tokens,
        progress=settings.progress,
        desc="filter: generate",
    )
    return [g.text for g in generations]


def _realworld_data(
    settings: BenchSettings, out_dir: Path, out: Callable[[str], None]
) -> tuple[Any, Path]:
    """The ``[filter]`` stage of the realworld preset: (TrainingData, the data directory).

    The TrainingData trains on nothing (the target is the base model); its forget set is the
    known questions of the forget people, its retain set those of the neighbours. The base
    model's answers are cached in ``<out>/filter`` under a key of the model and the data, so a
    rerun (another seed, another forget count) does not generate again.
    """
    import dataclasses

    from unierase import prompting as P
    from unierase._util.atomic import atomic_dir
    from unierase._util.jsonl import read_jsonl, write_jsonl
    from unierase.data.realworld import (
        REALWORLD_FILE,
        accepted_answers,
        is_known,
        load_realworld,
        split_known,
    )
    from unierase.data.schema import DataError
    from unierase.demo import _fingerprint_file, _mark_done, _stage_done, _stage_key
    from unierase.finetune import TrainingData

    t = time.perf_counter()
    items = load_realworld(settings.data)
    source = str(settings.data) if settings.data is not None else f"package {REALWORLD_FILE}"
    model_path = Path(settings.model)
    key = _stage_key(
        "realworld-filter",
        settings.model,
        _fingerprint_file(model_path) if model_path.is_dir() else None,
        [item.to_dict() for item in items],  # the aliases are in the items' meta
        dataclasses.asdict(P.PromptFormat()),
        settings.max_new_tokens,
    )
    filter_dir = out_dir / FILTER_DIR
    filter_file = filter_dir / FILTER_FILE
    cached = _stage_done(filter_dir, key)
    if cached:
        rows = read_jsonl(filter_file)
        answers = [row["generation"] for row in rows]
    else:
        answers = _base_answers(settings, [item.question for item in items])
    known = [is_known(item, answer) for item, answer in zip(items, answers, strict=True)]
    if not cached:
        rows = [
            {
                "question": item.question,
                "group": item.group,
                "accepted": accepted_answers(item),
                "generation": answer,
                "known": ok,
            }
            for item, answer, ok in zip(items, answers, known, strict=True)
        ]
        with atomic_dir(filter_dir) as tmp:
            write_jsonl(tmp / FILTER_FILE, rows)
            _mark_done(tmp, key)
    try:
        split = split_known(items, known, n_forget=settings.forget, seed=settings.seed)
    except DataError as err:
        raise DataError(f"{settings.model}: {err} The answers are in {filter_file}.") from err

    data_dir = out_dir / "data"
    with atomic_dir(data_dir) as tmp:
        for name, subset in (("forget", split.forget), ("neighbours", split.neighbours)):
            write_jsonl(tmp / f"{name}.jsonl", [item.to_dict() for item in subset])
    record = {
        **split.describe(),
        "source": source,
        "filter_file": str(filter_file),
        "filter_cached": cached,
        "filter_max_new_tokens": settings.max_new_tokens,
    }
    description = {
        "directory": str(data_dir),
        "source": source,
        "split": "none (realworld: the base model is not fine-tuned)",
        "forget_authors": split.forget_people,
        "retain_authors": len(split.neighbour_people),
        "n_forget": len(split.forget),
        "n_retain": len(split.neighbours),
        "n_items": 0,
        "realworld": record,
    }
    out(
        _status(
            "filter",
            f"{settings.model} answers {split.questions_known} of {split.questions_total} "
            f"questions correctly{' (cached answers)' if cached else ''}; "
            f"{record['people_kept']} of {split.people_total} people have >= "
            f"{split.min_questions} -> forget {', '.join(split.forget_people)} "
            f"({len(split.forget)} QA), {len(split.neighbour_people)} neighbours "
            f"({len(split.neighbours)} QA)",
            time.perf_counter() - t,
        )
    )
    return TrainingData([], split.forget, split.neighbours, description), data_dir


def run_bench(
    settings: BenchSettings, out: Callable[[str], None] = lambda _line: None
) -> BenchResult:
    """Run every stage (see the module docstring); ``out`` writes a status line for the user.

    ``settings.mode`` "sequential" and "precise" run ``unierase.bench_modes`` instead.

    Raises:
        unierase.artifacts.OutputDirError: ``settings.out`` is not new, empty or an earlier
            bench run, or it is or contains an input (checked before any work).
    """
    import dataclasses

    realworld = settings.preset == REALWORLD
    if realworld and settings.mode != "batch":
        raise ValueError(f"--preset {REALWORLD} runs in batch mode only, not {settings.mode!r}")
    if settings.data is not None and not realworld:
        raise ValueError(f"--data is used by --preset {REALWORLD} only")
    if UNIERASE_DEEP in resolve_methods(settings.methods) and settings.mode != "batch":
        raise ValueError(f"{UNIERASE_DEEP} runs in batch mode only, not {settings.mode!r}")
    if settings.attacks and settings.mode != "batch":
        raise ValueError(f"--attacks runs in batch mode only, not {settings.mode!r}")
    tofu = settings.tofu_dir if settings.tofu_dir is not None else DEFAULT_TOFU
    inputs = (settings.model, settings.data, tofu if settings.preset == "tofu-mini" else None)
    A.check_out_dir(settings.out, A.BENCH, inputs=inputs)
    if settings.mode != "batch":
        from unierase.bench_modes import run_mode_bench

        return run_mode_bench(settings, out)

    import torch

    import unierase
    from unierase import api
    from unierase.demo import _write_run
    from unierase.eval import suite
    from unierase.eval.generate import model_device
    from unierase.finetune import TrainingData

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    methods = resolve_methods(settings.methods)
    out_dir = Path(settings.out)
    t_all = time.perf_counter()

    t = time.perf_counter()
    if realworld:
        training, data_dir = _realworld_data(settings, out_dir, out)
        forget_split = None
    else:
        training, data_dir, forget_split = _training_data(settings, out_dir / "data")
    out(
        _status(
            "data",
            f"{settings.preset}: forget {len(training.forget)} QA, retain {len(training.retain)}"
            f" QA ({data_dir})",
            time.perf_counter() - t,
        )
    )

    if realworld:
        # The paper's real-world setting: forget what the original model already knows.
        target_path: str | Path = settings.model
        out(_status("finetune", f"none: realworld unlearns the base model itself ({target_path});"
                    " no retain model (forget quality is not defined)"))  # fmt: skip
    else:
        target_path = _finetune(training, settings, "target", out).path
    retain_ckpt = None
    if settings.retain_model and not realworld:
        retain_data = TrainingData(
            list(training.retain),
            training.forget,
            training.retain,
            {**training.description, "split": "retain", "n_items": len(training.retain)},
        )
        retain_ckpt = _finetune(retain_data, settings, "retain", out)

    if realworld:
        from unierase.data.probes import load_general_probe

        sources = {
            "forget": suite.EvalSplit("forget", training.forget, "realworld forget people"),
            "retain": suite.EvalSplit("retain", training.retain, "realworld neighbours"),
            "general": suite.EvalSplit("general", load_general_probe(), "package general probe"),
        }
    else:
        sources = suite.load_eval_splits(data_dir, forget_split=forget_split)
    splits = _capped_splits(sources, settings)
    eval_config = _eval_config(settings)
    embedding = None if settings.embedding_model == "none" else settings.embedding_model
    aux_cache: dict[str, Any] = {}
    attacker = _attacker(settings, splits, eval_config, data_dir) if settings.attacks else None

    def evaluate(model: Any, tokenizer: Any, name: str, directory: Path, reference=None):
        if "aux" not in aux_cache:
            aux_cache["aux"] = suite.load_auxiliary(embedding=embedding, device=model_device(model))
        result = suite.evaluate(model, tokenizer, splits, eval_config, aux=aux_cache["aux"],
                                retain_reference=reference, model_name=name,
                                data_name=str(data_dir))  # fmt: skip
        if realworld and result.summary["metrics"].get("tofu/forget_quality") is None:
            result.summary["skipped"]["tofu/forget_quality"] = NO_RETAIN_MODEL
        _write_run(result, directory)
        return result

    reference = None
    if retain_ckpt is not None:
        t = time.perf_counter()
        model, tokenizer = unierase.load(retain_ckpt.path)
        evaluate(model, tokenizer, "retain model", out_dir / "retain_model" / "eval")
        reference = suite.load_retain_reference(out_dir / "retain_model" / "eval")
        out(_status("eval", "retain model (the forget-quality reference)", time.perf_counter() - t))
        if attacker is not None:
            _attack_reference(attacker, model, tokenizer, "retain", out_dir / "retain_model", out)
        del model
    t = time.perf_counter()
    model, tokenizer = unierase.load(target_path)
    target_eval = evaluate(model, tokenizer, "target model", out_dir / "target" / "eval", reference)
    out(_status("eval", "target model (before unlearning)", time.perf_counter() - t))
    if attacker is not None:
        _attack_reference(attacker, model, tokenizer, "before", out_dir / "target", out)
    del model

    results: dict[str, Any] = {
        "format": "unierase-bench/1",
        "preset": settings.preset,
        "model": settings.model,
        "data": {
            **training.description,
            "eval_items": {r: len(s.items) for r, s in splits.items()},
        },
        "target": {
            "path": str(target_path),
            "finetuned": not realworld,
            "metrics": target_eval.summary["metrics"],
        },
        "retain_model": str(retain_ckpt.path) if retain_ckpt is not None else None,
        "methods": {},
    }
    if realworld:
        results["skipped"] = {"tofu/forget_quality": NO_RETAIN_MODEL}
    for name in methods:
        directory = out_dir / "methods" / method_dir_name(name)
        t = time.perf_counter()
        variant = None  # a baseline's registry name and its own settings ({} for plain ones)
        with PeakMemory() as memory:
            if name in UNIERASE_METHODS:
                deep = {"deep": True} if name == UNIERASE_DEEP else {}
                report = api.unlearn(
                    target_path,
                    training.forget,
                    directory / "model",
                    retain=training.retain,
                    token_overrides=dict(settings.token_overrides),
                    edit_overrides={**settings.edit_overrides, **deep},
                    stats_texts=settings.stats_texts,
                    seed=settings.seed,
                    progress=settings.progress,
                ).to_dict()
                model, tokenizer = unierase.load(directory / "model")
            else:
                from unierase.baselines import run_baseline

                model, tokenizer = unierase.load(target_path)
                method, own, overrides = baseline_run_settings(name, settings)
                model, baseline = run_baseline(
                    method,
                    model,
                    tokenizer,
                    training.forget,
                    training.retain,
                    progress=settings.progress,
                    **overrides,
                )
                report = baseline.to_dict()
                variant = {"method": method, "settings": own}
        seconds = time.perf_counter() - t
        result = evaluate(model, tokenizer, name, directory / "eval", reference)
        results["methods"][name] = {
            "metrics": result.summary["metrics"],
            "seconds": seconds,
            "peak_memory_bytes": memory.peak_bytes,
            "peak_memory_kind": memory.kind,
            "report": report,
            **({"variant": variant} if variant is not None else {}),
        }
        m = result.summary["metrics"]
        out(_status(name, f"FE {_fmt(m.get('paper/forget_efficacy'))}, MU "
                    f"{_fmt(m.get('paper/model_utility'))} (unlearning {seconds:.1f} s)",
                    time.perf_counter() - t))  # fmt: skip
        if attacker is not None:
            entry = attacker.attack_method(model, tokenizer, name, directory / ATTACK_DIR)
            out(_status("attack", f"{name}: {_attack_line(entry)}", entry["seconds"]))
        del model
    if attacker is not None:
        results["attacks"] = attacker.block()
    results["headline"] = headline_ratios(results["methods"])
    results["seconds"] = time.perf_counter() - t_all
    results["settings"] = {
        k: (str(v) if isinstance(v, Path) else v)
        for k, v in dataclasses.asdict(settings).items()
        if k not in ("stats_texts",)
    }
    table = format_table(results)
    write_atomically(out_dir / RESULTS_FILE, json.dumps(results, indent=2, default=str) + "\n")
    write_atomically(out_dir / TABLE_FILE, table + "\n")
    out("")
    out(table)
    out(f"\nresults: {out_dir / RESULTS_FILE}, table: {out_dir / TABLE_FILE}")
    _write_html_report(out_dir, out)
    return BenchResult(results, table, out_dir)


def _attacker(
    settings: BenchSettings, splits: Mapping[str, Any], eval_config: Any, data_dir: Path
) -> Any:
    """The attack stage (``unierase.bench_attacks``): the evaluated forget and retain items,
    generated and scored as the evaluation does (``eval_config``)."""
    from unierase.bench_attacks import BenchAttacks
    from unierase.token.config import DEFAULT_TOKEN_TEXT

    return BenchAttacks(
        settings.attacks,
        splits["forget"].items,
        splits["retain"].items if "retain" in splits else [],
        n_items=settings.attack_items,
        seed=settings.seed,
        overrides=settings.attack_overrides,
        info={"data": str(data_dir), "sources": {r: s.source for r, s in splits.items()}},
        max_new_tokens=settings.max_new_tokens,
        batch_size=eval_config.batch_size,
        fmt=eval_config.fmt,
        token_text=settings.token_overrides.get("text", DEFAULT_TOKEN_TEXT),
    )


def _attack_reference(
    attacker: Any, model: Any, tokenizer: Any, role: str, directory: Path, out: Callable
) -> None:
    """Attack the target ("before") or the retain model ("retain"); one status line."""
    t = time.perf_counter()
    attacker.attack_reference(model, tokenizer, role, directory / ATTACK_DIR)
    label = "target model (the ceiling)" if role == "before" else "retain model (the floor)"
    out(_status("attack", f"{label}: {', '.join(attacker.config.attacks)}",
                time.perf_counter() - t))  # fmt: skip


def _attack_line(entry: Mapping[str, Any]) -> str:
    mean = entry.get("mean_recovery")
    rouge = ", ".join(f"{a} {_fmt(v.get('rouge'))}" for a, v in entry["attacks"].items())
    return f"forget ROUGE {rouge}; mean recovery {_fmt(mean)}"


def _write_html_report(out_dir: Path, out: Callable[[str], None]) -> None:
    """The HTML report (``unierase.report``); a failure there must not lose a finished run."""
    from unierase.report import write_report

    try:
        out(f"report: {write_report(out_dir)}")
    except Exception:  # the results are already on disk; the report can be re-rendered
        log.exception("the HTML report failed; re-render it with `unierase report %s`", out_dir)


# ----------------------------------------------------------------------------- summaries


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def headline_ratios(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The paper's two headline comparisons, as measured.

    ``mu_ratio``: UniErase's MU divided by the MU of the baseline with the highest FE;
    ``fe_gain``: UniErase's FE relative to the FE of the baseline with the highest MU
    (FE_u / FE_b - 1). None, with a reason, when UniErase or every baseline is missing a number.
    """
    fe, mu = "paper/forget_efficacy", "paper/model_utility"
    out: dict[str, Any] = {"mu_ratio": None, "fe_gain": None}
    ours = methods.get(UNIERASE, {}).get("metrics", {})
    baselines = {
        n: r["metrics"]
        for n, r in methods.items()
        if n not in UNIERASE_METHODS
        and r["metrics"].get(fe) is not None
        and r["metrics"].get(mu) is not None
    }
    if ours.get(fe) is None or ours.get(mu) is None or not baselines:
        out["reason"] = "needs UniErase and at least one baseline with both FE and MU"
        return out
    best_fe = max(baselines, key=lambda n: baselines[n][fe])
    best_mu = max(baselines, key=lambda n: baselines[n][mu])
    out["best_forgetting_baseline"] = best_fe
    out["best_retaining_baseline"] = best_mu
    b_mu, b_fe = baselines[best_fe][mu], baselines[best_mu][fe]
    out["mu_ratio"] = ours[mu] / b_mu if b_mu > 0 else None
    out["fe_gain"] = ours[fe] / b_fe - 1 if b_fe > 0 else None
    return out


def headline_lines(head: Mapping[str, Any]) -> list[str]:
    """The two headline ratios of :func:`headline_ratios` in words (or why there are none)."""
    lines = []
    if head.get("mu_ratio") is not None:
        lines.append(
            f"UniErase MU / MU of the best-forgetting baseline ({head['best_forgetting_baseline']})"
            f": {head['mu_ratio']:.2f}x (the paper: ~4.0x)"
        )
    if head.get("fe_gain") is not None:
        lines.append(
            f"UniErase FE vs the best-retaining baseline ({head['best_retaining_baseline']}): "
            f"{head['fe_gain']:+.0%} (the paper: +36%)"
        )
    if head.get("reason"):
        lines.append(f"headline ratios: {head['reason']}")
    return lines


def format_table(results: Mapping[str, Any]) -> str:
    """A Markdown table: one row per model (the target first), one column per headline metric."""
    header = "| method | " + " | ".join(label for label, _ in TABLE_COLUMNS) + " | time (s) |"
    lines = [header, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    rows = [("target (before)", results["target"]["metrics"], None)]
    rows += [(n, r["metrics"], r["seconds"]) for n, r in results["methods"].items()]
    for name, metrics, seconds in rows:
        cells = [_fmt(metrics.get(key)) for _, key in TABLE_COLUMNS]
        time_cell = "-" if seconds is None else f"{seconds:.0f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {time_cell} |")
    lines.append("")
    lines += headline_lines(results.get("headline", {}))
    for key, reason in results.get("skipped", {}).items():
        lines.append(f"{key}: skipped ({reason})")
    if results.get("attacks"):
        from unierase.bench_attacks import format_attack_table

        lines += ["", "Attacks (`--attacks`):", "", format_attack_table(results["attacks"])]
    return "\n".join(lines)
