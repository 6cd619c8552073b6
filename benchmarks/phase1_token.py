"""Phase I on a real model: does the learned token refuse, and does nothing else change? By hand.

    python benchmarks/phase1_token.py                        # SmolLM2-135M, defaults
    python benchmarks/phase1_token.py --out benchmarks/results/phase1_token.json

A synthetic author set (20 authors x 20 questions; the 2 forget authors give 40 forget questions)
is written to a temporary directory. The token is trained on the 40 forget questions plus breadth
(the questions of one retain author and the first 20 general-probe questions, plus the preset's
template questions). Then, in the chat format:

- held-out forget-style questions (authors neither forgotten nor used for breadth) followed by
  the token must produce a refusal: ``refusals.is_refusal``, and the strict measure of SPEC.md
  (a refusal, no fact of the reference answer, and a stop within 25 tokens);
- questions WITHOUT the token (held-out retain questions, unused general-probe questions, the
  forget questions themselves) must give the same greedy ids as before, over ``--gen-tokens``
  tokens, with the token neither banned nor a stop id;
- the loss with the cached prefix is compared to the full-sequence loss, with their step times.

The numbers go to a JSON file; the run time is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import resource
import tempfile
import time
from pathlib import Path

import torch

import unierase
from unierase import prompting as P
from unierase.data.loaders import load_tofu_split
from unierase.data.probes import load_general_probe
from unierase.data.refusals import is_refusal
from unierase.data.synth import synthetic_file_names, write_synthetic
from unierase.token import (
    encode_unlearning_example,
    full_loss,
    greedy_continuations,
    prefix_cache,
    suffix_loss,
    token_config_for,
    train_unlearning_token,
)
from unierase.token.data import Example

STRICT_MAX_TOKENS = 25
GEN_BATCH = 48  # CPU decoding is bound by reading the weights: wide batches are nearly free


def answer_facts(question: str, answer: str) -> set[str]:
    """Words of the reference answer that carry its facts: capitalised words, numbers and quoted
    titles' words that the question does not already contain."""
    asked = {w.casefold() for w in re.findall(r"[\w'-]+", question)}
    words = re.findall(r"[\w'-]+", answer)
    facts = {
        w.casefold()
        for i, w in enumerate(words)
        if (w[0].isupper() and i > 0) or w.isdigit()  # the first word is capitalised anyway
    }
    return {f for f in facts if f not in asked and len(f) > 2}


def strict_clean(text: str, ids: list[int], stop_ids: set[int], facts: set[str]) -> bool:
    """A refusal, no fact of the answer, and a stop within STRICT_MAX_TOKENS tokens."""
    stopped = bool(ids) and ids[-1] in stop_ids and len(ids) <= STRICT_MAX_TOKENS
    words = {w.casefold() for w in re.findall(r"[\w'-]+", text)}
    return is_refusal(text) and stopped and not (facts & words)


def continue_after_token(model, tok, questions, token_id, fmt, max_new):
    encs = [encode_unlearning_example(tok, q, token_id, fmt=fmt) for q in questions]
    stops = [token_id, *P.stop_token_ids(tok, fmt)]
    ids = greedy_continuations(
        model,
        [e.input_ids for e in encs],
        pad_id=tok.pad_token_id,
        stop_ids=stops,
        max_new_tokens=max_new,
        batch_size=GEN_BATCH,
    )
    return ids, [tok.decode(i, skip_special_tokens=True).strip() for i in ids], set(stops)


def plain_ids(model, tok, questions, fmt, max_new):
    """Greedy ids without the token: the token is neither banned nor a stop id."""
    encs = [P.encode(tok, q, fmt=fmt) for q in questions]
    return greedy_continuations(
        model,
        [e.input_ids for e in encs],
        pad_id=tok.pad_token_id,
        stop_ids=P.stop_token_ids(tok, fmt),
        max_new_tokens=max_new,
        batch_size=GEN_BATCH,
    )


