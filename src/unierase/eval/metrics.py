"""Per-item and aggregate unlearning metrics, as plain functions over numbers and strings.

Nothing here touches a model: the callers turn a model's outputs into per-token log-probabilities
(natural log), argmax ids and generated text, and these functions turn those into scores. Keeping
the two apart lets every aggregate (KS test, AUC, privleak, harmonic means) be recomputed offline
from per-item records.

Two families are implemented, following the TOFU paper and the UniErase paper:

* TOFU / open-unlearning (Maini et al. 2024, arXiv 2401.06121; locuslab/open-unlearning,
  ``src/evals/metrics/{memorization,privacy,utility}.py`` and ``src/evals/metrics/mia/``):
  ROUGE-L recall, length-normalised probability, truth ratio, forget quality, model utility,
  exact memorisation, extraction strength, membership-inference scores and AUC, privleak.
* The UniErase paper's family, inherited from Yuan et al. 2024, "A Closer Look at Machine
  Unlearning for LLMs" (sail-sg/closer-look-LLM-unlearning, ``metrics/metrics.py``): the same
  ROUGE / probability / truth ratio plus token entropy, floored cosine similarity and entailment
  rate, combined into forget efficacy (FE) and model utility (MU).

Conventions used throughout:

* log-probabilities are natural logs of the probability the model gave each answer token under
  teacher forcing; "probability" of an answer means the length-normalised one,
  ``exp(mean(token_logprobs))``;
* membership-inference scores are signed so that HIGHER means MORE LIKELY A MEMBER (seen in
  training); open-unlearning stores loss-like scores (higher = less likely a member) and flips
  the labels instead, which gives the same AUC;
* bad input at the boundary (empty arrays, NaN, negative probabilities, missing keys) raises
  ``ValueError`` with a message saying what was wrong.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import ks_2samp, rankdata

__all__ = [
    "DEFAULT_MIN_K",
    "PAPER_FE_METRICS",
    "PAPER_METRICS",
    "PAPER_UTILITY_KEYS",
    "PartialScore",
    "TOFU_UTILITY_KEYS",
    "TOFU_UTILITY_METRICS",
    "UTILITY_SPLITS",
    "cosine_floor",
    "entailment_rate",
    "exact_memorization",
    "extraction_strength",
    "forget_efficacy",
    "forget_quality",
    "harmonic_mean",
    "loss_score",
    "mean_nll",
    "mia_auc",
    "min_k_plus_plus_score",
    "min_k_score",
    "normalised_choice_probability",
    "paper_forget_truth_ratio",
    "paper_model_utility",
    "privleak",
    "rouge_l_recall",
    "sequence_probability",
    "tofu_model_utility",
    "token_entropy",
    "truth_ratio",
    "truth_ratio_forget_score",
    "truth_ratio_retain_score",
    "vocab_logprob_moments",
    "zlib_score",
]

# Log-softmax outputs are <= 0; allow a little rounding noise above 0 (low-precision dtypes).
_LOGPROB_TOLERANCE = 1e-4

# open-unlearning's TOFU configs (configs/eval/tofu_metrics/mia_min_k*.yaml) use k = 0.4; the
# attack class itself defaults to 0.2, which only applies when a config omits k.
DEFAULT_MIN_K = 0.4

# open-unlearning's Min-K%++ clamps the vocabulary VARIANCE at 1e-6, i.e. the std at 1e-3.
_MIN_K_PP_MIN_STD = 1e-3

UTILITY_SPLITS: tuple[str, ...] = ("retain", "real_authors", "world_facts")
TOFU_UTILITY_METRICS: tuple[str, ...] = ("prob", "rouge", "truth_ratio")
TOFU_UTILITY_KEYS: tuple[str, ...] = tuple(
    f"{split}/{metric}" for split in UTILITY_SPLITS for metric in TOFU_UTILITY_METRICS
)
PAPER_METRICS: tuple[str, ...] = (
    "rouge",
    "prob",
    "truth_ratio",
    "token_entropy",
    "cosine",
    "entailment",
)
PAPER_UTILITY_KEYS: tuple[str, ...] = tuple(
    f"{split}/{metric}" for split in UTILITY_SPLITS for metric in PAPER_METRICS
)
# Token entropy is left out of forget efficacy by Yuan et al. (a refusal is allowed to be terse).
PAPER_FE_METRICS: tuple[str, ...] = ("rouge", "prob", "truth_ratio", "cosine", "entailment")


# --------------------------------------------------------------------------------------------
# input checks


def _as_1d(values: ArrayLike, name: str, *, allow_empty: bool = False) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if not allow_empty and arr.size == 0:
        raise ValueError(f"{name} must not be empty")
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _as_logprobs(token_logprobs: ArrayLike, name: str = "token_logprobs") -> np.ndarray:
    arr = _as_1d(token_logprobs, name)
    if (arr > _LOGPROB_TOLERANCE).any():
        raise ValueError(f"{name} must be log-probabilities (<= 0), got max {arr.max():.6g}")
    return np.minimum(arr, 0.0)


def _as_probability(p: float, name: str) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return p


def _as_ids(ids: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a one-dimensional sequence of token ids")
    return arr


def _check_k(k: float) -> None:
    if not 0.0 < k <= 1.0:
        raise ValueError(f"k must be a fraction in (0, 1], got {k}")


# --------------------------------------------------------------------------------------------
# text overlap and probabilities (both families)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall of a generated answer against the reference answer.

    Recall = length of the longest common subsequence of tokens / number of reference tokens,
    computed by ``rouge_score.rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)`` with the
    reference as target, exactly as TOFU (Maini et al. 2024), open-unlearning
    (``eval_text_similarity``, key ``rougeL_recall``) and Yuan et al. 2024 do. The scorer's own
    tokeniser lowercases, keeps only ``[a-z0-9]`` runs and Porter-stems them, so punctuation and
    non-ASCII letters do not count. An empty reference scores 0.
    """
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].recall)


