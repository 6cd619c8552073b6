"""Teacher-forced scoring and batched generation on tiny random models."""

from __future__ import annotations

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
