"""Phase II maths on tiny random models: projector, solve, multi-layer edit, sequential rounds."""

import pytest
import torch

from unierase import find_layout
from unierase import prompting as P
from unierase.data.schema import QAItem
from unierase.edit import phase2
from unierase.edit.alphaedit import compute_alphaedit, solve_update
from unierase.edit.config import EditConfig, preset_for
from unierase.edit.projector import null_space_projector
from unierase.edit.requests import build_requests
from unierase.edit.stats import cached_second_moments, collect_second_moments, corpus_sequences
from unierase.edit.trace import Trace, patch_output
from unierase.testing import tiny_model, tiny_tokenizer

TEXTS = [
    "The author was born in 1970 and writes science fiction. She lives in London.",
    "What is the capital of France? The capital of France is Paris.",
    "Where was the writer born? She was born in London and her father was a doctor.",
    "What awards has he won? He won the prize for his books about the sea and the stars.",
] * 3

# Questions edited at their last prompt token (no subject): in a random model the subject's
# influence on the last position is too weak to test the solve with; subject keys are tested apart.
FORGET = [
    QAItem("Where was Maria Oakhurst born?", "London.", group="maria"),
    QAItem("What does Maria Oakhurst write?", "Poetry.", group="maria"),
    QAItem("Who is Tom Vale's father?", "A doctor.", group="tom"),
]
SECOND = [QAItem("What is the capital of France?", "Paris.", group="ada")]


def _setup(family="llama", **cfg):
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|unlearn|>"]})
    model = tiny_model(family, tok, init_std=0.2)
    model.resize_token_embeddings(len(tok))
    unl = tok.convert_tokens_to_ids("<|unlearn|>")
    layout = find_layout(model)
    base = dict(
        layers=(1, 2),
        lambda_=0.01,
        v_lr=0.5,
        v_steps=100,
        v_clamp=1.5,
        null_threshold=1e-3,
        null_threshold_relative=True,
        context_prefixes=("The",),
        prefix_tokens=3,
        granularity="question",
        repair_rounds=1,
    )
    base.update(cfg)
    config = EditConfig(**base)
    return tok, model, unl, layout, config


def _first_tokens(model, tok, items):
    out = []
    for it in items:
        enc = P.encode(tok, it.question)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.input_ids])).logits
        out.append(int(logits[0, -1].argmax()))
    return out


def test_projector_keeps_null_space_of_low_rank_moment():
    g = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))[0]
    eig = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    moment = basis @ torch.diag(eig) @ basis.T
    proj = null_space_projector(moment, threshold=1e-6)
    assert proj.rank == 4
    torch.testing.assert_close(proj.matrix @ proj.matrix, proj.matrix)  # idempotent
    used = basis[:, :4]
    torch.testing.assert_close(proj.matrix @ used, torch.zeros_like(used), atol=1e-10, rtol=0)
    rel = null_space_projector(moment, threshold=0.15, relative=True)  # below 0.75: 0.5 and zeros
    assert rel.rank == 5 and rel.threshold == pytest.approx(0.75)


