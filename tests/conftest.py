"""Fixtures and settings shared by the test modules (import the constants with
``from conftest import ...``)."""

from __future__ import annotations

import pytest

from unierase.testing import tiny_model, tiny_tokenizer


@pytest.fixture
def base_dir(tmp_path, monkeypatch):
    """A tiny Llama checkpoint on disk, with the unierase cache in a temporary directory."""
    monkeypatch.setenv("UNIERASE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "base"
    tok = tiny_tokenizer()
    tiny_model("llama", tok, init_std=0.2).save_pretrained(path)
    tok.save_pretrained(path)
    return path


# Tiny UniErase settings for the bench tests: a few seconds per run on a tiny model.
BENCH_STATS_TEXTS = [
    "The author was born in 1970 and writes science fiction. She lives in London.",
    "What is the capital of France? The capital of France is Paris.",
] * 4
BENCH_EDIT = {
    "layers": (1, 2),
    "lambda_": 0.01,
    "v_lr": 0.5,
    "v_steps": 10,
    "context_prefixes": ("The",),
    "prefix_tokens": 2,
    "repair_rounds": 0,
}


def bench_token_settings() -> dict:
    """Phase I overrides of the bench tests: one short stage, little breadth, no check."""
    from unierase.token import StageConfig

    return {
        "stages": (StageConfig("base", 2, 3e-2, ("chat",)),),
        "breadth_templates": 2,
        "max_breadth": 4,
        "retain_questions": 2,
        "retain_max_new_tokens": 4,
        "check_items": 0,
    }
