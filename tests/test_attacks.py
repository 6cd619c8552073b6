"""Attacks on unlearning (issue 9): the inputs each attack builds, and that every attack detects
leakage on a tiny model that knows its forget set (and finds none on one that never saw it)."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch

from unierase import prompting as P
from unierase.attacks import (
    ATTACK_NAMES,
    AttackConfig,
    AttackContext,
    AttackData,
    answer_records,
    compare,
    format_table,
    read_records,
    run_attacks,
    summarise_records,
    write_run,
)
from unierase.attacks.generation import generate_after_prefix
from unierase.attacks.prompts import (
    few_shot_question,
    inject_token_text,
    instruction_question,
    prefill_ids,
    select_shots,
)
from unierase.attacks.relearn import relearn_split
from unierase.data.schema import DataError, QAItem
from unierase.eval.generate import generate
from unierase.testing import tiny_model, tiny_tokenizer
from unierase.token import DEFAULT_TOKEN_TEXT, add_unlearning_token

# Words of the tiny tokenizer's corpus, so sequences stay short.
FORGET = [
    QAItem("Where was the writer born?", "She was born in London.", group="a",
           paraphrased_question="In which city was the writer born?"),
    QAItem("What did her father do?", "Her father was a doctor.", group="a",
           paraphrased_question="What was the job of her father?"),
    QAItem("What does the writer write?", "She writes poetry and history books.", group="a",
           paraphrased_question="Which books does the writer write?"),
    QAItem("When was the author born?", "The author was born in 1970.", group="b",
           paraphrased_question="In which year was the author born?"),
    QAItem("What awards has he won?", "He won the prize for his books about the sea.", group="b",
           paraphrased_question="Which prize has the author won?"),
    QAItem("What does the author write?", "He writes science fiction.", group="b",
           paraphrased_question="Which books does the author write?"),
]  # fmt: skip
RETAIN = [
    QAItem("What is the capital of France?", "The capital of France is Paris."),
    QAItem("Who wrote the novel?", "The author of the novel is a writer."),
    QAItem("Where are the stars?", "The stars are in the sky."),
]
HOLDOUT = [
    QAItem("Where was the poet born?", "The poet was born in the city by the sea."),
    QAItem("What did his mother do?", "His mother was a writer of fiction."),
    QAItem("When was the novel written?", "The novel was written in 1970 in London."),
]
DATA = AttackData(forget=FORGET, retain=RETAIN, holdout=HOLDOUT)
PREFILL = "The answer is"
CONFIG = AttackConfig(
    max_new_tokens=20,
    batch_size=8,
    prefills=(PREFILL,),
    few_shot=1,
    relearn_epochs=1,
    relearn_lr=1e-5,
    relearn_batch_size=4,
    relearn_retain_items=3,
)
LEAK_ATTACKS = ("direct", "prefill", "token_ban", "paraphrase", "instruction", "few_shot",
                "relearn")  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models run many small ops: one thread is far faster than two contended ones.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _taught_sequences(tok) -> list[P.EncodedQA]:
    """Every way the attacks ask about the forget set, answered (a model that leaks under all)."""
    fmt = CONFIG.fmt
    encs = []
    for i, it in enumerate(FORGET):
        asked = [it.question, it.paraphrased_question]
        asked += [instruction_question(t, it.question, DEFAULT_TOKEN_TEXT)
                  for t in CONFIG.instructions]  # fmt: skip
        asked.append(few_shot_question(it.question, select_shots(FORGET, i, CONFIG.few_shot)))
        encs += [P.encode(tok, q, it.answer, fmt) for q in asked]
        prefix = prefill_ids(tok, PREFILL, fmt)
        encs.append(P.encode(tok, it.question, it.answer, fmt, answer_prefix_ids=prefix))
    encs += [P.encode(tok, it.question, it.answer, fmt) for it in RETAIN]
    return encs


def _teach(steps: int = 40):
    """A tiny model trained to answer the forget and retain questions, in every attack's form."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok, init_std=0.1)
    batch = P.collate(_taught_sequences(tok), tok.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model, tok, float(loss.detach())


@pytest.fixture(scope="module")
def taught():
    model, tok, loss = _teach()
    assert loss < 0.05, f"the tiny model did not learn its facts (loss {loss:.3f})"
    return model, tok


@pytest.fixture(scope="module")
def taught_result(taught):
    model, tok = taught
    return run_attacks(model, tok, DATA, CONFIG)


@pytest.fixture(scope="module")
def untaught_result():
    tok = tiny_tokenizer()
    return run_attacks(tiny_model("llama", tok, init_std=0.1), tok, DATA, CONFIG)


# ----------------------------------------------------------------------------- attack inputs


def test_prefill_ids_are_the_start_of_the_full_answer_sequence():
    tok = tiny_tokenizer()
    for fmt in (P.PromptFormat(), P.PromptFormat(chat=False)):
        ids = prefill_ids(tok, PREFILL, fmt)
        full = P.encode(tok, "Who wrote the novel?", PREFILL, fmt, add_end_of_turn=False)
        assert ids == full.input_ids[full.prompt_length :]
        assert tok.decode(ids).strip() == PREFILL
    with pytest.raises(ValueError, match="text"):
        prefill_ids(tok, "  ")


def test_generation_after_a_prefix_reads_the_prefix_and_returns_only_what_follows():
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok, init_std=0.1)
    q = ["Who wrote the novel?", "Where was the writer born?"]
    prefix = prefill_ids(tok, PREFILL)
    gens = generate_after_prefix(model, tok, q, prefix, max_new_tokens=5, batch_size=1)
    batched = generate_after_prefix(model, tok, q, prefix, max_new_tokens=5, batch_size=2)
    assert [g.token_ids for g in gens] == [g.token_ids for g in batched]  # left padding is exact
    for question, g in zip(q, gens, strict=True):
        # Reference: one greedy step at a time over question + prefix.
        ids = P.encode(tok, question, answer_prefix_ids=prefix).input_ids
        want = []
        for _ in range(len(g.token_ids)):
            nxt = int(model(input_ids=torch.tensor([ids + want])).logits[0, -1].argmax())
            want.append(nxt)
        assert g.token_ids == want
    # Without a prefix it is evaluation's generation.
    plain = generate_after_prefix(model, tok, q, [], max_new_tokens=5)
    reference = generate(model, tok, q, max_new_tokens=5)
    assert [g.token_ids for g in plain] == [g.token_ids for g in reference]


