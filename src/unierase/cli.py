"""The ``unierase`` command: a thin layer over the library that parses arguments and prints.

Every subcommand has ``--help``. Library code logs; only this module writes to the screen.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path

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


# ----------------------------------------------------------------------------- data


def cmd_data_synth(args: argparse.Namespace) -> int:
    from unierase.data.synth import write_synthetic

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
    from unierase.demo import run_demo

    return run_demo(args, _out)


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

    p = add("demo", cmd_demo, "End-to-end demo on the embedded default model.")
    p.add_argument(
        "--model", default="smollm2-135m", help="any loadable model (default: %(default)s)"
    )
    p.add_argument(
        "--authors", type=int, default=20, help="synthetic authors (default: %(default)s)"
    )
    p.add_argument("--forget", type=int, default=2, help="authors to forget (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        help="output directory (default: %(default)s)",
    )

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
    p.add_argument("--out", type=Path, required=True, help="output directory")
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
    p.add_argument("--overwrite", action="store_true", help="replace an existing directory")
    return parser


def _version() -> str:
    from unierase import __version__

    return f"unierase {__version__}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``unierase`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    from unierase.data.schema import DataError
    from unierase.model import LayoutError, ModelNotFoundError

    try:
        return int(args.func(args) or 0)
    except (DataError, ModelNotFoundError, LayoutError, FileExistsError) as err:
        _out(f"error: {err}")
        return 2
    except KeyboardInterrupt:
        _out("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
