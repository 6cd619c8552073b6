"""``unierase demo``: the first thing a new user runs, the whole story on one small model.

Stages, each reported in one status line with its time:

1. ``[data]``     invent fictitious authors (``data.synth``), some of them to forget;
2. ``[finetune]`` teach the base model every author (cached: a second run returns at once);
3. ``[unlearn]``  UniErase on the fine-tuned model (``api.unlearn``: Phase I token, Phase II edit);
4. ``[eval]``     score the fine-tuned model (before) and the unlearned one (after) with the
                  evaluation suite, on the forget authors, a sample of the kept ones and the
                  general probe; per-item records go to ``<out>/eval/{before,after}``;
5. ``[report]``   a before/after table, example answers, where everything is.

Every input the demo writes or reads lives under ``--out``; the fine-tune and the statistics live
in the unierase cache. Every directory is written to a temporary sibling and renamed into place,
so Ctrl-C at any point leaves either the old entry or the new one, never half of one.
"""

from __future__ import annotations

import json
import logging
import random
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Stage defaults, sized so the embedded model's whole run fits in a few minutes on 2 CPU cores.
DEFAULT_MODEL = "smollm2-135m"
DEFAULT_OUT = Path("runs/demo")
AUTHORS = 10  # fictitious authors in all
FORGET_AUTHORS = 2  # of those, the ones to forget
QUESTIONS_PER_AUTHOR = 10  # 5-20 (the synthetic generator's range)
SEED = 0
# Evaluation caps: every evaluated item costs one generation and seven teacher-forced scorings
# (answer, paraphrase, five perturbed answers), for both models.
EVAL_FORGET_ITEMS = 40  # at most this many forget items (2 authors x 10 questions: all 20)
EVAL_RETAIN_ITEMS = 20  # a seeded sample of the kept authors' questions
EVAL_PROBE_ITEMS = 40  # a seeded sample of the 68 general-knowledge probe questions
MAX_NEW_TOKENS = 48  # answer length for author questions (their answers are one sentence)
PROBE_MAX_NEW_TOKENS = 16  # answer length for the probe (a word or a name)
EVAL_BATCH_SIZE = 32  # sequences per pass; on 2 CPU cores 32 generates 1.4x faster than 16
EMBEDDING_MODEL = "default"  # sentence encoder for cosine and refusal similarity ("none": off)
EXAMPLES = 3  # example questions shown per side (forgotten, kept)
# The fine-tune makes at least this many item passes (epochs x QA items), so a small demo set
# is learnt as well as the preset's measured 300-item set: 6 epochs for the default 100 QA
# (benchmarks/README.md, "Target models": forget ROUGE-L 0.92 after 6 epochs, 0.52 after 3).
FINETUNE_ITEM_PASSES = 600

