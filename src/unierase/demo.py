"""``unierase demo``: the first thing a new user runs, end to end on the embedded default model.

The pipeline grows with the project; each stage prints one status line with its time.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)


def run_demo(args: argparse.Namespace, out: Callable[[str], None]) -> int:
    """Run the demo stages that exist; ``out`` writes a line for the user."""
    import unierase
    from unierase.data.loaders import load_tofu_split
    from unierase.data.probes import load_general_probe, probe_is_correct
    from unierase.data.synth import synthetic_file_names, write_synthetic
    from unierase.eval.generate import generate_answers

    t_all = time.perf_counter()
    out_dir = Path(args.out)
    data_dir = out_dir / "data"

    t = time.perf_counter()
    write_synthetic(data_dir, n_authors=args.authors, n_forget=args.forget, seed=args.seed)
    names = synthetic_file_names(args.authors, args.forget)
    forget_split = names["forget"].removesuffix(".jsonl")
    retain_split = names["retain"].removesuffix(".jsonl")
    forget = load_tofu_split(data_dir, forget_split)
    retain = load_tofu_split(data_dir, retain_split)
    out(
        f"[data]  {len(forget)} forget / {len(retain)} retain questions about "
        f"{args.authors} fictitious authors -> {data_dir}  ({time.perf_counter() - t:.1f} s)"
    )

    t = time.perf_counter()
    model, tokenizer = unierase.load(args.model)
    layout = unierase.find_layout(model)
    out(
        f"[model] {args.model}: {model.num_parameters() / 1e6:.1f}M parameters, "
        f"{layout.num_layers} layers, MLP down-projection {layout.mlp_size}->{layout.hidden_size}"
        f"  ({time.perf_counter() - t:.1f} s)"
    )

    t = time.perf_counter()
    probe = load_general_probe()
    answers = generate_answers(model, tokenizer, [p.question for p in probe], max_new_tokens=24)
    correct = sum(probe_is_correct(p, a) for p, a in zip(probe, answers, strict=True))
    out(
        f"[probe] general knowledge: {correct}/{len(probe)} correct "
        f"({time.perf_counter() - t:.1f} s)"
    )

    sample = [forget[0], retain[0]]
    answers = generate_answers(model, tokenizer, [s.question for s in sample], max_new_tokens=40)
    for item, answer in zip(sample, answers, strict=True):
        out(f"  Q: {item.question}\n     reference: {item.answer}\n     model:     {answer}")
    out(
        f"done in {time.perf_counter() - t_all:.1f} s (fine-tuning, unlearning and evaluation "
        f"stages are added to this demo as they land)"
    )
    return 0