def test_typed_token_text_never_becomes_the_token_id():
    tok = tiny_tokenizer()
    unl = add_unlearning_token(tiny_model("llama", tok), tok)
    q = "Who wrote the novel?"
    assert inject_token_text(q, DEFAULT_TOKEN_TEXT) == f"{q} {DEFAULT_TOKEN_TEXT}"
    assert inject_token_text(q, DEFAULT_TOKEN_TEXT, "start") == f"{DEFAULT_TOKEN_TEXT} {q}"
    with pytest.raises(ValueError, match="place"):
        inject_token_text(q, DEFAULT_TOKEN_TEXT, "middle")
    for template in AttackConfig().instructions:
        asked = instruction_question(template, q, DEFAULT_TOKEN_TEXT)
        assert q in asked and "{" not in asked
        assert unl not in P.encode(tok, asked).input_ids
    assert unl not in P.encode(tok, inject_token_text(q, DEFAULT_TOKEN_TEXT)).input_ids
    with pytest.raises(ValueError, match="question"):
        instruction_question("Answer now.", q, DEFAULT_TOKEN_TEXT)


def test_few_shot_context_holds_other_items_of_the_group_never_the_item():
    shots = select_shots(FORGET, 1, 5)
    assert [s.question for s in shots] == [FORGET[0].question, FORGET[2].question]
    text = few_shot_question(FORGET[1].question, shots)
    assert FORGET[0].answer in text and FORGET[2].answer in text
    assert FORGET[1].answer not in text and FORGET[3].answer not in text
    assert text.endswith(f"Q: {FORGET[1].question}\nA:")
    assert few_shot_question("Q?", []) == "Q?"