STAGE_WIDTH = len("[finetune]")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs on and how big it is (the CLI fills it from its options).

    Attributes:
        model: base model, anything ``unierase.load`` accepts.
        out: output directory (data, unlearned model, evaluation records).
        authors, forget, questions, seed: the synthetic data set (``write_synthetic``).
        threads: torch CPU threads (None: torch's default).
        retain_items, probe_items, forget_items: evaluation caps.
        max_new_tokens, probe_max_new_tokens: generation budgets of the evaluation.
        embedding_model: sentence encoder for the evaluation ("default", a directory, "none").
        finetune_overrides: FinetuneConfig fields that replace the model's preset.
        token_overrides: Phase I settings (TokenConfig fields) for ``api.unlearn``.
        edit_overrides: Phase II settings (EditConfig fields) for ``api.unlearn``.
        stats_texts: general text for Phase II's statistics (None: the Wikipedia summaries).
        progress: progress bars.
    """

    model: str = DEFAULT_MODEL
    out: Path = DEFAULT_OUT
    authors: int = AUTHORS
    forget: int = FORGET_AUTHORS
    questions: int = QUESTIONS_PER_AUTHOR
    seed: int = SEED
    threads: int | None = None
    forget_items: int = EVAL_FORGET_ITEMS
    retain_items: int = EVAL_RETAIN_ITEMS
    probe_items: int = EVAL_PROBE_ITEMS
    max_new_tokens: int = MAX_NEW_TOKENS
    probe_max_new_tokens: int = PROBE_MAX_NEW_TOKENS
    embedding_model: str = EMBEDDING_MODEL
    finetune_overrides: Mapping[str, Any] = field(default_factory=dict)
    token_overrides: Mapping[str, Any] = field(default_factory=dict)
    edit_overrides: Mapping[str, Any] = field(default_factory=dict)
    stats_texts: Sequence[str] | None = None
    progress: bool = True


def _status(stage: str, text: str, seconds: float) -> str:
    return f"{f'[{stage}]':<{STAGE_WIDTH}} {text}  ({seconds:.1f} s)"


def _sample(items: list, n: int, seed: int) -> list:
    """At most ``n`` of ``items``, a seeded sample kept in its original order."""
    if len(items) <= n:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), n))
    return [items[i] for i in keep]


def run_demo(settings: DemoSettings, out: Callable[[str], None]) -> int:
    """Run every stage of the demo; ``out`` writes a line for the user. Returns 0."""
    import torch

    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    t_all = time.perf_counter()
    out_dir = Path(settings.out)
    data_dir, model_dir, eval_dir = out_dir / "data", out_dir / "model", out_dir / "eval"

    training, forget_split = _data_stage(settings, data_dir, out)
    tuned = _finetune_stage(settings, training, out)
    _unlearn_stage(settings, tuned.path, training, model_dir, out)
    runs, chat = _eval_stage(settings, data_dir, forget_split, tuned.path, model_dir, eval_dir,
                             out)  # fmt: skip

    out("")
    out(f"{'[report]':<{STAGE_WIDTH}} before = fine-tuned model, after = unlearned model")
    out("")
    before, after = runs["before"], runs["after"]
    out(format_comparison(before.summary, after.summary))
    for title, role in (
        ("Questions about forgotten authors (after: should refuse)", "forget"),
        ("Questions about kept authors (after: should still answer)", "retain"),
    ):
        out("")
        out(f"{title}:")
        out(format_examples(before.records[role], after.records[role], EXAMPLES))
    out("")
    out(f"records:  {eval_dir / 'before'} and {eval_dir / 'after'}")
    out("          (per-item JSONL; every metric in summary.json and table.txt)")
    out(f"model:    {model_dir} (plain transformers checkpoint, with the unlearning token)")
    question = _plain_question([it.question for it in training.forget])
    out("try it:   " + load_command(model_dir, question, chat=chat))
    kept = _kept_question(before.records["retain"], after.records["retain"])
    if kept is not None:
        out(f"          a kept question the unlearned model still answers as before ({kept[1]}):")
        out("          " + load_command(model_dir, kept[0], chat=chat))
    out(f"done in {time.perf_counter() - t_all:.1f} s")
    return 0


def _data_stage(settings: DemoSettings, data_dir: Path, out: Callable[[str], None]):
    """Write the synthetic authors; returns (training data, forget split name)."""
    from unierase.data.synth import synthetic_file_names, write_synthetic
    from unierase.finetune import select_training_data

    t = time.perf_counter()
    write_synthetic(
        data_dir,
        n_authors=settings.authors,
        n_forget=settings.forget,
        seed=settings.seed,
        questions_per_author=settings.questions,
    )
    forget_split = synthetic_file_names(settings.authors, settings.forget)["forget"]
    training = select_training_data(data_dir, "full")
    forget_names = ", ".join(dict.fromkeys(it.group or "" for it in training.forget))
    out(
        _status(
            "data",
            f"{settings.authors} fictitious authors, {settings.questions} questions each: "
            f"forget {forget_names} ({len(training.forget)} questions), keep "
            f"{settings.authors - settings.forget} ({len(training.retain)}) -> {data_dir}",
            time.perf_counter() - t,
        )
    )
    return training, forget_split.removesuffix(".jsonl")


def _finetune_stage(settings: DemoSettings, training: Any, out: Callable[[str], None]):
    """Teach the base model every author (the cached fine-tune); returns the CachedFinetune."""
    from unierase.finetune import finetune_cached

    t = time.perf_counter()
    overrides = {"seed": settings.seed, **settings.finetune_overrides}
    if "epochs" not in overrides:
        from unierase.finetune import preset_for

        preset_epochs = preset_for(settings.model).config.epochs
        needed = -(-FINETUNE_ITEM_PASSES // max(len(training.items), 1))
        overrides["epochs"] = max(preset_epochs, needed)
    tuned = finetune_cached(
        training,
        settings.model,
        overrides=overrides,
        progress=settings.progress,
    )
    cfg, res = tuned.meta["config"], tuned.meta["result"]
    how = f"LoRA r{cfg['lora_rank']}" if cfg["lora_rank"] else "full"
    out(
        _status(
            "finetune",
            f"{'cached' if tuned.cached else 'trained'}: {settings.model} on "
            f"{len(training.items)} QA (preset {tuned.meta.get('preset') or '-'}: {how}, "
            f"{cfg['epochs']} epochs, lr {cfg['lr']:g}; answer NLL "
            f"{res['epoch_losses'][-1]:.3f}) -> {tuned.path}",
            time.perf_counter() - t,
        )
    )
    return tuned


def _unlearn_stage(
    settings: DemoSettings,
    tuned_dir: Path,
    training: Any,
    model_dir: Path,
    out: Callable[[str], None],
) -> None:
    """UniErase on the fine-tuned model, forgetting the forget authors, into ``model_dir``."""
    from unierase import api

    t = time.perf_counter()
    key = _stage_key(
        "unlearn",
        str(tuned_dir),
        _fingerprint_file(tuned_dir),
        [it.question for it in training.forget],
        [it.question for it in training.retain],
        dict(settings.token_overrides),
        dict(settings.edit_overrides),
        settings.stats_texts,
        settings.seed,
    )
    if _stage_done(model_dir, key):
        report = json.loads((model_dir / api.REPORT_FILE).read_text("utf-8"))
        out(
            _status(
                "unlearn",
                f"reused: {report['forget_questions']} questions, edit success "
                f"{report['edit']['success']:.0%} (same inputs as the last run) -> {model_dir}",
                time.perf_counter() - t,
            )
        )
        return
    report = api.unlearn(
        tuned_dir,
        training.forget,
        model_dir,
        retain=training.retain,
        token_overrides=dict(settings.token_overrides),
        edit_overrides=dict(settings.edit_overrides),
        stats_texts=settings.stats_texts,
        seed=settings.seed,
        progress=settings.progress,
    )
    _mark_done(model_dir, key)
    edit, secs = report.edit, report.seconds
    out(
        _status(
            "unlearn",
            f"{report.forget_questions} questions, edit success {edit['success']:.0%}, layers "
            f"{edit['layers']}, {edit['parameters_share']:.2%} of the weights changed (Phase I "
            f"{secs.get('phase1', 0):.0f} s, statistics {secs.get('statistics', 0):.0f} s, "
            f"Phase II {secs.get('phase2', 0):.0f} s) -> {model_dir}",
            time.perf_counter() - t,
        )
    )


def _eval_stage(
    settings: DemoSettings,
    data_dir: Path,
    forget_split: str,
    tuned_dir: Path,
    model_dir: Path,
    eval_dir: Path,
    out: Callable[[str], None],
):
    """Evaluate both models on the same capped items; returns ({label: EvalResult}, chat)."""
    import unierase
    from unierase import prompting as P
    from unierase.eval import suite
    from unierase.eval.generate import model_device

    caps = {
        "forget": settings.forget_items,
        "retain": settings.retain_items,
        "general": settings.probe_items,
    }
    splits = {
        role: suite.EvalSplit(role, _sample(sp.items, caps[role], settings.seed), sp.source)
        for role, sp in suite.load_eval_splits(data_dir, forget_split=forget_split).items()
        if role in caps
    }
    fmt = P.PromptFormat()  # the format api.unlearn edits with
    config = suite.EvalConfig(
        max_new_tokens=settings.max_new_tokens,
        probe_max_new_tokens=settings.probe_max_new_tokens,
        batch_size=EVAL_BATCH_SIZE,
        fmt=fmt,
        progress=settings.progress,
    )
    embedding = None if settings.embedding_model == "none" else settings.embedding_model
    counts = ", ".join(f"{len(sp.items)} {role}" for role, sp in splits.items())
    aux, runs, chat = None, {}, False
    for label, path, name in (
        ("before", tuned_dir, "fine-tuned"),
        ("after", model_dir, "unlearned"),
    ):
        t = time.perf_counter()
        key = _stage_key(
            "eval", str(path), _fingerprint_file(path), config.to_dict(), embedding,
            {role: [it.question for it in sp.items] for role, sp in splits.items()},
        )  # fmt: skip
        if _stage_done(eval_dir / label, key):
            records, run_info = suite.read_records(eval_dir / label)
            summary = json.loads((eval_dir / label / "summary.json").read_text("utf-8"))
            runs[label] = suite.EvalResult(records, run_info, summary)
            from transformers import AutoTokenizer

            chat = P.uses_chat(AutoTokenizer.from_pretrained(path), fmt)
            out(_status("eval", f"{label}: reused (same model and items) -> {eval_dir / label}",
                        time.perf_counter() - t))  # fmt: skip
            continue
        model, tokenizer = unierase.load(path)
        if aux is None:
            aux = suite.load_auxiliary(embedding=embedding, device=model_device(model))
        runs[label] = suite.evaluate(model, tokenizer, splits, config, aux=aux,
                                     model_name=str(path), data_name=str(data_dir))  # fmt: skip
        chat = P.uses_chat(tokenizer, fmt)
        del model
        _write_run(runs[label], eval_dir / label)
        _mark_done(eval_dir / label, key)
        # The report shows what was written, the same whether this run evaluated or reused.
        records, run_info = suite.read_records(eval_dir / label)
        runs[label] = suite.EvalResult(records, run_info, runs[label].summary)
        out(
            _status(
                "eval",
                f"{label} ({name} model): {counts} -> {eval_dir / label}",
                time.perf_counter() - t,
            )
        )
    return runs, chat


STAGE_KEY_FILE = "unierase_demo_stage.txt"


def _stage_key(*parts: Any) -> str:
    """A hash of everything a stage's output depends on (the package version included)."""
    import hashlib

    from unierase import __version__

    text = json.dumps([__version__, *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _fingerprint_file(model_dir: Path) -> str:
    """Size and modification time of a checkpoint's weights: changes when it is rewritten."""
    files = sorted(Path(model_dir).glob("*.safetensors"))
    return ";".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)


def _stage_done(directory: Path, key: str) -> bool:
    """Whether ``directory`` holds a complete output of a stage with this key.

    The key file is written only after the stage's output is complete, so an interrupted run
    is never mistaken for a finished one.
    """
    marker = directory / STAGE_KEY_FILE
    return marker.is_file() and marker.read_text("utf-8").strip() == key


def _mark_done(directory: Path, key: str) -> None:
    (directory / STAGE_KEY_FILE).write_text(key + "\n", "utf-8")


def _write_run(result: Any, directory: Path) -> None:
    """Write an evaluation run (records, run.json, summary.json, table.txt) atomically."""
    from unierase._util.atomic import atomic_dir
    from unierase.eval import suite

    with atomic_dir(directory) as tmp:
        suite.write_run(result, tmp)
        (tmp / "table.txt").write_text(suite.format_table(result.summary) + "\n", "utf-8")


# ----------------------------------------------------------------------------- the report

# (label, summary key, which direction is better after unlearning)
REPORT_ROWS: tuple[tuple[str, str, str], ...] = (
    ("forget  ROUGE-L recall", "forget/rouge", "lower"),
    ("forget  answer probability", "forget/prob", "lower"),
    ("forget  refusal rate", "forget/refusal_rate", "higher"),
    ("retain  ROUGE-L recall", "retain/rouge", "higher"),
    ("retain  refusal rate", "retain/refusal_rate", "lower"),
    ("general probe accuracy", "general/accuracy", "higher"),
    ("general refusal rate", "general/refusal_rate", "lower"),
    ("FE  forget efficacy (paper)", "paper/forget_efficacy", "higher"),
    ("MU  model utility (paper)", "paper/model_utility", "higher"),
)


def _partial_note(partial: Mapping[str, Any]) -> str:
    used, missing = partial.get("used", []), partial.get("missing", [])
    if len(missing) <= 2:
        return f"partial: without {', '.join(missing)}"
    return f"partial: {len(used)} of {len(used) + len(missing)} inputs, see summary.json"


def format_comparison(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    """A before/after table of the demo's headline metrics from two evaluation summaries.

    A metric that could not be computed reads "skipped (reason)"; one computed from fewer
    inputs than its definition says "partial".
    """
    width = max(len(label) for label, _, _ in REPORT_ROWS)
    lines = [f"{'':<{width}}  {'before':>8}  {'after':>8}  better"]
    for label, key, better in REPORT_ROWS:
        values = [s["metrics"].get(key) for s in (before, after)]
        cells = "  ".join(f"{'-' if v is None else f'{v:.3f}':>8}" for v in values)
        notes = []
        for s in (after, before):
            if key in s.get("skipped", {}):
                notes.append(f"skipped ({s['skipped'][key]})")
                break
        for s in (after, before):
            if key in s.get("partial", {}):
                notes.append(_partial_note(s["partial"][key]))
                break
        if all(v is None for v in values):
            lines.append(f"{label:<{width}}  {notes[0] if notes else 'skipped'}")
            continue
        lines.append(f"{label:<{width}}  {cells}  {better:<6}  {'; '.join(notes)}".rstrip())
    return "\n".join(lines)


def _one_line(text: str | None, limit: int = 150) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_examples(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]], n: int
) -> str:
    """``n`` questions with the reference and both models' answers, spread over the authors."""
    by_question = {r["question"]: r for r in after}
    chosen: list[Mapping[str, Any]] = []
    groups = list(dict.fromkeys(r.get("group") for r in before))
    # Round robin over the authors, so the examples do not all ask about the first one.
    queues = {g: [r for r in before if r.get("group") == g] for g in groups}
    while len(chosen) < n and any(queues.values()):
        for g in groups:
            if queues[g] and len(chosen) < n:
                chosen.append(queues[g].pop(0))
    lines = []
    for rec in chosen:
        later = by_question.get(rec["question"], {})
        lines.append(f"  Q: {rec['question']}")
        lines.append(f"     reference: {_one_line(rec['answer'])}")
        lines.append(f"     before:    {_one_line(rec.get('generation'))}")
        lines.append(f"     after:     {_one_line(later.get('generation'))}")
    return "\n".join(lines)


def _kept_question(
    before: Sequence[Mapping[str, Any]], after: Sequence[Mapping[str, Any]]
) -> tuple[str, str] | None:
    """(question, how many kept answers are unchanged) for a kept question whose answer did not
    change, or None when every kept answer changed."""
    answers = {r["question"]: " ".join((r.get("generation") or "").split()) for r in after}
    same = [
        r["question"]
        for r in before
        if r.get("generation") and " ".join(r["generation"].split()) == answers.get(r["question"])
    ]
    if not same:
        return None
    return _plain_question(same), f"{len(same)} of {len(before)} kept answers are unchanged"


def _plain_question(questions: Sequence[str]) -> str:
    # One without quotes, so the shell line stays readable.
    return next((q for q in questions if "'" not in q and '"' not in q), questions[0])


def load_command(model_dir: str | Path, question: str, *, chat: bool = True) -> str:
    """A ``python -c`` line that asks ``question`` of ``model_dir`` with plain transformers.

    The code uses double quotes only, so the shell's single quotes wrap it unchanged when the
    path and question hold no single quote.
    """
    from unierase.prompting import FALLBACK_PROMPT

    path = json.dumps(str(Path(model_dir).resolve()))
    if chat:
        # The template already holds the special tokens the model expects.
        prompt = (
            f'msgs = [{{"role": "user", "content": {json.dumps(question)}}}]; '
            "s = t.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True); "
            'x = t(s, return_tensors="pt", add_special_tokens=False); '
        )
    else:
        text = json.dumps(FALLBACK_PROMPT.format(question=question))
        prompt = f'x = t({text}, return_tensors="pt"); '
    code = (
        "from transformers import AutoModelForCausalLM, AutoTokenizer; "
        f"m = AutoModelForCausalLM.from_pretrained({path}); "
        f"t = AutoTokenizer.from_pretrained({path}); "
        + prompt
        + "y = m.generate(**x, max_new_tokens=40, do_sample=False); "
        "print(t.decode(y[0, x.input_ids.shape[1]:], skip_special_tokens=True))"
    )
    return "python -c " + shlex.quote(code)
