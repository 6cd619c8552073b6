"""Tune the fine-tuning baselines on our benchmark: a grid of settings, one bench run. By hand.

    python benchmarks/tune_baselines.py --out runs/tune-baselines \
        --keep benchmarks/results/tune_baselines                 # the full grid (hours on a CPU)
    python benchmarks/tune_baselines.py --from-run runs/tune-baselines   # redo the choice only
    python benchmarks/tune_baselines.py --quick --out /tmp/tune           # smoke run, tiny model
    python benchmarks/tune_baselines.py --from-run runs/tune-baselines \
        --also-run runs/bench-demo     # one grid from two runs on the same target and items

The grid: every baseline (``--methods``, default all ten; a method may fix other settings,
``RMU[retain_weight=10]``) x every learning rate (``--lrs``, default 1e-5, 3e-5, 1e-4) x every
epoch count (``--epochs``, default: the baseline's own). Each grid point is a bench variant
(``GA[lr=3e-05]``, ``unierase.bench_variants``), and all of them run in ONE ``unierase bench``
batch run (``--preset`` and the sizing options pass through), so the target and retain models
are fine-tuned (or taken from the cache) and evaluated once and every point is scored on the
same items. UniErase is not run.

Then the rule of ``unierase.bench_tuning`` picks one point per baseline: the highest FE among
the points whose MU >= 0.9 x the target model's MU; if none keeps that MU, the point with the
highest MU, marked "no point keeps MU". Written next to the run's ``results.json``:
``tuning.json`` (every point's FE, MU, forget ROUGE, probe accuracy and unlearning seconds, the
rule and the choice) and ``tuning.md`` (the same as tables). ``--keep DIR`` also copies
``results.json``, ``table.md`` and the two tuning files to DIR (the benchmark folder's record).
``--from-run DIR`` redoes the choice from a finished run, loading no model. ``--also-run DIR``
(repeatable) adds the baselines of other finished runs on the same target model and items (the
target's metrics must agree; ``unierase.bench_tuning.merge_runs``) to the grid, e.g. the plain
benchmark run at the defaults, so those points are not run twice. When a run holds UniErase,
the tuning files also give the two headline ratios against the chosen settings.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

DEFAULT_LRS = (1e-5, 3e-5, 1e-4)
DEFAULT_OUT = Path("runs/tune-baselines")
# --quick: the bench tests' tiny sizes, two baselines, one epoch.
QUICK = {
    "authors": 4, "forget": 1, "questions": 5, "forget_items": 5, "retain_items": 4,
    "probe_items": 3, "max_new_tokens": 4, "probe_max_new_tokens": 2, "embedding_model": "none",
    "finetune_overrides": {"epochs": 1, "lr": 1e-3},
}  # fmt: skip
QUICK_METHODS = ("GA", "GD")
# Bench options passed through as given (None: BenchSettings' default, or --quick's).
PASS_THROUGH = ("preset", "model", "tofu_dir", "data", "authors", "forget", "questions", "seed",
                "forget_items", "retain_items", "probe_items", "max_new_tokens",
                "embedding_model", "threads")  # fmt: skip


def grid(methods: list[str], lrs: list[float], epochs: list[int]) -> list[str]:
    """The grid's variant names: method x epochs (none given: the method's own) x lr. A method
    may carry fixed settings of its own (``RMU[retain_weight=10]``); the grid's are added."""
    from unierase.bench_variants import split_variant_text

    out = []
    for method in methods:
        head, fixed = split_variant_text(method)
        for n in epochs or [None]:
            for lr in lrs:
                parts = [fixed] if fixed else []
                parts += [f"lr={lr!r}"] + ([f"epochs={n}"] if n else [])
                out.append(f"{head}[{','.join(parts)}]")
    return out


def _read_results(run_dir: Path) -> dict[str, Any]:
    from unierase.bench import RESULTS_FILE

    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise SystemExit(f"error: {path} does not exist (not a finished `unierase bench` run)")
    return json.loads(path.read_text("utf-8"))


