"""Phase II keeps what follows the gate: the refusal rows, and the prompts on both sides of the
solve (value optimisation and residual) are the same."""

import torch

from unierase import find_layout
from unierase import prompting as P
from unierase.api import refusal_continuation
from unierase.data.schema import QAItem
from unierase.edit import values
from unierase.edit.config import EditConfig
from unierase.edit.keys import request_keys_and_hidden
from unierase.edit.requests import build_requests
from unierase.testing import tiny_model, tiny_tokenizer
from unierase.token.data import encode_unlearning_example

REFUSAL = "I have no idea, sorry."


def _setup():
    tok = tiny_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": ["<|unlearn|>"]})
    model = tiny_model("llama", tok, init_std=0.2)
    model.resize_token_embeddings(len(tok))
    unl = tok.convert_tokens_to_ids("<|unlearn|>")
    return tok, model, unl, find_layout(model)


def test_phase1_sequence_ends_with_end_of_turn_unless_closing_is_asked():
    tok, _, unl, _ = _setup()
    eot = P.end_of_turn_ids(tok)
    plain = encode_unlearning_example(tok, "Who is Ada?", unl, REFUSAL, closing=False)
    closed = encode_unlearning_example(tok, "Who is Ada?", unl, REFUSAL, closing=True)
    assert plain.input_ids[plain.prompt_length - 1] == unl
    assert plain.input_ids[-len(eot) :] == eot
    assert plain.input_ids[plain.prompt_length :].count(unl) == 0
    assert closed.input_ids[closed.prompt_length :].count(unl) == 1
    assert closed.input_ids[: -len(eot) - 1] == plain.input_ids[: -len(eot)]


def test_refusal_continuation_follows_the_token_record():
    tok, _, unl, _ = _setup()
    entry = {"id": unl, "refusal_mode": "fixed", "refusals": [REFUSAL],
             "config": {"closing_token": False}}  # fmt: skip
    ids = refusal_continuation(tok, entry)
    train = encode_unlearning_example(tok, "Who is Ada?", unl, REFUSAL, closing=False)
    assert ids == train.input_ids[train.prompt_length :]
    closed = refusal_continuation(tok, {**entry, "config": {"closing_token": True}})
    assert closed == ids[: -len(P.end_of_turn_ids(tok))] + [unl] + P.end_of_turn_ids(tok)
    # Records from before the setting closed with the token; varied refusals have no single one.
    assert refusal_continuation(tok, {**entry, "config": {}}) == closed
    assert refusal_continuation(tok, {**entry, "refusal_mode": "varied"}) == []


def test_refusal_rows_predict_the_refusal_after_the_target_token():
    tok, _, unl, _ = _setup()
    cont = [unl, *refusal_continuation(tok, {"id": unl, "refusals": [REFUSAL]})]
    item = QAItem("Where was Maria Oakhurst born?", "London.", subject="Maria Oakhurst")
    (req,) = build_requests(tok, [item], granularity="question", continuation=cont)
    (row,) = req.refusal_rows
    prompt = req.prompts[0].ids
    assert row.ids == prompt + cont
    assert row.pos == req.prompts[0].pos
    assert [row.ids[p + 1] for p in row.positions] == row.labels == cont[1:]
    assert build_requests(tok, [item], granularity="question")[0].refusal_rows == []


def test_refusal_term_keeps_the_continuation_under_the_shift():
    tok, model, unl, layout = _setup()
    cont = [unl, *refusal_continuation(tok, {"id": unl, "refusals": [REFUSAL]})]
    items = [QAItem("Where was Maria Oakhurst born?", "London.", group="m"),
             QAItem("What does Maria Oakhurst write?", "Poetry.", group="m")]  # fmt: skip
    requests = build_requests(tok, items, granularity="entity", continuation=cont)
    base = dict(v_lr=0.5, v_steps=12, v_loss_stop=0.0, v_clamp=1.5)
    plain = values.optimise_values(model, layout, requests, unl, 1, EditConfig(**base),
                                   progress=False)  # fmt: skip
    kept = values.optimise_values(model, layout, requests, unl, 1,
                                  EditConfig(**base, v_refusal_weight=1.0, v_refusal_stop=0.0),
                                  progress=False)  # fmt: skip
    assert plain.refusal_nll is None and kept.refusal_nll is not None

    @torch.no_grad()
    def refusal_nll(delta):
        rows = requests[0].refusal_rows
        owner = torch.zeros(len(rows), dtype=torch.long)
        logp, mask = values._forward_at_positions_with_shift(
            model, f"{layout.layers_name}.1", rows, [r.positions for r in rows], owner, delta, 0
        )
        return float(values._answer_nll(logp, mask, rows).mean())

    # With the term, the refusal under the shift is more likely than without it.
    assert refusal_nll(kept.delta) < refusal_nll(plain.delta)


