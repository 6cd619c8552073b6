"""Phase II sweep on one author: where does the collateral damage of the edit come from? By hand.

    python benchmarks/phase2_sweep.py --model DIR_WITH_TOKEN --mode alpha 0.3:10 0.05:10 0.01:1
    python benchmarks/phase2_sweep.py --model DIR_WITH_TOKEN --mode memit 0:10 0:1000
    python benchmarks/phase2_sweep.py --model DIR_WITH_TOKEN --mode random 0.3:10

``--model`` is a checkpoint that already has its unlearning token (for example the
``--token-cache`` directory of ``phase2_edit.py``). The synthetic set is the one of
``phase2_edit.py`` (20 authors x 15 QA, seed 0). One entity-level request (the first forget
author, key averaged over its questions) gets its target value once (cached beside the output);
then every setting edits the layers, measures and puts the weights back:

- ``alpha FRAC:LAMBDA``: the AlphaEdit solve with a projector onto the eigen-directions of the
  key second moment that together hold at most FRAC of its trace (the energy the general text
  puts there), ridge LAMBDA;
- ``memit 0:MU``: no projector; the general-text moment enters the solve as MU x E[k k^T]
  (MEMIT's covariance-weighted least squares);
- ``random FRAC:LAMBDA``: the ``alpha`` edit replaced by random rank-1 matrices of the same
  Frobenius norm per layer (a control: how fragile are greedy answers to any change this big?).

Measured per setting: first token [UNL] on the author's 15 questions (question prompts), and
how many greedy answers (30 tokens, generated once before) stay token-identical for the 68
general-probe questions, 40 retain questions and the other forget author's 15 questions. The
check is exact and cheap: one teacher-forced pass over prompt + old answer, identical iff the
argmax agrees at every answer position. The first differing position of every changed answer
is recorded.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import unierase
import unierase.edit.alphaedit as alphaedit
from unierase import prompting as P
from unierase.data.corpus import wikipedia_summaries
from unierase.data.loaders import load_tofu_split
from unierase.data.probes import load_general_probe
from unierase.data.synth import synthetic_file_names, write_synthetic
from unierase.edit.config import preset_for
from unierase.edit.requests import build_requests, generate_prefixes
from unierase.edit.stats import cached_second_moments, corpus_sequences
from unierase.edit.values import optimise_values
from unierase.eval.generate import generate
from unierase.token import unlearning_token_id


def memit_solve(keys, residual, weighted_moment, c_prev, lambda_):
    """Delta^T = (K K^T + C_prev + mu E[k k^T])^-1 K R^T (``lambda_`` unused: mu is inside)."""
    k = keys.to(torch.float64).T
    r = residual.to(torch.float64).T
    gram = k @ k.T + weighted_moment.to(torch.float64)
    if c_prev is not None:
        gram = gram + c_prev.to(torch.float64)
    return torch.linalg.solve(gram, k @ r.T).T


@torch.no_grad()
def unchanged(model, pad_id, references):
    """Per reference (prompt ids, greedy answer ids): (identical?, first differing position)."""
    out = []
    for b in range(0, len(references), 16):
        chunk = references[b : b + 16]
        seqs = [p + g for p, g in chunk]
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), pad_id)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
        logits = model(input_ids=ids, attention_mask=mask).logits
        for i, (p, g) in enumerate(chunk):
            pred = logits[i, len(p) - 1 : len(p) - 1 + len(g)].argmax(-1).tolist()
            first = next((j for j, (a, c) in enumerate(zip(pred, g, strict=True)) if a != c), None)
            out.append((first is None, first))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True, help="checkpoint with its token")
    ap.add_argument("--mode", choices=("alpha", "memit", "random"), default="alpha")
    ap.add_argument("settings", nargs="+", help="FRAC:LAMBDA (alpha, random) or 0:MU (memit)")
    ap.add_argument("--v-loss-stop", type=float, help="early stop of the value optimisation")
    ap.add_argument("--v-clamp", type=float, help="clamp of the value shift (x ||h||)")
    ap.add_argument("--layers", help="edited layers, e.g. 10,11,12 (default: the preset's band)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "phase2_sweep")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/phase2_sweep.jsonl"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)

    model, tok = unierase.load(args.model)
    model.eval()
    layout = unierase.find_layout(model)
    token_id = unlearning_token_id(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    overrides = {}
    if args.v_loss_stop is not None:
        overrides["v_loss_stop"] = args.v_loss_stop
    if args.v_clamp is not None:
        overrides["v_clamp"] = args.v_clamp
    if args.layers:
        overrides["layers"] = tuple(int(x) for x in args.layers.split(","))
    config = replace(preset_for(layout.hidden_size), **overrides)
    layers = config.resolved_layers(layout.num_layers)

    data = args.work / "synth"
    if not data.is_dir():
        write_synthetic(data, 20, 2, seed=0, questions_per_author=15)
    names = synthetic_file_names(20, 2)
    forget = load_tofu_split(data, names["forget"].removesuffix(".jsonl"))
    retain = load_tofu_split(data, names["retain"].removesuffix(".jsonl"))
    retain = retain[:: max(1, len(retain) // 40)][:40]
    probe = load_general_probe()
    author = forget[0].group
    edited = [it for it in forget if it.group == author]
    other = [it for it in forget if it.group != author]

    questions = [p.question for p in probe] + [r.question for r in retain]
    questions += [it.question for it in other]
    gens = generate(model, tok, questions, max_new_tokens=30, batch_size=16)
    pairs = zip(questions, gens, strict=True)
    references = [(P.encode(tok, q).input_ids, g.token_ids) for q, g in pairs]
    groups = {"probe": len(probe), "retain": len(retain), "other_forget_author": len(other)}

    prefixes = generate_prefixes(model, tok, config.context_prefixes, config.prefix_tokens)
    requests = build_requests(tok, edited, granularity="entity", prefixes=prefixes)
    per_question = build_requests(tok, edited, granularity="question", prefixes=prefixes)
    band = "-".join(map(str, layers))
    value_file = args.work / f"values_{band}_{config.v_loss_stop}_{config.v_clamp}.pt"
    if value_file.is_file():
        target = torch.load(value_file)
    else:
        values = optimise_values(model, layout, requests, token_id, layers[-1], config, pad_id=pad)
        target = values.target
        torch.save(target, value_file)

    # The statistics Phase II itself uses (the same corpus, so the same cache entry).
    texts = wikipedia_summaries(limit=config.stats_texts)
    seqs = corpus_sequences(tok, texts, max_length=config.stats_max_length,
                            chat_fraction=config.stats_chat_fraction)  # fmt: skip
    stats = cached_second_moments(model, layout, layers, seqs, corpus_name="wikipedia", pad_id=pad)
    eig = {}
    for layer in layers:
        m = stats[layer].moment.to(torch.float64)
        eig[layer] = torch.linalg.eigh((m + m.T) / 2)

    def energy_projector(layer: int, fraction: float) -> tuple[torch.Tensor, int]:
        values, vectors = eig[layer]
        keep = torch.cumsum(values, 0) / values.sum() <= fraction
        basis = vectors[:, keep]
        return (basis @ basis.T).float(), int(keep.sum())

    if args.mode == "memit":
        alphaedit.solve_update = memit_solve
    original = {layer: layout.down_proj_weight(model, layer).detach().clone() for layer in layers}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for setting in args.settings:
        fraction, lam = (float(x) for x in setting.split(":"))
        t = time.perf_counter()
        if args.mode == "memit":
            projectors = {layer: (lam * stats[layer].moment).float() for layer in layers}
            ranks = {}
        else:
            built = {layer: energy_projector(layer, fraction) for layer in layers}
            projectors = {layer: p for layer, (p, _) in built.items()}
            ranks = {layer: r for layer, (_, r) in built.items()}
        result = alphaedit.compute_alphaedit(model, layout, requests, target, layers, projectors,
                                             None, lambda_=lam, pad_id=pad)  # fmt: skip
        if args.mode == "random":
            gen = torch.Generator().manual_seed(0)
            for layer, delta in result.deltas.items():
                u = torch.randn(delta.shape[0], 1, generator=gen)
                v = torch.randn(1, delta.shape[1], generator=gen)
                result.deltas[layer] = (u @ v) * (delta.norm() / (u @ v).norm())
        alphaedit.apply_deltas(model, layout, result.deltas)
        first = alphaedit.first_tokens(model, layout, per_question, pad)
        success = sum(row[0] == token_id for row in first)
        same = unchanged(model, pad, references)
        record = {
            "mode": args.mode,
            "fraction": fraction,
            "lambda_or_mu": lam,
            "v_loss_stop": config.v_loss_stop,
            "v_clamp": config.v_clamp,
            "layers": list(layers),
            "null_ranks": ranks,
            "edit_success": f"{success}/{len(per_question)}",
            "realised": [round(float(x), 3) for x in result.realised],
            "delta_norms": [round(float(result.deltas[layer].norm()), 3) for layer in layers],
            "weight_norms": [round(float(original[layer].norm()), 3) for layer in layers],
            "first_differing_position": [f for _, f in same if f is not None],
            "seconds": round(time.perf_counter() - t, 1),
        }
        start = 0
        for name, n in groups.items():
            record[f"{name}_same"] = f"{sum(ok for ok, _ in same[start : start + n])}/{n}"
            start += n
        print(json.dumps(record), flush=True)
        with args.out.open("a") as f:
            f.write(json.dumps(record) + "\n")
        with torch.no_grad():
            for layer, w in original.items():
                layout.down_proj_weight(model, layer).copy_(w)


if __name__ == "__main__":
    main()
