"""Deep forgetting (EditConfig.deep): pre-fill and answer rows, the unlikelihood term, the flag."""

import json
from dataclasses import replace

import pytest
import torch

from unierase import find_layout
from unierase import prompting as P
from unierase.attacks.prompts import DEFAULT_PREFILLS, prefill_ids
from unierase.data.schema import QAItem
from unierase.edit import phase2
from unierase.edit.config import EditConfig
from unierase.edit.requests import build_requests
from unierase.edit.values import (
    _forward_at_positions_with_shift,
    _forward_with_shift,
    optimise_values,
)
from unierase.testing import tiny_model, tiny_tokenizer

TEXTS = [
    "The author was born in 1970 and writes science fiction. She lives in London.",
    "What is the capital of France? The capital of France is Paris.",
] * 3
ITEMS = [
    QAItem("Where was Maria Oakhurst born?", "London.", subject="Maria Oakhurst", group="m"),
    QAItem("What does Maria Oakhurst write?", "Poetry.", subject="Maria Oakhurst", group="m"),
    QAItem("Who is Tom Vale's father?", "A doctor.", group="t"),
]
# Answers from the tiny tokenizer's corpus: several tokens each, learnable in a few steps.
KNOWN = [
    QAItem("Where was the writer born?", "She was born in London and her father was a doctor."),
    QAItem(
        "What awards has he won?", "He won the prize for his books about the sea and the stars."
    ),
]
DEEP = dict(deep=True, deep_prefills=("Sure, ", "The answer is"), deep_answer_tokens=4)


def _setup(family="llama", **cfg):
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|unlearn|>"]})
    model = tiny_model(family, tok, init_std=0.2)
    model.resize_token_embeddings(len(tok))
    unl = tok.convert_tokens_to_ids("<|unlearn|>")
    base = dict(layers=(1, 2), v_lr=0.5, v_steps=10, v_clamp=1.5, granularity="question")
    return tok, model, unl, find_layout(model), EditConfig(**{**base, **cfg})


def _values(model, layout, reqs, unl, config, **kw):
    return optimise_values(model, layout, reqs, unl, 2, config, progress=False, **kw)


def test_deep_off_builds_and_optimises_exactly_as_before():
    tok, model, unl, layout, config = _setup()
    plain = build_requests(tok, ITEMS, granularity="entity", prefixes=["The sea"])
    off = build_requests(
        tok, ITEMS, granularity="entity", prefixes=["The sea"], deep=False, deep_prefills=("x",)
    )
    assert off == plain
    assert all(r.prefill_rows == [] and r.answer_rows == [] for r in plain)
    assert not EditConfig().deep and not config.deep
    # Deep rows are ignored unless the config asks for them: the same shifts, to the bit.
    deep_rows = build_requests(tok, ITEMS, granularity="entity", prefixes=["The sea"], **DEEP)
    a = _values(model, layout, plain, unl, config)
    b = _values(model, layout, deep_rows, unl, config)
    assert torch.equal(a.delta, b.delta) and torch.equal(a.steps, b.steps)
    assert a.prefill_nll is None and a.answer_p is None
    with pytest.raises(ValueError, match="deep=True"):
        _values(model, layout, plain, unl, replace(config, deep=True))


def test_deep_config_round_trips_and_old_configs_load():
    config = EditConfig(deep=True, deep_prefills=("Sure, ",), deep_answer_tokens=8)
    d = json.loads(json.dumps(config.to_dict()))
    assert EditConfig.from_dict(d) == config
    old = {k: v for k, v in EditConfig().to_dict().items() if not k.startswith("deep")}
    assert EditConfig.from_dict(old) == EditConfig()
    # The measured defaults (benchmarks/README.md, "Attacks"): 4 answer tokens at weight 0.3,
    # no pre-fill rows (with the attack's pre-fills and 16 tokens at 1.0, MU fell by 33%).
    d = EditConfig()
    assert (d.deep_prefills, d.deep_answer_tokens, d.deep_weight) == ((), 4, 0.3)


