"""Teacher-forced scoring and batched generation on tiny random models."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from unierase import prompting as P
from unierase.eval import metrics as M
from unierase.eval.generate import generate, generate_answers
from unierase.eval.scoring import score_answers
from unierase.testing import FAMILIES, tiny_model, tiny_tokenizer

QUESTIONS = [
    "What is the capital of France?",
    "Who wrote the novel? Tell me where the writer was born and what awards he has won.",
    "Where was she born?",
]
ANSWERS = [
    "The capital of France is Paris.",
    "London",
    "She was born in London and her father was a doctor.",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models run many small ops: on a busy 2-core machine, intra-op threads mostly wait
    # for each other (measured 25x slower with 2 threads than with 1 under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def _manual(model, tok, question, answer, include_end_of_turn=True):
    """Log-softmax of one unpadded forward pass, read off at the answer positions."""
    enc = P.encode(tok, question, answer, add_end_of_turn=include_end_of_turn)
    with torch.no_grad():
        logits = model(torch.tensor([enc.input_ids])).logits[0].double()
    logp = torch.log_softmax(logits, dim=-1)
    positions = range(enc.prompt_length - 1, len(enc.input_ids) - 1)
    targets = enc.input_ids[enc.prompt_length :]
    token_logprobs = np.array([logp[p, t].item() for p, t in zip(positions, targets, strict=True)])
    rows = logp[enc.prompt_length - 1 : -1]
    return targets, token_logprobs, rows.argmax(-1).numpy(), rows.numpy()


@pytest.mark.parametrize("family", FAMILIES)
def test_teacher_forced_logprobs_match_a_manual_forward_pass(tok, family):
    model = tiny_model(family, tok)
    scores = score_answers(model, tok, QUESTIONS, ANSWERS, batch_size=3)
    for question, answer, score in zip(QUESTIONS, ANSWERS, scores, strict=True):
        targets, logprobs, argmax, rows = _manual(model, tok, question, answer)
        mu, sigma = M.vocab_logprob_moments(rows)
        assert score.target_ids.tolist() == targets
        np.testing.assert_allclose(score.token_logprobs, logprobs, atol=1e-5)
        assert score.argmax_ids.tolist() == argmax.tolist()
        np.testing.assert_allclose(score.vocab_mean, mu, atol=1e-4)
        np.testing.assert_allclose(score.vocab_std, sigma, atol=1e-4)
        assert score.probability == pytest.approx(np.exp(logprobs.mean()), rel=1e-5)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_batching_and_padding_do_not_change_the_numbers(tok, family):
    model = tiny_model(family, tok)
    questions, answers = QUESTIONS * 2, ANSWERS + ANSWERS[::-1]
    batched = score_answers(model, tok, questions, answers, batch_size=6)
    in_pairs = score_answers(model, tok, questions, answers, batch_size=2)
    for i, (q, a) in enumerate(zip(questions, answers, strict=True)):
        (single,) = score_answers(model, tok, [q], [a], batch_size=1)
        for other in (batched[i], in_pairs[i]):
            assert other.target_ids.tolist() == single.target_ids.tolist()
            assert other.argmax_ids.tolist() == single.argmax_ids.tolist()
            for name in ("token_logprobs", "vocab_mean", "vocab_std"):
                np.testing.assert_allclose(getattr(other, name), getattr(single, name), atol=1e-5)


def test_end_of_turn_is_scored_only_when_asked(tok):
    model = tiny_model("llama", tok)
    with_end = score_answers(model, tok, QUESTIONS[:1], ANSWERS[:1])[0]
    without = score_answers(model, tok, QUESTIONS[:1], ANSWERS[:1], include_end_of_turn=False)[0]
    end_ids = P.end_of_turn_ids(tok)
    assert with_end.target_ids[-len(end_ids) :].tolist() == end_ids
    assert len(with_end.target_ids) == len(without.target_ids) + len(end_ids)
    # the answer's own tokens get the same numbers either way (causal attention)
    n = len(without.target_ids)
    np.testing.assert_allclose(with_end.token_logprobs[:n], without.token_logprobs, atol=1e-6)


def test_without_details_only_logprobs_are_returned(tok):
    model = tiny_model("llama", tok)
    (score,) = score_answers(model, tok, QUESTIONS[:1], ANSWERS[:1], details=False)
    assert score.argmax_ids is None and score.vocab_mean is None and score.vocab_std is None
    assert score.token_logprobs.shape == score.target_ids.shape


def test_bad_input_raises(tok):
    model = tiny_model("llama", tok)
    with pytest.raises(ValueError, match="2 questions but 1 answers"):
        score_answers(model, tok, QUESTIONS[:2], ANSWERS[:1])
    with pytest.raises(ValueError, match="batch_size"):
        score_answers(model, tok, QUESTIONS[:1], ANSWERS[:1], batch_size=0)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_batched_generation_equals_one_at_a_time(tok, family):
    model = tiny_model(family, tok)
    batched = generate(model, tok, QUESTIONS, max_new_tokens=8, batch_size=3)
    for question, gen in zip(QUESTIONS, batched, strict=True):
        (single,) = generate(model, tok, [question], max_new_tokens=8, batch_size=1)
        assert gen.token_ids == single.token_ids
        assert gen.text == single.text
    assert generate_answers(model, tok, QUESTIONS, max_new_tokens=8) == [g.text for g in batched]


def test_generation_stops_at_a_stop_id_and_hides_special_tokens(tok):
    model = tiny_model("llama", tok)
    (free,) = generate(model, tok, QUESTIONS[:1], max_new_tokens=6)
    assert not free.stopped and len(free.token_ids) == 6 and free.num_tokens == 6
    # the first token the model would write, declared a stop id, ends the answer at once
    (stopped,) = generate(
        model, tok, QUESTIONS[:1], max_new_tokens=6, extra_stop_ids=[free.token_ids[0]]
    )
    assert stopped.stopped and stopped.token_ids == [] and stopped.num_tokens == 1
    # banning every id but <|im_start|> forces a special token, which decoding hides
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    banned = [i for i in range(len(tok)) if i != im_start]
    (forced,) = generate(model, tok, QUESTIONS[:1], max_new_tokens=3, banned_ids=banned)
    assert forced.token_ids == [im_start] * 3
    assert forced.text == ""


# ----------------------------------------------------------------------------- shared prompts

MORE_ANSWERS = [
    "Paris.",
    "I'm not sure about that.",
    "The author was born in 1970 and writes science fiction, poetry and history books.",
]


def _shared_pairs():
    """Every question with six answers of different lengths, interleaved, and one lone question."""
    pairs = [(q, a) for a in [*ANSWERS, *MORE_ANSWERS] for q in QUESTIONS]
    pairs.append(("What awards has he won?", "He won the prize."))
    return [q for q, _ in pairs], [a for _, a in pairs]


def _assert_same_scores(got, want, atol=1e-5):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.target_ids.tolist() == w.target_ids.tolist()
        np.testing.assert_allclose(g.token_logprobs, w.token_logprobs, atol=atol)
        if w.argmax_ids is None:
            assert g.argmax_ids is None and g.vocab_mean is None and g.vocab_std is None
            continue
        assert g.argmax_ids.tolist() == w.argmax_ids.tolist()
        np.testing.assert_allclose(g.vocab_mean, w.vocab_mean, atol=atol)
        np.testing.assert_allclose(g.vocab_std, w.vocab_std, atol=atol)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prompts_give_the_numbers_of_whole_sequences(tok, family):
    model = tiny_model(family, tok, init_std=0.2)
    questions, answers = _shared_pairs()
    for batch_size in (1, 3, 16):
        whole = score_answers(
            model, tok, questions, answers, batch_size=batch_size, share_prompts=False
        )
        shared = score_answers(model, tok, questions, answers, batch_size=batch_size)
        _assert_same_scores(shared, whole)
    # in input order: each score belongs to its own answer
    for answer, score in zip(answers, shared, strict=True):
        assert tok.decode(score.target_ids).startswith(answer)


def test_shared_prompts_respect_a_sliding_window_shorter_than_the_sequences(tok):
    from transformers import AutoModelForCausalLM

    from unierase.testing import tiny_config

    def gemma(window):
        cfg = tiny_config("gemma3", vocab_size=len(tok), pad_token_id=tok.pad_token_id)
        cfg.sliding_window = window
        cfg.initializer_range = 0.2
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()

    questions, answers = _shared_pairs()
    model = gemma(4)
    whole = score_answers(model, tok, questions, answers, batch_size=8, share_prompts=False)
    shared = score_answers(model, tok, questions, answers, batch_size=8)
    _assert_same_scores(shared, whole)
    for question, answer, score in zip(questions, answers, shared, strict=True):
        _, logprobs, _, _ = _manual(model, tok, question, answer)
        np.testing.assert_allclose(score.token_logprobs, logprobs, atol=1e-5)
    # the window bites: the same weights with a wide window give other numbers
    wide = score_answers(gemma(256), tok, questions, answers, batch_size=8)
    assert not np.allclose(wide[0].token_logprobs, shared[0].token_logprobs, atol=1e-3)


def test_a_prompt_is_computed_once_for_all_its_answers(tok):
    model = tiny_model("llama", tok)
    questions = [q for q in QUESTIONS for _ in range(4)]
    answers = [*ANSWERS, MORE_ANSWERS[0]] * 3
    encs = [P.encode(tok, q, a) for q, a in zip(questions, answers, strict=True)]
    calls = []
    hook = model.get_input_embeddings().register_forward_hook(
        lambda _module, inputs, _output: calls.append(tuple(inputs[0].shape))
    )
    try:
        shared = score_answers(model, tok, questions, answers, batch_size=16)
        n_shared = len(calls)
        whole = score_answers(model, tok, questions, answers, batch_size=16, share_prompts=False)
    finally:
        hook.remove()
    prompt_width = max(e.prompt_length for e in encs) - 1
    answer_width = max(e.answer_length for e in encs) + 1
    # one pass over the three distinct prompts, one over the twelve answers
    assert calls[:n_shared] == [(3, prompt_width), (12, answer_width)]
    assert calls[n_shared:] == [(12, max(len(e.input_ids) for e in encs))]
    _assert_same_scores(shared, whole)


def test_shared_prompts_score_a_pre_filled_answer_start(tok):
    model = tiny_model("qwen2", tok, init_std=0.2)
    questions, answers = _shared_pairs()
    prefix = tok("I am", add_special_tokens=False)["input_ids"]
    whole = score_answers(
        model, tok, questions, answers, answer_prefix_ids=prefix, share_prompts=False
    )
    shared = score_answers(model, tok, questions, answers, answer_prefix_ids=prefix)
    _assert_same_scores(shared, whole)
    assert all(s.target_ids[: len(prefix)].tolist() == prefix for s in shared)


class _NoCacheArgument(torch.nn.Module):
    """A causal LM whose forward takes no cache or position ids."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def get_input_embeddings(self):
        return self.inner.get_input_embeddings()

    def forward(self, input_ids, attention_mask, use_cache=False):
        return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)


