"""Generation throughput: batched (left padding, KV cache) vs one prompt at a time.

Greedy answers to 64 prompts with the embedded default model (SmolLM2-135M-Instruct, fp32),
with ``batch_size`` prompts per forward pass and one at a time; the two alternate group by
group so that both see the same background load on a shared machine (``--whole-batch`` also
times all prompts in one batch). Prints tokens/s for both, the speed-up, and how many answers
are token-identical between the two, and writes the numbers to
``benchmarks/results/generation_throughput.json``.

    python benchmarks/generation_throughput.py [--prompts 64] [--max-new-tokens 64]
        [--batch-size 16] [--threads 2] [--whole-batch] [--model smollm2-135m]

The prompts are the first questions of the TOFU retain split (``../shared/data/tofu``) when it
is there, topped up with the package's general-probe questions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

import unierase
from unierase.data.loaders import load_tofu_split
from unierase.data.probes import load_general_probe
from unierase.eval.generate import generate

ROOT = Path(__file__).resolve().parents[1]
TOFU = ROOT.parent / "shared" / "data" / "tofu"
RESULTS = ROOT / "benchmarks" / "results" / "generation_throughput.json"


def prompts(n: int) -> list[str]:
    """``n`` questions: TOFU retain questions (when present), then general-probe questions."""
    questions: list[str] = []
    if (TOFU / "retain_perturbed.jsonl").is_file():
        questions += [it.question for it in load_tofu_split(TOFU, "retain_perturbed")][: n // 2]
    questions += [it.question for it in load_general_probe()]
    if len(questions) < n:
        raise SystemExit(f"only {len(questions)} questions available, asked for {n}")
    return questions[:n]


def _run(model, tokenizer, questions, max_new_tokens, batch_size):
    start = time.perf_counter()
    gens = generate(
        model, tokenizer, questions, max_new_tokens=max_new_tokens, batch_size=batch_size
    )
    return gens, time.perf_counter() - start


def _figures(batch_size: int, seconds: float, gens, prompts: int) -> dict:
    tokens = sum(g.num_tokens for g in gens)
    return {
        "batch_size": batch_size,
        "seconds": round(seconds, 2),
        "generated_tokens": tokens,
        "tokens_per_s": round(tokens / seconds, 1),
        "items_per_s": round(prompts / seconds, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="model (default: %(default)s)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts (default: %(default)s)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=64, help="tokens per answer (default: %(default)s)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="batched run's batch (default: %(default)s)"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument(
        "--whole-batch",
        action="store_true",
        help="also time all prompts in one batch (default: no)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model, tokenizer = unierase.load(args.model)
    questions = prompts(args.prompts)
    generate(model, tokenizer, questions[:2], max_new_tokens=4)  # warm-up

    # Batched and one-at-a-time runs alternate group by group (a group = one batch), so both
    # see the same background load on a shared machine.
    batched_gens, single_gens = [], []
    batched_s = single_s = 0.0
    whole = None
    groups = range(0, len(questions), args.batch_size)
    for n, g in enumerate(groups):
        group = questions[g : g + args.batch_size]
        gens, seconds = _run(model, tokenizer, group, args.max_new_tokens, args.batch_size)
        batched_gens += gens
        batched_s += seconds
        gens, seconds = _run(model, tokenizer, group, args.max_new_tokens, 1)
        single_gens += gens
        single_s += seconds
        if args.whole_batch and n == len(groups) // 2 - 1:
            gens, seconds = _run(model, tokenizer, questions, args.max_new_tokens, len(questions))
            whole = _figures(len(questions), seconds, gens, len(questions))
    batched = _figures(args.batch_size, batched_s, batched_gens, len(questions))
    single = _figures(1, single_s, single_gens, len(questions))
    same = sum(a.token_ids == b.token_ids for a, b in zip(batched_gens, single_gens, strict=True))
    speedup = batched["tokens_per_s"] / single["tokens_per_s"]
    result = {
        "benchmark": "generation_throughput",
        "model": args.model,
        "dtype": "float32",
        "device": str(next(model.parameters()).device),
        "torch_threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "note": "batched and one-at-a-time runs alternate per group of prompts",
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "cpus": os.cpu_count(),
        "prompts": len(questions),
        "max_new_tokens": args.max_new_tokens,
        "batched": batched,
        "one_at_a_time": single,
        "speedup_tokens_per_s": round(speedup, 2),
        "identical_answers": f"{same}/{len(questions)}",
        "date": time.strftime("%Y-%m-%d"),
    }
    if whole is not None:
        result["whole_batch"] = whole
        result["whole_batch_speedup_tokens_per_s"] = round(
            whole["tokens_per_s"] / single["tokens_per_s"], 2
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"batched (batch {args.batch_size}): {batched['tokens_per_s']} tokens/s "
        f"({batched['generated_tokens']} tokens in {batched['seconds']} s)"
    )
    if whole is not None:
        print(
            f"one batch of {len(questions)}: {whole['tokens_per_s']} tokens/s "
            f"({whole['generated_tokens']} tokens in {whole['seconds']} s)"
        )
    print(
        f"one at a time:       {single['tokens_per_s']} tokens/s "
        f"({single['generated_tokens']} tokens in {single['seconds']} s)"
    )
    print(f"speed-up: {speedup:.1f}x; identical answers: {same}/{len(questions)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