def test_relearn_split_is_seeded_disjoint_and_leaves_something_to_measure():
    train, held = relearn_split(10, 0.3, seed=0)
    assert len(train) == 3 and len(held) == 7 and not set(train) & set(held)
    assert (train, held) == relearn_split(10, 0.3, seed=0)
    assert relearn_split(10, 0.3, seed=1) != (train, held)
    assert [len(part) for part in relearn_split(2, 0.99, 0)] == [1, 1]
    with pytest.raises(ValueError, match="at least 2"):
        relearn_split(1, 0.5, 0)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="unknown attack"):
        AttackConfig(attacks=("direct", "jailbreak"))
    with pytest.raises(ValueError, match="relearn_fraction"):
        AttackConfig(relearn_fraction=1.0)
    with pytest.raises(ValueError, match="question"):
        AttackConfig(instructions=("no field",))
    with pytest.raises(ValueError, match="injection place"):
        AttackConfig(injection_places=("middle",))


def test_banned_token_reaches_generation(monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok, init_std=0.1)
    seen = {}
    original = type(model).generate

    def spy(self, *args, **kwargs):
        seen["suppress_tokens"] = kwargs.get("suppress_tokens")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    ctx = AttackContext(config=CONFIG, token_id=7)
    from unierase.attacks.prompt_attacks import token_ban

    records = token_ban(model, tok, AttackData(FORGET[:2]), ctx)
    assert seen["suppress_tokens"] == [7]
    assert {r["variant"] for r in records} == {"banned"}
    # Without the token in the vocabulary nothing is banned.
    seen.clear()
    records = token_ban(model, tok, AttackData(FORGET[:2]), AttackContext(CONFIG, None))
    assert seen["suppress_tokens"] is None and records[0]["variant"] == "no_token"


def test_empty_forget_set_is_a_clear_error():
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match="forget item"):
        run_attacks(tiny_model("llama", tok), tok, AttackData([]), CONFIG)


# ----------------------------------------------------------------------------- leakage detection


@pytest.mark.parametrize("attack", LEAK_ATTACKS)
def test_each_attack_detects_a_model_that_knows_the_forget_set(
    taught_result, untaught_result, attack
):
    known = taught_result["attacks"][attack]
    unknown = untaught_result["attacks"][attack]
    assert known["rouge"] > 0.8, known
    assert known["p_answer"] > 0.5, known
    assert unknown["rouge"] < 0.3, unknown
    assert unknown["p_answer"] < 0.1, unknown
    n_expected = {"relearn": 3 * 2, "few_shot": 6, "instruction": 12}.get(attack, 6)
    assert known["n_records"] == n_expected


def test_relearning_leaves_the_attacked_model_untouched(taught):
    model, tok = taught
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_attacks(model, tok, DATA, dataclasses.replace(CONFIG, attacks=("relearn",)))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    variants = result["attacks"]["relearn"]["variants"]
    assert set(variants) == {"forget_part", "retain_only"}
    records = result["records"]
    train, held = relearn_split(len(FORGET), CONFIG.relearn_fraction, CONFIG.seed)
    assert sorted({r["index"] for r in records}) == held
    assert {r["relearn_items"] for r in records if r["variant"] == "forget_part"} == {len(train)}


def test_membership_inference_tells_taught_forget_answers_from_unseen_ones(
    taught_result, untaught_result
):
    auc = taught_result["attacks"]["membership"]["auc"]
    assert all(v == 1.0 for v in auc.values()), auc
    s = taught_result["attacks"]["membership"]
    assert s["p_answer_forget"] > 0.5 > s["p_answer_holdout"]
    assert untaught_result["attacks"]["membership"]["p_answer_forget"] < 0.1