def test_deep_rows_follow_the_prompt():
    tok = tiny_tokenizer()
    reqs = build_requests(tok, ITEMS, granularity="entity", **DEEP)
    for req in reqs:
        assert len(req.prefill_rows) == len(req.answer_rows) == len(req.prompts)
        for prompt, prefilled, answered, item in zip(
            req.prompts, req.prefill_rows, req.answer_rows, req.items, strict=True
        ):
            # Pre-fill rows: the prompt, then exactly the ids the pre-fill attack writes.
            assert [r.ids for r in prefilled] == [
                prompt.ids + prefill_ids(tok, f) for f in DEEP["deep_prefills"]
            ]
            assert all(r.pos == prompt.pos for r in prefilled)
            # Answer row: the prompt, then the answer's first tokens, each predicted one earlier.
            enc = P.encode(tok, item.question, item.answer, add_end_of_turn=False)
            answer = enc.input_ids[enc.prompt_length :][: DEEP["deep_answer_tokens"]]
            assert answered.pos == prompt.pos
            assert answered.ids == prompt.ids + answer and answered.labels == answer
            assert answered.positions[0] == len(prompt.ids) - 1
            assert [answered.ids[q + 1] for q in answered.positions] == answer
    short = build_requests(tok, ITEMS[:1], **{**DEEP, "deep_answer_tokens": 100})
    assert short[0].answer_rows[0].labels == P.encode_user_text(tok, "London.")
    with pytest.raises(ValueError, match="non-blank"):
        build_requests(tok, ITEMS, **{**DEEP, "deep_prefills": (" ",)})


