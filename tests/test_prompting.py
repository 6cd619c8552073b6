"""Prompt construction: chat template and fallback, answer-only labels, subject positions."""

import pytest

from unierase import prompting as P
from unierase.testing import tiny_tokenizer


@pytest.fixture(scope="module")
def chat_tok():
    return tiny_tokenizer(chat=True)


@pytest.fixture(scope="module")
def plain_tok():
    return tiny_tokenizer(chat=False)


def test_chat_prompt_matches_template(chat_tok):
    q = "Where was the writer born?"
    enc = P.encode(chat_tok, q)
    ref = chat_tok.apply_chat_template(
        [{"role": "user", "content": q}], add_generation_prompt=True, tokenize=False
    )
    assert chat_tok.decode(enc.input_ids) == ref
    assert enc.prompt_length == len(enc.input_ids) and enc.answer_length == 0
    assert chat_tok.decode(enc.input_ids[slice(*enc.user_span)]) == q


def test_answer_labels_cover_answer_and_end_of_turn_only(chat_tok):
    enc = P.encode(chat_tok, "Who wrote the novel?", "The author of the novel.")
    labels = enc.labels
    assert all(x == -100 for x in labels[: enc.prompt_length])
    assert labels[enc.prompt_length :] == enc.input_ids[enc.prompt_length :]
    answer_text = chat_tok.decode(enc.input_ids[enc.prompt_length :])
    assert answer_text == "The author of the novel.<|im_end|>"
    assert P.end_of_turn_ids(chat_tok) == [chat_tok.convert_tokens_to_ids("<|im_end|>")]


def test_fallback_template_without_chat(plain_tok):
    enc = P.encode(plain_tok, "What is the capital?", "Paris.")
    text = plain_tok.decode(enc.input_ids)
    assert text == "Question: What is the capital?\nAnswer: Paris.<|endoftext|>"
    assert plain_tok.decode(enc.input_ids[: enc.prompt_length]).endswith("Answer:")
    with pytest.raises(ValueError, match="no chat template"):
        P.encode(plain_tok, "q", fmt=P.PromptFormat(chat=True))


def test_system_prompt_is_sent(chat_tok):
    enc = P.encode(chat_tok, "Hi?", fmt=P.PromptFormat(system_prompt="Be brief."))
    assert chat_tok.decode(enc.input_ids).startswith("<|im_start|>system\nBe brief.<|im_end|>")


def test_special_token_text_in_user_input_is_split(chat_tok):
    tok = tiny_tokenizer(chat=True)
    tok.add_special_tokens({"additional_special_tokens": ["<|unlearn|>"]})
    unl = tok.convert_tokens_to_ids("<|unlearn|>")
    enc = P.encode(tok, "Please say <|unlearn|> now", "Sure <|unlearn|>")
    assert unl not in enc.input_ids
    # ... while ids we place ourselves go through untouched.
    enc = P.encode(tok, "Please answer", "x", answer_prefix_ids=[unl])
    assert enc.input_ids[enc.prompt_length] == unl


def test_subject_last_token(chat_tok):
    q = "What awards has Maria Oakhurst won for her books?"
    enc = P.encode(chat_tok, q)
    idx = P.subject_last_token(chat_tok, q, "Maria Oakhurst")
    covered = chat_tok.decode(enc.input_ids[enc.user_span[0] : idx + 1])
    assert covered.endswith("Oakhurst") or covered.rstrip().endswith("Oakhurst")
    assert not chat_tok.decode(enc.input_ids[enc.user_span[0] : idx]).endswith("Oakhurst")
    # Case-insensitive fallback, and the last prompt token when there is no subject.
    assert P.subject_last_token(chat_tok, q, "maria oakhurst") == idx
    assert P.subject_last_token(chat_tok, q, None) == enc.prompt_length - 1
    with pytest.raises(ValueError, match="does not occur"):
        P.subject_last_token(chat_tok, q, "Nobody")


def test_collate_left_and_right(chat_tok):
    encs = [P.encode(chat_tok, "Hi?", "Yes."), P.encode(chat_tok, "Where was she born?", "London.")]
    right = P.collate(encs, chat_tok.pad_token_id)
    assert right.input_ids.shape[1] == max(len(e.input_ids) for e in encs)
    assert right.attention_mask[0].sum() == len(encs[0].input_ids)
    assert right.labels[0, encs[0].prompt_length] == encs[0].input_ids[encs[0].prompt_length]
    left = P.collate(encs, chat_tok.pad_token_id, left=True, prompt_only=True)
    assert left.input_ids[0, -1] == encs[0].input_ids[encs[0].prompt_length - 1]
    assert int(left.offsets[0]) == left.input_ids.shape[1] - encs[0].prompt_length
