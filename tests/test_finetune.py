"""Target/retain fine-tuning: loss on answer tokens only, training works, caching is safe."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest
import torch

from unierase import finetune as F
from unierase import prompting as P
from unierase.artifacts import OutputDirError
from unierase.data.schema import DataError, QAItem
from unierase.finetune import (
    PRESETS,
    FinetuneConfig,
    _drop_prefix,
    answer_nll,
    clear_cache,
    common_prefix_length,
    count_parameters,
    encode_training_items,
    finetune,
    finetune_cached,
    finetune_key,
    list_cache,
    preset_for,
    read_meta,
    select_training_data,
)
from unierase.testing import FAMILIES, tiny_config, tiny_model, tiny_tokenizer

TOFU = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tofu"

QA = [
    QAItem("Where was the author born?", "She was born in London."),
    QAItem("What did the writer win?", "He won the prize for his books about the sea."),
    QAItem("Who wrote the novel?", "The author of the novel is a writer born in the city."),
    QAItem("What genre does the author write?", "The author writes science fiction and poetry."),
]


def _batch(tok, items, config=None, left=True):
    encs = encode_training_items(tok, items, config or FinetuneConfig())
    return encs, P.collate(encs, tok.pad_token_id, left=left)


def _reference_nll(model, tok, items, fmt=P.PromptFormat()) -> float:
    """Summed answer NLL computed item by item, unpadded, from the full logits."""
    total = 0.0
    for it in items:
        enc = P.encode(tok, it.question, it.answer, fmt)
        ids = torch.tensor([enc.input_ids])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        for t in range(enc.prompt_length, len(enc.input_ids)):
            total -= float(logp[t - 1, enc.input_ids[t]])
    return total


# ----------------------------------------------------------------------------- the loss


def test_labels_cover_exactly_the_answer_and_end_of_turn():
    tok = tiny_tokenizer()
    encs, batch = _batch(tok, QA)
    for row, enc in enumerate(encs):
        pad = int(batch.offsets[row])
        labels = batch.labels[row].tolist()
        ids = batch.input_ids[row].tolist()
        prompt_end = pad + enc.prompt_length
        assert all(lab == -100 for lab in labels[:prompt_end])  # padding and prompt
        assert labels[prompt_end:] == ids[prompt_end:]
        text = tok.decode(ids[prompt_end:])
        assert text.startswith(QA[row].answer) and text.endswith("<|im_end|>")


@pytest.mark.parametrize("family", FAMILIES)
def test_answer_nll_matches_a_per_item_reference(family):
    """Left/right padding, logits kept from the first answer position, and the shared prompt
    prefix run once with its key/value cache repeated: all give the unpadded loss."""
    tok = tiny_tokenizer()
    model = tiny_model(family, tok)
    encs, left = _batch(tok, QA, left=True)
    _, right = _batch(tok, QA, left=False)
    shared = common_prefix_length(encs)
    assert shared >= 3  # "<|im_start|>user\n" at least
    suffixes = P.collate([_drop_prefix(e, shared) for e in encs], tok.pad_token_id, left=True)
    with torch.no_grad():
        reference = _reference_nll(model, tok, QA)
        for batch, keep in ((left, True), (left, False), (right, False)):
            nll, count = answer_nll(model, batch, keep_logits=keep)
            assert count == int((batch.labels != -100).sum())
            assert float(nll) == pytest.approx(reference, rel=1e-4)
        nll, _ = answer_nll(model, suffixes, prefix_ids=encs[0].input_ids[:shared])
        assert float(nll) == pytest.approx(reference, rel=1e-4)
    # The gradients agree too (the prefix's cache carries them back to every weight).
    grads = []
    for batch, prefix in ((left, ()), (suffixes, encs[0].input_ids[:shared])):
        model.zero_grad()
        answer_nll(model, batch, prefix_ids=prefix)[0].backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
    for a, b in zip(*grads, strict=True):
        assert float((a - b).norm()) <= 1e-4 * float(b.norm()) + 1e-8


def test_prompt_positions_have_no_effect_on_the_loss():
    """Logits that predict prompt tokens are ignored; those that predict answer tokens count."""
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    encs, batch = _batch(tok, QA[:1], left=False)
    prompt_length = encs[0].prompt_length
    head = model.get_output_embeddings()

    def nll_with_noise_at(position: int | None) -> float:
        def hook(_module, _inputs, output):
            if position is None:
                return output
            output = output.clone()
            output[:, position] += 50 * torch.randn(output.shape[-1])
            return output

        handle = head.register_forward_hook(hook)
        try:
            with torch.no_grad():
                return float(answer_nll(model, batch, keep_logits=False)[0])
        finally:
            handle.remove()

    clean = nll_with_noise_at(None)
    # Positions 0 .. prompt_length-2 predict prompt tokens: no effect, bit for bit.
    for position in (0, prompt_length // 2, prompt_length - 2):
        assert nll_with_noise_at(position) == clean
    # Position prompt_length-1 predicts the first answer token.
    assert nll_with_noise_at(prompt_length - 1) != pytest.approx(clean, rel=1e-3)
    # Changing a prompt token's target does not change the loss either: it has none.
    batch.labels[0, : prompt_length - 1] = batch.input_ids[0, 1:prompt_length]
    assert float(answer_nll(model, batch, keep_logits=False)[0]) != clean  # sanity: labels used
    batch.labels[0, :prompt_length] = -100
    assert float(answer_nll(model, batch, keep_logits=False)[0]) == clean


def test_gradient_reaches_no_prompt_logit():
    tok = tiny_tokenizer()
    model = tiny_model("qwen2", tok)
    encs, batch = _batch(tok, QA[:2], left=True)
    captured = {}

    def hook(_module, _inputs, output):
        output.retain_grad()
        captured["logits"] = output

    handle = model.get_output_embeddings().register_forward_hook(hook)
    try:
        nll, _ = answer_nll(model, batch, keep_logits=False)
        nll.backward()
    finally:
        handle.remove()
    grad = captured["logits"].grad  # (B, L, V)
    for row, enc in enumerate(encs):
        start = int(batch.offsets[row])
        # Logits at start .. start+prompt_length-2 predict prompt tokens.
        assert grad[row, : start + enc.prompt_length - 1].abs().max() == 0
        assert grad[row, start + enc.prompt_length - 1 : -1].abs().sum(-1).min() > 0


# ----------------------------------------------------------------------------- training


def _learnable_model(family: str, tok) -> torch.nn.Module:
    """A tiny model with a larger init: at the default 0.02 the frozen random embeddings and
    tied head cap the logits so low that no loss can fall fast in a few steps."""
    from transformers import AutoModelForCausalLM

    cfg = tiny_config(
        family, len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=None, initializer_range=0.1,
    )  # fmt: skip
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)


@pytest.mark.parametrize(
    ("family", "overrides"),
    [
        ("llama", {}),  # tied head
        ("qwen2", {"lora_rank": 8, "lora_alpha": 16, "lr": 1e-2}),  # untied head
        ("gpt2", {"lora_rank": 8, "lr": 1e-2}),  # Conv1D weights, stored transposed
        ("llama", {"lora_rank": 8, "lr": 1e-2, "train_fraction": 0.5}),
    ],
)
def test_loss_falls(family, overrides):
    tok = tiny_tokenizer()
    model = _learnable_model(family, tok)
    config = dataclasses.replace(
        FinetuneConfig(epochs=8, lr=3e-3, batch_size=2, warmup_ratio=0.1), **overrides
    )
    before = float(answer_nll(model, _batch(tok, QA)[1])[0])
    tuned, result = finetune(model, tok, QA, config)
    after = float(answer_nll(tuned, _batch(tok, QA)[1])[0])
    assert result.epoch_losses[-1] < 0.7 * result.epoch_losses[0]
    assert after < 0.7 * before
    assert len(result.losses) == config.epochs * 2  # 4 items, batch 2
    assert not tuned.training
    # LoRA is merged away: plain modules, no adapter parameters left.
    assert not any("lora" in name for name, _ in tuned.named_parameters())


def test_seed_makes_training_reproducible():
    tok = tiny_tokenizer()
    items = QA * 3  # six batches, so two seeds almost surely order them differently
    config = FinetuneConfig(epochs=1, lr=1e-3, batch_size=2)
    runs = [finetune(tiny_model("llama", tok), tok, items, config)[1].losses for _ in range(2)]
    assert runs[0] == runs[1]
    reseeded = dataclasses.replace(config, seed=1)
    other = finetune(tiny_model("llama", tok), tok, items, reseeded)[1].losses
    assert other != runs[0]


def test_train_fraction_leaves_lower_blocks_and_embeddings_untouched():
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tuned, result = finetune(
        model, tok, QA, FinetuneConfig(epochs=1, lr=1e-3, batch_size=4, train_fraction=0.25)
    )
    changed = {k for k, v in tuned.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.layers.3.") for k in changed)
    assert result.trainable_parameters == sum(
        p.numel() for n, p in tuned.named_parameters() if n.startswith("model.layers.3.")
    )


def test_gguf_free_save_loads_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    from unierase.finetune import save_finetuned

    tok = tiny_tokenizer()
    tuned, _ = finetune(
        tiny_model("llama", tok),
        tok,
        QA,
        FinetuneConfig(epochs=1, lr=1e-2, batch_size=4, lora_rank=4),
    )
    save_finetuned(tuned, tok, tmp_path / "ckpt", {"test": 1})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32)
    ids = torch.tensor([P.encode(tok, QA[0].question, QA[0].answer).input_ids])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, tuned(ids).logits, atol=1e-5)
    assert read_meta(tmp_path / "ckpt") == {"test": 1}


# ----------------------------------------------------------------------------- bad input


def test_empty_data_is_a_clear_error():
    tok = tiny_tokenizer()
    with pytest.raises(DataError, match="empty"):
        finetune(tiny_model("llama", tok), tok, [], FinetuneConfig())


def test_too_long_answers_are_truncated_with_a_warning_or_rejected(caplog):
    tok = tiny_tokenizer()
    long_item = QAItem("Who wrote the novel?", "The author of the novel " * 30)
    config = FinetuneConfig(max_length=48)
    with caplog.at_level(logging.WARNING, logger="unierase.finetune"):
        encs = encode_training_items(tok, [QA[0], long_item], config)
    assert "1 of 2 answers truncated" in caplog.text
    assert len(encs[1].input_ids) == 48
    assert encs[1].answer_length == 48 - encs[1].prompt_length
    with pytest.raises(DataError, match="max_length"):
        encode_training_items(tok, [long_item], dataclasses.replace(config, on_too_long="error"))
    with pytest.raises(DataError, match="prompt alone"):
        encode_training_items(tok, [QAItem("novel " * 60, "x")], config)


def test_model_without_chat_template_uses_the_plain_fallback():
    tok = tiny_tokenizer(chat=False)
    encs = encode_training_items(tok, QA[:1], FinetuneConfig())
    enc = encs[0]
    prompt = tok.decode(enc.input_ids[: enc.prompt_length])
    assert prompt == P.FALLBACK_PROMPT.format(question=QA[0].question)
    assert tok.decode(enc.input_ids[enc.prompt_length :]).strip().startswith(QA[0].answer)
    tuned, result = finetune(
        _learnable_model("llama", tok), tok, QA, FinetuneConfig(epochs=4, lr=3e-3, batch_size=2)
    )
    assert result.epoch_losses[-1] < 0.8 * result.epoch_losses[0]


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="epochs"):
        FinetuneConfig(epochs=0)
    with pytest.raises(ValueError, match="on_too_long"):
        FinetuneConfig(on_too_long="drop")
    assert FinetuneConfig.from_dict(FinetuneConfig(lora_targets=("q",)).to_dict()) == (
        FinetuneConfig(lora_targets=("q",))
    )
    with pytest.raises(ValueError, match=r"unknown FinetuneConfig fields: \['nope'\]"):
        FinetuneConfig.from_dict({"nope": 1})


def test_config_dict_and_cache_key_are_stable():
    # The cache key hashes to_dict(): a change here orphans every cached fine-tune.
    config = FinetuneConfig(
        lora_rank=8, lora_targets=("q_proj", "v_proj"), system_prompt="", train_fraction=0.5
    )
    written = {
        "epochs": 3, "lr": 1e-4, "batch_size": 8, "grad_accum": 1, "warmup_ratio": 0.1,
        "weight_decay": 0.01, "max_grad_norm": 1.0, "max_length": 256, "on_too_long": "truncate",
        "lora_rank": 8, "lora_alpha": 16.0, "lora_dropout": 0.0,
        "lora_targets": ["q_proj", "v_proj"], "train_fraction": 0.5, "train_embeddings": False,
        "replay_questions": 0, "replay_max_tokens": 48, "share_prefix": True,
        "system_prompt": "", "seed": 0,
    }  # fmt: skip
    assert list(config.to_dict().items()) == list(written.items())
    assert FinetuneConfig.from_dict(written) == config
    assert finetune_key("base-model", "items-hash", "full", config) == "full-f904ae029f84d13f"
    assert finetune_key("base-model", "items-hash", "full", FinetuneConfig()) == (
        "full-ed6010bbfd37592a"
    )


# ----------------------------------------------------------------------------- presets


def test_presets_are_chosen_by_size():
    tok = tiny_tokenizer()
    tiny = tiny_model("llama", tok)
    assert preset_for(tiny) is PRESETS[0]
    assert preset_for(count_parameters(tiny)) is PRESETS[0]
    assert preset_for(135_000_000) is PRESETS[0]
    assert preset_for(1_000_000_000) is PRESETS[1]
    assert preset_for(8_000_000_000) is PRESETS[-1]
    sizes = [p.max_parameters for p in PRESETS]
    assert sizes == sorted(sizes)


# ----------------------------------------------------------------------------- data selection


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    from unierase.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("synth")
    write_synthetic(out, n_authors=6, n_forget=2, seed=0, questions_per_author=5)
    return out


def test_select_full_and_retain(synth_dir):
    full = select_training_data(synth_dir, "full")
    retain = select_training_data(synth_dir, "retain")
    assert len(full.forget) == 10 and len(full.retain) == 20
    assert full.items == full.forget + full.retain
    assert retain.items == retain.retain and retain.forget == full.forget
    sub = select_training_data(synth_dir, "full", authors=3, forget_authors=1)
    assert len({it.group for it in sub.forget}) == 1 and len({it.group for it in sub.retain}) == 2
    assert len(sub.items) == 15
    few = select_training_data(synth_dir, "retain", questions_per_author=2)
    assert len(few.items) == 8
    with pytest.raises(DataError, match="authors"):
        select_training_data(synth_dir, "full", authors=9, forget_authors=2)
    with pytest.raises(DataError, match="split"):
        select_training_data(synth_dir, "forget")


@pytest.mark.skipif(not TOFU.is_dir(), reason="TOFU data not available")
def test_select_tofu_subset():
    data = select_training_data(TOFU, "full", authors=10, forget_authors=2)
    assert len(data.forget) == 40 and len(data.retain) == 160
    assert len({it.group for it in data.forget}) == 2
    assert len({it.group for it in data.retain}) == 8
    assert not {it.question for it in data.forget} & {it.question for it in data.retain}
    assert data.description["forget_split"] == "forget10"


# ----------------------------------------------------------------------------- caching


@pytest.fixture
def tiny_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    path = tmp_path / "base"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


FAST = FinetuneConfig(epochs=1, lr=1e-3, batch_size=8)


def test_cache_returns_the_same_checkpoint_without_training(
    tiny_checkpoint, synth_dir, monkeypatch
):
    import unierase.finetune as F

    data = select_training_data(synth_dir, "full")
    first = finetune_cached(data, tiny_checkpoint, FAST)
    assert not first.cached and (first.path / "model.safetensors").is_file()
    assert first.meta["data"]["n_items"] == 30 and first.meta["config"] == FAST.to_dict()

    def no_training(*args, **kwargs):
        raise AssertionError("trained again")

    monkeypatch.setattr(F, "finetune", no_training)
    second = finetune_cached(data, tiny_checkpoint, FAST)
    assert second.cached and second.path == first.path and second.key == first.key

    # Another split, other hyper-parameters or other data are other entries.
    retain = select_training_data(synth_dir, "retain")
    keys = {
        finetune_key("b", F.data_hash(data.items), "full", FAST),
        finetune_key("b", F.data_hash(retain.items), "retain", FAST),
        finetune_key("b", F.data_hash(data.items), "full", dataclasses.replace(FAST, lr=2e-3)),
        finetune_key("c", F.data_hash(data.items), "full", FAST),
    }
    assert len(keys) == 4


def test_interrupted_run_leaves_no_valid_entry(tiny_checkpoint, synth_dir, monkeypatch):
    import unierase.finetune as F

    data = select_training_data(synth_dir, "retain")

    def interrupted(model, tokenizer, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # undone at the end of the block; the cache env stays
        patch.setattr(F, "finetune", lambda *a, **k: (a[0], _dummy_result()))
        patch.setattr(type(tiny_model("llama")), "save_pretrained", interrupted)
        with pytest.raises(KeyboardInterrupt):
            finetune_cached(data, tiny_checkpoint, FAST)
    root = F.finetuned_root()
    assert root.is_relative_to(tiny_checkpoint.parent)
    assert not root.is_dir() or not [p for p in root.iterdir() if read_meta(p) is not None]

    # A leftover temporary directory (as a killed process leaves) is listed and cleared, and
    # a directory without a record is not taken for a checkpoint.
    key = finetune_key(F.base_model_id(tiny_checkpoint), F.data_hash(data.items), "retain", FAST)
    (root / f".{key}.abc").mkdir(parents=True)
    (root / key).mkdir()
    (root / key / "config.json").write_text("{}")
    kinds = {e.kind for e in list_cache()}
    assert "incomplete" in kinds and "finetuned" not in kinds
    assert not finetune_cached(data, tiny_checkpoint, FAST).cached
    assert clear_cache()[0] >= 2
    assert not any(e.kind in ("finetuned", "incomplete") for e in list_cache())


def _dummy_result():
    from unierase.finetune import FinetuneResult

    return FinetuneResult([1.0], [1.0], 0.1, 0.1, 1, 1, 1)


def test_out_directory_gets_a_copy(tiny_checkpoint, synth_dir, tmp_path):
    data = select_training_data(synth_dir, "retain", questions_per_author=1)
    out = tmp_path / "out"
    result = finetune_cached(data, tiny_checkpoint, FAST, out=out)
    assert (out / "model.safetensors").is_file()
    assert read_meta(out)["key"] == result.key
    with pytest.raises(FileExistsError):  # an earlier copy is replaced only with overwrite
        finetune_cached(data, tiny_checkpoint, FAST, out=out)
    with pytest.raises(OutputDirError, match="is the input"):  # never the base model
        finetune_cached(data, tiny_checkpoint, FAST, out=tmp_path / "base", overwrite=True)


# ----------------------------------------------------------------------------- CLI


def test_cli_finetune_and_cache(tiny_checkpoint, synth_dir, tmp_path, capsys):
    from unierase.cli import main

    argv = [
        "finetune", "--model", str(tiny_checkpoint), "--data", str(synth_dir),
        "--split", "retain", "--out", str(tmp_path / "ft"), "--epochs", "1", "--lr", "1e-3",
        "--authors", "3", "--forget-authors", "1",
    ]  # fmt: skip
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert "trained" in first and (tmp_path / "ft" / "config.json").is_file()
    meta = json.loads((tmp_path / "ft" / "unierase_finetune.json").read_text())
    assert meta["data"]["n_items"] == 10 and meta["config"]["epochs"] == 1
    assert main([*argv, "--overwrite"]) == 0
    assert "from the cache" in capsys.readouterr().out

    assert main(["cache", "list"]) == 0
    listing = capsys.readouterr().out
    assert "finetuned" in listing and "retain fine-tune" in listing
    assert main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert main(["cache", "list"]) == 0
    assert "finetuned" not in capsys.readouterr().out

    assert main(["finetune", "--model", str(tiny_checkpoint), "--data", str(tmp_path)]) == 2
    assert "error" in capsys.readouterr().out


def test_replay_questions_are_not_probe_questions():
    """Replay must not rehearse what the general probe measures (not even its templates)."""
    from unierase.data.probes import load_general_probe
    from unierase.finetune import REPLAY_QUESTIONS

    def head(q: str) -> str:
        return " ".join(q.casefold().split()[:4])

    probe = load_general_probe()
    assert len(set(REPLAY_QUESTIONS)) == len(REPLAY_QUESTIONS)
    assert not {q.casefold() for q in REPLAY_QUESTIONS} & {p.question.casefold() for p in probe}
    assert not {head(q) for q in REPLAY_QUESTIONS} & {head(p.question) for p in probe}


def test_replay_adds_the_base_models_own_answers():
    from unierase.eval.generate import generate_answers
    from unierase.finetune import REPLAY_QUESTIONS, replay_encodings

    tok = tiny_tokenizer()
    model = _learnable_model("llama", tok)  # the default init answers nothing at all
    config = FinetuneConfig(replay_questions=3, replay_max_tokens=6)
    encs = replay_encodings(model, tok, config)
    answers = generate_answers(model, tok, list(REPLAY_QUESTIONS[:3]), max_new_tokens=6)
    kept = [(q, a) for q, a in zip(REPLAY_QUESTIONS, answers, strict=False) if a.strip()]
    assert len(encs) == len(kept) > 0
    end = P.end_of_turn_ids(tok)
    for enc, (question, answer) in zip(encs, kept, strict=True):
        assert enc.input_ids[: enc.prompt_length] == P.encode(tok, question).input_ids
        answer_ids = P.encode_user_text(tok, answer)
        cut = len(answer_ids) >= config.replay_max_tokens - 1
        assert enc.input_ids[enc.prompt_length :] == answer_ids + ([] if cut else end)
    _, result = finetune(model, tok, QA, dataclasses.replace(config, epochs=1, batch_size=8))
    assert result.n_items == len(QA) + len(encs)


def test_base_model_id_follows_content_not_location(tiny_checkpoint, tmp_path):
    import os
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_checkpoint, copy)
    weights = next(copy.glob("*.safetensors"))
    os.utime(weights, ns=(1, 1))  # another install: same bytes, another time and place
    # A conversion's own record (its duration) is not part of the model.
    (copy / "unierase_source.json").write_text('{"converted_in_s": 20.6}')
    assert F.base_model_id(copy) == F.base_model_id(tiny_checkpoint)
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one flipped bit of the last weight
    weights.write_bytes(bytes(data))
    assert F.base_model_id(copy) != F.base_model_id(tiny_checkpoint)


@pytest.mark.parametrize(("family", "skips"), [("llama", True), ("gemma3", True), ("gpt2", False)])
def test_skipping_frozen_blocks_gives_the_full_passes_result(family, skips):
    # Two of four blocks trained for three epochs: epochs 2-3 start from the hidden states
    # recorded in epoch 1. The losses and weights match full passes up to float rounding.
    tok = tiny_tokenizer()
    config = FinetuneConfig(epochs=3, lr=3e-3, batch_size=2, train_fraction=0.5)
    runs = {}
    for reuse in (False, True):
        model = _learnable_model(family, tok)
        calls = []
        first_block = model.get_submodule(F._trained_blocks(model, config)[0])[0]
        first_block.register_forward_hook(lambda m, a, o, c=calls: c.append(a[0].shape[0]))
        tuned, result = F.finetune(model, tok, QA * 2, config, reuse_frozen=reuse)
        # The shared prompt prefix runs as one row; the batches' own passes have two.
        runs[reuse] = (tuned.state_dict(), result.losses, sum(rows > 1 for rows in calls))
    (full_w, full_loss, full_calls), (fast_w, fast_loss, fast_calls) = runs[False], runs[True]
    assert fast_loss == pytest.approx(full_loss, rel=1e-4, abs=1e-5)
    for k, v in full_w.items():
        torch.testing.assert_close(fast_w[k], v, rtol=1e-4, atol=1e-5)
    # 8 items in batches of 2: the lowest block ran on the 4 batches of epoch 1 and on the one
    # full pass that checks the replay, instead of 4 batches x 3 epochs. The tiny GPT-2 has
    # dropout, which draws new noise in every pass: nothing is skipped there.
    assert (full_calls, fast_calls) == (12, 5 if skips else 12)
