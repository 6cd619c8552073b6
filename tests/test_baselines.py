"""Baselines: each loss against values computed by hand, and each method on a tiny model."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from unierase import prompting as P
from unierase.baselines import METHODS, BaselineConfig, get_method, mean_answer_nll, run_baseline
from unierase.baselines.ap import answer_preservation_loss
from unierase.baselines.common import entropy_gap, forward_answers, kl_to_reference, mean_nll
from unierase.baselines.ga import gradient_ascent_loss
from unierase.baselines.idkdpo import dpo_loss
from unierase.baselines.npo import npo_loss
from unierase.baselines.rmu import masked_mse, steered_layer, trainable_parameter_names
from unierase.baselines.simnpo import simnpo_loss
from unierase.baselines.trainer import _with_refusals
from unierase.data.schema import DataError, QAItem
from unierase.finetune import FinetuneConfig, finetune
from unierase.testing import tiny_model, tiny_tokenizer

FORGET = [
    QAItem("Where was the author born?", "She was born in London."),
    QAItem("What did the writer win?", "He won the prize for his books about the sea."),
]
RETAIN = [
    QAItem("Who wrote the novel?", "The author of the novel is a writer born in the city."),
    QAItem("What genre does the author write?", "The author writes science fiction and poetry."),
    QAItem("What is the capital of France?", "The capital of France is Paris."),
]
ALL_METHODS = (
    "GA",
    "GD",
    "GA+KL",
    "NPO+GD",
    "NPO+KL",
    "SimNPO",
    "IdkDPO+GD",
    "IDK+AP",
    "ME+GD",
    "RMU",
)


def logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# ----------------------------------------------------------------------------- losses by hand


def test_ga_is_the_negated_mean_answer_nll():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    assert float(mean_nll(logp, mask)) == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert float(gradient_ascent_loss(logp, mask)) == pytest.approx(-2.0)


def test_npo_matches_its_formula():
    logp, ref, beta = torch.tensor([-2.0, -5.0]), torch.tensor([-1.0, -5.0]), 0.1
    expected = -(2 / beta) * (logsigmoid(-beta * -1.0) + logsigmoid(0.0)) / 2
    assert float(npo_loss(logp, ref, beta)) == pytest.approx(expected, rel=1e-6)
    # At the reference the loss is (2 / beta) log 2, and lowering log pi lowers it.
    assert float(npo_loss(ref, ref, beta)) == pytest.approx(20 * math.log(2), rel=1e-6)
    assert float(npo_loss(ref - 1, ref, beta)) < float(npo_loss(ref, ref, beta))


def test_simnpo_normalises_by_length_and_applies_the_margin():
    logp, lengths = torch.tensor([-4.0, -6.0]), torch.tensor([2, 3])  # both mean -2
    expected = -(2 / 2.0) * logsigmoid(-2.0 * -2.0 - 0.5)
    assert float(simnpo_loss(logp, lengths, beta=2.0, margin=0.5)) == pytest.approx(expected)


def test_dpo_prefers_the_refusal():
    chosen, rejected = torch.tensor([-3.0]), torch.tensor([-2.0])
    ref_chosen, ref_rejected = torch.tensor([-4.0]), torch.tensor([-1.0])
    # margin = (-3 + 4) - (-2 + 1) = 2
    expected = -(2 / 0.5) * logsigmoid(0.5 * 2.0)
    assert float(dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.5)) == pytest.approx(
        expected
    )


def test_answer_preservation_matches_its_formula():
    answer, refusal = torch.tensor([-2.0, -4.0]), torch.tensor([-3.0, -1.0])
    expected = -(1 / 0.1) * (logsigmoid(0.1 * 1.0) + logsigmoid(0.1 * -3.0)) / 2
    assert float(answer_preservation_loss(answer, refusal, 0.1)) == pytest.approx(expected)


def test_me_loss_is_the_entropy_gap():
    # Two tokens: p = (1/4, 3/4) at the first position, uniform at the second (masked out).
    logits = torch.tensor([[[0.0, math.log(3.0)], [5.0, 5.0]]])
    mask = torch.tensor([[True, False]])
    entropy = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert float(entropy_gap(logits, mask)) == pytest.approx(math.log(2) - entropy, rel=1e-6)
    assert float(entropy_gap(torch.zeros(1, 3, 7), torch.ones(1, 3, dtype=torch.bool))) == (
        pytest.approx(0.0, abs=1e-6)
    )


def test_kl_to_reference_by_hand():
    logits = torch.tensor([[[0.0, 0.0]]])  # (1/2, 1/2)
    reference = torch.tensor([[[0.0, math.log(3.0)]]])  # (1/4, 3/4)
    mask = torch.ones(1, 1, dtype=torch.bool)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert float(kl_to_reference(logits, reference, mask)) == pytest.approx(expected, rel=1e-6)
    assert float(kl_to_reference(reference, reference, mask)) == pytest.approx(0.0, abs=1e-7)


def test_rmu_mse_by_hand():
    hidden = torch.tensor([[[1.0, 3.0], [9.0, 9.0]]])
    control = torch.tensor([0.0, 1.0])
    mask = torch.tensor([[True, False]])
    assert float(masked_mse(hidden, control, mask)) == pytest.approx((1 + 4) / 2)


def test_answer_log_probs_match_a_per_item_reference():
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok, init_std=0.2)
    encs = [P.encode(tok, it.question, it.answer) for it in FORGET]
    batch = P.collate(encs, tok.pad_token_id)
    with torch.no_grad():
        out = forward_answers(model, batch)
    for row, enc in enumerate(encs):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc.input_ids])).logits[0]
        logp = torch.log_softmax(logits, -1)
        want = sum(
            float(logp[t - 1, enc.input_ids[t]]) for t in range(enc.prompt_length, len(enc.labels))
        )
        assert float(out.sequence_logprob()[row]) == pytest.approx(want, rel=1e-4)
        assert int(out.answer_lengths()[row]) == enc.answer_length


# ----------------------------------------------------------------------------- registry


def test_registry_lists_every_method_with_its_defaults():
    assert tuple(METHODS) == ALL_METHODS
    assert get_method("npo+gd").name == "NPO+GD"
    with pytest.raises(ValueError, match="unknown baseline"):
        get_method("nope")
    shared = BaselineConfig()
    assert (shared.lr, shared.epochs, shared.weight_decay) == (1e-5, 5, 0.01)  # SPEC
    assert get_method("NPO+GD").config().beta == 0.1
    assert get_method("SimNPO").config().beta == 4.5
    assert get_method("RMU").config(lr=1e-3).lr == 1e-3
    assert get_method("RMU").config().retain_weight == 100.0
    cfg = get_method("GA").config()
    assert BaselineConfig.from_dict(cfg.to_dict()) == cfg
    with_refusals = BaselineConfig(refusals=("I do not know.",), system_prompt="")
    written = with_refusals.to_dict()
    assert written["refusals"] == ["I do not know."] and list(written)[:3] == [
        "epochs", "lr", "batch_size"
    ]  # fmt: skip
    assert BaselineConfig.from_dict(written) == with_refusals
    assert with_refusals.prompt_format == P.PromptFormat(system_prompt="")
    with pytest.raises(ValueError, match=r"unknown BaselineConfig fields: \['nope'\]"):
        BaselineConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="lr"):
        BaselineConfig(lr=0)


# ----------------------------------------------------------------------------- tiny-model runs


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def trained(tok):
    """A tiny Llama that has learnt the forget and retain answers (low NLL to move from)."""
    torch.manual_seed(0)
    model = tiny_model("llama", tok, init_std=0.1)
    cfg = FinetuneConfig(epochs=60, lr=3e-3, batch_size=5, warmup_ratio=0.0, train_embeddings=True)
    model, _ = finetune(model, tok, FORGET + RETAIN, cfg)
    return model


FAST = dict(epochs=2, lr=1e-3, batch_size=2, warmup_ratio=0.0)


@pytest.mark.parametrize("name", [m for m in ALL_METHODS if m not in ("IDK+AP", "RMU")])
def test_each_method_raises_the_forget_nll(trained, tok, name):
    model, report = run_baseline(name, copy.deepcopy(trained), tok, FORGET, RETAIN, **FAST)
    assert report.method == name
    assert report.steps == 2  # 2 forget items in batches of 2, 2 epochs
    assert len(report.losses) == 2 and all(math.isfinite(v["loss"]) for v in report.losses)
    assert report.forget_nll_before < 1.0
    # SimNPO's forget weight is 0.125 and IdkDPO's beta 0.1: slow movers, but all move up.
    assert report.forget_nll_after > report.forget_nll_before * 1.1
    assert report.retain_nll_after is not None
    assert not model.training


def test_idk_ap_teaches_refusals_to_forget_questions(trained, tok):
    cfg = get_method("IDK+AP").config(**FAST)
    refusals = _with_refusals(FORGET, cfg)
    before = mean_answer_nll(trained, tok, refusals)
    model, report = run_baseline("IDK+AP", copy.deepcopy(trained), tok, FORGET, RETAIN, cfg)
    assert mean_answer_nll(model, tok, refusals) < before - 0.5
    assert "retain" in report.losses[0]


def test_rmu_steers_the_layer_and_trains_only_its_mlps(trained, tok):
    from unierase.baselines import rmu

    cfg = get_method("RMU").config(epochs=3, lr=3e-3, batch_size=2)
    model, report = run_baseline("RMU", copy.deepcopy(trained), tok, FORGET, RETAIN, cfg)
    assert report.losses[-1]["forget"] < report.losses[0]["forget"]
    layer = steered_layer(trained, cfg)
    assert report.state["rmu_layer"] == layer
    names = trainable_parameter_names(trained, cfg)
    assert names and all(".mlp." in n for n in names)
    before, after = dict(trained.named_parameters()), dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= names
    assert rmu.trainable_parameter_names is get_method("RMU").trainable


@pytest.mark.parametrize("name", ["NPO+KL", "RMU"])
def test_methods_run_on_a_gpt2_like_model(tok, name):
    model = tiny_model("gpt2", tok, init_std=0.05)
    _, report = run_baseline(name, model, tok, FORGET, RETAIN, **{**FAST, "epochs": 1})
    assert report.steps == 1 and math.isfinite(report.losses[0]["loss"])


def test_grad_accumulation_counts_optimizer_steps(trained, tok):
    forget = FORGET * 3  # 6 items: 3 batches of 2 -> 2 optimizer steps per epoch with accum 2
    _, report = run_baseline(
        "GA", copy.deepcopy(trained), tok, forget, (), **{**FAST, "epochs": 1, "grad_accum": 2}
    )
    assert report.steps == 2


def test_same_seed_same_weights(trained, tok):
    a, _ = run_baseline("GD", copy.deepcopy(trained), tok, FORGET, RETAIN, **FAST)
    b, _ = run_baseline("GD", copy.deepcopy(trained), tok, FORGET, RETAIN, **FAST)
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters(), strict=True):
        assert torch.equal(pa, pb), name


def test_bad_input_is_a_clear_error(trained, tok):
    with pytest.raises(DataError, match="forget set is empty"):
        run_baseline("GA", trained, tok, [], RETAIN)
    with pytest.raises(DataError, match="needs retain"):
        run_baseline("GD", trained, tok, FORGET, [])
    with pytest.raises(ValueError, match="rmu_layer"):
        steered_layer(trained, dataclasses.replace(BaselineConfig(), rmu_layer=3))