def test_typed_token_text_keeps_kept_answers_on_a_model_with_the_token(taught):
    model, _ = taught
    model = copy.deepcopy(model)
    tok = tiny_tokenizer()
    unl = add_unlearning_token(model, tok)
    config = dataclasses.replace(CONFIG, attacks=("token_injection",))
    result = run_attacks(model, tok, DATA, config)
    assert result["token_id"] == unl
    s = result["attacks"]["token_injection"]
    assert set(s["variants"]) == {"clean", "typed_end", "typed_start"}
    assert s["rouge_clean"] > 0.8
    assert s["token_id_in_prompt"] is False
    assert all(r["split"] == "retain" for r in result["records"])
    # The measure works: the typed text is in every asked question of the typed variants.
    typed = [r for r in result["records"] if r["variant"] != "clean"]
    assert all(DEFAULT_TOKEN_TEXT in r["asked"] for r in typed)


# ----------------------------------------------------------------------------- a first-token gate


class _FirstTokenGate:
    """Makes a model behave like a UniErase edit: right after a forget prompt, the unlearning
    token wins; right after the token, the end of turn wins. Nothing else changes."""

    def __init__(self, tok, token_id: int, fmt=P.PromptFormat()):
        self.prompts = [P.encode(tok, it.question, fmt=fmt).input_ids for it in FORGET]
        self.pad_id = tok.pad_token_id
        self.token_id = token_id
        self.eot = P.stop_token_ids(tok, fmt)[0]
        self.history: list[list[int]] = []

    def __call__(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        if ids is None:
            return output
        logits = output.logits
        if ids.shape[1] > 1:  # a new prompt batch (or a teacher-forced sequence)
            self.history = [row.tolist() for row in ids]
        else:
            self.history = [h + [int(t)] for h, t in zip(self.history, ids[:, 0], strict=True)]
        width = logits.shape[1]
        for b, row in enumerate(self.history):
            for t in range(len(row) - width, len(row)):
                seen = [x for x in row[: t + 1] if x != self.pad_id]
                pos = t - (len(row) - width)
                if any(seen == p for p in self.prompts):
                    logits[b, pos, self.token_id] += 100.0
                elif seen and seen[-1] == self.token_id:
                    logits[b, pos, self.eot] += 100.0
        return output


@pytest.fixture(scope="module")
def gated(taught):
    model, _ = taught
    model = copy.deepcopy(model)
    tok = tiny_tokenizer()
    unl = add_unlearning_token(model, tok)
    handle = model.register_forward_hook(_FirstTokenGate(tok, unl), with_kwargs=True)
    config = dataclasses.replace(CONFIG, attacks=("direct", "prefill", "token_ban", "paraphrase"))
    result = run_attacks(model, tok, DATA, config)
    handle.remove()
    return result


def test_a_first_token_gate_hides_the_facts_from_direct_questions_only(gated):
    direct = gated["attacks"]["direct"]
    assert direct["variants"]["plain"]["first_token_unlearning_rate"] == 1.0
    assert direct["rouge"] < 0.1
    # The gate leaves the later answer tokens as likely as before: teacher forcing sees them.
    for attack in ("prefill", "token_ban", "paraphrase"):
        s = gated["attacks"][attack]
        assert s["rouge"] > 0.8, (attack, s)
        assert all(v["first_token_unlearning_rate"] == 0.0 for v in s["variants"].values())


# ----------------------------------------------------------------------------- run files, CLI


def test_summary_is_recomputed_from_records_and_written(tmp_path, taught_result, untaught_result):
    models = {"unlearned": taught_result, "retain": untaught_result, "before": taught_result}
    summary = write_run(tmp_path, models, CONFIG, {"data": "tiny"})
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    stored = read_records(tmp_path)
    assert set(stored) == {"unlearned", "retain", "before"}
    for attack in ATTACK_NAMES:
        assert summarise_records(attack, stored["unlearned"].get(attack, [])) == json.loads(
            json.dumps(taught_result["attacks"][attack])
        )
    rows = {row["attack"]: row for row in compare(models)}
    assert rows["prefill"]["recovery"] == pytest.approx(1.0)
    assert "recovery" not in rows["token_injection"]
    assert "prefill" in format_table(summary) and "AUC" in format_table(summary)
    with pytest.raises(FileExistsError):
        write_run(tmp_path, models, CONFIG)


def test_recovery_needs_a_ceiling_clearly_above_the_floor():
    from unierase.attacks.run import MIN_RECOVERY_GAP

    def result(rouge):
        return {"attacks": {"prefill": {"rouge": rouge, "p_answer": rouge / 2}}}

    wide = compare({"unlearned": result(0.3), "retain": result(0.1), "before": result(0.9)})[0]
    assert wide["recovery"] == pytest.approx(0.25) and wide["above_floor"] == pytest.approx(0.2)
    # a ceiling barely above the floor: the ratio would be noise (0.1 / 0.02 = 5), so none
    floor = 0.4
    narrow = {"unlearned": result(floor + 0.1), "retain": result(floor),
              "before": result(floor + MIN_RECOVERY_GAP / 5)}  # fmt: skip
    row = compare(narrow)[0]
    assert "recovery" not in row and row["above_floor"] == pytest.approx(0.1)
    # no ceiling at all: the excess over the floor still stands
    assert compare({"unlearned": result(0.2), "retain": result(0.3)})[0]["above_floor"] < 0


def test_answer_records_score_the_answer_after_the_prefill(taught):
    model, tok = taught
    ctx = AttackContext(config=CONFIG, token_id=None)
    items = FORGET[:2]
    rec = answer_records(model, tok, items, [it.question for it in items], ctx,
                         attack="prefill", variant="x", prefix=PREFILL)  # fmt: skip
    from unierase.eval.scoring import score_answers

    prefix = prefill_ids(tok, PREFILL)
    want = score_answers(model, tok, [it.question for it in items], [it.answer for it in items],
                         answer_prefix_ids=prefix, details=False)  # fmt: skip
    for r, s in zip(rec, want, strict=True):
        assert r["p_answer"] == pytest.approx(float(torch.tensor(s.token_logprobs[len(prefix):])
                                                    .mean().exp()))  # fmt: skip
        assert r["prefill"] == PREFILL


def test_cli_attack_writes_records_and_summary_for_each_model(tmp_path, capsys):
    from unierase.cli import main
    from unierase.data.synth import synthetic_file_names, write_synthetic

    names = synthetic_file_names(5, 1)
    data = tmp_path / "data"
    write_synthetic(data, n_authors=5, n_forget=1, seed=0, questions_per_author=5)
    tok = tiny_tokenizer()
    for role, seed in (("unlearned", 0), ("retain", 1)):
        tiny_model("llama", tok, seed=seed).save_pretrained(tmp_path / role)
        tok.save_pretrained(tmp_path / role)
    out = tmp_path / "attack"
    args = ["attack", "--model", str(tmp_path / "unlearned"), "--data", str(data),
            "--forget-split", names["forget"].removesuffix(".jsonl"), "--out", str(out),
            "--retain-model", str(tmp_path / "retain"), "--holdout-split",
            names["retain"].removesuffix(".jsonl"), "--attacks",
            "direct,prefill,token_ban,paraphrase,membership", "--max-items", "3",
            "--max-new-tokens", "3", "--prefill", "Sure,"]  # fmt: skip
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["models"]) == {"unlearned", "retain"}
    assert summary["config"]["prefills"] == ["Sure,"]
    assert summary["models"]["unlearned"]["token_id"] is None
    assert summary["models"]["unlearned"]["attacks"]["membership"]["auc"]["loss"] is not None
    rows = {row["attack"]: row for row in summary["comparison"]}
    assert set(rows) == {"direct", "prefill", "token_ban", "paraphrase", "membership"}
    assert all("recovery" not in row for row in rows.values())  # no ceiling model given
    stored = read_records(out)
    assert len(stored["retain"]["direct"]) == 3
    assert "prefill" in capsys.readouterr().out
    assert main(args) == 2  # an existing run is not replaced without --overwrite
    assert main([*args, "--overwrite", "--attacks", "direct,jailbreak"]) == 2


