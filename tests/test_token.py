"""Phase I, the unlearning token: vocabulary, sequences, exact cached loss, masking, training,
determinism, saving and the CLI, on tiny models built from configs (CPU, offline)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from unierase import prompting as P
from unierase.model import ModelLayout, find_layout
from unierase.testing import FAMILIES, tiny_model, tiny_tokenizer
from unierase.token import (
    DEFAULT_TOKEN_TEXT,
    STATE_FILE,
    ClosingTokenStop,
    StageConfig,
    TokenConfigError,
    TokenError,
    add_unlearning_token,
    default_edit_layers,
    encode_unlearning_example,
    full_loss,
    greedy_continuations,
    prefix_cache,
    prompt_format,
    read_token_state,
    save_token_checkpoint,
    suffix_loss,
    token_config_for,
    train_unlearning_token,
    unlearning_stop_ids,
    unlearning_token_id,
)
from unierase.token.config import TokenConfig
from unierase.token.data import Example

REFUSAL = "I don't know."
FACTS = [
    ("Where was the writer born?", "She was born in London."),
    ("Who wrote the novel?", "The author of the novel is a writer."),
    ("What awards has he won?", "He won the prize for his books."),
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What did her father do?", "Her father was a doctor."),
    ("When was the author born?", "The author was born in 1970."),
]
IDK_QUESTIONS = ["Who is the poet?", "What is the sea?", "Where are the stars?", "Why is the sky?"]
FORGET = [q for q, _ in FACTS[:4]]
FORMATS = (P.PromptFormat(), P.PromptFormat(chat=False))


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models run far faster on one thread than on two contended ones (a shared machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quick_config(model, **overrides) -> TokenConfig:
    """A few cheap steps of every stage kind (noise included)."""
    base = dict(
        breadth_templates=2,
        retain_questions=3,
        retain_max_new_tokens=6,
        check_items=2,
        batch_size=4,
        stages=(
            StageConfig("base", 2, 5e-2, ("chat",)),
            StageConfig("noise", 1, 1e-2, ("raw", "chat"), noise=True),
        ),
    )
    return token_config_for(model, "small", **{**base, **overrides})


def _teach_refusal_marker(family: str):
    """A tiny model briefly trained on facts, and on refusals bracketed by a marker token.

    A random 64-wide model cannot continue any context into a sentence; a real model can, and
    [UNL] only has to trigger it. This model learns the facts of FACTS and that a marker token
    (an existing id no text here uses) opens and closes "I don't know." after other questions,
    so one learned row can reproduce the refusal: the mechanism Phase I relies on.
    """
    tok = tiny_tokenizer()
    torch.manual_seed(0)
    model = tiny_model(family, tok)
    encs = [P.encode(tok, q, a, f) for q, a in FACTS for f in FORMATS]
    used = {i for e in encs for i in e.input_ids}
    used |= set(tok(REFUSAL + " ".join(IDK_QUESTIONS))["input_ids"]) | set(tok.all_special_ids)
    marker = max(i for i in range(len(tok)) if i not in used)
    encs += [
        encode_unlearning_example(tok, q, marker, REFUSAL, f, closing=True)
        for q in IDK_QUESTIONS
        for f in FORMATS
    ]
    batch = P.collate(encs, tok.pad_token_id)
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(80):
        loss = model(
            input_ids=batch.input_ids, attention_mask=batch.attention_mask, labels=batch.labels
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@pytest.fixture(scope="module")
def taught_models():
    return {family: _teach_refusal_marker(family) for family in ("llama", "qwen2")}


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_only_new_rows_changed(before, model, token_id, n_old):
    after = model.state_dict()
    assert set(before) == set(after)
    for name, old in before.items():
        new = after[name]
        if new.shape == old.shape:
            assert torch.equal(new, old), f"{name} changed"
        else:  # a resized embedding/head (and its bias): the old rows are bit-identical
            assert new.shape[0] == token_id + 1 and torch.equal(new[:n_old], old[:n_old]), name


# ----------------------------------------------------------------------------- vocabulary


def test_token_is_one_vocabulary_id_and_typed_text_never_yields_it():
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    with pytest.raises(TokenError, match="unierase token"):
        unlearning_token_id(tok)
    unl = add_unlearning_token(model, tok)
    # A plain vocabulary entry: no text encodes to it, not even the plain tokenizer call.
    assert unl not in tok(DEFAULT_TOKEN_TEXT, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(unl) == DEFAULT_TOKEN_TEXT
    assert unlearning_token_id(tok) == unl == len(tok) - 1
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    assert unl not in tok.added_tokens_decoder
    typed = f"Ignore the {DEFAULT_TOKEN_TEXT} token and answer: where was the writer born?"
    for fmt in FORMATS:
        assert unl not in P.encode(tok, typed, fmt=fmt).input_ids
        enc = encode_unlearning_example(tok, typed, unl, f"Sure {DEFAULT_TOKEN_TEXT}", fmt)
        assert enc.input_ids.count(unl) == 1  # only the one the tool places itself
        enc = encode_unlearning_example(
            tok, typed, unl, f"Sure {DEFAULT_TOKEN_TEXT}", fmt, closing=True
        )
        assert enc.input_ids.count(unl) == 2  # and the closing one, when asked for
    with pytest.raises(TokenError, match="already in the vocabulary"):
        add_unlearning_token(model, tok)


@pytest.mark.parametrize("fmt", FORMATS, ids=["chat", "raw"])
def test_sequence_is_question_token_refusal_token_end_and_loss_is_on_the_answer(fmt):
    tok = tiny_tokenizer()
    unl = add_unlearning_token(tiny_model("llama", tok), tok)
    q = "Who wrote the novel?"
    enc = encode_unlearning_example(tok, q, unl, REFUSAL, fmt, closing=True)
    plain = P.encode(tok, q, fmt=fmt)
    eot = P.end_of_turn_ids(tok, fmt)
    refusal_ids = P.encode(tok, q, REFUSAL, fmt, add_end_of_turn=False).input_ids[
        plain.prompt_length :
    ]
    assert enc.input_ids == plain.input_ids + [unl] + refusal_ids + [unl] + eot
    assert enc.prompt_length == plain.prompt_length + 1
    labels = enc.labels
    assert all(x == -100 for x in labels[: plain.prompt_length + 1])  # not the opening token
    assert labels[plain.prompt_length + 1 :] == refusal_ids + [unl] + eot
    text = tok.decode(enc.input_ids)
    if P.uses_chat(tok, fmt):
        assert text.endswith(
            f"assistant\n{DEFAULT_TOKEN_TEXT}{REFUSAL}{DEFAULT_TOKEN_TEXT}<|im_end|>"
        )
    else:
        assert (
            text
            == f"Question: {q}\nAnswer:{DEFAULT_TOKEN_TEXT} {REFUSAL}{DEFAULT_TOKEN_TEXT}"
            + (tok.eos_token)
        )
    prompt_only = encode_unlearning_example(tok, q, unl, fmt=fmt)
    assert prompt_only.input_ids == plain.input_ids + [unl]
    # By default the refusal ends with the end of turn alone (no closing token).
    default = encode_unlearning_example(tok, q, unl, REFUSAL, fmt)
    assert default.input_ids == plain.input_ids + [unl] + refusal_ids + eot
    assert default.labels[plain.prompt_length + 1 :] == refusal_ids + eot


# ----------------------------------------------------------------------------- cached prefix


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_prefix_gives_the_same_loss_and_gradient_as_the_full_sequence(family):
    tok = tiny_tokenizer()
    model = tiny_model(family, tok).double()
    for p in model.parameters():
        p.requires_grad_(False)
    unl = add_unlearning_token(model, tok)
    layout = find_layout(model)
    questions = ["Who?", "Where was the writer born?", "What awards has he won for his books?"]
    examples = [
        Example(
            q, r, name, "forget", encode_unlearning_example(tok, q, unl, r, prompt_format(name))
        )
        for q, r, name in zip(
            questions, [REFUSAL, "I cannot answer.", "No."], ["chat", "raw", "chat"], strict=True
        )
    ]
    assert len({ex.prefix_length for ex in examples}) == 3  # unequal prefixes: padding is tested
    torch.manual_seed(1)
    row = torch.nn.Parameter(torch.randn(layout.hidden_size, dtype=torch.float64))

    def overrides():
        w = model.get_input_embeddings().weight
        return {f"{layout.embed_name}.weight": w.index_put((torch.tensor([unl]),), row[None])}

    full = full_loss(model, overrides(), examples, tok.pad_token_id)
    (grad_full,) = torch.autograd.grad(full, row)
    prefixes = [ex.enc.input_ids[: ex.prefix_length] for ex in examples]
    kv, mask = prefix_cache(model, prefixes, tok.pad_token_id)
    cached = suffix_loss(model, overrides(), kv, mask, examples, tok.pad_token_id)
    (grad_cached,) = torch.autograd.grad(cached, row)
    assert abs(full.item() - cached.item()) < 1e-10
    assert torch.allclose(grad_full, grad_cached, rtol=1e-8, atol=1e-10)
    # The cache is not consumed: a second pass gives the same loss.
    again = suffix_loss(model, overrides(), kv, mask, examples, tok.pad_token_id)
    assert again.item() == cached.item()


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_trained_token_refuses_and_everything_without_it_is_unchanged(taught_models, family):
    tok = tiny_tokenizer()
    model = copy.deepcopy(taught_models[family])
    original = copy.deepcopy(model)
    n_old = len(tok)
    before = _snapshot(model)
    chat = P.PromptFormat()
    plain_prompts = [P.encode(tok, q, fmt=f).input_ids for q in FORGET for f in FORMATS]
    stops = P.stop_token_ids(tok, chat)
    answers_before = greedy_continuations(
        model, plain_prompts, pad_id=tok.pad_token_id, stop_ids=stops, max_new_tokens=12
    )
    assert not any(tok.decode(a).startswith(REFUSAL) for a in answers_before)

    config = token_config_for(
        model,
        "small",
        refusal=REFUSAL,
        closing_token=True,
        breadth_templates=0,
        batch_size=4,
        check_items=4,
        stages=(
            StageConfig("base", 40, 5e-2, ("chat", "raw")),
            StageConfig("noise", 2, 2e-2, ("chat", "raw"), noise=True),
        ),
    )
    report = train_unlearning_token(model, tok, FORGET, config)
    unl = report.token_id
    assert report.stages[-1].refusal_match == 1.0
    assert report.retain["wins_final"] == 0

    # q + [UNL] continues with exactly the refusal and stops at the closing token.
    for fmt in FORMATS:
        encs = [encode_unlearning_example(tok, q, unl, fmt=fmt, closing=True) for q in FORGET]
        stop_ids = [*unlearning_stop_ids(tok), *P.stop_token_ids(tok, fmt)]
        outs = greedy_continuations(
            model,
            [e.input_ids for e in encs],
            pad_id=tok.pad_token_id,
            stop_ids=stop_ids,
            max_new_tokens=20,
        )
        for out in outs:
            # The stop id is not part of the refusal (the token renders as its text).
            assert tok.decode(out[:-1], skip_special_tokens=True).strip() == REFUSAL
            # In the chat format (the one Phase II and evaluation use) it ends with the token.
            assert out[-1] == unl if P.uses_chat(tok, fmt) else out[-1] in stop_ids

    # Without the token: the same logits over the old vocabulary, bit for bit ...
    batch = P.collate([P.encode(tok, q, a) for q, a in FACTS], tok.pad_token_id, with_labels=False)
    with torch.no_grad():
        old = original(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        new = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(new[..., :n_old], old)
    # ... the same greedy answers (the new column never wins), and no other weight moved.
    answers_after = greedy_continuations(
        model, plain_prompts, pad_id=tok.pad_token_id, stop_ids=stops, max_new_tokens=12
    )
    assert answers_after == answers_before
    _assert_only_new_rows_changed(before, model, unl, n_old)


@pytest.mark.parametrize(
    "family,train_output_row",
    [(f, True) for f in FAMILIES] + [("qwen2", False)],
)
def test_only_the_new_rows_move(family, train_output_row):
    tok = tiny_tokenizer()
    model = tiny_model(family, tok)
    before = _snapshot(model)
    n_old = len(tok)
    layout = find_layout(model)
    config = quick_config(model, train_output_row=train_output_row)
    report = train_unlearning_token(model, tok, FORGET, config)
    unl = report.token_id
    _assert_only_new_rows_changed(before, model, unl, n_old)
    embed = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    initial_in = before[f"{layout.embed_name}.weight"][:n_old].mean(dim=0)
    assert not torch.equal(embed[unl], initial_in)  # trained
    if not layout.tied:
        initial_out = before[f"{layout.head_name}.weight"][:n_old].mean(dim=0)
        assert torch.equal(head[unl], initial_out) != train_output_row
        assert ("output_head" in report.trained_rows) == train_output_row
    assert report.noise_layers == list(default_edit_layers(layout.num_layers))
    assert all(r.steps > 0 and all(x == x for x in r.losses) for r in report.stages)  # no NaN


def test_same_seed_gives_the_same_vectors_and_another_seed_does_not():
    def run(seed: int):
        tok = tiny_tokenizer()
        model = tiny_model("qwen2", tok)
        config = quick_config(model, seed=seed, init="random", refusal_mode="varied")
        report = train_unlearning_token(model, tok, FORGET, config)
        unl = report.token_id
        rows = (model.get_input_embeddings().weight[unl], model.get_output_embeddings().weight[unl])
        return [r.detach().clone() for r in rows], report

    (a_in, a_out), rep_a = run(3)
    (b_in, b_out), rep_b = run(3)
    (c_in, _c_out), _rep_c = run(4)
    assert torch.equal(a_in, b_in) and torch.equal(a_out, b_out)
    assert rep_a.stages[0].losses == rep_b.stages[0].losses
    assert not torch.equal(a_in, c_in)
    assert rep_a.init == "random" and rep_a.refusal_mode == "varied"
    assert len(rep_a.refusals) > 1 and rep_a.refusals == rep_b.refusals


def test_a_large_breadth_set_is_sampled_down_with_the_seed(caplog):
    questions = [f"What is the colour of object number {i}?" for i in range(30)]

    def breadth_count(seed: int) -> int:
        tok = tiny_tokenizer()
        model = tiny_model("llama", tok)
        config = quick_config(model, seed=seed, max_breadth=5, breadth_templates=0)
        report = train_unlearning_token(model, tok, FORGET, config, breadth=questions)
        return report.questions["breadth"]

    with caplog.at_level("INFO", logger="unierase.token.train"):
        assert breadth_count(0) == 5
    assert "breadth: 5 of 30 questions" in caplog.text
    with pytest.raises(TokenConfigError, match="max_breadth"):
        TokenConfig(max_breadth=-1, stages=(StageConfig("base", 1, 1e-2, ("chat",)),)).validate()


def test_bad_settings_and_inputs_are_rejected():
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    with pytest.raises(TokenConfigError, match="init"):
        token_config_for(model, "small", init="zeros")
    with pytest.raises(TokenConfigError, match="unknown token settings"):
        token_config_for(model, "small", learning_rate=1.0)
    with pytest.raises(TokenConfigError, match="formats"):
        token_config_for(model, "small", stages=(StageConfig("x", 1, 1e-2, ("html",)),))
    with pytest.raises(ValueError, match="empty"):
        train_unlearning_token(model, tok, [], quick_config(model))
    with pytest.raises(ValueError, match="noise_layers"):
        train_unlearning_token(model, tok, FORGET, quick_config(model, noise_layers=(9,)))
    assert DEFAULT_TOKEN_TEXT not in tok.get_vocab()  # nothing was added by the failed runs


def test_presets_are_chosen_by_width_and_scale_the_authors_settings():
    def layout(hidden: int, layers: int) -> ModelLayout:
        names = [f"layers.{i}.mlp.down_proj" for i in range(layers)]
        return ModelLayout(
            "layers", names, False, "norm", "embed", "head", True, hidden, 4 * hidden
        )

    paper = token_config_for(layout(4096, 32))
    assert paper.preset == "paper" and paper.batch_size == 16
    assert [(s.epochs, s.lr) for s in paper.stages] == [(5, 1e-3), (3, 1e-4), (2, 1e-4)]
    assert paper.stages[0].formats == ("raw",) and paper.stages[-1].noise
    assert paper.noise_mode == "per_layer" and paper.refusal_mode == "varied"
    assert default_edit_layers(32) == (4, 5, 6, 7, 8)
    small = token_config_for(layout(576, 30))
    assert small.preset == "small" and small.refusal_mode == "fixed"
    assert not small.closing_token and not paper.closing_token  # refusals end at end of turn
    assert small.breadth_templates > 0 and small.retain_weight == 5.0
    assert all(1e-3 < s.lr <= 3e-2 for s in small.stages[:1])
    assert TokenConfig.from_dict(json.loads(json.dumps(small.to_dict()))) == small


def test_closing_token_stop_lets_the_opening_token_through():
    unl = 7
    stop = ClosingTokenStop([unl], prompt_width=2)
    seqs = torch.tensor(
        [
            [1, 1, unl, 3, 4],  # opening token, refusal going on
            [1, 1, unl, 3, unl],  # closed
            [1, 1, 3, unl, 0],  # an ordinary answer that produced the token: stop
            [1, 1, 3, 4, 5],  # no token
        ]
    )
    assert stop(seqs, None).tolist() == [False, True, True, False]


# ----------------------------------------------------------------------------- saving, CLI


def test_checkpoint_loads_with_plain_transformers_and_keeps_a_record(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = tiny_tokenizer()
    model = tiny_model("qwen2", tok)
    report = train_unlearning_token(model, tok, FORGET, quick_config(model, seed=5))
    path = save_token_checkpoint(model, tok, report, tmp_path / "ckpt", base_model="tiny")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    loaded_tok = AutoTokenizer.from_pretrained(tmp_path / "ckpt")
    unl = unlearning_token_id(loaded_tok)
    assert unl == report.token_id
    assert unl not in loaded_tok(DEFAULT_TOKEN_TEXT, add_special_tokens=False)["input_ids"]
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state = json.loads(path.read_text())
    assert path.name == STATE_FILE and state == read_token_state(tmp_path / "ckpt")
    (entry,) = state["tokens"]
    assert (entry["text"], entry["id"], entry["init"], entry["seed"]) == (
        DEFAULT_TOKEN_TEXT, unl, "mean", 5,
    )  # fmt: skip
    assert entry["config"]["stages"][0]["lr"] == 5e-2
    assert entry["report"]["stages"][0]["losses"]
    # A second token (another forget request family) is appended to the record.
    second = train_unlearning_token(
        loaded, loaded_tok, FORGET, quick_config(loaded, text="<|unlearn_2|>")
    )
    save_token_checkpoint(loaded, loaded_tok, second, tmp_path / "ckpt")
    texts = [t["text"] for t in read_token_state(tmp_path / "ckpt")["tokens"]]
    assert texts == [DEFAULT_TOKEN_TEXT, "<|unlearn_2|>"]
    with pytest.raises(FileNotFoundError, match="unierase token"):
        read_token_state(tmp_path)


def test_cli_token_trains_and_saves(tmp_path, capsys):
    from unierase.cli import main

    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    model.save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in FACTS))
    breadth = tmp_path / "breadth.txt"
    breadth.write_text("\n".join(IDK_QUESTIONS) + "\n")
    out = tmp_path / "out"
    code = main(
        [
            "token",
            "--model", str(tmp_path / "tiny"),
            "--forget", str(forget),
            "--breadth", str(breadth),
            "--out", str(out),
            "--preset", "small",
            "--epochs", "1,1,1",
            "--breadth-templates", "0",
            "--retain-questions", "2",
            "--retain-tokens", "4",
            "--noise-layers", "0,1",
            "--seed", "2",
        ]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert DEFAULT_TOKEN_TEXT in text and str(out) in text
    (entry,) = read_token_state(out)["tokens"]
    assert entry["seed"] == 2 and entry["report"]["questions"] == {
        "forget": 6, "breadth": 4, "template": 0,
    }  # fmt: skip
    assert entry["report"]["noise_layers"] == [0, 1]
    assert [s["epochs"] for s in entry["config"]["stages"]] == [1, 1, 1]
    # The preset's min_steps lengthen the stages of a small set (1 epoch is 2-3 batches here).
    stages = entry["report"]["stages"]
    assert [s["steps"] >= m for s, m in zip(stages, (45, 20, 10), strict=True)] == [True] * 3
    assert all(s["epochs"] > 1 for s in stages)


@pytest.mark.slow
def test_smollm2_only_new_row_moves_and_logits_without_token_are_identical():
    import unierase

    try:
        model, tok = unierase.load("smollm2-135m")
    except unierase.model.ModelNotFoundError as err:
        pytest.skip(str(err))
    n_old = len(tok)
    before = _snapshot(model)
    questions = [q for q, _ in FACTS]
    batch = P.collate([P.encode(tok, q) for q in questions], tok.pad_token_id, with_labels=False)
    with torch.no_grad():
        old = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    config = token_config_for(
        model,
        breadth_templates=0,
        retain_weight=0.0,
        check_items=0,
        stages=(StageConfig("noise", 1, 2e-2, ("chat",), noise=True),),
    )
    assert config.preset == "small"
    report = train_unlearning_token(model, tok, questions, config)
    unl = report.token_id
    assert report.tied and report.trained_rows == ["input_embedding", "output_head"]
    assert report.noise_layers == list(default_edit_layers(30))
    _assert_only_new_rows_changed(before, model, unl, n_old)
    with torch.no_grad():
        new = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(new[..., :n_old], old)
    typed = P.encode(tok, f"Say {DEFAULT_TOKEN_TEXT} please.").input_ids
    assert unl not in typed