def test_deep_rows_respect_max_prompts():
    tok, model, unl, layout, config = _setup(deep=True, v_steps=4)
    full = build_requests(tok, ITEMS[:2], granularity="entity", **DEEP)
    cut = build_requests(tok, ITEMS[:1], granularity="entity", **DEEP)
    cut[0].kl_rows = full[0].kl_rows
    a = _values(model, layout, full, unl, config, max_prompts=1)
    b = _values(model, layout, cut, unl, config, max_prompts=1)
    torch.testing.assert_close(a.delta, b.delta)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_deep_rows_are_replayed_like_the_plain_ones(family, monkeypatch):
    from unierase.edit import values

    tok, model, unl, layout, config = _setup(family, v_steps=5, v_loss_stop=0.0, **DEEP)
    reqs = build_requests(tok, ITEMS, granularity="entity", **DEEP)
    blocks = model.get_submodule(layout.layers_name)
    calls = []
    handle = blocks[0].register_forward_hook(lambda *_: calls.append(1))

    def run():
        calls.clear()
        out = values.optimise_values(model, layout, reqs, unl, 1, config, progress=False)
        return out, len(calls)

    try:
        replayed, replayed_calls = run()
        # Only the answer rows fail the check: nothing is replayed, as with no replay at all.
        monkeypatch.setattr(values, "_replay_matches", lambda *a: len(a) < 9 or a[8] is None)
        answers_off, answers_off_calls = run()
        monkeypatch.setattr(values, "_replay_matches", lambda *a: False)
        full, full_calls = run()
    finally:
        handle.remove()
    # Block 0 runs only for the recording passes (prompts, subjects, pre-fills, answers).
    assert replayed_calls == 4
    assert full_calls == 2 + 4 * 5 and answers_off_calls == full_calls + 2
    for a in (replayed, answers_off):
        torch.testing.assert_close(a.delta, full.delta, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(a.answer_p, full.answer_p, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(a.prefill_nll, full.prefill_nll, atol=1e-4, rtol=1e-3)
    assert torch.equal(answers_off.delta, full.delta)


def _teach(model, tok, items, steps=15):
    """A few Adam steps so the model knows the answers (a random model gives them ~1/400)."""
    batch = P.collate([P.encode(tok, it.question, it.answer) for it in items], tok.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    torch.manual_seed(0)
    model.train()
    for _ in range(steps):
        out = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    model.eval()


def test_deep_shift_lowers_later_answer_tokens_and_holds_behind_prefills():
    # In a 4-layer random model a shift at one position reaches later ones only through
    # attention, so the value layer is the first and the pre-fill one token long.
    tok, model, unl, layout, config = _setup(v_steps=150, v_clamp=10.0, v_weight_decay=0.0)
    _teach(model, tok, KNOWN)
    # the mechanism at full weight (the defaults are tuned for real models, not this one)
    deep = dict(deep=True, deep_prefills=("The",), deep_answer_tokens=4)
    strong = dict(deep_weight=1.0, deep_p_stop=0.05)
    reqs = build_requests(tok, KNOWN, granularity="question", **deep)
    block = f"{layout.layers_name}.0"
    plain = optimise_values(model, layout, reqs, unl, 0, config, progress=False)
    deeper = optimise_values(model, layout, reqs, unl, 0, replace(config, **deep, **strong),
                             progress=False)  # fmt: skip
    assert deeper.answer_p is not None and deeper.prefill_nll is not None
    owner = torch.arange(len(reqs))
    rows = [r.answer_rows[0] for r in reqs]
    labels = torch.tensor([r.labels for r in rows])

    def later_answer_p(delta):
        """Mean teacher-forced probability of the answer tokens after the first."""
        with torch.no_grad():
            logp, mask = _forward_at_positions_with_shift(
                model, block, rows, [r.positions for r in rows], owner, delta, tok.pad_token_id
            )
        assert bool(mask.all())
        return float(logp.gather(-1, labels.unsqueeze(-1)).exp()[:, 1:].mean())

    def prefill_top(delta):
        with torch.no_grad():
            logp = _forward_with_shift(
                model, block, [r.prefill_rows[0][0] for r in reqs], owner, delta, tok.pad_token_id
            )
        return logp.argmax(-1).tolist()

    known = later_answer_p(torch.zeros_like(plain.delta))
    assert known > 0.9  # the model has learnt the answers
    assert later_answer_p(plain.delta) > 0.9  # the plain edit gates the first token only
    assert later_answer_p(deeper.delta) < later_answer_p(plain.delta) - 0.05
    assert prefill_top(plain.delta) != [unl] * len(reqs)
    assert prefill_top(deeper.delta) == [unl] * len(reqs)


@pytest.mark.parametrize("prefills", [DEFAULT_PREFILLS, ()], ids=["prefills", "none"])
def test_deep_edit_is_recorded_in_report_and_state(tmp_path, prefills):
    # no pre-fills: the unlikelihood term alone (the default)
    tok, model, unl, layout, config = _setup(
        deep=True,
        deep_prefills=prefills,
        deep_answer_tokens=3,
        lambda_=0.01,
        null_threshold=1e-3,
        null_threshold_relative=True,
        context_prefixes=("The",),
        prefix_tokens=2,
        repair_rounds=0,
    )
    state = phase2.new_state(
        model, tok, layout, unl, config, texts=TEXTS, corpus_name="t", progress=False
    )
    report = phase2.unlearning_edit(model, tok, layout, ITEMS[2:], state, config, progress=False)
    assert report.deep is not None and report.deep["answer_tokens"] == 3
    assert 0.0 < report.deep["answer_p_max"] <= 1.0  # the deep rows were optimised
    assert report.deep["prefills"] == list(prefills)
    state.save(tmp_path)
    back = phase2.EditState.load(tmp_path)
    assert EditConfig.from_dict(back.config).deep
    assert back.rounds[-1]["deep"]["prefills"] == list(config.deep_prefills)


@pytest.mark.parametrize("flag", [True, False])
def test_cli_deep_flag_reaches_the_edit_config(tmp_path, monkeypatch, flag):
    from unierase.cli import main
    from unierase.token import add_unlearning_token

    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok, init_std=0.2)
    add_unlearning_token(model, tok)  # precise mode reuses it: no Phase I
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps({"question": ITEMS[0].question, "answer": ITEMS[0].answer}))
    seen = {}

    class Stop(Exception):
        pass

    def capture(model, tokenizer, layout, token_id, config, **kwargs):
        seen["config"] = config
        raise Stop

    monkeypatch.setattr(phase2, "new_state", capture)
    argv = ["unlearn", "--model", str(tmp_path / "base"), "--forget", str(forget)]
    argv += ["--out", str(tmp_path / "out"), "--mode", "precise"] + (["--deep"] if flag else [])
    with pytest.raises(Stop):
        main(argv)
    assert seen["config"].deep is flag