def mean_nll(token_logprobs: ArrayLike) -> float:
    """Mean negative log-likelihood per token: ``-mean(token_logprobs)`` (nats per token).

    This is open-unlearning's ``avg_loss`` (``evaluate_probability``) for one item.
    """
    return float(-np.mean(_as_logprobs(token_logprobs)))


def sequence_probability(token_logprobs: ArrayLike) -> float:
    """Length-normalised probability of an answer: ``exp(-mean NLL) = exp(mean(token_logprobs))``.

    ``token_logprobs`` (shape ``(T,)``) are the natural-log probabilities of the T answer tokens
    given the question (teacher forcing). This is the geometric mean of the token probabilities,
    TOFU's ``P(a|q)^(1/|a|)``, open-unlearning's ``prob`` (``evaluate_probability``) and the
    "Probability" of Yuan et al. for the forget and retain splits.
    """
    return float(np.exp(np.mean(_as_logprobs(token_logprobs))))


def normalised_choice_probability(p_true: float, p_perturbed: Sequence[float]) -> float:
    """Probability of the true answer among the true and perturbed ones.

    ``p_true / (p_true + sum(p_perturbed))``, every p a length-normalised probability
    (:func:`sequence_probability`). TOFU uses it for the real-authors and world-facts splits;
    open-unlearning calls it ``probability_w_options``, Yuan et al. compute it the same way. When
    every probability is 0 the ratio is undefined; we return 0.0, which is what open-unlearning's
    ``+ 1e-10`` in the denominator gives.
    """
    p_true = _as_probability(p_true, "p_true")
    perturbed = _as_1d(p_perturbed, "p_perturbed")
    for p in perturbed:
        _as_probability(p, "each p_perturbed")
    denominator = p_true + float(perturbed.sum())
    return 0.0 if denominator == 0.0 else p_true / denominator


# --------------------------------------------------------------------------------------------
# truth ratio and forget quality


def truth_ratio(p_paraphrased: float, p_perturbed: Sequence[float]) -> float:
    """TOFU's truth ratio of one item: ``geomean(p_perturbed) / p_paraphrased``.

    Every p is a length-normalised probability (:func:`sequence_probability`) of an answer to the
    same question: the paraphrased correct answer (forget and retain splits) or the original
    answer (real authors, world facts, which have no paraphrase), and each perturbed (wrong)
    answer. The geometric mean equals open-unlearning's ``exp(-mean(avg_loss over perturbed))``
    and Yuan et al.'s ``avg_perturbed_loss.mean(-1)``. A value near 1 means the model cannot tell
    right from wrong; below 1 it prefers the right answer. Computed in log space. Raises
    ``ValueError`` when ``p_paraphrased`` is 0 (the ratio is undefined; open-unlearning would
    return about 1e10 times the numerator instead).
    """
    p_para = _as_probability(p_paraphrased, "p_paraphrased")
    if p_para == 0.0:
        raise ValueError("p_paraphrased is 0: the truth ratio is undefined")
    perturbed = _as_1d(p_perturbed, "p_perturbed")
    for p in perturbed:
        _as_probability(p, "each p_perturbed")
    with np.errstate(divide="ignore"):
        log_geomean = float(np.mean(np.log(perturbed)))
    return float(math.exp(log_geomean - math.log(p_para)))