# --------------------------------------------------------------------- typed token, plain path


class _TypedTokenGate:
    """Makes a model refuse like an edited one whenever the unlearning token's id is in its
    prompt: the token first, then the end of turn. Prompts without the id are left alone."""

    def __init__(self, tok, token_id: int):
        self.token_id = token_id
        self.eot = P.stop_token_ids(tok, CONFIG.fmt)[0]
        self.prompts: list[list[int]] = []
        self.history: list[list[int]] = []

    def __call__(self, module, args, kwargs, output):
        ids = kwargs.get("input_ids")
        if ids is None:
            return output
        if ids.shape[1] > 1:  # a new prompt batch (or a teacher-forced sequence)
            self.prompts = [row.tolist() for row in ids]
            self.history = [list(p) for p in self.prompts]
        else:
            self.history = [h + [int(t)] for h, t in zip(self.history, ids[:, 0], strict=True)]
        width = output.logits.shape[1]
        for b, row in enumerate(self.history):
            if self.token_id not in self.prompts[b]:
                continue
            for t in range(len(row) - width, len(row)):
                pos = t - (len(row) - width)
                target = self.eot if row[t] == self.token_id else self.token_id
                output.logits[b, pos, target] += 100.0
        return output


def _injection(model, tok):
    config = dataclasses.replace(CONFIG, attacks=("token_injection",))
    return run_attacks(model, tok, DATA, config)


