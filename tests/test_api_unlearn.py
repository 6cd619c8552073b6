"""unierase unlearn end to end on a tiny model: output layout, resume, precise, atomic writes."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from unierase import api
from unierase import prompting as P
from unierase.data.schema import QAItem
from unierase.edit.config import EditConfig
from unierase.testing import tiny_model, tiny_tokenizer

TEXTS = [
    "The author was born in 1970 and writes science fiction. She lives in London.",
    "What is the capital of France? The capital of France is Paris.",
] * 4
FORGET = [
    QAItem("Where was Maria Oakhurst born?", "London.", group="maria"),
    QAItem("Who is Tom Vale's father?", "A doctor.", group="tom"),
]
LATER = [QAItem("What is the capital of France?", "Paris.", group="fr")]
EDIT = EditConfig(
    layers=(1, 2),
    lambda_=0.01,
    v_lr=0.5,
    v_steps=100,
    v_clamp=1.5,
    null_threshold=1e-3,
    null_threshold_relative=True,
    context_prefixes=("The",),
    prefix_tokens=2,
    granularity="question",
    repair_rounds=1,
)


def _token_settings():
    from unierase.token import StageConfig

    return {
        "stages": (
            StageConfig("base", 6, 3e-2, ("chat",)),
            StageConfig("noise", 1, 1e-2, ("chat",), noise=True),
        ),
        "breadth_templates": 4,
        "retain_questions": 4,
        "retain_max_new_tokens": 4,
        "check_items": 0,
    }


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tok = tiny_tokenizer()
    tiny_model("llama", tok, init_std=0.2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _first_token(model, tok, question):
    ids = torch.tensor([P.encode(tok, question).input_ids])
    with torch.no_grad():
        return int(model(input_ids=ids).logits[0, -1].argmax())


def test_unlearn_writes_loadable_checkpoint_and_resumes(base_dir, tmp_path):
    before = {p.name: p.stat().st_mtime_ns for p in base_dir.iterdir()}
    out = tmp_path / "round1"
    report = api.unlearn(
        base_dir,
        FORGET,
        out,
        edit_config=EDIT,
        stats_texts=TEXTS,
        token_overrides=_token_settings(),
        progress=False,
    )
    assert report.edit["success"] == 1.0
    assert {p.name: p.stat().st_mtime_ns for p in base_dir.iterdir()} == before  # input untouched
    names = {p.name for p in out.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "unierase_state.json",
        "unierase_token.json",
        "unierase_report.json",
    } <= names
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    unl = tok.convert_tokens_to_ids("<|unlearn|>")
    assert [_first_token(model, tok, it.question) for it in FORGET] == [unl, unl]
    assert _first_token(model, tok, LATER[0].question) != unl

    out2 = tmp_path / "round2"
    second = api.unlearn(
        base_dir,
        LATER + FORGET[:1],
        out2,
        mode="sequential",
        resume=out,
        edit_config=EDIT,
        progress=False,
    )
    assert second.token["reused"] and second.rounds == 2
    assert second.edit["skipped_repeats"] == [FORGET[0].question]
    model2 = AutoModelForCausalLM.from_pretrained(out2)
    assert [_first_token(model2, tok, it.question) for it in FORGET + LATER] == [unl] * 3
    state = json.loads((out2 / "unierase_state.json").read_text())
    assert len(state["rounds"]) == 2 and len(state["edited_questions"]) == 3


def test_sequential_needs_a_resume_and_refuses_a_plain_model(base_dir, tmp_path):
    with pytest.raises(api.ResumeError, match="resume"):
        api.unlearn(base_dir, FORGET, tmp_path / "x", mode="sequential")
    with pytest.raises(api.ResumeError, match="not a unierase output"):
        api.unlearn(base_dir, FORGET, tmp_path / "x", mode="sequential", resume=base_dir)
    assert not (tmp_path / "x").exists()


def test_failed_run_leaves_previous_output(base_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()  # an earlier unlearn output (by its files): the only kind a run may replace
    for name in ("unierase_report.json", "unierase_state.json", "config.json"):
        (out / name).write_text("kept")
    from unierase.edit import phase2

    def boom(*a, **k):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(phase2, "unlearning_edit", boom)
    with pytest.raises(RuntimeError):
        api.unlearn(
            base_dir,
            FORGET,
            out,
            edit_config=EDIT,
            stats_texts=TEXTS,
            token_overrides=_token_settings(),
            progress=False,
        )
    assert all((out / n).read_text() == "kept" for n in ("unierase_report.json", "config.json"))
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left