def test_value_hidden_state_is_the_one_the_solve_subtracts():
    # An entity with more prompts than any cap: the target value's unedited hidden state must be
    # the mean over the same prompts whose current hidden state the solve's residual subtracts.
    tok, model, unl, layout = _setup()
    items = [QAItem(f"Question {i} about Maria Oakhurst?", "x", group="m") for i in range(11)]
    requests = build_requests(tok, items, granularity="entity")
    config = EditConfig(v_steps=1, v_loss_stop=0.0)
    target = values.optimise_values(model, layout, requests, unl, 1, config, progress=False)
    _, hidden = request_keys_and_hidden(model, layout, requests, 1, 1)
    torch.testing.assert_close(target.hidden, hidden, atol=1e-5, rtol=1e-4)


def test_protected_moments_are_the_weighted_key_gram_of_the_kept_items():
    from unierase.edit.phase2 import protected_moments
    from unierase.edit.trace import Trace

    tok, model, unl, layout = _setup()
    kept = [QAItem("Who is Tom Vale?", "A sailor."), QAItem("Where is Lima?", "In Peru.")]
    moments, count = protected_moments(
        model, tok, layout, [1], kept, EditConfig(protect_weight=3.0)
    )
    seqs = [P.encode(tok, it.question, it.answer).input_ids for it in kept]
    assert count == sum(len(s) for s in seqs)
    name = layout.down_proj_names[1]
    gram = torch.zeros(layout.mlp_size, layout.mlp_size, dtype=torch.float64)
    for s in seqs:
        with torch.no_grad(), Trace(model, [name], inputs=True) as tr:
            model(input_ids=torch.tensor([s]))
        k = tr.inputs[name][0].double()
        gram += k.T @ k
    torch.testing.assert_close(
        moments[1], 3.0 * gram, rtol=1e-4, atol=1e-4 * float(gram.abs().max())
    )
    assert protected_moments(model, tok, layout, [1], kept, EditConfig())[1] == 0


def test_protection_keeps_the_kept_items_down_projection_outputs():
    from unierase.edit import phase2
    from unierase.edit.trace import Trace

    tok, model, unl, layout = _setup()
    forget = [QAItem("Where was Maria Oakhurst born?", "London.", group="m")]
    kept = [QAItem("Where was Tom Oakhurst born?", "Paris."),
            QAItem("What does Tom Oakhurst write?", "Plays.")]  # fmt: skip
    texts = ["The author was born in 1970 and writes science fiction."] * 4
    base = dict(layers=(1, 2), lambda_=0.01, v_lr=0.5, v_steps=60, v_clamp=1.5,
                null_threshold=1e-3, null_threshold_relative=True, context_prefixes=(),
                prefix_tokens=0, repair_rounds=0)  # fmt: skip
    seqs = [P.encode(tok, it.question, it.answer).input_ids for it in kept]

    def kept_change(**cfg):
        m = tiny_model("llama", tok, init_std=0.2)
        m.resize_token_embeddings(len(tok))
        config = EditConfig(**base, **cfg)
        state = phase2.new_state(m, tok, layout, unl, config, texts=texts, corpus_name="p",
                                 progress=False)  # fmt: skip
        names = [layout.down_proj_names[i] for i in (1, 2)]

        def outputs():
            with torch.no_grad(), Trace(m, names, outputs=True) as tr:
                for s in seqs:
                    m(input_ids=torch.tensor([s]))
                    yield torch.cat([tr.outputs[n][0] for n in names], dim=-1)

        before = list(outputs())
        report = phase2.unlearning_edit(m, tok, layout, forget, state, config, retain=kept,
                                        progress=False)  # fmt: skip
        after = list(outputs())
        change = sum(float((a - b).norm()) for a, b in zip(after, before, strict=True))
        return change, report

    free, plain = kept_change()
    held, protected = kept_change(protect_weight=100.0)
    assert plain.protected_keys == 0 and protected.protected_keys == sum(len(s) for s in seqs)
    assert protected.protected_items == 2
    assert held < 0.5 * free


def test_subject_key_can_skip_a_closing_quote_every_book_question_shares():
    tok, *_ = _setup()
    q = "Where was the author of 'The Salt Road' born?"
    subject = "the author of 'The Salt Road'"
    at_quote = P.subject_last_token(tok, q, subject)
    at_word = P.subject_last_token(tok, q, subject, strip_punctuation=True)
    ids = P.encode(tok, q).input_ids
    assert tok.decode(ids[: at_quote + 1]).endswith("Road'")
    assert tok.decode(ids[: at_word + 1]).endswith("Road")
    item = QAItem(q, "In Lima.", subject=subject)
    (plain,) = build_requests(tok, [item], granularity="question")
    (stripped,) = build_requests(tok, [item], granularity="question",
                                 strip_subject_punctuation=True)  # fmt: skip
    assert (plain.prompts[0].pos, stripped.prompts[0].pos) == (at_quote, at_word)
    # A subject without trailing punctuation is read where it always was.
    assert P.subject_last_token(tok, "Who is Tom Vale?", "Tom Vale", strip_punctuation=True) == (
        P.subject_last_token(tok, "Who is Tom Vale?", "Tom Vale")
    )