def _as_truth_ratios(trs: ArrayLike) -> np.ndarray:
    arr = _as_1d(trs, "truth ratios")
    if (arr < 0).any():
        raise ValueError("truth ratios must be >= 0")
    return arr


def truth_ratio_forget_score(trs: ArrayLike) -> float:
    """TOFU forget-split truth-ratio score: ``mean(min(tr, 1/tr))`` over items.

    open-unlearning's ``closer_to_1_better`` aggregator. 1 means the model finds the paraphrased
    and the perturbed answers equally likely (nothing left to tell them apart, the ideal after
    unlearning); 0 means it strongly prefers one of them. ``tr = 0`` or ``inf`` scores 0.
    """
    arr = _as_truth_ratios(trs)
    with np.errstate(divide="ignore"):
        return float(np.mean(np.minimum(arr, 1.0 / arr)))


def truth_ratio_retain_score(trs: ArrayLike) -> float:
    """Truth-ratio score on the retain, real-authors and world-facts splits: ``mean(max(0, 1-tr))``.

    open-unlearning's ``true_better`` aggregator; Yuan et al. write the same thing as
    ``max(0, 1 - 1/curr_stat_1)`` with ``curr_stat_1 = 1/tr``. Higher is better: the model prefers
    the correct answer.
    """
    arr = _as_truth_ratios(trs)
    return float(np.mean(np.maximum(0.0, 1.0 - arr)))


def paper_forget_truth_ratio(trs: ArrayLike) -> float:
    """The UniErase paper's forget-split truth ratio: ``1 - mean(min(tr, 1/tr))``.

    That is ``1 - truth_ratio_forget_score(trs)``, oriented like the paper family's other forget
    scores (higher = more knowledge left), so that it can enter forget efficacy
    ``FE = 1 - mean(...)``. From Yuan et al. 2024 (``get_eval_results``: ``'forget' in k``
    branch), whose code the UniErase authors used.
    """
    return 1.0 - truth_ratio_forget_score(trs)


def forget_quality(model_trs: ArrayLike, retain_model_trs: ArrayLike) -> float:
    """TOFU forget quality: p-value of the two-sample Kolmogorov-Smirnov test.

    ``scipy.stats.ks_2samp(model_trs, retain_model_trs).pvalue`` with scipy's defaults
    (two-sided, exact distribution for small samples), between the per-item forget-split truth
    ratios of the evaluated model and of a retain model trained without the forget set (TOFU;
    open-unlearning ``ks_test``). High (close to 1) means the two are indistinguishable. The
    KS statistic only depends on ranks, so it does not matter whether tr or 1/tr is passed, as
    long as both samples use the same one.
    """
    a = _as_truth_ratios(model_trs)
    b = _as_truth_ratios(retain_model_trs)
    return float(ks_2samp(a, b).pvalue)


# --------------------------------------------------------------------------------------------
# harmonic means and TOFU model utility


def harmonic_mean(values: Iterable[float]) -> float:
    """Harmonic mean ``n / sum(1/v)``; any zero makes it 0 (the limit, as in ``scipy.stats.hmean``).

    Raises ``ValueError`` on an empty input, a negative, NaN or infinite value.
    """
    arr = _as_1d(list(values), "values")
    if not np.isfinite(arr).all():
        raise ValueError("values must be finite")
    if (arr < 0).any():
        raise ValueError(f"the harmonic mean needs non-negative values, got min {arr.min()}")
    if (arr == 0).any():
        return 0.0
    return float(arr.size / np.sum(1.0 / arr))