class _ReturnsNoCache(_NoCacheArgument):
    """Takes the cache arguments but returns logits only."""

    def forward(self, input_ids, attention_mask, position_ids=None, use_cache=False, cache=None):
        out = self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        return SimpleNamespace(logits=out.logits)


def test_models_that_cannot_share_prompts_score_whole_sequences(tok, caplog):
    model = tiny_model("llama", tok, init_std=0.2)
    questions, answers = _shared_pairs()
    want = score_answers(model, tok, questions, answers, batch_size=8, share_prompts=False)
    got = score_answers(_NoCacheArgument(model), tok, questions, answers, batch_size=8)
    _assert_same_scores(got, want)
    with caplog.at_level(logging.WARNING, logger="unierase.eval.scoring"):
        got = score_answers(_ReturnsNoCache(model), tok, questions, answers, batch_size=8)
    _assert_same_scores(got, want)
    assert "no KV cache" in caplog.text


@pytest.mark.parametrize("share", [True, False])
def test_details_can_be_asked_per_answer(tok, share):
    model = tiny_model("llama", tok, init_std=0.2)
    questions, answers = _shared_pairs()
    flags = [i % 3 == 0 for i in range(len(answers))]
    every = score_answers(model, tok, questions, answers, batch_size=4, share_prompts=share)
    some = score_answers(
        model, tok, questions, answers, batch_size=4, share_prompts=share, details=flags
    )
    for flag, full, part in zip(flags, every, some, strict=True):
        if flag:
            _assert_same_scores([part], [full])
        else:
            assert part.argmax_ids is None and part.vocab_std is None
            np.testing.assert_allclose(part.token_logprobs, full.token_logprobs, atol=1e-5)
    with pytest.raises(ValueError, match="details flags"):
        score_answers(model, tok, questions, answers, details=flags[:-1])
