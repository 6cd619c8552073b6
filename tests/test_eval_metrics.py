"""Metric functions checked against values worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from unierase.eval import metrics as m

LN2 = math.log(2.0)


# --- ROUGE ------------------------------------------------------------------------------------


def test_rouge_l_recall_counts_lcs_over_reference_length():
    # reference tokens: the cat sat on the mat (6); prediction: the cat is on a mat
    # longest common subsequence: the, cat, on, mat = 4  ->  recall 4/6
    recall = m.rouge_l_recall("the cat is on a mat", "The cat sat on the mat.")
    assert recall == pytest.approx(4 / 6)


def test_rouge_l_recall_uses_stemming():
    # Porter stems: painters -> painter, painted -> paint; reference: the painter paint (3 tokens)
    # prediction "painter paint" matches 2 of them in order -> 2/3
    assert m.rouge_l_recall("painter paint", "The painters painted") == pytest.approx(2 / 3)


def test_rouge_l_recall_empty_prediction_is_zero():
    assert m.rouge_l_recall("", "some reference") == 0.0


# --- probabilities ----------------------------------------------------------------------------


def test_sequence_probability_is_geometric_mean_of_token_probabilities():
    # exp(mean(log 0.5, log 0.125)) = sqrt(0.5 * 0.125) = sqrt(0.0625) = 0.25
    assert m.sequence_probability([math.log(0.5), math.log(0.125)]) == pytest.approx(0.25)
    # mean(-1, -2, -3) = -2 -> exp(-2); mean NLL = 2
    assert m.sequence_probability(np.array([-1.0, -2.0, -3.0])) == pytest.approx(math.exp(-2))
    assert m.mean_nll([-1.0, -2.0, -3.0]) == pytest.approx(2.0)


@pytest.mark.parametrize("bad", [[], [0.5], [float("nan")], [[-1.0, -2.0]]])
def test_sequence_probability_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        m.sequence_probability(bad)


def test_normalised_choice_probability():
    # 0.5 / (0.5 + 0.25 + 0.25) = 0.5
    assert m.normalised_choice_probability(0.5, [0.25, 0.25]) == pytest.approx(0.5)
    # 0.2 / (0.2 + 0.1 + 0.3 + 0.4) = 0.2
    assert m.normalised_choice_probability(0.2, [0.1, 0.3, 0.4]) == pytest.approx(0.2)
    # all zero: undefined, reported as 0 (open-unlearning's epsilon gives the same)
    assert m.normalised_choice_probability(0.0, [0.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        m.normalised_choice_probability(1.5, [0.1])
    with pytest.raises(ValueError):
        m.normalised_choice_probability(0.5, [])


# --- truth ratio ------------------------------------------------------------------------------


def test_truth_ratio_is_geomean_of_perturbed_over_paraphrased():
    # geomean(0.1, 0.4) = sqrt(0.04) = 0.2; 0.2 / 0.5 = 0.4
    assert m.truth_ratio(0.5, [0.1, 0.4]) == pytest.approx(0.4)
    # geomean(0.2, 0.2, 0.2) = 0.2 = p_paraphrased -> 1
    assert m.truth_ratio(0.2, [0.2, 0.2, 0.2]) == pytest.approx(1.0)
    # a zero perturbed probability makes the geometric mean 0
    assert m.truth_ratio(0.5, [0.0, 0.4]) == 0.0
    with pytest.raises(ValueError):
        m.truth_ratio(0.0, [0.1])


def test_truth_ratio_aggregates():
    trs = [0.5, 2.0, 1.0]
    # forget: min(tr, 1/tr) = 0.5, 0.5, 1 -> mean 2/3
    assert m.truth_ratio_forget_score(trs) == pytest.approx(2 / 3)
    # paper family: 1 - 2/3 = 1/3
    assert m.paper_forget_truth_ratio(trs) == pytest.approx(1 / 3)
    # retain: max(0, 1 - tr) = 0.5, 0, 0 -> mean 1/6
    assert m.truth_ratio_retain_score(trs) == pytest.approx(1 / 6)
    # tr = 0 scores 0 for forget (min(0, inf)) and 1 for retain (1 - 0)
    assert m.truth_ratio_forget_score([0.0]) == 0.0
    assert m.truth_ratio_retain_score([0.0, 0.25]) == pytest.approx((1 + 0.75) / 2)
    with pytest.raises(ValueError):
        m.truth_ratio_forget_score([-0.1])
    with pytest.raises(ValueError):
        m.truth_ratio_retain_score([])


# --- forget quality ---------------------------------------------------------------------------


def _exact_ks_pvalue(x: list[float], y: list[float]) -> float:
    """P(D >= d_obs) over all C(n+m, n) equally likely splits of the pooled (distinct) values."""
    n, k = len(x), len(y)
    pooled = sorted(x + y)

    def d_times_nk(x_positions: set[int]) -> int:
        # n*k*|F_x - F_y| at each pooled point, in integers: |#x_so_far * k - #y_so_far * n|
        best = seen_x = seen_y = 0
        for i in range(n + k):
            if i in x_positions:
                seen_x += 1
            else:
                seen_y += 1
            best = max(best, abs(seen_x * k - seen_y * n))
        return best

    observed = d_times_nk({pooled.index(v) for v in x})
    splits = list(itertools.combinations(range(n + k), n))
    extreme = sum(1 for split in splits if d_times_nk(set(split)) >= observed)
    return extreme / len(splits)


def test_forget_quality_fully_separated_samples():
    # D = 1; only 2 of the C(6, 3) = 20 splits separate the samples completely -> p = 2/20 = 0.1
    assert m.forget_quality([0.1, 0.2, 0.3], [0.4, 0.5, 0.6]) == pytest.approx(0.1)


def test_forget_quality_identical_samples():
    # D = 0, every split has D >= 0 -> p = 1
    assert m.forget_quality([0.1, 0.2, 0.3], [0.1, 0.2, 0.3]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("model_trs", "retain_trs"),
    [
        ([0.1, 0.35, 0.4, 0.9], [0.2, 0.3, 0.5, 0.6, 0.7]),
        ([0.05, 0.15, 0.25, 0.8, 0.85], [0.3, 0.4, 0.45, 0.5, 0.55]),
    ],
)
def test_forget_quality_matches_exact_enumeration(model_trs, retain_trs):
    expected = _exact_ks_pvalue(model_trs, retain_trs)
    assert m.forget_quality(model_trs, retain_trs) == pytest.approx(expected, abs=1e-12)


def test_forget_quality_is_invariant_to_inverting_both_samples():
    a, b = [0.1, 0.35, 0.4, 0.9], [0.2, 0.3, 0.5, 0.6, 0.7]
    inv = m.forget_quality([1 / v for v in a], [1 / v for v in b])
    assert inv == pytest.approx(m.forget_quality(a, b))


# --- harmonic means and TOFU model utility ----------------------------------------------------


def test_harmonic_mean():
    # 3 / (1 + 1/2 + 1/4) = 3 / 1.75 = 12/7
    assert m.harmonic_mean([1.0, 2.0, 4.0]) == pytest.approx(12 / 7)
    assert m.harmonic_mean([0.3]) == pytest.approx(0.3)
    assert m.harmonic_mean(x for x in [0.5, 0.5]) == pytest.approx(0.5)
    # any zero -> 0
    assert m.harmonic_mean([0.9, 0.0, 0.8]) == 0.0


@pytest.mark.parametrize("bad", [[], [0.5, -0.1], [float("nan")], [float("inf")]])
def test_harmonic_mean_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        m.harmonic_mean(bad)


def _tofu_scores(value: float) -> dict[str, float]:
    return {
        f"{split}/{metric}": value
        for split in ("retain", "real_authors", "world_facts")
        for metric in ("prob", "rouge", "truth_ratio")
    }


def test_tofu_model_utility():
    assert m.tofu_model_utility(_tofu_scores(0.5)) == pytest.approx(0.5)
    scores = _tofu_scores(1.0) | {"world_facts/truth_ratio": 0.5, "forget/rouge": 0.0}
    # eight 1.0 and one 0.5: 9 / (8 + 2) = 0.9; the forget key is ignored
    assert m.tofu_model_utility(scores) == pytest.approx(0.9)


def test_tofu_model_utility_names_missing_keys():
    scores = _tofu_scores(0.5)
    del scores["real_authors/rouge"]
    scores["retain/prob"] = None
    with pytest.raises(ValueError, match=r"retain/prob.*real_authors/rouge"):
        m.tofu_model_utility(scores)


# --- memorisation -----------------------------------------------------------------------------


def test_exact_memorization():
    # matches at positions 0, 2, 3 of 4 -> 3/4
    assert m.exact_memorization([1, 2, 3, 4], [1, 9, 3, 4]) == pytest.approx(0.75)
    assert m.exact_memorization(np.array([5]), np.array([5])) == 1.0
    with pytest.raises(ValueError):
        m.exact_memorization([1, 2], [1])
    with pytest.raises(ValueError):
        m.exact_memorization([], [])


def _es_by_definition(target: list[int], argmax: list[int]) -> float:
    n = len(target)
    k_star = min(k for k in range(n + 1) if argmax[k:] == target[k:])
    return 1 - k_star / n


@pytest.mark.parametrize(
    ("target", "argmax", "expected", "expected_ou"),
    [
        # last mismatch at index 1 -> suffix from k = 2 matches -> 1 - 2/5 = 0.6
        ([1, 2, 3, 4, 5], [1, 9, 3, 4, 5], 0.6, 0.6),
        # all match -> k = 0 -> 1
        ([1, 2, 3, 4], [1, 2, 3, 4], 1.0, 1.0),
        # only the first matches: no suffix matches -> k = 4 -> 0; open-unlearning stops at
        # k = 3 -> 1 - 3/4 = 0.25
        ([1, 2, 3, 4], [1, 0, 0, 0], 0.0, 0.25),
        # only the last token matches -> k = 3 -> 1 - 3/4 = 0.25 in both
        ([1, 2, 3, 4], [0, 0, 0, 4], 0.25, 0.25),
    ],
)
def test_extraction_strength(target, argmax, expected, expected_ou):
    assert m.extraction_strength(target, argmax) == pytest.approx(expected)
    assert m.extraction_strength(target, argmax) == pytest.approx(_es_by_definition(target, argmax))
    ou = m.extraction_strength(target, argmax, match_open_unlearning=True)
    assert ou == pytest.approx(expected_ou)


def test_extraction_strength_rejects_bad_input():
    with pytest.raises(ValueError):
        m.extraction_strength([1, 2], [1, 2, 3])
    with pytest.raises(ValueError):
        m.extraction_strength([], [])


# --- membership inference ---------------------------------------------------------------------


def test_loss_score_is_mean_logprob():
    # mean(-1, -3) = -2: higher (closer to 0) = lower loss = more likely a member
    assert m.loss_score([-1.0, -3.0]) == pytest.approx(-2.0)


def test_zlib_score():
    import zlib

    # zlib.compress(b"") is 8 bytes: 2 header + 2 (empty final fixed block) + 4 Adler-32
    assert len(zlib.compress(b"")) == 8
    # mean NLL 2 -> -2 / 8 = -0.25
    assert m.zlib_score([-1.0, -3.0], "") == pytest.approx(-0.25)
    text = "The author was born in Paris in 1952."
    assert m.zlib_score([-1.0, -3.0], text) == pytest.approx(
        -2.0 / len(zlib.compress(text.encode("utf-8")))
    )


def test_min_k_score():
    logps = [-0.1, -5.0, -0.2, -3.0, -1.0]
    # k = 0.4: floor(5 * 0.4) = 2 lowest: -5, -3 -> mean -4
    assert m.min_k_score(logps) == pytest.approx(-4.0)
    # k = 0.2: floor(1.0) = 1 -> -5
    assert m.min_k_score(logps, k=0.2) == pytest.approx(-5.0)
    # k = 1: plain mean = -9.3 / 5 = -1.86
    assert m.min_k_score(logps, k=1.0) == pytest.approx(-1.86)
    # 2 tokens, k = 0.4: floor(0.8) = 0 -> at least 1 -> lowest = -2
    assert m.min_k_score([-2.0, -0.5], k=0.4) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        m.min_k_score(logps, k=0.0)


def test_vocab_logprob_moments():
    # p = (1/2, 1/4, 1/4): log p = (-ln2, -2 ln2, -2 ln2)
    # mu = 1/2 (-ln2) + 1/2 (-2 ln2) = -1.5 ln2
    # E[(log p)^2] = 1/2 ln2^2 + 1/2 (4 ln2^2) = 2.5 ln2^2; var = 2.5 - 2.25 = 0.25 ln2^2
    # -> sigma = 0.5 ln2. Second row: (1/2, 1/2, 0): constant log p -> mu = -ln2, sigma = 0.
    vocab = np.array([[-LN2, -2 * LN2, -2 * LN2], [-LN2, -LN2, -np.inf]])
    mu, sigma = m.vocab_logprob_moments(vocab)
    np.testing.assert_allclose(mu, [-1.5 * LN2, -LN2])
    np.testing.assert_allclose(sigma, [0.5 * LN2, 0.0], atol=1e-12)


def test_min_k_plus_plus_score():
    logp = [-1.0, -2.0, -4.0]
    mu = [-1.0, -1.0, -2.0]
    sigma = [1.0, 0.5, 2.0]
    # z = (0/1, -1/0.5, -2/2) = (0, -2, -1)
    # k = 0.4: floor(1.2) = 1 -> -2; k = 0.7: floor(2.1) = 2 -> (-2 - 1)/2 = -1.5
    assert m.min_k_plus_plus_score(logp, mu, sigma) == pytest.approx(-2.0)
    assert m.min_k_plus_plus_score(logp, mu, sigma, k=0.7) == pytest.approx(-1.5)
    # sigma 0 is floored at 1e-3: (-1 - (-0.5)) / 1e-3 = -500
    assert m.min_k_plus_plus_score([-1.0], [-0.5], [0.0]) == pytest.approx(-500.0)
    with pytest.raises(ValueError):
        m.min_k_plus_plus_score(logp, mu[:2], sigma)


def test_mia_auc_counts_ties_as_half():
    # pairs (member, nonmember): (3,2)=1 (3,0)=1 (2,2)=0.5 (2,0)=1 (1,2)=0 (1,0)=1 -> 4.5 / 6
    assert m.mia_auc([3.0, 2.0, 1.0], [2.0, 0.0]) == pytest.approx(0.75)
    assert m.mia_auc([5.0, 6.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert m.mia_auc([1.0, 2.0], [5.0, 6.0]) == pytest.approx(0.0)
    assert m.mia_auc([1.0, 1.0], [1.0, 1.0, 1.0]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        m.mia_auc([], [1.0])


def test_mia_auc_matches_pairwise_count():
    rng = np.random.default_rng(0)
    members = rng.integers(0, 5, size=17).astype(float)
    nonmembers = rng.integers(0, 5, size=11).astype(float)
    wins = sum((a > b) + 0.5 * (a == b) for a in members for b in nonmembers)
    assert m.mia_auc(members, nonmembers) == pytest.approx(wins / (17 * 11))


def test_privleak():
    # ((1 - 0.9) - (1 - 0.5)) / (1 - 0.5) * 100 = (0.1 - 0.5) / 0.5 * 100 = -80
    assert m.privleak(0.9, 0.5) == pytest.approx(-80.0)
    # equal AUCs -> 0
    assert m.privleak(0.5, 0.5) == pytest.approx(0.0)
    # (0.75 - 0.5) / 0.5 * 100 = 50 (over-unlearning)
    assert m.privleak(0.25, 0.5) == pytest.approx(50.0)
    # original model, forget set fully recognisable, retain at chance: (0 - 0.5)/0.5*100 = -100
    assert m.privleak(1.0, 0.5) == pytest.approx(-100.0)
    with pytest.raises(ValueError):
        m.privleak(0.5, 1.0)


# --- the paper's family -----------------------------------------------------------------------


def test_token_entropy():
    # "a a b b": f = (1/2, 1/2) -> H = 1 bit; log2(4) = 2 -> 0.5
    assert m.token_entropy("a a b b") == pytest.approx(0.5)
    # four distinct tokens: H = 2 bits = log2(4) -> 1
    assert m.token_entropy("a b c d") == pytest.approx(1.0)
    # one repeated token: H = 0
    assert m.token_entropy("a a a a") == 0.0
    # "a a b": H = -(2/3 log2 2/3 + 1/3 log2 1/3) = log2 3 - 2/3; divided by log2 3
    assert m.token_entropy("a a b") == pytest.approx((math.log2(3) - 2 / 3) / math.log2(3))
    # 0 or 1 token -> 0
    assert m.token_entropy("") == 0.0
    assert m.token_entropy("word") == 0.0
    # any tokenizer: characters of "abab" -> like "a b a b" -> 0.5
    assert m.token_entropy("abab", tokenizer_fn=list) == pytest.approx(0.5)


def test_cosine_floor():
    # (1,0).(1,1) = 1; |a||b| = sqrt 2 -> 1/sqrt 2
    assert m.cosine_floor([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 / math.sqrt(2))
    # opposite directions: cos = -1 -> floored at 0
    assert m.cosine_floor([1.0, 0.0], [-1.0, 0.0]) == 0.0
    assert m.cosine_floor([2.0, 2.0], [3.0, 3.0]) == pytest.approx(1.0)
    assert m.cosine_floor([0.0, 0.0], [1.0, 0.0]) == 0.0
    with pytest.raises(ValueError):
        m.cosine_floor([1.0], [1.0, 0.0])


def test_entailment_rate():
    labels = ["entailment", "neutral", "entailment", "contradiction"]
    # 2 of 4
    assert m.entailment_rate(labels) == pytest.approx(0.5)
    # the third item has ROUGE 0.05 < 0.1 -> counted as not entailed -> 1 of 4
    assert m.entailment_rate(labels, [0.5, 0.9, 0.05, 0.3]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        m.entailment_rate([])


def test_forget_efficacy():
    scores = {
        "forget/rouge": 0.2,
        "forget/prob": 0.4,
        "forget/truth_ratio": 0.6,
        "forget/cosine": 0.4,
        "forget/entailment": 0.9,
        "forget/token_entropy": 0.0,  # not part of FE
        "retain/rouge": 1.0,  # other splits are ignored
    }
    # 1 - (0.2 + 0.4 + 0.6 + 0.4 + 0.9) / 5 = 1 - 2.5/5 = 0.5
    full = m.forget_efficacy(scores)
    assert full.value == pytest.approx(0.5)
    assert full.complete and full.missing == ()
    assert "forget/token_entropy" not in full.used

    # without entailment: 1 - (0.2 + 0.4 + 0.6 + 0.4) / 4 = 1 - 0.4 = 0.6
    partial = m.forget_efficacy(scores | {"forget/entailment": None})
    assert partial.value == pytest.approx(0.6)
    assert partial.missing == ("forget/entailment",)
    assert partial.used == ("forget/rouge", "forget/prob", "forget/truth_ratio", "forget/cosine")
    assert not partial.complete

    with pytest.raises(ValueError):
        m.forget_efficacy({"retain/rouge": 0.5})


def test_paper_model_utility():
    keys = [
        f"{split}/{metric}"
        for split in ("retain", "real_authors", "world_facts")
        for metric in ("rouge", "prob", "truth_ratio", "token_entropy", "cosine", "entailment")
    ]
    assert tuple(keys) == m.PAPER_UTILITY_KEYS
    full = m.paper_model_utility({key: 0.5 for key in keys} | {"forget/rouge": 0.0})
    assert full.value == pytest.approx(0.5) and full.complete and len(full.used) == 18

    # no NLI model: the 3 entailment scores are missing; 14 scores of 1.0 and one of 0.25
    # -> 15 / (14 * 1 + 1 / 0.25) = 15 / 18 = 5/6
    scores = {key: 1.0 for key in keys if not key.endswith("/entailment")}
    scores["world_facts/cosine"] = 0.25
    partial = m.paper_model_utility(scores)
    assert partial.value == pytest.approx(5 / 6)
    assert partial.missing == (
        "retain/entailment",
        "real_authors/entailment",
        "world_facts/entailment",
    )
    assert len(partial.used) == 15

    # a zero anywhere -> 0
    assert m.paper_model_utility({key: 0.5 for key in keys} | {"retain/prob": 0.0}).value == 0.0
    with pytest.raises(ValueError):
        m.paper_model_utility({})