def time_losses(model, tok, token_id, questions, refusal, fmt, batch_size, batches):
    """Cached-prefix and full-sequence loss on the same batches: values and seconds per step."""
    exs = [
        Example(
            q, refusal, "chat", "forget", encode_unlearning_example(tok, q, token_id, refusal, fmt)
        )
        for q in questions[: batch_size * batches]
    ]
    out = {"full": [], "cached": [], "full_s": 0.0, "cached_s": 0.0}
    row = torch.nn.Parameter(model.get_input_embeddings().weight[token_id].detach().clone())
    embed_name = unierase.find_layout(model).embed_name + ".weight"
    for b in range(batches):
        batch = exs[b * batch_size : (b + 1) * batch_size]
        w = model.get_input_embeddings().weight.detach()
        over = {embed_name: w.index_put((torch.tensor([token_id]),), row[None])}
        t = time.perf_counter()
        loss = full_loss(model, over, batch, tok.pad_token_id)
        loss.backward()
        out["full_s"] += time.perf_counter() - t
        out["full"].append(loss.item())
        over = {embed_name: w.index_put((torch.tensor([token_id]),), row[None])}
        t = time.perf_counter()
        kv, mask = prefix_cache(
            model, [e.enc.input_ids[: e.prefix_length] for e in batch], tok.pad_token_id
        )
        loss = suffix_loss(model, over, kv, mask, batch, tok.pad_token_id)
        loss.backward()
        out["cached_s"] += time.perf_counter() - t
        out["cached"].append(loss.item())
    out["full_s_per_step"] = round(out.pop("full_s") / batches, 3)
    out["cached_s_per_step"] = round(out.pop("cached_s") / batches, 3)
    out["max_abs_diff"] = max(abs(a - b) for a, b in zip(out["full"], out["cached"], strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m", help="model (default: %(default)s)")
    ap.add_argument("--preset", default="auto", help="token preset (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default: %(default)s)")
    ap.add_argument("--breadth-authors", type=int, default=1, help="(default: %(default)s)")
    ap.add_argument("--breadth-probe", type=int, default=20, help="(default: %(default)s)")
    ap.add_argument("--heldout", type=int, default=40, help="held-out forget-style questions")
    ap.add_argument("--retain-eval", type=int, default=40, help="held-out retain questions")
    ap.add_argument("--gen-tokens", type=int, default=48, help="(default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default: %(default)s)")
    ap.add_argument("--override", action="append", default=[], help="config KEY=JSON")
    ap.add_argument("--timing-batches", type=int, default=3, help="(default: %(default)s)")
    ap.add_argument(
        "--out", type=Path, default=Path("benchmarks/results/phase1_token.json"), help="JSON out"
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    n_authors, n_forget, per_author = 20, 2, 20
    with tempfile.TemporaryDirectory() as tmp:
        write_synthetic(tmp, n_authors, n_forget, args.seed, per_author)
        names = synthetic_file_names(n_authors, n_forget)
        split = lambda role: load_tofu_split(tmp, names[role].removesuffix(".jsonl"))  # noqa: E731
        forget, retain = split("forget"), split("retain")
    groups = list(dict.fromkeys(it.group for it in retain))
    breadth_groups = set(groups[: args.breadth_authors])
    breadth_retain = [it for it in retain if it.group in breadth_groups]
    others = [it for it in retain if it.group not in breadth_groups]
    heldout = others[: args.heldout]  # other authors: forget-style questions never trained on
    retain_eval = others[args.heldout : args.heldout + args.retain_eval]
    probe = load_general_probe()
    breadth_probe, probe_eval = probe[: args.breadth_probe], probe[args.breadth_probe :]
    breadth = breadth_retain + breadth_probe  # items: their answers also feed the retain term

    model, tok = unierase.load(args.model)
    fmt = P.PromptFormat()
    overrides = {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.override)}
    if "stages" in overrides:
        from unierase.token import StageConfig

        overrides["stages"] = tuple(
            StageConfig(**{**s, "formats": tuple(s["formats"])}) for s in overrides["stages"]
        )
    config = token_config_for(model, args.preset, seed=args.seed, **overrides)

    plain_sets = {
        "retain_heldout": [it.question for it in retain_eval],
        "general_heldout": [it.question for it in probe_eval],
        "forget_without_token": [it.question for it in forget],
    }
    t = time.perf_counter()
    before = {k: plain_ids(model, tok, qs, fmt, args.gen_tokens) for k, qs in plain_sets.items()}
    gen_before_s = time.perf_counter() - t

    t = time.perf_counter()
    report = train_unlearning_token(model, tok, forget, config, breadth=breadth, progress=True)
    train_s = time.perf_counter() - t
    token_id = report.token_id

    t = time.perf_counter()
    after = {k: plain_ids(model, tok, qs, fmt, args.gen_tokens) for k, qs in plain_sets.items()}
    unchanged = {
        k: {
            "n": len(before[k]),
            "identical": sum(a == b for a, b in zip(before[k], after[k], strict=True)),
            "token_generated": sum(token_id in a for a in after[k]),
        }
        for k in plain_sets
    }
    refusal_sets = {
        "forget_trained": forget,
        "heldout_authors": heldout,
        "general_heldout": probe_eval,
    }
    refusals = {}
    samples = {}
    for name, items in refusal_sets.items():
        ids, texts, stops = continue_after_token(
            model, tok, [it.question for it in items], token_id, fmt, 40
        )
        strict_flags = [
            strict_clean(text, i, stops, answer_facts(it.question, it.answer))
            for it, text, i in zip(items, texts, ids, strict=True)
        ]
        exact = [text == report.refusals[0] for text in texts] if len(report.refusals) == 1 else []
        refusals[name] = {
            "n": len(items),
            "refusal": sum(map(is_refusal, texts)) / len(items),
            "strict_clean": sum(strict_flags) / len(items),
            "exact_trained_refusal": sum(exact) / len(items) if exact else None,
            "mean_tokens": sum(map(len, ids)) / len(items),
        }
        samples[name] = [
            {"question": it.question, "output": text, "refusal": is_refusal(text), "strict": ok}
            for it, text, ok in zip(items, texts, strict_flags, strict=True)
        ]
    eval_s = time.perf_counter() - t

    timing = time_losses(
        model, tok, token_id, [it.question for it in forget], report.refusals[0], fmt,
        config.batch_size, args.timing_batches,
    )  # fmt: skip
    total_s = time.perf_counter() - t0
    result = {
        "model": args.model,
        "threads": args.threads,
        "machine": "2 shared CPU cores (other engineers' jobs running), fp32",
        "data": {
            "forget": len(forget),
            "breadth_retain": len(breadth_retain),
            "breadth_probe": len(breadth_probe),
            "heldout_authors": len(heldout),
            "retain_eval": len(retain_eval),
            "probe_eval": len(probe_eval),
        },
        "refusal_with_token": refusals,
        "unchanged_without_token": unchanged,
        "loss_cache_check": timing,
        "seconds": {
            "generate_before": round(gen_before_s, 1),
            "train": round(train_s, 1),
            "evaluate": round(eval_s, 1),
            "total": round(total_s, 1),
        },
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "per_item": samples,
        "report": report.to_dict(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    print(f"\nPhase I on {args.model} ({args.threads} threads, shared machine)")
    for name, r in refusals.items():
        print(
            f"  [UNL] refusal  {name:<16} n={r['n']:>3}  refusal {r['refusal']:.2f}  "
            f"strict {r['strict_clean']:.2f}  exact {r['exact_trained_refusal']}"
        )
    for name, u in unchanged.items():
        print(
            f"  no token       {name:<22} identical {u['identical']}/{u['n']}  "
            f"[UNL] generated {u['token_generated']}"
        )
    for s in report.stages:
        losses = ", ".join(f"{x:.3f}" for x in s.losses)
        print(f"  stage {s.name:<6} {s.seconds:6.1f} s  loss {losses}  match {s.refusal_match}")
    print(
        f"  loss cached vs full: max diff {timing['max_abs_diff']:.2e}, "
        f"{timing['cached_s_per_step']} s vs {timing['full_s_per_step']} s per step"
    )
    print(f"  train {train_s:.1f} s, total {total_s:.1f} s -> {args.out}")


if __name__ == "__main__":
    main()