def write_tuning(
    run_dir: Path, keep: Path | None = None, also: list[Path] | None = None
) -> dict[str, Any]:
    """Read ``run_dir/results.json`` (with ``also``: merged with those runs' grid points), write
    ``tuning.json`` and ``tuning.md`` next to it (and, with ``keep``, copy them with
    ``results.json`` and ``table.md`` there); the summary."""
    from unierase.bench import RESULTS_FILE, TABLE_FILE
    from unierase.bench_tuning import (
        TUNING_JSON,
        TUNING_MD,
        format_tuning,
        merge_runs,
        tuning_summary,
    )

    results = _read_results(run_dir)
    if also:
        runs = [(str(run_dir), results), *((str(d), _read_results(d)) for d in also)]
        results = merge_runs(runs)
    summary = tuning_summary(results)
    (run_dir / TUNING_JSON).write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    table = format_tuning(summary)
    (run_dir / TUNING_MD).write_text(table + "\n", "utf-8")
    written = [run_dir / TUNING_JSON, run_dir / TUNING_MD]
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for name in (RESULTS_FILE, TABLE_FILE, TUNING_JSON, TUNING_MD):
            if (run_dir / name).is_file():
                shutil.copyfile(run_dir / name, keep / name)
                written.append(keep / name)
    print(table)
    print("wrote", ", ".join(map(str, written)))
    return summary


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _tiny_model(directory: Path) -> Path:
    """A tiny random Llama (``unierase.testing``) for ``--quick`` without ``--model``."""
    from unierase.testing import tiny_model, tiny_tokenizer

    if not (directory / "config.json").is_file():
        tok = tiny_tokenizer()
        tiny_model("llama", tok, init_std=0.2).save_pretrained(directory)
        tok.save_pretrained(directory)
    return directory


def run_grid(args: argparse.Namespace) -> Path:
    """The one bench run holding the whole grid; its output directory."""
    from unierase.bench import PRESETS, BenchSettings, resolve_methods, run_bench
    from unierase.bench_variants import split_method_list

    if args.preset is not None and args.preset not in PRESETS:
        raise SystemExit(f"error: --preset {args.preset}: choose from {', '.join(PRESETS)}")
    if args.methods:
        methods = args.methods
    elif args.quick:
        methods = ",".join(QUICK_METHODS)
    else:
        from unierase.baselines import METHODS

        methods = ",".join(METHODS)
    try:  # a bad grid fails here, before any model is made or loaded
        lrs = _floats(args.lrs) if args.lrs else list(DEFAULT_LRS)
        epochs = _ints(args.epochs) if args.epochs else ([1] if args.quick else [])
        names = list(resolve_methods(grid(split_method_list(methods), lrs, epochs)))
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    sizes: dict[str, Any] = dict(QUICK) if args.quick else {}
    given = {k: getattr(args, k) for k in PASS_THROUGH if getattr(args, k) is not None}
    if args.quick and args.model is None:
        given["model"] = str(_tiny_model(args.out / "tiny-model"))
    if args.no_retain_model:
        given["retain_model"] = False
    settings = BenchSettings(out=args.out, methods=tuple(names), progress=not args.no_progress,
                             **{**sizes, **given})  # fmt: skip
    print(f"{len(names)} grid points in one bench run: {', '.join(names)}", flush=True)
    run_bench(settings, lambda line: print(line, flush=True))
    return args.out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", help="comma-separated baselines (default: all; --quick: GA,GD)")
    ap.add_argument("--lrs", help="comma-separated learning rates (default: 1e-5,3e-5,1e-4)")
    ap.add_argument("--epochs", help="comma-separated epochs (default: the baseline's; --quick: 1)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the bench run's directory")
    ap.add_argument("--keep", type=Path, help="also copy the results and the tuning files here")
    ap.add_argument("--from-run", type=Path, metavar="DIR", help="redo the choice from a run")
    ap.add_argument("--also-run", type=Path, metavar="DIR", action="append",
                    help="add the baselines of another finished run on the same target and "
                    "items to the grid (repeatable)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="smoke run (tiny sizes and model)")
    bench = ap.add_argument_group("passed to the bench run (default: unierase bench's)")
    bench.add_argument("--preset", help="demo, tofu-mini or realworld")
    bench.add_argument("--model", help="base model, anything unierase.load accepts")
    bench.add_argument("--tofu-dir", type=Path)
    bench.add_argument("--data", type=Path, help="realworld: a people-questions JSONL file")
    for name in ("authors", "forget", "questions", "seed", "forget-items", "retain-items",
                 "probe-items", "max-new-tokens", "threads"):  # fmt: skip
        bench.add_argument(f"--{name}", type=int)
    bench.add_argument("--embedding-model", help="'default', a directory or 'none'")
    bench.add_argument("--no-retain-model", action="store_true", help="no forget quality")
    bench.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)
    run_dir = args.from_run if args.from_run is not None else run_grid(args)
    try:
        write_tuning(run_dir, args.keep, args.also_run)
    except ValueError as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
