"""Benchmark: what the unlearning edit leaves alone, and what its refusal looks like, per setting.

On the demo preset (the demo's synthetic authors, 10 x 10 QA, 2 forgotten; the base model
fine-tuned on all of them as the demo does), one unlearning token per token setting is trained
once on the target, then every Phase II setting edits a copy through ``unierase.api.unlearn``
and is measured against the target with plain ``transformers`` greedy generation (chat template,
the checkpoint's own ``generation_config``, as a user's client runs it):

- forget questions: the gate (first answer token is the unlearning token), whole refusals (the
  trained refusal sentence, then the end of turn, no second unlearning token), refusals by the
  project's refusal list, forget ROUGE-L recall, unlearning tokens repeated inside answers;
- kept authors' questions: ROUGE-L recall before and after, refused, token-identical answers,
  per-token KL(after || before) over the teacher-forced reference answers, and the same for the
  kept authors who share a first name or a surname with a forgotten one;
- the general probe (all 68 questions): correct before and after.

A setting that protects only half of the kept questions (``protect=half``) is also scored on the
other half apart (``unseen_*``): that is generalisation, not memory.

    python benchmarks/locality.py                           # every setting below
    python benchmarks/locality.py --settings default,refusal --chosen refusal

Writes ``benchmarks/results/locality.json`` (one entry per setting, and ``chosen``) and per-item
answers under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

# name -> (token setting name, EditConfig overrides, which kept items unlearn() is given)
TOKENS: dict[str, dict[str, Any]] = {
    "closing": {"closing_token": True},
    "eot": {"closing_token": False},
}
SETTINGS: dict[str, tuple[str, dict[str, Any], str]] = {
    "default": ("closing", {}, "all"),
    "eot": ("eot", {}, "all"),
    "eot+refusal": ("eot", {"v_refusal_weight": 1.0, "v_refusal_prompts": 10}, "all"),
    "eot+refusal+protect1": ("eot", {"v_refusal_weight": 1.0, "protect_weight": 1.0}, "all"),
    "eot+refusal+protect1+nb": (
        "eot",
        {
            "v_refusal_weight": 1.0,
            "v_refusal_prompts": 10,
            "protect_weight": 1.0,
            "protect_neighbours": 1,
        },
        "all",
    ),
    "eot+refusal+protect1+nb/half": (
        "eot",
        {
            "v_refusal_weight": 1.0,
            "v_refusal_prompts": 10,
            "protect_weight": 1.0,
            "protect_neighbours": 1,
        },
        "half",
    ),
    "eot+refusal+protect1+nb+strip": (
        "eot",
        {
            "v_refusal_weight": 1.0,
            "protect_weight": 1.0,
            "protect_neighbours": 1,
            "strip_subject_punctuation": True,
        },
        "all",
    ),
    "eot+refusal+protect0.3+nb+strip": (
        "eot",
        {
            "v_refusal_weight": 1.0,
            "protect_weight": 0.3,
            "protect_neighbours": 1,
            "strip_subject_punctuation": True,
        },
        "all",
    ),
    "eot+refusal+protect0.5+nb+strip": (
        "eot",
        {
            "v_refusal_weight": 1.0,
            "protect_weight": 0.5,
            "protect_neighbours": 1,
            "strip_subject_punctuation": True,
        },
        "all",
    ),
    "eot+refusal3+protect0.5+nb+strip": (
        "eot",
        {
            "v_refusal_weight": 3.0,
            "protect_weight": 0.5,
            "protect_neighbours": 1,
            "strip_subject_punctuation": True,
        },
        "all",
    ),
    "eot+refusal+protect1+nb+strip+repair4": (
        "eot",
        {
            "v_refusal_weight": 1.0,
            "protect_weight": 1.0,
            "protect_neighbours": 1,
            "strip_subject_punctuation": True,
            "repair_rounds": 4,
        },
        "all",
    ),
    "eot+refusal+protect0.3+nb+strip/half": (
        "eot",
        {
            "v_refusal_weight": 1.0,
            "protect_weight": 0.3,
            "protect_neighbours": 1,
            "strip_subject_punctuation": True,
        },
        "half",
    ),
    "eot+refusal+protect10+nb/half": (
        "eot",
        {"v_refusal_weight": 1.0, "protect_weight": 10.0, "protect_neighbours": 1},
        "half",
    ),
}
CHOSEN_KEYS = (
    "edit_success",
    "forget_refusal",
    "retain_rouge_before",
    "retain_rouge_after",
    "retain_refusal_after",
    "retain_identical",
    "retain_kl",
    "probe_correct_before",
    "probe_correct_after",
    "probe_items",
    "model",
)


def _chat_ids(tokenizer, question: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


@torch.no_grad()
def generate(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[list[int]]:
    """Greedy answers (ids, up to and without the first end-of-sequence id), left padded."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    out: list[list[int]] = []
    for i in range(0, len(questions), 32):
        rows = [_chat_ids(tokenizer, q) for q in questions[i : i + 32]]
        width = max(len(r) for r in rows)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        for row in gen[:, width:].tolist():
            cut = next((j for j, t in enumerate(row) if t in eos), None)
            out.append({"ids": row[:cut] if cut is not None else row, "stopped": cut is not None})
    return out