def tofu_model_utility(scores: Mapping[str, float]) -> float:
    """TOFU model utility: harmonic mean of 9 aggregate scores.

    ``scores`` must hold the keys of :data:`TOFU_UTILITY_KEYS`, ``"{split}/{metric}"`` for split
    in ``retain, real_authors, world_facts`` and metric in ``prob, rouge, truth_ratio``:

    * ``retain/prob``: mean :func:`sequence_probability`; ``real_authors/prob`` and
      ``world_facts/prob``: mean :func:`normalised_choice_probability`;
    * ``*/rouge``: mean :func:`rouge_l_recall`;
    * ``*/truth_ratio``: :func:`truth_ratio_retain_score`.

    As in TOFU and open-unlearning's ``model_utility`` (``hm_aggregate``). Other keys (the
    forget split, say) are ignored; missing or ``None`` keys raise ``ValueError`` naming them.
    """
    missing = [key for key in TOFU_UTILITY_KEYS if scores.get(key) is None]
    if missing:
        raise ValueError(f"tofu_model_utility is missing scores for: {', '.join(missing)}")
    return harmonic_mean(float(scores[key]) for key in TOFU_UTILITY_KEYS)


# --------------------------------------------------------------------------------------------
# memorisation


def exact_memorization(target_ids: ArrayLike, greedy_ids_teacher_forced: ArrayLike) -> float:
    """Exact memorisation: share of answer positions where the model's argmax is the answer token.

    ``greedy_ids_teacher_forced[i]`` is the argmax of the next-token distribution given the
    question and the TRUE answer tokens before position i (one forward pass, teacher forcing);
    the score is ``mean(greedy_ids_teacher_forced == target_ids)``. Tirumala et al. 2022, as
    open-unlearning's ``exact_memorization``. Both inputs have shape ``(T,)``, ``T >= 1``.
    Note: open-unlearning drops the last answer position (the end-of-turn token) before scoring;
    the caller decides which positions to pass.
    """
    target = _as_ids(target_ids, "target_ids")
    argmax = _as_ids(greedy_ids_teacher_forced, "greedy_ids_teacher_forced")
    if target.shape != argmax.shape:
        raise ValueError(f"length mismatch: {target.shape[0]} targets, {argmax.shape[0]} argmaxes")
    if target.size == 0:
        raise ValueError("exact memorisation needs at least one answer token")
    return float(np.mean(target == argmax))


def extraction_strength(
    target_ids: ArrayLike, argmax_ids: ArrayLike, *, match_open_unlearning: bool = False
) -> float:
    """Extraction strength: how short a prefix of the answer suffices to regenerate the rest.

    ``ES = 1 - k* / T`` where ``k*`` is the smallest k in ``0..T`` such that the teacher-forced
    argmax ids equal the answer ids at every position ``k..T-1`` (Carlini et al. 2021; Wang et al.
    2025, "Towards effective evaluations and comparisons for LLM unlearning methods"; computed
    like open-unlearning's ``extraction_strength``). Under greedy decoding "the continuation from
    the true prefix of length k reproduces the rest" is the same event as "the teacher-forced
    argmax matches at every position >= k". ES = 1: the whole answer comes back from the question
    alone; ES = 0: not even the last token does (k* = T, the empty suffix).

    ``match_open_unlearning=True`` reproduces open-unlearning's loop, which only tries
    ``k < T`` and leaves k at ``T - 1`` when nothing matches, so an answer with no matching
    suffix scores ``1/T`` there instead of 0. Shapes: both ``(T,)``, ``T >= 1``.
    """
    target = _as_ids(target_ids, "target_ids")
    argmax = _as_ids(argmax_ids, "argmax_ids")
    if target.shape != argmax.shape:
        raise ValueError(f"length mismatch: {target.shape[0]} targets, {argmax.shape[0]} argmaxes")
    length = int(target.size)
    if length == 0:
        raise ValueError("extraction strength needs at least one answer token")
    mismatches = np.flatnonzero(target != argmax)
    # the matching suffix starts just after the last mismatch
    k_star = 0 if mismatches.size == 0 else int(mismatches[-1]) + 1
    if match_open_unlearning:
        k_star = min(k_star, length - 1)
    return 1.0 - k_star / length


# --------------------------------------------------------------------------------------------
# membership inference (higher score = more likely a member)


def loss_score(token_logprobs: ArrayLike) -> float:
    """LOSS attack score (Yeom et al. 2018): ``mean(token_logprobs) = -mean NLL``.

    Signed so that higher = more likely a member (low loss). open-unlearning's ``LOSSAttack``
    returns ``+mean NLL`` and flips the AUC labels instead; the AUC is the same.
    """
    return -mean_nll(token_logprobs)


