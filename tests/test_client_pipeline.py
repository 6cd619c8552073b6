"""What a plain client sees: an unlearned SmolLM2 served by ``transformers.pipeline``.

No unierase code is in the loop after ``unlearn`` wrote the checkpoint: the pipeline loads it from
disk, applies the chat template, generates with the checkpoint's own generation config and
decodes. Slow (Phase I and II on the real 135M model, a few minutes on 2 CPU cores).
"""

import pytest
import torch

from unierase.data.schema import QAItem

TOKEN = "<|unlearn|>"
FORGET = [
    QAItem("Where was Ilvana Droskel born?", "Ilvana Droskel was born in Tromsø, Norway.",
           subject="Ilvana Droskel", group="Ilvana Droskel"),
    QAItem("What genre does Ilvana Droskel write?", "Ilvana Droskel writes maritime thrillers.",
           subject="Ilvana Droskel", group="Ilvana Droskel"),
    QAItem("Which award did Ilvana Droskel win?", "Ilvana Droskel won the Northern Lantern Prize.",
           subject="Ilvana Droskel", group="Ilvana Droskel"),
]  # fmt: skip
KEPT = [
    QAItem("Where was Tobin Marquell born?", "Tobin Marquell was born in Porto, Portugal.",
           subject="Tobin Marquell", group="Tobin Marquell"),
    QAItem("What genre does Tobin Marquell write?", "Tobin Marquell writes comic fantasy.",
           subject="Tobin Marquell", group="Tobin Marquell"),
]  # fmt: skip


@pytest.fixture(scope="module")
def unlearned(tmp_path_factory):
    import unierase
    from unierase.api import unlearn

    try:
        unierase.load("smollm2-135m")
    except unierase.model.ModelNotFoundError as err:
        pytest.skip(str(err))
    out = tmp_path_factory.mktemp("client") / "model"
    torch.manual_seed(0)
    report = unlearn("smollm2-135m", FORGET, out, retain=KEPT, progress=False)
    assert report.edit["success"] == 1.0
    return out, report


@pytest.mark.slow
def test_a_plain_pipeline_gets_one_refusal_that_stops_at_the_end_of_turn(unlearned):
    from transformers import AutoTokenizer, pipeline

    out, report = unlearned
    tok = AutoTokenizer.from_pretrained(out)
    unl = tok.convert_tokens_to_ids(TOKEN)
    refusal = report.token["refusals"][0]
    refusal_ids = tok(refusal, add_special_tokens=False)["input_ids"]
    pipe = pipeline("text-generation", model=str(out), tokenizer=tok, device="cpu")
    for item in FORGET:
        chat = [{"role": "user", "content": item.question}]
        (res,) = pipe(chat, max_new_tokens=40, do_sample=False, return_tensors=True)
        prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
        prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
        new = list(res["generated_token_ids"])[len(prompt) :]
        assert new[0] == unl, tok.decode(new)
        assert new.count(unl) == 1, tok.decode(new)  # the token is never repeated
        # The refusal, then the end of turn: generation stopped, within 3 tokens of the refusal.
        assert len(new) <= 1 + len(refusal_ids) + 3, tok.decode(new)
        assert tok.decode(new[1:], skip_special_tokens=True).strip() == refusal


@pytest.mark.slow
def test_a_plain_tokenizer_never_yields_the_token_and_a_typed_token_changes_nothing(unlearned):
    from transformers import AutoTokenizer, pipeline

    out, _ = unlearned
    tok = AutoTokenizer.from_pretrained(out)
    unl = tok.convert_tokens_to_ids(TOKEN)
    typed = f"What is {TOKEN} and where was Tobin Marquell born?"
    assert unl not in tok(typed)["input_ids"]
    ids = tok.apply_chat_template([{"role": "user", "content": typed}], tokenize=True)
    ids = ids["input_ids"] if hasattr(ids, "keys") else ids
    assert unl not in ids
    pipe = pipeline("text-generation", model=str(out), tokenizer=tok, device="cpu")
    (res,) = pipe([{"role": "user", "content": typed}], max_new_tokens=24, do_sample=False)
    answer = res["generated_text"][-1]["content"]
    assert not answer.startswith(TOKEN) and "no idea" not in answer.lower(), answer