@torch.no_grad()
def answer_kl(after, before, tokenizer, items) -> list[float]:
    """Per item: mean over the reference answer's positions of KL(after || before)."""
    from unierase import prompting as P

    values = []
    for it in items:
        enc = P.encode(tokenizer, it.question, it.answer)
        ids = torch.tensor([enc.input_ids])
        span = slice(enc.prompt_length - 1, len(enc.input_ids) - 1)
        a_logits = after(input_ids=ids).logits[0, span].float()
        b_logits = before(input_ids=ids).logits[0, span].float()
        n = min(a_logits.shape[-1], b_logits.shape[-1])  # the vocabulary both models share
        la, lb = torch.log_softmax(a_logits[:, :n], -1), torch.log_softmax(b_logits[:, :n], -1)
        values.append(float((la.exp() * (la - lb)).sum(-1).mean()))
    return values


def name_parts(name: str) -> tuple[str, str]:
    parts = name.split()
    return parts[0], parts[-1]


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default="smollm2-135m", help="base model (default: %(default)s)")
    ap.add_argument("--authors", type=int, default=10, help="(default: %(default)s)")
    ap.add_argument("--forget", type=int, default=2, help="(default: %(default)s)")
    ap.add_argument("--questions", type=int, default=10, help="(default: %(default)s)")
    ap.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names")
    ap.add_argument(
        "--chosen",
        default=None,
        help="the setting reported as `chosen` (default: the last one run); with "
        "--settings '' only `chosen` is rewritten from the entries already in --out",
    )
    ap.add_argument("--work", type=Path, default=Path("runs/locality"), help="scratch directory")
    ap.add_argument("--out", type=Path, default=RESULTS / "locality.json")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("transformers").setLevel(logging.WARNING)
    torch.set_num_threads(args.threads)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unierase import load
    from unierase.api import unlearn
    from unierase.data.probes import load_general_probe, probe_is_correct
    from unierase.data.refusals import is_refusal
    from unierase.data.synth import write_synthetic
    from unierase.eval.metrics import rouge_l_recall
    from unierase.finetune import finetune_cached, preset_for, select_training_data
    from unierase.token import save_token_checkpoint, token_config_for, train_unlearning_token

    names = [s for s in args.settings.split(",") if s]
    # Entries of earlier runs (same script, same target) are kept unless rerun.
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    if not names:
        entries = previous.get("settings", [])
        picked = [e for e in entries if e["setting"] == args.chosen]
        if not picked:
            ap.error(f"no entry {args.chosen!r} in {args.out}")
        previous["chosen"] = {"setting": args.chosen, **{k: picked[0][k] for k in CHOSEN_KEYS}}
        args.out.write_text(json.dumps(previous, indent=2, ensure_ascii=False) + "\n")
        return 0
    unknown = [s for s in names if s not in SETTINGS]
    if unknown:
        ap.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    data_dir = work / "data"
    if not data_dir.exists():
        write_synthetic(data_dir, args.authors, args.forget, 0, args.questions)
    training = select_training_data(data_dir, "full")
    forget, retain = training.forget, training.retain
    # The demo's fine-tune: at least 600 item passes (see unierase.demo.FINETUNE_ITEM_PASSES).
    epochs = max(preset_for(args.model).config.epochs, math.ceil(600 / len(training.items)))
    t = time.perf_counter()
    target = finetune_cached(training, args.model, overrides={"seed": 0, "epochs": epochs})
    logging.info("target: %s (%s, %.0f s)", target.path, "cached" if target.cached else "trained",
                 time.perf_counter() - t)  # fmt: skip
    before_model = AutoModelForCausalLM.from_pretrained(target.path, dtype=torch.float32).eval()
    before_tok = AutoTokenizer.from_pretrained(target.path)
    probe = load_general_probe()
    half_a = retain[0::2]  # what a "half" setting protects; the other half is unseen
    forgotten_names = {it.group for it in forget}
    firsts = {name_parts(n)[0] for n in forgotten_names}
    lasts = {name_parts(n)[1] for n in forgotten_names}
    share = {
        g: ("surname" if name_parts(g)[1] in lasts else "first name")
        for g in {it.group for it in retain}
        if name_parts(g)[1] in lasts or name_parts(g)[0] in firsts
    }

    def texts(tok, gens):
        return [tok.decode(g["ids"], skip_special_tokens=True).strip() for g in gens]

    t = time.perf_counter()
    before = {
        "retain": generate(before_model, before_tok, [it.question for it in retain], 48),
        "probe": generate(before_model, before_tok, [it.question for it in probe], 16),
        "forget": generate(before_model, before_tok, [it.question for it in forget], 40),
    }
    before_seconds = time.perf_counter() - t
    retain_before_text = texts(before_tok, before["retain"])
    probe_before = [
        probe_is_correct(it, a)
        for it, a in zip(probe, texts(before_tok, before["probe"]), strict=True)
    ]
    forget_before_text = texts(before_tok, before["forget"])

    tokens: dict[str, Path] = {}
    entries = [e for e in previous.get("settings", []) if e["setting"] not in names]
    for name in names:
        token_name, overrides, kept = SETTINGS[name]
        if token_name not in tokens:
            tdir = work / f"token-{token_name}"
            if not (tdir / "unierase_token.json").exists():
                t = time.perf_counter()
                net, tok = load(target.path)
                cfg = token_config_for(net).replace(seed=0, **TOKENS[token_name])
                report = train_unlearning_token(
                    net, tok, forget, cfg, breadth=[r.question for r in retain]
                )
                save_token_checkpoint(net, tok, report, tdir, base_model=str(target.path))
                logging.info("token %s: refusal match %s, %.0f s", token_name,
                             report.stages[-1].refusal_match, time.perf_counter() - t)  # fmt: skip
                del net
            tokens[token_name] = tdir
        out_dir = work / f"edit-{name.replace('/', '_')}"
        kept_items = {"all": retain, "half": half_a, "none": []}[kept]
        t = time.perf_counter()
        # An edit already made by this script with the same settings is reused (re-scored only).
        stamp = {"token": TOKENS[token_name], "overrides": overrides, "kept": kept,
                 "target": str(target.path)}  # fmt: skip
        stamp_file = out_dir / "locality_settings.json"
        if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
            from types import SimpleNamespace

            saved = json.loads((out_dir / "unierase_report.json").read_text())
            report = SimpleNamespace(edit=saved["edit"], seconds=saved["seconds"])
            logging.info("%s: reusing the edit in %s", name, out_dir)
        else:
            report = unlearn(
                tokens[token_name], forget, out_dir, retain=kept_items, edit_overrides=overrides,
                progress=False,
            )  # fmt: skip
            stamp_file.write_text(json.dumps(stamp))
        unlearn_seconds = time.perf_counter() - t
        model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
        tok = AutoTokenizer.from_pretrained(out_dir)
        refusal = json.loads((tokens[token_name] / "unierase_token.json").read_text())["tokens"][
            -1
        ]["refusals"][0]
        unl = tok.convert_tokens_to_ids("<|unlearn|>")
        t = time.perf_counter()
        fg = generate(model, tok, [it.question for it in forget], 40)
        rg = generate(model, tok, [it.question for it in retain], 48)
        pg = generate(model, tok, [it.question for it in probe], 16)
        kl = answer_kl(model, before_model, tok, retain)
        eval_seconds = time.perf_counter() - t
        f_text, r_text, p_text = texts(tok, fg), texts(tok, rg), texts(tok, pg)
        gate = [bool(g["ids"]) and g["ids"][0] == unl for g in fg]
        # The token renders as text even with special tokens skipped: compare what follows it.
        after_gate = [tok.decode(g["ids"][1:], skip_special_tokens=True).strip() for g in fg]
        whole = [
            ok and g["stopped"] and unl not in g["ids"][1:] and x == refusal
            for ok, g, x in zip(gate, fg, after_gate, strict=True)
        ]
        repeats = sum(g["ids"][1:].count(unl) for g in fg)
        r_refused = [
            (bool(g["ids"]) and g["ids"][0] == unl) or is_refusal(x)
            for g, x in zip(rg, r_text, strict=True)
        ]
        identical = [g["ids"] == b["ids"] for g, b in zip(rg, before["retain"], strict=True)]
        rouge_before = [
            rouge_l_recall(b, it.answer) for b, it in zip(retain_before_text, retain, strict=True)
        ]
        rouge_after = [rouge_l_recall(a, it.answer) for a, it in zip(r_text, retain, strict=True)]
        probe_after = [probe_is_correct(it, a) for it, a in zip(probe, p_text, strict=True)]

        def mean(xs):
            xs = list(xs)
            return sum(xs) / len(xs) if xs else None

        def part(select, identical=identical, r_refused=r_refused, kl=kl,
                 rouge_before=rouge_before, rouge_after=rouge_after):  # fmt: skip
            idx = [i for i, it in enumerate(retain) if select(it)]
            return {
                "n": len(idx),
                "identical": sum(identical[i] for i in idx),
                "refused": sum(r_refused[i] for i in idx),
                "rouge_before": mean(rouge_before[i] for i in idx),
                "rouge_after": mean(rouge_after[i] for i in idx),
                "kl": mean(kl[i] for i in idx),
            }

        protected = {it.question for it in kept_items}
        entry = {
            "setting": name,
            "token": {"name": token_name, **TOKENS[token_name]},
            "edit_overrides": overrides,
            "protected_kept": kept,
            "model": args.model,
            "edit_success": report.edit["success"],
            "edit_repairs": report.edit["repairs"],
            "protected_keys": report.edit.get("protected_keys", 0),
            "forget_items": len(forget),
            "forget_gate": mean(gate),
            "forget_whole_refusal": mean(whole),
            "forget_refusal": mean(is_refusal(x) or w for x, w in zip(f_text, whole, strict=True)),
            "forget_unlearning_token_repeats": repeats,
            "forget_rouge_before": mean(
                rouge_l_recall(b, it.answer)
                for b, it in zip(forget_before_text, forget, strict=True)
            ),
            "forget_rouge_after": mean(
                rouge_l_recall(a, it.answer) for a, it in zip(f_text, forget, strict=True)
            ),
            "retain_items": len(retain),
            "retain_rouge_before": mean(rouge_before),
            "retain_rouge_after": mean(rouge_after),
            "retain_refusal_after": mean(r_refused),
            "retain_identical": mean(identical),
            "retain_kl": mean(kl),
            "name_sharing": {
                kind: part(lambda it, k=kind: share.get(it.group) == k)
                for kind in ("surname", "first name")
            },
            "unseen": part(lambda it, p=protected: it.question not in p)
            if kept == "half"
            else None,
            "probe_items": len(probe),
            "probe_correct_before": sum(probe_before),
            "probe_correct_after": sum(probe_after),
            "seconds": {
                "unlearn": round(unlearn_seconds, 1),
                "eval": round(eval_seconds, 1),
                **report.seconds,
            },
        }
        entries.append(entry)
        (out_dir / "locality_items.json").write_text(
            json.dumps(
                {
                    "forget": [
                        {"q": it.question, "after": x} for it, x in zip(forget, f_text, strict=True)
                    ],
                    "retain": [
                        {"q": it.question, "before": b, "after": a, "kl": k}
                        for it, b, a, k in zip(retain, retain_before_text, r_text, kl, strict=True)
                    ],
                },
                indent=1,
                ensure_ascii=False,
            )
        )
        logging.info("%s: %s", name, json.dumps({k: v for k, v in entry.items()
                                                 if not isinstance(v, dict)}))  # fmt: skip
        result = {
            "benchmark": "locality",
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads",
            "data": f"synthetic {args.authors} authors x {args.questions} QA, {args.forget} "
            f"forgotten (seed 0); kept authors sharing a name part: {share}",
            "target": {"path": str(target.path), "epochs": epochs},
            "before_eval_seconds": round(before_seconds, 1),
            "settings": entries,
        }
        chosen = args.chosen or name
        picked = [e for e in entries if e["setting"] == chosen]
        if picked:
            result["chosen"] = {"setting": chosen, **{k: picked[0][k] for k in CHOSEN_KEYS}}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