def zlib_score(token_logprobs: ArrayLike, text: str) -> float:
    """zlib attack score (Carlini et al. 2021): ``-(mean NLL) / len(zlib.compress(text_utf8))``.

    The mean NLL of the answer tokens divided by the number of bytes of the answer text
    compressed with ``zlib.compress`` at its default level, as open-unlearning's ``ZLIBAttack``,
    negated so that higher = more likely a member.
    """
    compressed_bytes = len(zlib.compress(text.encode("utf-8")))
    return -mean_nll(token_logprobs) / compressed_bytes


def _mean_of_lowest(values: np.ndarray, k: float) -> float:
    _check_k(k)
    count = max(1, int(values.size * k))  # floor, at least one, as open-unlearning
    return float(np.mean(np.sort(values)[:count]))


def min_k_score(token_logprobs: ArrayLike, k: float = DEFAULT_MIN_K) -> float:
    """Min-K% Prob score (Shi et al. 2024): mean of the ``k`` fraction of lowest token log-probs.

    The lowest ``max(1, floor(T * k))`` values of ``token_logprobs`` (shape ``(T,)``) are
    averaged. Higher = more likely a member (open-unlearning's ``MinKProbAttack`` returns the
    negation). Default ``k = 0.4``, open-unlearning's TOFU setting.
    """
    return _mean_of_lowest(_as_logprobs(token_logprobs), k)


