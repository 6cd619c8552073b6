"""Benchmark: fine-tune a target model on a QA set and measure what it learnt and what it lost.

Measures, for one fine-tuning configuration (the preset for the model's size unless overridden):
wall and CPU time of the fine-tune, peak resident memory (``resource.getrusage`` maxrss), forget
and retain ROUGE-L recall of greedy answers before and after, and general-probe accuracy before
and after. Writes one JSON file (and per-item answers) to ``benchmarks/results/``.

    python benchmarks/finetune_target.py                       # synthetic 20 authors x 15 QA
    python benchmarks/finetune_target.py --data ../shared/data/tofu --authors 10 --forget-authors 2
    python benchmarks/finetune_target.py --set lr=3e-4 --set lora_rank=0 --name full-lr3e-4

The base model's scores are cached in ``benchmarks/results/finetune_base_<hash>.json`` (same
model, data and evaluation settings) so that a sweep evaluates the base model once.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    if text == "none":
        return None
    return text


def _words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.casefold()))


def fact_words(item) -> set[str] | None:
    """Words of the paraphrased answer that no perturbed answer has: the item's facts.

    Perturbed answers swap the facts of the paraphrase ("born in Cork" -> "born in Lima"), so
    what they never contain is what the model must know; ROUGE also rewards the template.
    """
    if not item.paraphrased_answer or not item.perturbed_answers:
        return None
    shared = set().union(*(_words(p) for p in item.perturbed_answers))
    return (_words(item.paraphrased_answer) - shared) or None


def evaluate(model, tokenizer, forget, retain, probe, fmt, max_new_tokens: int) -> dict:
    from unierase.data.probes import probe_is_correct
    from unierase.eval.generate import generate_answers
    from unierase.eval.metrics import rouge_l_recall

    out: dict = {}
    t0 = time.perf_counter()
    for name, items in (("forget", forget), ("retain", retain)):
        if not items:
            continue
        answers = generate_answers(
            model, tokenizer, [it.question for it in items], fmt=fmt, max_new_tokens=max_new_tokens
        )
        scores = [rouge_l_recall(a, it.answer) for a, it in zip(answers, items, strict=True)]
        out[f"{name}_rouge"] = statistics.mean(scores)
        facts = [fact_words(it) for it in items]
        recalls = [len(f & _words(a)) / len(f) for f, a in zip(facts, answers, strict=True) if f]
        out[f"{name}_fact_recall"] = statistics.mean(recalls) if recalls else None
        out[f"{name}_items"] = [
            {"question": it.question, "answer": it.answer, "generated": a, "rouge": s}
            for it, a, s in zip(items, answers, scores, strict=True)
        ]
    answers = generate_answers(
        model, tokenizer, [p.question for p in probe], fmt=fmt, max_new_tokens=24
    )
    correct = [probe_is_correct(p, a) for p, a in zip(probe, answers, strict=True)]
    out["probe_correct"] = sum(correct)
    out["probe_total"] = len(probe)
    out["probe_accuracy"] = sum(correct) / len(probe)
    out["probe_items"] = [
        {"question": p.question, "generated": a, "correct": c}
        for p, a, c in zip(probe, answers, correct, strict=True)
    ]
    out["eval_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m", help="base model (default: %(default)s)")
    ap.add_argument(
        "--data", type=Path, default=None, help="TOFU-layout directory (default: a synthetic set)"
    )
    ap.add_argument(
        "--synth-authors", type=int, default=20, help="synthetic authors (default: %(default)s)"
    )
    ap.add_argument(
        "--synth-forget",
        type=int,
        default=2,
        help="synthetic forget authors (default: %(default)s)",
    )
    ap.add_argument(
        "--synth-questions",
        type=int,
        default=15,
        help="QA per synthetic author (default: %(default)s)",
    )
    ap.add_argument(
        "--authors", type=int, default=None, help="subset: authors in all (default: all)"
    )
    ap.add_argument(
        "--forget-authors",
        type=int,
        default=None,
        help="subset: forget authors (default: 2 with --authors)",
    )
    ap.add_argument(
        "--questions-per-author",
        type=int,
        default=None,
        help="first n QA per author (default: all)",
    )
    ap.add_argument(
        "--split", default="full", choices=("full", "retain"), help="(default: %(default)s)"
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a FinetuneConfig field of the preset",
    )
    ap.add_argument(
        "--retain-eval",
        type=int,
        default=40,
        help="retain items evaluated, evenly spaced (default: %(default)s)",
    )
    ap.add_argument(
        "--max-new-tokens",
        type=int,
        default=96,
        help="for forget/retain answers (default: %(default)s)",
    )
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--name", default=None, help="result name (default: from the settings)")
    ap.add_argument("--no-base-eval", action="store_true", help="skip the base model's scores")
    ap.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="copy the fine-tuned checkpoint (and the data it learnt) here, for later benchmarks",
    )
    ap.add_argument(
        "--curve",
        action="store_true",
        help="also score forget ROUGE and the probe after every epoch (slower)",
    )
    args = ap.parse_args()

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("transformers").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    from unierase.data.probes import load_general_probe
    from unierase.data.synth import write_synthetic
    from unierase.finetune import (
        count_parameters,
        data_hash,
        finetune,
        preset_for,
        save_finetuned,
        select_training_data,
    )
    from unierase.model import load

    tmp = Path(tempfile.mkdtemp(prefix="ft-bench-"))
    if args.data is None:
        data_dir = tmp / "synth"
        write_synthetic(data_dir, args.synth_authors, args.synth_forget, 0, args.synth_questions)
        data_label = f"synthetic {args.synth_authors} authors x {args.synth_questions} QA (seed 0)"
    else:
        data_dir = args.data
        data_label = str(args.data)
    data = select_training_data(
        data_dir,
        args.split,
        authors=args.authors,
        forget_authors=args.forget_authors,
        questions_per_author=args.questions_per_author,
    )
    step = max(1, len(data.retain) // max(1, args.retain_eval))
    retain_eval = data.retain[::step][: args.retain_eval]
    probe = load_general_probe()

    model, tokenizer = load(args.model)
    preset = preset_for(model)
    overrides = {}
    for text in args.set:
        key, _, value = text.partition("=")
        overrides[key] = parse_value(value)
    if "lora_targets" in overrides and isinstance(overrides["lora_targets"], str):
        overrides["lora_targets"] = tuple(overrides["lora_targets"].split(","))
    config = dataclasses.replace(preset.config, **overrides)
    fmt = config.prompt_format
    n_params = count_parameters(model)

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu0, wall0 = time.process_time(), time.perf_counter()
    curve = []

    def score_epoch(epoch, current):
        scores = evaluate(current, tokenizer, data.forget, [], probe, fmt, args.max_new_tokens)
        point = {"epoch": epoch, "forget_rouge": scores["forget_rouge"]}
        point["forget_fact_recall"] = scores["forget_fact_recall"]
        curve.append({**point, "probe": scores["probe_correct"]})
        logging.info("after epoch %d: %s", epoch, curve[-1])

    tuned, result = finetune(
        model,
        tokenizer,
        data.items,
        config,
        progress=sys.stderr.isatty(),
        on_epoch=score_epoch if args.curve else None,
    )
    save_finetuned(tuned, tokenizer, tmp / "checkpoint", {"benchmark": True})
    wall = time.perf_counter() - wall0
    cpu = time.process_time() - cpu0
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    after = evaluate(tuned, tokenizer, data.forget, retain_eval, probe, fmt, args.max_new_tokens)
    del tuned, model

    before = None
    if not args.no_base_eval:
        key = hashlib.sha256(
            json.dumps(
                [
                    args.model,
                    data_hash(data.forget),
                    data_hash(retain_eval),
                    fmt.system_prompt,
                    args.max_new_tokens,
                    len(probe),
                ]
            ).encode()
        ).hexdigest()[:12]
        base_file = RESULTS / f"finetune_base_{key}.json"
        if base_file.is_file():
            before = json.loads(base_file.read_text())
        else:
            base, _ = load(args.model)
            before = evaluate(
                base, tokenizer, data.forget, retain_eval, probe, fmt, args.max_new_tokens
            )
            RESULTS.mkdir(parents=True, exist_ok=True)
            base_file.write_text(json.dumps(before, indent=1) + "\n")

    name = args.name or (
        f"finetune_{'tofu' if args.data else 'synth'}_{args.split}_"
        + ("lora" if config.lora_rank else "full")
        + f"_e{config.epochs}_lr{config.lr:g}"
    )
    record = {
        "name": name,
        "model": args.model,
        "parameters": n_params,
        "preset": preset.name,
        "overrides": overrides,
        "config": config.to_dict(),
        "data": data_label,
        "selection": data.description,
        "n_train": len(data.items),
        "threads": args.threads,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs)",
        "load_average_1min_at_end": os.getloadavg()[0],
        "finetune_wall_s": round(wall, 1),
        "finetune_cpu_s": round(cpu, 1),
        "train_loop_s": round(result.seconds, 1),
        "train_loop_cpu_s": round(result.cpu_seconds, 1),
        "peak_rss_mib": round(rss_peak / 1024, 1),
        "rss_before_finetune_mib": round(rss_before / 1024, 1),
        "epoch_losses": [round(x, 4) for x in result.epoch_losses],
        "curve": curve,
        "trainable_parameters": result.trainable_parameters,
        "after": {k: v for k, v in after.items() if not k.endswith("_items")},
        "before": None
        if before is None
        else {k: v for k, v in before.items() if not k.endswith("_items")},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    (RESULTS / f"{name}.items.json").write_text(
        json.dumps({k: v for k, v in after.items() if k.endswith("_items")}, indent=1) + "\n"
    )
    print(
        json.dumps(
            {
                k: record[k]
                for k in (
                    "name",
                    "finetune_wall_s",
                    "finetune_cpu_s",
                    "peak_rss_mib",
                    "epoch_losses",
                    "after",
                    "before",
                )
            },
            indent=1,
        )
    )
    import shutil

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
        shutil.copytree(tmp / "checkpoint", args.keep / "model", dirs_exist_ok=True)
        if args.data is None:
            shutil.copytree(data_dir, args.keep / "data", dirs_exist_ok=True)
        logging.info("kept the checkpoint in %s", args.keep)
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