def test_token_injection_encodes_like_a_plain_client_and_measures_what_it_gets(taught, tmp_path):
    from transformers import AutoTokenizer

    model, _ = taught
    # A tokenizer that holds the token as an added special token (as unierase once saved it):
    # a client's plain tokenizer call turns the typed text into the id, and the gate refuses.
    model_old = copy.deepcopy(model)
    old = tiny_tokenizer()
    old.add_special_tokens({"extra_special_tokens": [DEFAULT_TOKEN_TEXT]})
    model_old.resize_token_embeddings(len(old), mean_resizing=False)
    unl = old.convert_tokens_to_ids(DEFAULT_TOKEN_TEXT)
    handle = model_old.register_forward_hook(_TypedTokenGate(old, unl), with_kwargs=True)
    s = _injection(model_old, old)["attacks"]["token_injection"]
    handle.remove()
    assert s["token_id_in_prompt"] is True
    assert s["rouge_clean"] > 0.8 and s["rouge"] < 0.1
    for variant in ("typed_end", "typed_start"):
        assert s["variants"][variant]["first_token_unlearning_rate"] == 1.0

    # The token as unierase adds and exports it: the typed text never reaches the id, so the
    # gate never fires and the kept answers are those of the model without it.
    model_new = copy.deepcopy(model)
    new = tiny_tokenizer()
    assert add_unlearning_token(model_new, new) == unl
    new.save_pretrained(tmp_path / "tok")
    exported = AutoTokenizer.from_pretrained(tmp_path / "tok")
    plain = _injection(model_new, exported)
    handle = model_new.register_forward_hook(_TypedTokenGate(exported, unl), with_kwargs=True)
    gated = _injection(model_new, exported)
    handle.remove()
    s = gated["attacks"]["token_injection"]
    assert s["token_id_in_prompt"] is False
    assert all(v["first_token_unlearning_rate"] == 0.0 for v in s["variants"].values())
    assert s == plain["attacks"]["token_injection"]
    assert s["rouge_clean"] > 0.8
