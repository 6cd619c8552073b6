"""Fixtures shared by the test modules."""

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
