"""Phase II on a real model: edit success, collateral damage, cost. Run by hand, not by CI.

    python benchmarks/phase2_edit.py --model smollm2-135m --layers 3,4,5,6,7 --out results/x.json

Phase I runs first (or its result is read from ``--token-cache``). Then, for the forget
authors of a synthetic set, it measures the share of forget questions whose first greedy answer
token is the unlearning token (edit success), how many retain and general-probe answers stay
token-identical over ``--gen-tokens`` greedy tokens, general-probe accuracy before and after,
and the time of each phase.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

import unierase
from unierase.data.loaders import load_tofu_split
from unierase.data.probes import load_general_probe, probe_is_correct
from unierase.data.synth import synthetic_file_names, write_synthetic
from unierase.edit import phase2
from unierase.edit.config import preset_for
from unierase.eval.generate import generate, generate_answers

TOKEN = "<|unlearn|>"


def with_token(args, forget, retain):
    """The model with a trained unlearning token: from ``--token-cache`` or trained once there."""
    from unierase.token import save_token_checkpoint, train_unlearning_token, unlearning_token_id
    from unierase.token.vocab import TokenError

    cache = args.token_cache
    if cache is not None and (cache / "config.json").is_file():
        model, tok = unierase.load(cache)
        return model, tok, unlearning_token_id(tok), 0.0
    model, tok = unierase.load(args.model)
    try:
        return model, tok, unlearning_token_id(tok), 0.0
    except TokenError:
        pass
    t = time.perf_counter()
    layers = preset_for(model.config.hidden_size).resolved_layers(
        unierase.find_layout(model).num_layers
    )
    if args.layers:
        layers = tuple(int(x) for x in args.layers.split(","))
    from unierase.token import token_config_for

    cfg = token_config_for(model).replace(noise_layers=layers)
    report = train_unlearning_token(
        model, tok, forget, cfg, breadth=[r.question for r in retain], progress=True
    )
    seconds = time.perf_counter() - t
    if cache is not None:
        save_token_checkpoint(model, tok, report, cache, base_model=args.model)
    return model, tok, report.token_id, seconds


def measure_precise(model, tok, layout, token_id, forget, config, args) -> dict:
    """Precise mode: edit one question of an author, then look at that author's other questions.

    The edited weights are put back afterwards, so the main measurement starts from the same
    model.
    """
    author = forget[0].group
    same = [it for it in forget if it.group == author]
    target = same[args.precise]
    others = [it for it in same if it is not target]

    def answers(qs):
        return generate(model, tok, qs, max_new_tokens=args.gen_tokens, batch_size=16)

    before = answers([it.question for it in others])
    pconfig = replace(config, granularity="question")
    state = phase2.new_state(model, tok, layout, token_id, pconfig)
    saved = {i: layout.down_proj_weight(model, i).detach().clone() for i in state.layers}
    report = phase2.unlearning_edit(model, tok, layout, [target], state, pconfig)
    after = answers([it.question for it in others])
    edited = answers([target.question])[0]
    with torch.no_grad():
        for i, w in saved.items():
            layout.down_proj_weight(model, i).copy_(w)
    refused = [g.token_ids[:1] == [token_id] for g in after]
    return {
        "question": target.question,
        "edit_success": report.success,
        "answer_after": edited.text,
        "answer_starts_with_token": edited.token_ids[:1] == [token_id],
        "other_questions": len(others),
        "others_unchanged": sum(
            a.token_ids == b.token_ids for a, b in zip(before, after, strict=True)
        ),
        "others_starting_with_token": sum(refused),
        "changed": [
            {"q": it.question, "before": a.text, "after": b.text}
            for it, a, b in zip(others, before, after, strict=True)
            if a.token_ids != b.token_ids
        ][:5],
        "seconds": report.seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", type=Path, help="TOFU-layout dir (default: synthetic, 20 authors)")
    ap.add_argument("--authors", type=int, default=20)
    ap.add_argument("--forget", type=int, default=2)
    ap.add_argument("--questions", type=int, default=15)
    ap.add_argument("--layers", default="")
    ap.add_argument("--lambda", dest="lambda_", type=float)
    ap.add_argument("--threshold", type=float)
    ap.add_argument("--relative", action="store_true")
    ap.add_argument("--granularity", choices=["entity", "question"])
    ap.add_argument("--chunk", type=int)
    ap.add_argument("--repair", type=int)
    ap.add_argument("--clamp", type=float)
    ap.add_argument("--stats-texts", type=int)
    ap.add_argument("--retain-n", type=int, default=40)
    ap.add_argument("--gen-tokens", type=int, default=30)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--token-cache",
        type=Path,
        help="directory holding (or to receive) the model with its trained token",
    )
    ap.add_argument(
        "--precise",
        type=int,
        default=1,
        help="first measure precise mode on the question with this index of the first forget "
        "author (-1: skip)",
    )
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results/phase2_edit.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    overrides = {}
    if args.layers:
        overrides["layers"] = tuple(int(x) for x in args.layers.split(","))
    for name, key in [("lambda_", "lambda_"), ("threshold", "null_threshold"),
                      ("granularity", "granularity"), ("chunk", "chunk_size"),
                      ("repair", "repair_rounds"), ("clamp", "v_clamp"),
                      ("stats_texts", "stats_texts")]:  # fmt: skip
        if getattr(args, name) is not None:
            overrides[key] = getattr(args, name)
    if args.relative:
        overrides["null_threshold_relative"] = True

    if args.data:
        forget = load_tofu_split(args.data, "forget01")
        retain = load_tofu_split(args.data, "retain_perturbed")
    else:
        data_dir = Path(tempfile.mkdtemp()) / "synth"
        write_synthetic(data_dir, args.authors, args.forget, seed=0,
                        questions_per_author=args.questions)  # fmt: skip
        names = synthetic_file_names(args.authors, args.forget)
        forget = load_tofu_split(data_dir, names["forget"].removesuffix(".jsonl"))
        retain = load_tofu_split(data_dir, names["retain"].removesuffix(".jsonl"))
    model, tok, token_id, t_token = with_token(args, forget, retain)
    layout = unierase.find_layout(model)
    config = replace(preset_for(layout.hidden_size), **overrides)
    retain = retain[:: max(1, len(retain) // args.retain_n)][: args.retain_n]
    probe = load_general_probe()

    def answers(qs):
        return generate_answers(model, tok, qs, max_new_tokens=args.gen_tokens, batch_size=16)

    t = time.perf_counter()
    retain_before = answers([r.question for r in retain])
    probe_before = answers([p.question for p in probe])
    t_gen = time.perf_counter() - t

    t = time.perf_counter()
    state = phase2.new_state(model, tok, layout, token_id, config)
    t_stats = time.perf_counter() - t

    precise = None
    if args.precise >= 0:
        precise = measure_precise(model, tok, layout, token_id, forget, config, args)

    report = phase2.unlearning_edit(model, tok, layout, forget, state, config)

    retain_after = answers([r.question for r in retain])
    probe_after = answers([p.question for p in probe])
    same_retain = sum(a == b for a, b in zip(retain_before, retain_after, strict=True))
    same_probe = sum(a == b for a, b in zip(probe_before, probe_after, strict=True))
    acc_before = sum(probe_is_correct(p, a) for p, a in zip(probe, probe_before, strict=True))
    acc_after = sum(probe_is_correct(p, a) for p, a in zip(probe, probe_after, strict=True))
    changed_retain = [
        {"q": r.question, "before": a, "after": b}
        for r, a, b in zip(retain, retain_before, retain_after, strict=True)
        if a != b
    ][:5]
    changed_probe = [
        {"q": p.question, "before": a, "after": b}
        for p, a, b in zip(probe, probe_before, probe_after, strict=True)
        if a != b
    ][:8]
    result = {
        "model": args.model,
        "config": config.to_dict(),
        "forget_questions": len(forget),
        "edit_success": report.success,
        "failed": report.failed_questions,
        "retain_same": f"{same_retain}/{len(retain)}",
        "retain_same_share": same_retain / len(retain),
        "probe_same": f"{same_probe}/{len(probe)}",
        "probe_accuracy_before": acc_before / len(probe),
        "probe_accuracy_after": acc_after / len(probe),
        "report": report.to_dict(),
        "precise": precise,
        "seconds": {
            "phase1": round(t_token, 1),
            "stats": round(t_stats, 1),
            "generation_before": round(t_gen, 1),
            "total": round(time.perf_counter() - t0, 1),
        },  # fmt: skip
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "threads": args.threads,
        "changed_retain": changed_retain,
        "changed_probe": changed_probe,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    keys = ["edit_success", "retain_same", "probe_same", "probe_accuracy_before",
            "probe_accuracy_after"]  # fmt: skip
    print(json.dumps({k: result[k] for k in keys}), report.seconds, report.ranks, report.repairs)


if __name__ == "__main__":
    main()
