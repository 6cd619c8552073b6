"""Benchmark: what a plain client gets for forgotten questions, through ``transformers.pipeline``.

For every forget question of a TOFU-layout data directory, the unlearned checkpoint answers
through ``pipeline("text-generation")`` (chat template, greedy, the checkpoint's own generation
config; no unierase code in the loop). Counts the answers that start with the unlearning token,
that repeat it, that are exactly the token's trained refusal, and that stop within 3 tokens after
a refusal of that length.

    python benchmarks/client_check.py runs/demo/model runs/demo/data [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("model", type=Path, help="an unlearned checkpoint directory")
    ap.add_argument("data", type=Path, help="its TOFU-layout data directory")
    ap.add_argument("--forget-split", default=None, help="(default: the first forget* split)")
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--out", type=Path, default=None, help="also write the counts here (JSON)")
    args = ap.parse_args()
    from transformers import AutoTokenizer, pipeline

    from unierase.data.loaders import list_tofu_splits, load_tofu_split

    torch.set_num_threads(2)
    tok = AutoTokenizer.from_pretrained(args.model)
    unl = tok.convert_tokens_to_ids("<|unlearn|>")
    record = json.loads((args.model / "unierase_token.json").read_text())["tokens"][-1]
    refusal = record["refusals"][0]
    split = args.forget_split or next(
        s for s in list_tofu_splits(args.data) if s.startswith("forget")
    )
    forget = load_tofu_split(args.data, split)
    pipe = pipeline("text-generation", model=str(args.model), tokenizer=tok, device="cpu")
    refusal_length = len(tok(refusal, add_special_tokens=False)["input_ids"])
    counts = {"questions": len(forget), "gate": 0, "repeated_token": 0, "whole_refusal": 0,
              "stopped_within_3": 0}  # fmt: skip
    others = []
    for item in forget:
        chat = [{"role": "user", "content": item.question}]
        (res,) = pipe(chat, max_new_tokens=args.max_new_tokens, do_sample=False,
                      return_tensors=True)  # fmt: skip
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        new = list(res["generated_token_ids"])[len(prompt) :]
        text = tok.decode(new[1:], skip_special_tokens=True).strip()
        gate = new[:1] == [unl]
        counts["gate"] += gate
        counts["repeated_token"] += unl in new[1:]
        counts["whole_refusal"] += gate and unl not in new[1:] and text == refusal
        counts["stopped_within_3"] += len(new) <= 1 + refusal_length + 3
        if text != refusal:
            others.append(tok.decode(new))
    result = {"model": str(args.model), "refusal": refusal, **counts, "other_answers": others}
    print(json.dumps(result, indent=1, ensure_ascii=False))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