def test_solve_lies_in_projector_span_and_spares_protected_keys():
    g = torch.Generator().manual_seed(1)
    d_mlp, d_hidden, n = 12, 6, 3
    basis = torch.linalg.qr(torch.randn(d_mlp, d_mlp, generator=g, dtype=torch.float64))[0]
    protected = basis[:, :5]
    moment = protected @ protected.T
    proj = null_space_projector(moment, threshold=1e-6).matrix
    keys = torch.randn(n, d_mlp, generator=g, dtype=torch.float64)
    resid = torch.randn(n, d_hidden, generator=g, dtype=torch.float64)
    c_prev = torch.randn(d_mlp, 4, generator=g, dtype=torch.float64)
    delta = solve_update(keys, resid, proj, c_prev @ c_prev.T, lambda_=0.1)
    assert delta.shape == (d_hidden, d_mlp)
    torch.testing.assert_close(proj @ delta.T, delta.T, atol=1e-9, rtol=1e-7)
    # Any key in the protected subspace gets exactly the old output.
    k = protected @ torch.randn(5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(
        delta @ k, torch.zeros(d_hidden, dtype=torch.float64), atol=1e-9, rtol=0
    )
    # Without a projector constraint (P = I) and lambda -> 0 the keys map exactly to residuals.
    exact = solve_update(keys, resid, torch.eye(d_mlp, dtype=torch.float64), None, lambda_=1e-9)
    torch.testing.assert_close(keys @ exact.T, resid, atol=1e-6, rtol=1e-6)


def test_trace_and_patch():
    tok = tiny_tokenizer()
    model = tiny_model("gpt2", tok)
    layout = find_layout(model)
    ids = torch.tensor([tok("The author was born")["input_ids"]])
    name = f"{layout.layers_name}.1"
    with Trace(model, [layout.down_proj_names[1], name], inputs=True, outputs=True) as tr:
        base = model(input_ids=ids).logits
    assert tr.inputs[layout.down_proj_names[1]].shape[-1] == 128
    assert tr.outputs[name].shape[-1] == 64
    with patch_output(model, name, lambda h: h + 1.0):
        patched = model(input_ids=ids).logits
    assert not torch.allclose(base, patched)
    torch.testing.assert_close(model(input_ids=ids).logits, base)  # the hook is gone


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_forward_until_stops_after_the_module_and_reads_the_same_keys(family):
    from unierase.edit.keys import read_rows
    from unierase.edit.requests import Row
    from unierase.edit.trace import forward_until

    tok = tiny_tokenizer()
    model = tiny_model(family, tok)
    layout = find_layout(model)
    calls = []
    last = model.get_submodule(f"{layout.layers_name}.{layout.num_layers - 1}")
    handle = last.register_forward_hook(lambda *a: calls.append(1))
    ids = torch.tensor([tok("The author was born in a small town")["input_ids"]])
    with Trace(model, [layout.down_proj_names[1]], inputs=True) as tr:
        assert forward_until(model, f"{layout.layers_name}.1", input_ids=ids) is None
    early = tr.inputs[layout.down_proj_names[1]]
    assert calls == []  # the last block never ran
    with Trace(model, [layout.down_proj_names[1]], inputs=True) as tr:
        out = forward_until(model, f"{layout.layers_name}.{layout.num_layers - 1}", input_ids=ids)
    assert out is None and calls == [1]
    torch.testing.assert_close(early, tr.inputs[layout.down_proj_names[1]], rtol=0, atol=0)
    assert model(input_ids=ids).logits.shape[1] == ids.shape[1]  # no stop hook left behind
    handle.remove()

    rows = [Row(tok("Who wrote the book")["input_ids"], 2), Row(ids[0].tolist(), 4)]
    full = read_rows(model, layout, rows, key_layers=[1], hidden_layers=[2])
    cut = read_rows(model, layout, rows, key_layers=[1], hidden_layers=[2], logits=False)
    assert cut[2] is None and full[2].shape[0] == 2
    torch.testing.assert_close(full[0][1], cut[0][1], rtol=0, atol=0)
    torch.testing.assert_close(full[1][2], cut[1][2], rtol=0, atol=0)


def test_statistics_ignore_padding_and_are_cached(tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    layout = find_layout(model)
    seqs = corpus_sequences(tok, TEXTS[:4], max_length=32)
    assert any(tok.convert_tokens_to_ids("<|im_start|>") in s for s in seqs)  # chat-wrapped part
    one = collect_second_moments(model, layout, [1], seqs, batch_size=1, progress=False)
    many = collect_second_moments(model, layout, [1], seqs, batch_size=4, progress=False)
    assert one[1].count == many[1].count == sum(len(s) for s in seqs)
    torch.testing.assert_close(one[1].moment, many[1].moment, atol=1e-7, rtol=1e-5)
    first = cached_second_moments(model, layout, [1, 2], seqs, cache=tmp_path, progress=False)
    import unierase.edit.stats as stats_mod

    def fail(*a, **k):
        raise AssertionError("statistics recomputed instead of read from the cache")

    monkeypatch.setattr(stats_mod, "collect_second_moments", fail)
    again = cached_second_moments(model, layout, [1, 2], seqs, cache=tmp_path, progress=False)
    torch.testing.assert_close(first[2].moment, again[2].moment)


def test_subject_key_position_and_entity_grouping():
    tok = tiny_tokenizer()
    items = [
        QAItem("Where was Maria Oakhurst born?", "x", subject="Maria Oakhurst", group="m"),
        QAItem("What does Maria Oakhurst write?", "y", subject="Maria Oakhurst", group="m"),
        QAItem("Who is Tom Vale?", "z", subject="Tom Vale", group="t"),
    ]
    reqs = build_requests(tok, items, granularity="entity", prefixes=["The sea"])
    assert [len(r.prompts) for r in reqs] == [2, 1]
    row = reqs[0].prompts[0]
    assert tok.decode(row.ids[: row.pos + 1]).endswith("Oakhurst")
    ctx = reqs[0].contexts[0][0]
    assert "The sea Where" in tok.decode(ctx.ids) and tok.decode(ctx.ids[: ctx.pos + 1]).endswith(
        "Oakhurst"
    )
    assert len(build_requests(tok, items, granularity="question")) == 3


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batch_edit_makes_token_first_and_edit_stays_in_null_space(family):
    tok, model, unl, layout, config = _setup(family)
    state = phase2.new_state(
        model, tok, layout, unl, config, texts=TEXTS, corpus_name="t", progress=False
    )
    assert all(0 < r < layout.mlp_size for r in state.ranks.values())
    before = {layer: layout.down_proj_weight(model, layer).detach().clone() for layer in (1, 2)}
    untouched = [n for n, _ in model.named_parameters()]
    params_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    report = phase2.unlearning_edit(model, tok, layout, FORGET, state, config, progress=False)
    assert report.success == 1.0, report
    assert _first_tokens(model, tok, FORGET) == [unl] * len(FORGET)
    for layer in (1, 2):
        delta = (layout.down_proj_weight(model, layer).detach() - before[layer]).double()
        proj = state.projectors[layer].double()
        assert delta.abs().max() > 0
        torch.testing.assert_close(proj @ delta.T, delta.T, atol=1e-5, rtol=1e-4)
    # Nothing but the edited down-projections moved.
    edited = {layout.down_proj_names[layer] + ".weight" for layer in (1, 2)}
    for name in untouched:
        if name not in edited:
            assert torch.equal(dict(model.named_parameters())[name], params_before[name]), name
    assert report.parameters_changed == 2 * 64 * 128
    assert state.c_prev[1].abs().sum() > 0


def test_sequential_round_keeps_first_round():
    tok, model, unl, layout, config = _setup("llama")
    state = phase2.new_state(
        model, tok, layout, unl, config, texts=TEXTS, corpus_name="t", progress=False
    )
    phase2.unlearning_edit(model, tok, layout, FORGET, state, config, progress=False)
    c_after_first = {k: v.clone() for k, v in state.c_prev.items()}
    assert _first_tokens(model, tok, SECOND) != [unl]  # the second round has work to do
    second = phase2.unlearning_edit(
        model, tok, layout, SECOND + FORGET[:1], state, config, progress=False
    )
    assert second.skipped_repeats == [FORGET[0].question]
    assert second.success == 1.0
    assert _first_tokens(model, tok, FORGET + SECOND) == [unl] * 4
    assert any(not torch.equal(c_after_first[k], state.c_prev[k]) for k in state.c_prev)
    assert len(state.rounds) == 2


def test_state_round_trip(tmp_path):
    tok, model, unl, layout, config = _setup("llama")
    state = phase2.new_state(
        model, tok, layout, unl, config, texts=TEXTS, corpus_name="t", progress=False
    )
    phase2.unlearning_edit(model, tok, layout, FORGET[:1], state, config, progress=False)
    state.save(tmp_path)
    back = phase2.EditState.load(tmp_path)
    assert back.layers == state.layers and back.token_id == unl
    assert back.edited_questions == [FORGET[0].question]
    torch.testing.assert_close(back.c_prev[2], state.c_prev[2])
    assert EditConfig.from_dict(back.config) == config
    with pytest.raises(FileNotFoundError, match="not a unierase output"):
        phase2.EditState.load(tmp_path / "nothing")


def test_compute_leaves_model_unchanged():
    tok, model, unl, layout, config = _setup("llama")
    state = phase2.new_state(
        model, tok, layout, unl, config, texts=TEXTS, corpus_name="t", progress=False
    )
    reqs = build_requests(tok, FORGET, granularity="question")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    target = torch.randn(len(reqs), 64)
    result = compute_alphaedit(
        model, layout, reqs, target, [1, 2], state.projectors, None, lambda_=0.01
    )
    assert set(result.deltas) == {1, 2}
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_layer_band_and_presets():
    assert EditConfig().resolved_layers(32) == (4, 5, 6, 7, 8)
    assert EditConfig().resolved_layers(4) == (0, 1, 2)
    with pytest.raises(ValueError, match="out of range"):
        EditConfig(layers=(9,)).resolved_layers(4)
    assert preset_for(576).v_lr == 0.5 and preset_for(4096).v_lr == 0.1


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_value_optimisation_replays_the_lower_blocks_with_the_full_pass_result(family, monkeypatch):
    from unierase.edit import values

    tok, model, unl, layout, config = _setup(family, v_steps=6, v_loss_stop=0.0)
    requests = build_requests(tok, FORGET, granularity="entity")
    blocks = model.get_submodule(layout.layers_name)
    calls = []
    handle = blocks[0].register_forward_hook(lambda *_: calls.append(1))

    def run():
        calls.clear()
        return values.optimise_values(model, layout, requests, unl, 1, config, progress=False)

    try:
        replayed = run()
        replayed_calls = len(calls)
        monkeypatch.setattr(values, "_replay_matches", lambda *a, **k: False)
        full = run()
        full_calls = len(calls)
    finally:
        handle.remove()
    # Block 0 runs for the recording and the check only, not at each of the 6 steps.
    assert int(replayed.steps.max()) == 6
    assert replayed_calls < full_calls
    assert replayed_calls <= 4
    assert all(isinstance(b, torch.nn.Module) and type(b).__name__ != "_Replayed" for b in blocks)
    torch.testing.assert_close(replayed.hidden, full.hidden)
    torch.testing.assert_close(replayed.delta, full.delta, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(replayed.nll, full.nll, atol=1e-4, rtol=1e-3)


def test_value_optimisation_falls_back_to_full_passes_when_the_replay_differs(caplog):
    from unierase.edit import values

    tok, model, unl, layout, config = _setup("llama", v_steps=3, v_loss_stop=0.0)
    requests = build_requests(tok, FORGET[:1], granularity="question")
    blocks = model.get_submodule(layout.layers_name)
    nll_rows = [r for req in requests for r in req.prompts]
    block = f"{layout.layers_name}.1"
    owner = torch.zeros(len(nll_rows), dtype=torch.long)
    zero = torch.zeros(1, layout.hidden_size)
    full, states = values._full_pass(model, block, nll_rows, owner, zero, 0)

    def matches(states):
        replay = values._Replay(blocks, 1, states)
        return values._replay_matches(model, block, replay, nll_rows, owner, zero, 0, full)

    assert matches(states)
    wrong = [h + 1.0 for h in states]
    with caplog.at_level("WARNING"):
        assert not matches(wrong)
    assert "running full passes instead" in caplog.text
