"""What UniErase costs: time, memory and how they grow. Run by hand, not by CI.

    python benchmarks/cost.py --threads 2 --out benchmarks/results/cost.json
    python benchmarks/cost.py --quick --model /tmp/tiny --out /tmp/cost.json   # smoke run

Measured here, on ``--model`` (default SmolLM2-135M-Instruct, fp32, CPU unless a GPU is found):

- ``phase1``: Phase I (the token, the model's preset) time and peak memory vs forget-set size;
- ``stats``: second-moment collection throughput (tokens/s) next to a plain forward pass over the
  same sequences with the same batches, stopped after the same block as the statistics' pass
  (ratio = tracing overhead; aim >= 0.8), the whole model's forward pass beside them, and the
  eigendecomposition / solve times of the null-space projector at the model's MLP width;
- ``phase2``: Phase II time per edit request vs number of requests, batch (one joint solve of
  all requests) and sequential (one request per solve, C_prev accumulated), statistics cached;
- ``estimate``: the paper's scale (Llama-3.1-8B, 5 down-projections of 4096 x 14336), derived
  from the measured scaling.

Read from finished ``unierase bench`` runs (the same run measured every method):

- ``--bench-run DIR`` (``--preset demo``): UniErase's time (Phase I + II, statistics excluded)
  against the fastest baseline reaching FE >= 0.5, as a ratio (aim <= 0.5), and the evaluation
  time of the target model with its generation / teacher-forced scoring breakdown;
- ``--sequential-run DIR`` (``--mode sequential``): FE of every earlier round and MU after each
  round, MU after the last round relative to the start (aim >= 0.97), plotted.

Writes ``--out`` (JSON), the same name with ``.md`` (tables) and ``.png`` (plots), and with
``--profile`` a cProfile listing (``.profile.txt``) of the measured sections.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import logging
import math
import os
import pstats
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

import unierase
from unierase.bench import PeakMemory
from unierase.data.loaders import load_tofu_split
from unierase.data.synth import synthetic_file_names, write_synthetic
from unierase.edit import phase2
from unierase.edit.config import preset_for
from unierase.edit.stats import collect_second_moments, corpus_sequences
from unierase.edit.trace import forward_until

log = logging.getLogger("cost")

FULL = {"phase1": (10, 40, 160), "phase2": (1, 10, 40, 160), "stats_texts": 600}
QUICK = {"phase1": (2, 4), "phase2": (1, 2, 4), "stats_texts": 24}
QUESTIONS_PER_AUTHOR = 10
FE_BAR = 0.5
# Llama-3.1-8B: the paper's edited matrices and its parameter count.
PAPER = {"d_model": 4096, "d_mlp": 14336, "layers": 5, "parameters": 8.03e9}


def _sig(x: float) -> float:
    """Four significant digits (timings that span 1e-4 s to hours)."""
    return float(f"{x:.4g}")


def _mib(n: int | None) -> float | None:
    return None if n is None else round(n / 2**20, 1)


# ----------------------------------------------------------------------------- data


def forget_pool(n: int, workdir: Path) -> tuple[list, list]:
    """(forget items, retain items) of a synthetic set with at least ``n`` forget questions."""
    n_forget = max(1, math.ceil(n / QUESTIONS_PER_AUTHOR))
    authors = n_forget + 4
    data_dir = workdir / f"synth-{authors}-{n_forget}"
    if not data_dir.is_dir():
        write_synthetic(data_dir, authors, n_forget, seed=0,
                        questions_per_author=QUESTIONS_PER_AUTHOR)  # fmt: skip
    names = synthetic_file_names(authors, n_forget)
    forget = load_tofu_split(data_dir, names["forget"].removesuffix(".jsonl"))
    retain = load_tofu_split(data_dir, names["retain"].removesuffix(".jsonl"))
    return forget, retain


def general_texts(n: int) -> list[str]:
    """Wikipedia summaries (the statistics' corpus), or the QA probe's text when absent."""
    from unierase.data.schema import DataError

    try:
        from unierase.data.corpus import wikipedia_summaries

        return wikipedia_summaries(limit=n)
    except DataError as err:
        log.warning("no Wikipedia summaries (%s); using the general probe's text", err)
        from unierase.data.probes import load_general_probe

        probe = load_general_probe()
        return [f"{p.question} {p.answer}." for p in probe][:n]


# ----------------------------------------------------------------------------- phase I


def train_token(model_name: str, forget: list, retain: list, layers: tuple[int, ...]):
    """Load ``model_name`` and train the token on ``forget``: (model, tok, token id, seconds,
    peak memory record)."""
    from unierase.token import token_config_for, train_unlearning_token

    model, tok = unierase.load(model_name)
    cfg = token_config_for(model).replace(noise_layers=layers, seed=0)
    t = time.perf_counter()
    with PeakMemory() as mem:
        report = train_unlearning_token(
            model, tok, forget, cfg, breadth=[r.question for r in retain], progress=False
        )
    return model, tok, report.token_id, time.perf_counter() - t, mem


def measure_phase1(args, sizes, workdir, layers, keep: int | None = None):
    """Phase I rows per size, and the trained (model, tokenizer, token id, seconds) of size
    ``keep`` (Phase II then edits that model instead of training the same token again)."""
    rows = []
    kept = None
    # The kept model stays in memory: train it last, so it does not add to the others' peaks.
    for n in sorted(sizes, key=lambda n: (n == keep, n)):
        forget, retain = forget_pool(n, workdir)
        model, tok, token_id, seconds, mem = train_token(args.model, forget[:n], retain, layers)
        if n == keep:
            kept = (model, tok, token_id, seconds)
        del model
        rows.append({"questions": n, "seconds": round(seconds, 2),
                     "seconds_per_question": round(seconds / n, 3),
                     "peak_memory_mib": _mib(mem.peak_bytes), "memory_kind": mem.kind})  # fmt: skip
        log.info("phase1: %d questions in %.1f s", n, seconds)
    return sorted(rows, key=lambda r: r["questions"]), kept


# ----------------------------------------------------------------------------- statistics


@torch.no_grad()
def plain_forward_seconds(
    model, sequences, batch_size: int, pad_id: int, stop: str | None = None
) -> tuple[float, int]:
    """(seconds, tokens) of a plain forward pass over ``sequences``, batched exactly as
    ``collect_second_moments`` batches them (sorted by length, right padding, no cache); with
    ``stop`` (a block name) the pass ends after that block, as the statistics' pass does."""
    device = model.get_input_embeddings().weight.device
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    tokens = 0
    t = time.perf_counter()
    for start in range(0, len(order), batch_size):
        seqs = [sequences[i] for i in order[start : start + batch_size]]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for row, s in enumerate(seqs):
            ids[row, : len(s)] = torch.tensor(s)
            mask[row, : len(s)] = 1
        inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
        forward_until(model, stop, **inputs) if stop else model(**inputs)
        tokens += int(mask.sum())
    return time.perf_counter() - t, tokens


def measure_stats(args, n_texts: int, layers) -> dict[str, Any]:
    from unierase.edit.projector import null_space_projector

    model, tok = unierase.load(args.model)
    layout = unierase.find_layout(model)
    seqs = corpus_sequences(tok, general_texts(n_texts), max_length=128)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    # The statistics' pass stops after the last edited block: the plain pass it is compared with
    # (the tracing overhead) stops there too; the whole model's pass is reported beside it.
    stop = f"{layout.layers_name}.{max(layers)}"
    plain_forward_seconds(model, seqs[:4], 4, pad)  # warm-up
    # plain, traced, plain: both see the same background load on a shared machine
    f1, tokens = plain_forward_seconds(model, seqs, args.batch_size, pad, stop)
    t = time.perf_counter()
    stats = collect_second_moments(model, layout, layers, seqs, batch_size=args.batch_size,
                                   pad_id=pad, progress=False)  # fmt: skip
    traced = time.perf_counter() - t
    f2, _ = plain_forward_seconds(model, seqs, args.batch_size, pad, stop)
    forward = (f1 + f2) / 2
    whole = plain_forward_seconds(model, seqs, args.batch_size, pad)[0] if args.whole else None
    moment = stats[layers[0]].moment
    t = time.perf_counter()
    proj = null_space_projector(moment, 0.02)
    eig_seconds = time.perf_counter() - t
    d = moment.shape[0]
    a = moment + torch.eye(d, dtype=moment.dtype)
    b = torch.randn(d, 8, dtype=moment.dtype, generator=torch.Generator().manual_seed(0))
    t = time.perf_counter()
    torch.linalg.solve(a, b)
    solve_seconds = time.perf_counter() - t
    return {
        "texts": len(seqs),
        "tokens": tokens,
        "layers": list(layers),
        "forward_tokens_per_s": round(tokens / forward, 1),
        "forward_stops_after": stop,
        "whole_model_forward_tokens_per_s": round(tokens / whole, 1) if whole else None,
        "statistics_tokens_per_s": round(tokens / traced, 1),
        "throughput_ratio": round(forward / traced, 3),
        "forward_seconds": [round(f1, 2), round(f2, 2)],
        "whole_model_forward_seconds": round(whole, 2) if whole else None,
        "statistics_seconds": round(traced, 2),
        "d_mlp": d,
        "d_model": layout.hidden_size,
        "parameters": model.num_parameters(),
        "eigh_seconds_per_layer": _sig(eig_seconds),
        "null_space_rank": proj.rank,
        "solve_seconds_per_layer": _sig(solve_seconds),
    }


# ----------------------------------------------------------------------------- phase II


def measure_phase2(args, sizes, workdir, layers, trained=None) -> dict[str, Any]:
    """Phase II vs number of requests (one question each), batch and sequential, from the same
    token-trained model (``trained``: Phase I's model for ``max(sizes)`` questions, else trained
    here); the down-projections are restored before every run."""
    forget, retain = forget_pool(max(sizes), workdir)
    forget = forget[: max(sizes)]
    if trained is None:
        model, tok, token_id, t_token, _mem = train_token(args.model, forget, retain, layers)
    else:
        model, tok, token_id, t_token = trained
    layout = unierase.find_layout(model)
    base = replace(preset_for(layout.hidden_size), layers=layers, granularity="question",
                   repair_rounds=args.repair_rounds, stats_texts=args.stats_texts)  # fmt: skip
    t = time.perf_counter()
    phase2.new_state(model, tok, layout, token_id, base, progress=False)  # fills the cache
    stats_seconds = time.perf_counter() - t
    saved = {i: layout.down_proj_weight(model, i).detach().clone() for i in layers}
    rows = []
    for mode in ("batch", "sequential"):
        for n in sizes:
            with torch.no_grad():
                for i, w in saved.items():
                    layout.down_proj_weight(model, i).copy_(w)
            config = replace(base, chunk_size=n if mode == "batch" else 1)
            t = time.perf_counter()
            state = phase2.new_state(model, tok, layout, token_id, config, progress=False)
            state_seconds = time.perf_counter() - t
            with PeakMemory() as mem:
                report = phase2.unlearning_edit(model, tok, layout, forget[:n], state, config,
                                                progress=False)  # fmt: skip
            total = report.seconds.get("total", sum(report.seconds.values()))
            rows.append({
                "mode": mode, "requests": n, "solved": report.requests,
                "seconds": round(total, 2), "seconds_per_request": round(total / n, 3),
                "breakdown": {k: round(v, 2) for k, v in report.seconds.items()},
                "projector_seconds": round(state_seconds, 2), "success": report.success,
                "peak_memory_mib": _mib(mem.peak_bytes),
            })  # fmt: skip
            log.info("phase2 %s: %d requests in %.1f s (success %.2f)", mode, n, total,
                     report.success)  # fmt: skip
    growth = {m: growth_exponent(rows, m) for m in ("batch", "sequential")}
    return {"token_seconds": round(t_token, 2), "statistics_seconds": round(stats_seconds, 2),
            "rows": rows, "growth": growth}  # fmt: skip


def growth_exponent(rows, mode: str) -> float | None:
    """Slope of log(time) vs log(requests) between the smallest and largest run (1 = linear)."""
    pts = [(r["requests"], r["seconds"]) for r in rows if r["mode"] == mode and r["seconds"] > 0]
    if len(pts) < 2 or pts[0][0] == pts[-1][0]:
        return None
    (n0, t0), (n1, t1) = pts[0], pts[-1]
    return round(math.log(t1 / t0) / math.log(n1 / n0), 2)


# ----------------------------------------------------------------------------- from bench runs


def from_bench_run(run_dir: Path) -> dict[str, Any]:
    """UniErase vs the fastest baseline with FE >= 0.5, and the target's evaluation time."""
    results = json.loads((run_dir / "results.json").read_text("utf-8"))
    fe_key = "paper/forget_efficacy"
    methods = results["methods"]
    out: dict[str, Any] = {"run": str(run_dir)}
    ours = methods.get("UniErase")
    if ours is not None:
        sec = ours.get("report", {}).get("seconds", {})
        out["unierase_seconds"] = round(sec.get("phase1", 0.0) + sec.get("phase2", 0.0), 2)
        out["unierase_seconds_incl_statistics"] = round(ours["seconds"], 2)
        out["unierase_fe"] = ours["metrics"].get(fe_key)
    reaching = {n: m for n, m in methods.items()
                if n != "UniErase" and (m["metrics"].get(fe_key) or 0) >= FE_BAR}  # fmt: skip
    out["baselines_reaching_fe"] = {n: round(m["seconds"], 1) for n, m in reaching.items()}
    if reaching and ours is not None:
        fastest = min(reaching, key=lambda n: reaching[n]["seconds"])
        out["fastest_baseline"] = fastest
        out["fastest_baseline_seconds"] = round(reaching[fastest]["seconds"], 2)
        out["time_ratio"] = round(out["unierase_seconds"] / reaching[fastest]["seconds"], 3)
    run_json = run_dir / "target" / "eval" / "run.json"
    if run_json.is_file():
        timing = json.loads(run_json.read_text("utf-8")).get("timing", {})
        out["evaluation"] = {
            role: {k: t.get(k) for k in ("items", "seconds", "generation_seconds",
                                         "scoring_seconds", "generation_tokens_per_s")}
            for role, t in timing.items()
        }  # fmt: skip
    return out


def from_sequential_run(run_dir: Path) -> dict[str, Any]:
    """UniErase's FE of every earlier round and MU after each round of a sequential bench run."""
    results = json.loads((run_dir / "results.json").read_text("utf-8"))
    start = results["target"].get("mu")
    out: dict[str, Any] = {"run": str(run_dir), "start_mu": start, "methods": {}}
    for name, m in results["methods"].items():
        rounds = m["rounds"]
        last = rounds[-1].get("mu") if rounds else None
        out["methods"][name] = {
            "mu": [r.get("mu") for r in rounds],
            "fe_by_round_after_last": rounds[-1].get("fe_by_round") if rounds else None,
            # after round i (row i), the FE of round j's questions (column j <= i)
            "fe_by_round": [r.get("fe_by_round") for r in rounds],
            "fe_earlier": [r.get("fe_earlier") for r in rounds],
            "seconds": [round(r.get("seconds", 0.0), 1) for r in rounds],
            "mu_share_of_start": round(last / start, 3) if last and start else None,
        }
    return out


# ----------------------------------------------------------------------------- estimate


def paper_scale_estimate(stats: dict[str, Any] | None) -> dict[str, Any]:
    """Memory and time of the statistics, projector and edit for Llama-3.1-8B's 5 layers.

    Memory is exact arithmetic; times scale the measured ones: eigendecomposition and solve by
    (14336 / d_mlp)^3, statistics throughput by the parameter ratio (a forward pass costs about
    2 x parameters FLOPs per token) plus the (d_mlp)^2 outer products.
    """
    d, n_layers = PAPER["d_mlp"], PAPER["layers"]
    est: dict[str, Any] = {
        "second_moment_gib_per_layer_fp64": round(d * d * 8 / 2**30, 2),
        "projector_gib_per_layer_fp32": round(d * d * 4 / 2**30, 2),
        "edit_state_gib_fp64_moment_c_prev": round(2 * n_layers * d * d * 8 / 2**30, 1),
        "weights_gib_bf16": round(PAPER["parameters"] * 2 / 2**30, 1),
        "parameters_share_edited": round(n_layers * d * PAPER["d_model"] / PAPER["parameters"], 4),
        "multi_gpu": "unierase.load(name, dtype=torch.bfloat16, device_map='auto') shards the "
        "decoder over the visible GPUs; the statistics, projector and solve run in float64 per "
        "layer on the CPU (or the layer's device) one layer at a time.",
    }
    if stats:
        scale3 = (d / stats["d_mlp"]) ** 3
        # a width far below 14336 is overhead-bound: the cubic extrapolation then overstates
        est["eigh_seconds_per_layer"] = _sig(stats["eigh_seconds_per_layer"] * scale3)
        est["solve_seconds_per_layer"] = _sig(stats["solve_seconds_per_layer"] * scale3)
        flops_small = 2 * stats["parameters"] + len(stats["layers"]) * 2 * stats["d_mlp"] ** 2
        flops_big = 2 * PAPER["parameters"] + n_layers * 2 * d * d
        tps = stats["statistics_tokens_per_s"] * flops_small / flops_big
        est["statistics_tokens_per_s_same_hardware"] = round(tps, 2)
        est["statistics_hours_100k_texts_x_128_tokens"] = round(100_000 * 128 / tps / 3600, 1)
    return est


# ----------------------------------------------------------------------------- outputs


def _row(cells) -> str:
    return "| " + " | ".join("-" if c is None else str(c) for c in cells) + " |"


def markdown(result: dict[str, Any]) -> str:
    lines = [f"Machine: {result['machine']}; model {result['model']}; "
             f"{result['threads']} torch threads.", ""]  # fmt: skip
    if result.get("phase1"):
        lines += ["| Phase I: forget questions | seconds | s / question | peak memory (MiB) |",
                  "|---|---|---|---|"]  # fmt: skip
        lines += [_row([r["questions"], r["seconds"], r["seconds_per_question"],
                        r["peak_memory_mib"]]) for r in result["phase1"]] + [""]  # fmt: skip
    s = result.get("stats")
    if s:
        lines += ["| statistics | tokens | tokens/s | plain forward to the same block, tokens/s |"
                  " ratio (aim >= 0.8) | whole-model forward tokens/s | eigh / layer (s) |"
                  " solve / layer (s) |", "|---|---|---|---|---|---|---|---|",
                  _row([f"{len(s['layers'])} layers, d_mlp {s['d_mlp']}", s["tokens"],
                        s["statistics_tokens_per_s"], s["forward_tokens_per_s"],
                        s["throughput_ratio"], s.get("whole_model_forward_tokens_per_s"),
                        s["eigh_seconds_per_layer"], s["solve_seconds_per_layer"]]),
                  ""]  # fmt: skip
    p = result.get("phase2")
    if p:
        lines += [f"Phase II (token trained in {p['token_seconds']} s; statistics "
                  f"{p['statistics_seconds']} s, then cached):", "",
                  "| mode | requests | seconds | s / request | values / solve / verify (s) |"
                  " success |", "|---|---|---|---|---|---|"]  # fmt: skip
        for r in p["rows"]:
            b = r["breakdown"]
            parts = " / ".join(str(b.get(k, "-")) for k in ("values", "solve", "verify"))
            lines.append(_row([r["mode"], r["requests"], r["seconds"], r["seconds_per_request"],
                               parts, round(r["success"], 2)]))  # fmt: skip
        lines += ["", f"growth exponent of time vs requests (1 = linear): {p['growth']}", ""]
    b = result.get("bench")
    if b:
        lines += [f"From `{b['run']}`: UniErase {b.get('unierase_seconds')} s (Phase I + II) vs "
                  f"the fastest baseline with FE >= {FE_BAR} ({b.get('fastest_baseline')}, "
                  f"{b.get('fastest_baseline_seconds')} s): ratio {b.get('time_ratio')} "
                  "(aim <= 0.5)", ""]  # fmt: skip
        if b.get("evaluation"):
            lines += ["| evaluation split | items | seconds | generation (s) | scoring (s) |",
                      "|---|---|---|---|---|"]  # fmt: skip
            for role, t in b["evaluation"].items():
                lines.append(_row([role, t["items"], t["seconds"], t["generation_seconds"],
                                   t["scoring_seconds"]]))  # fmt: skip
            lines.append("")
    q = result.get("sequential")
    if q:
        lines += ["| sequential | MU after each round | MU after the last / start (aim >= 0.97) |",
                  "|---|---|---|"]  # fmt: skip
        for name, m in q["methods"].items():
            mus = ", ".join("-" if v is None else f"{v:.3f}" for v in m["mu"])
            lines.append(_row([name, mus, m["mu_share_of_start"]]))
        lines.append("")
        for name, m in q["methods"].items():
            grid = [row for row in m.get("fe_by_round") or [] if row]
            if not grid:
                continue
            n = len(grid)
            lines += [f"{name}: FE of each round's questions (columns) after each round (rows)", "",
                      "| after round | " + " | ".join(str(j) for j in range(1, n + 1)) + " |",
                      "|---|" + "---|" * n]  # fmt: skip
            for i, row in enumerate(grid, 1):
                cells = [f"{v:.3f}" if v is not None else "-" for v in row]
                lines.append(_row([i, *cells, *["" for _ in range(n - len(cells))]]))
            lines.append("")
    e = result.get("estimate")
    if e:
        lines += ["Paper scale (Llama-3.1-8B, 5 x 4096 x 14336), derived:", ""]
        lines += [f"- {k}: {v}" for k, v in e.items()]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> bool:
    """Time vs size (Phase I, Phase II batch / sequential) and, from a sequential run, MU per
    round; False when matplotlib is missing or there is nothing to plot."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return False
    panels = [k for k in ("phase1", "phase2", "sequential") if result.get(k)]
    q = result.get("sequential") or {}
    fe_grids = {
        n: m["fe_by_round"] for n, m in q.get("methods", {}).items() if m.get("fe_by_round")
    }
    if fe_grids:
        panels.append("sequential_fe")
    if not panels:
        return False
    fig = Figure(figsize=(5 * len(panels), 4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, key in zip(axes, panels, strict=True):
        if key == "phase1":
            rows = result["phase1"]
            ax.plot([r["questions"] for r in rows], [r["seconds"] for r in rows], "o-")
            ax.set(xscale="log", yscale="log", xlabel="forget questions", ylabel="seconds",
                   title="Phase I")  # fmt: skip
        elif key == "phase2":
            for mode in ("batch", "sequential"):
                rows = [r for r in result["phase2"]["rows"] if r["mode"] == mode]
                ax.plot([r["requests"] for r in rows], [r["seconds"] for r in rows], "o-",
                        label=mode)  # fmt: skip
            ax.set(xscale="log", yscale="log", xlabel="edit requests", ylabel="seconds",
                   title="Phase II (statistics cached)")  # fmt: skip
            ax.legend()
        elif key == "sequential_fe":
            # One line per round's questions, from the round they were forgotten on; the
            # first method's (UniErase's when it ran) only, so the lines stay readable.
            name, grid = next(iter(fe_grids.items()))
            n = len(grid)
            for j in range(n):
                xs = [i + 1 for i in range(j, n) if grid[i] and len(grid[i]) > j]
                ys = [grid[i][j] for i in range(j, n) if grid[i] and len(grid[i]) > j]
                ax.plot(xs, ys, "o-", ms=3, label=f"round {j + 1}'s")
            ax.set(xlabel="after round", ylabel="FE", ylim=(0, 1),
                   title=f"{name}: FE of each round's questions")  # fmt: skip
            ax.legend(fontsize=6, ncol=2)
        else:
            for name, m in q["methods"].items():
                ax.plot(range(1, len(m["mu"]) + 1), m["mu"], "o-", label=name)
            if q.get("start_mu"):
                ax.axhline(0.97 * q["start_mu"], color="grey", ls=":", label="97% of start")
            ax.set(xlabel="round", ylabel="MU", title="sequential unlearning")
            ax.legend(fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.savefig(path, dpi=100)
    return True


def _ints(text: str | None) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip()) if text else ()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="anything unierase.load accepts")
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--sections", default="phase1,stats,phase2,estimate",
                    help="comma-separated: phase1, stats, phase2, estimate")  # fmt: skip
    ap.add_argument("--phase1-sizes", help="forget-set sizes of Phase I (default: 10,40,160)")
    ap.add_argument("--phase2-sizes", help="request counts of Phase II (default: 1,10,40,160)")
    ap.add_argument("--stats-texts", type=int, help="general texts for the statistics (600)")
    ap.add_argument("--layers", help="edited layers (default: the model's preset)")
    ap.add_argument("--repair-rounds", type=int, default=0, help="Phase II repairs (default 0)")
    ap.add_argument("--batch-size", type=int, default=16, help="statistics batch size")
    ap.add_argument("--bench-run", type=Path, help="a finished `unierase bench` run to read")
    ap.add_argument("--sequential-run", type=Path, help="a finished `--mode sequential` run")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-whole-forward", dest="whole", action="store_false",
                    help="stats: skip the whole model's pass (the slowest reference)")  # fmt: skip
    ap.add_argument("--profile", action="store_true", help="cProfile the measured sections")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/cost.json"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    phase1_sizes = _ints(args.phase1_sizes) or sizes["phase1"]
    phase2_sizes = _ints(args.phase2_sizes) or sizes["phase2"]
    args.stats_texts = args.stats_texts or sizes["stats_texts"]
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}

    model, _tok = unierase.load(args.model)
    layout = unierase.find_layout(model)
    layers = (tuple(int(x) for x in args.layers.split(",")) if args.layers
              else preset_for(layout.hidden_size).resolved_layers(layout.num_layers))  # fmt: skip
    del model
    import platform

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    result: dict[str, Any] = {
        "model": args.model, "quick": args.quick, "threads": args.threads, "layers": list(layers),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {device}, "
                   f"torch {torch.__version__}",
    }  # fmt: skip
    profiler = cProfile.Profile() if args.profile else None
    workdir = Path(tempfile.mkdtemp(prefix="unierase-cost-"))
    t0 = time.perf_counter()
    if profiler:
        profiler.enable()
    trained = None
    if "phase1" in sections:
        keep = max(phase2_sizes) if "phase2" in sections else None
        result["phase1"], trained = measure_phase1(args, phase1_sizes, workdir, layers, keep)
    if "stats" in sections:
        result["stats"] = measure_stats(args, args.stats_texts, layers)
    if "phase2" in sections:
        result["phase2"] = measure_phase2(args, phase2_sizes, workdir, layers, trained)
        trained = None
    if profiler:
        profiler.disable()
    if "estimate" in sections:
        result["estimate"] = paper_scale_estimate(result.get("stats"))
    if args.bench_run:
        result["bench"] = from_bench_run(args.bench_run)
    if args.sequential_run:
        result["sequential"] = from_sequential_run(args.sequential_run)
    result["seconds"] = round(time.perf_counter() - t0, 1)

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table, "utf-8")
    written = [args.out, args.out.with_suffix(".md")]
    if plot(result, args.out.with_suffix(".png")):
        written.append(args.out.with_suffix(".png"))
    if profiler:
        buf = io.StringIO()
        pstats.Stats(profiler, stream=buf).sort_stats("cumulative").print_stats(40)
        path = args.out.with_suffix(".profile.txt")
        path.write_text(buf.getvalue(), "utf-8")
        written.append(path)
    print(table)
    print("wrote", ", ".join(map(str, written)))


if __name__ == "__main__":
    main()