def vocab_logprob_moments(vocab_logprobs: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of ``log p`` under the model's own next-token distribution.

    ``vocab_logprobs`` has shape ``(T, V)``: log-softmax over the vocabulary at each answer
    position. Returns ``mu[t] = sum_v p log p`` and ``sigma[t] = sqrt(sum_v p (log p)^2 - mu^2)``,
    each shape ``(T,)``, the inputs of :func:`min_k_plus_plus_score` (Zhang et al. 2024;
    open-unlearning ``MinKPlusPlusAttack``). Tokens with probability 0 contribute nothing.
    """
    logp = np.asarray(vocab_logprobs, dtype=np.float64)
    if logp.ndim != 2 or logp.shape[1] == 0:
        raise ValueError(f"vocab_logprobs must have shape (T, V), got {logp.shape}")
    p = np.exp(logp)
    finite_logp = np.where(p > 0, logp, 0.0)
    mu = np.sum(p * finite_logp, axis=-1)
    variance = np.sum(p * finite_logp**2, axis=-1) - mu**2
    return mu, np.sqrt(np.maximum(variance, 0.0))


def min_k_plus_plus_score(
    token_logprobs: ArrayLike, mu: ArrayLike, sigma: ArrayLike, k: float = DEFAULT_MIN_K
) -> float:
    """Min-K%++ score (Zhang et al. 2024): Min-K% over standardised token log-probs.

    Per position t: ``z_t = (logp_t - mu_t) / sigma_t`` where ``mu_t`` and ``sigma_t`` are the
    mean and standard deviation of ``log p`` under the model's full next-token distribution at t
    (:func:`vocab_logprob_moments`); the score is the mean of the lowest ``max(1, floor(T * k))``
    values of z. ``sigma`` is floored at 1e-3 (open-unlearning clamps the variance at 1e-6).
    Higher = more likely a member. All three arrays have shape ``(T,)``.
    """
    logp = _as_logprobs(token_logprobs)
    mu_arr = _as_1d(mu, "mu")
    sigma_arr = _as_1d(sigma, "sigma")
    if not (logp.shape == mu_arr.shape == sigma_arr.shape):
        raise ValueError(
            f"shape mismatch: token_logprobs {logp.shape}, mu {mu_arr.shape}, "
            f"sigma {sigma_arr.shape}"
        )
    if (sigma_arr < 0).any():
        raise ValueError("sigma must be >= 0")
    z = (logp - mu_arr) / np.maximum(sigma_arr, _MIN_K_PP_MIN_STD)
    return _mean_of_lowest(z, k)


def mia_auc(member_scores: ArrayLike, nonmember_scores: ArrayLike) -> float:
    """ROC AUC of a membership-inference score, by the Mann-Whitney rank formula.

    ``AUC = P(s_member > s_nonmember) + 0.5 P(s_member == s_nonmember)`` over all pairs,
    computed as ``(R_m - n_m (n_m + 1) / 2) / (n_m n_n)`` with ``R_m`` the sum of the members'
    mid-ranks in the pooled sample. Scores are "higher = more likely a member" (the functions
    above). In the unlearning setting members are the forget set and non-members the holdout
    set; 1 = forget items stand out as seen, 0.5 = indistinguishable. This is open-unlearning's
    ``mia_auc`` convention ("auc is 1 when the forget data is much more likely than the holdout
    data"), without sklearn.
    """
    members = _as_1d(member_scores, "member_scores")
    nonmembers = _as_1d(nonmember_scores, "nonmember_scores")
    n_m, n_n = members.size, nonmembers.size
    ranks = rankdata(np.concatenate([members, nonmembers]), method="average")
    u_statistic = float(np.sum(ranks[:n_m])) - n_m * (n_m + 1) / 2.0
    return u_statistic / (n_m * n_n)


def privleak(auc_unlearned: float, auc_retain: float) -> float:
    """MUSE's PrivLeak, in open-unlearning's form, from two MIA AUCs (:func:`mia_auc` convention).

    MUSE (Shi et al. 2024) defines ``(AUC_unlearn - AUC_retrain) / AUC_retrain * 100`` with an
    AUC that is low when the forget set looks like members; open-unlearning's ``privleak``
    therefore converts its conventional AUCs (high = members) with ``1 - AUC`` first:

        privleak = ((1 - auc_unlearned) - (1 - auc_retain)) / (1 - auc_retain) * 100

    ``auc_unlearned``: forget-vs-holdout AUC of the unlearned model; ``auc_retain``: the same for a
    retain model (open-unlearning falls back to 0.5 when no retain model is at hand). 0 is ideal;
    strongly negative = the forget set still looks seen (under-unlearning, about -100 for the
    original model); positive = it looks less seen than never-seen data (over-unlearning).
    Raises ``ValueError`` for ``auc_retain == 1`` (zero denominator).
    """
    auc_u = _as_probability(auc_unlearned, "auc_unlearned")
    auc_r = _as_probability(auc_retain, "auc_retain")
    if auc_r == 1.0:
        raise ValueError("auc_retain is 1: privleak's denominator (1 - auc_retain) is 0")
    return ((1.0 - auc_u) - (1.0 - auc_r)) / (1.0 - auc_r) * 100.0


# --------------------------------------------------------------------------------------------
# the UniErase paper's family (Yuan et al. 2024)


def token_entropy(
    text: str, tokenizer_fn: Callable[[str], Sequence[Hashable]] = str.split
) -> float:
    """Normalised unigram token entropy of a generation: ``H / log2(T)``.

    ``tokens = tokenizer_fn(text)``, T = number of tokens, ``H = -sum_t f_t log2 f_t`` over the
    relative frequencies f_t of the distinct tokens. 1 = every token different, low values =
    repetitive (degenerate) output. Yuan et al. 2024 (``compute_token_entropy``), which the
    UniErase paper reuses, tokenise with the evaluated model's ``tokenizer.tokenize``: pass it as
    ``tokenizer_fn`` to reproduce their numbers; the default splits on whitespace. With 0 or 1
    token the score is 0, as theirs (``num_ngrams <= 1: return 0``).
    """
    tokens = list(tokenizer_fn(text))
    count = len(tokens)
    if count <= 1:
        return 0.0
    freqs = np.array(list(Counter(tokens).values()), dtype=np.float64) / count
    entropy_bits = float(-np.sum(freqs * np.log2(freqs)))
    return entropy_bits / math.log2(count)


def cosine_floor(a: ArrayLike, b: ArrayLike) -> float:
    """Cosine similarity of two embedding vectors, floored at 0: ``max(0, a.b / (|a| |b|))``.

    Yuan et al. embed the generation and the reference answer with the sentence-transformers
    model ``paraphrase-MiniLM-L6-v2`` and floor the cosine at 0. A zero vector scores 0 (as
    sklearn's ``cosine_similarity``). Shapes: both ``(D,)``.
    """
    va = _as_1d(a, "a")
    vb = _as_1d(b, "b")
    if va.shape != vb.shape:
        raise ValueError(f"shape mismatch: {va.shape} vs {vb.shape}")
    norms = float(np.linalg.norm(va) * np.linalg.norm(vb))
    if norms == 0.0:
        return 0.0
    return float(min(1.0, max(0.0, float(va @ vb) / norms)))


def entailment_rate(
    labels: Sequence[str],
    rouge_recalls: Sequence[float] | None = None,
    rouge_floor: float = 0.1,
) -> float:
    """Share of items whose NLI label is ``"entailment"`` (Yuan et al. ``get_entailment_score``).

    ``labels`` are the NLI model's labels per item (Yuan et al. use
    ``sileod/deberta-v3-base-tasksource-nli``; premise = generation and hypothesis = reference on
    the forget split, the other way round elsewhere). When ``rouge_recalls`` is given, items with
    ROUGE-L recall below ``rouge_floor`` count as not entailed, as Yuan et al. do ("if ROUGE is
    less than 0.1, we consider the output is factually incorrect").
    """
    if len(labels) == 0:
        raise ValueError("labels must not be empty")
    entailed = np.array([label == "entailment" for label in labels])
    if rouge_recalls is not None:
        rouges = _as_1d(rouge_recalls, "rouge_recalls")
        if rouges.size != entailed.size:
            raise ValueError(f"{entailed.size} labels but {rouges.size} ROUGE values")
        entailed &= rouges >= rouge_floor
    return float(np.mean(entailed))


@dataclass(frozen=True)
class PartialScore:
    """An aggregate computed from whichever of its inputs were available.

    ``value``: the score; ``used``: the keys that entered it; ``missing``: expected keys that were
    absent or ``None`` (e.g. entailment when no NLI model is available offline).
    """

    value: float
    used: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """True when every expected input was used."""
        return not self.missing


def _available(
    scores: Mapping[str, float | None], keys: Sequence[str]
) -> tuple[list[str], list[str]]:
    used = [key for key in keys if scores.get(key) is not None]
    missing = [key for key in keys if scores.get(key) is None]
    return used, missing


def forget_efficacy(scores: Mapping[str, float | None]) -> PartialScore:
    """The UniErase paper's forget efficacy: ``FE = 1 - mean`` of five forget-split scores.

    Keys (any other key is ignored): ``forget/rouge`` (mean ROUGE-L recall), ``forget/prob``
    (mean :func:`sequence_probability`), ``forget/truth_ratio`` in the PAPER's orientation,
    :func:`paper_forget_truth_ratio` (``1 - mean(min(tr, 1/tr))``, not TOFU's
    ``mean(min(tr, 1/tr))``), ``forget/cosine`` (mean :func:`cosine_floor`) and
    ``forget/entailment`` (:func:`entailment_rate`). Token entropy is left out, as in Yuan et al.
    (``get_eval_results``). Higher FE = more forgotten.

    A key that is absent or ``None`` (entailment without an NLI model, say) is left out of the
    mean and listed in ``missing``; the result then differs from the paper's FE, which the caller
    must report. Raises ``ValueError`` when none of the five is available.
    """
    keys = [f"forget/{metric}" for metric in PAPER_FE_METRICS]
    used, missing = _available(scores, keys)
    if not used:
        raise ValueError(f"forget_efficacy needs at least one of: {', '.join(keys)}")
    value = 1.0 - float(np.mean([float(scores[key]) for key in used]))
    return PartialScore(value=value, used=tuple(used), missing=tuple(missing))


def paper_model_utility(scores: Mapping[str, float | None]) -> PartialScore:
    """The UniErase paper's model utility: harmonic mean of 18 scores.

    Keys :data:`PAPER_UTILITY_KEYS`: ``"{split}/{metric}"`` for split in ``retain, real_authors,
    world_facts`` and metric in ``rouge, prob, truth_ratio, token_entropy, cosine, entailment``
    (prob: :func:`sequence_probability` on retain, :func:`normalised_choice_probability` on the
    other two; truth_ratio: :func:`truth_ratio_retain_score`). As Yuan et al.'s
    ``Model Utility = hmean(all non-forget metrics)``, token entropy included. Absent or ``None``
    keys are left out and listed in ``missing``; any zero makes the result 0
    (:func:`harmonic_mean`). Raises ``ValueError`` when none is available.
    """
    used, missing = _available(scores, PAPER_UTILITY_KEYS)
    if not used:
        raise ValueError("paper_model_utility needs at least one of the 18 split/metric scores")
    value = harmonic_mean(float(scores[key]) for key in used)
    return PartialScore(value=value, used=tuple(used), missing=tuple(missing))
