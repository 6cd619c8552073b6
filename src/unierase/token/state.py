"""Saving a model with its unlearning token: a plain Hugging Face checkpoint plus a JSON record."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from unierase import artifacts as A
from unierase._util.atomic import atomic_dir, write_atomically
from unierase.token.train import TokenReport
from unierase.token.vocab import (
    TokenError,
    check_unreachable,
    export_generation_config,
    make_token_unreachable,
)

log = logging.getLogger(__name__)

STATE_FILE = A.TOKEN_RECORD
STATE_FORMAT = 1


def save_token_checkpoint(
    model: nn.Module,
    tokenizer: Any,
    report: TokenReport,
    out_dir: str | os.PathLike,
    *,
    base_model: str | None = None,
) -> Path:
    """Save model and tokenizer (loadable by ``AutoModelForCausalLM``/``AutoTokenizer``) and the
    token's record to ``out_dir/unierase_token.json``.

    What a plain client reads is made safe first and checked after writing: every unlearning
    token of the record is a vocabulary entry no typed text encodes to (one the tokenizer still
    holds as an added token is converted, see :func:`unierase.token.vocab.make_token_unreachable`),
    and ``generation_config.json`` stops at the end of turn, never at an unlearning token (see
    :func:`unierase.token.vocab.export_generation_config`).

    The record lists every unlearning token of the checkpoint: a record already in ``out_dir``
    (or in the directory the model was loaded from, when ``base_model`` names one) is kept and
    the new token appended.

    Everything is written to a temporary directory that then replaces ``out_dir`` as a whole, so
    nothing of an earlier output survives beside the new weights (no ``unierase_state.*`` that a
    later resume would take for this checkpoint's). ``out_dir`` must be new, empty or an earlier
    token checkpoint (``unierase.artifacts.check_out_dir``).

    Args:
        model: the model holding the trained token.
        tokenizer: its tokenizer.
        report: what :func:`train_unlearning_token` returned.
        out_dir: the checkpoint directory (created, or replaced when the save succeeds).
        base_model: where the model came from (recorded).

    Returns:
        the path of the record.

    Raises:
        unierase.artifacts.OutputDirError: ``out_dir`` holds something else.
        unierase._util.atomic.AtomicWriteError: the write failed (a full disk); ``out_dir`` is
            as it was.
        TokenError: the tokenizer cannot hold a token unreachably, or the saved files would let
            typed text reach one (``out_dir`` is as it was).
    """
    out = Path(out_dir)
    A.check_out_dir(out, A.TOKEN)
    tokens: list[dict[str, Any]] = []
    for source in (Path(base_model) if base_model else None, out):
        if source is not None and (source / STATE_FILE).is_file():
            tokens = read_token_state(source)["tokens"]
            break
    entry = {
        "text": report.token_text,
        "id": report.token_id,
        "init": report.init,
        "seed": report.seed,
        "refusal_mode": report.refusal_mode,
        "refusals": report.refusals,
        "base_model": base_model,
        "config": report.config,
        "report": report.to_dict(),
    }
    tokens = [t for t in tokens if t.get("text") != report.token_text] + [entry]
    state = {"format": STATE_FORMAT, "tokens": tokens}
    vocab = tokenizer.get_vocab()
    texts = [t["text"] for t in tokens if t.get("text") in vocab]
    token_ids = [make_token_unreachable(tokenizer, text) for text in texts]
    export_generation_config(model, tokenizer, token_ids)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        check_exported(tmp, dict(zip(texts, token_ids, strict=True)))
        write_atomically(tmp / STATE_FILE, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    path = out / STATE_FILE
    log.info("saved model, tokenizer and %s to %s", STATE_FILE, out)
    return path


def check_exported(directory: str | os.PathLike, tokens: dict[str, int]) -> None:
    """Check a saved checkpoint as a plain client loads it: for every unlearning token (text ->
    id), ``AutoTokenizer`` finds the id in the vocabulary, no typed text encodes to it, no added
    token is it, and ``generation_config.json`` never names it.

    Raises:
        TokenError: one of these fails.
    """
    from transformers import AutoTokenizer, GenerationConfig

    path = Path(directory)
    loaded = AutoTokenizer.from_pretrained(path)
    vocab = loaded.get_vocab()
    for text, token_id in tokens.items():
        if vocab.get(text) != token_id:
            raise TokenError(f"{path}: the saved tokenizer has {text!r} as {vocab.get(text)}, "
                             f"not {token_id}")  # fmt: skip
        if token_id in loaded.added_tokens_decoder or token_id in loaded.all_special_ids:
            raise TokenError(f"{path}: the saved tokenizer holds {text!r} as an added token")
        check_unreachable(loaded, token_id, text)
    if (path / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(path)
        for name in ("eos_token_id", "pad_token_id", "bos_token_id"):
            value = getattr(gen, name, None)
            named = set(value if isinstance(value, (list, tuple)) else [value])
            if named & set(tokens.values()):
                raise TokenError(f"{path}: generation_config.json has an unlearning token as "
                                 f"{name}")  # fmt: skip


def read_token_state(directory: str | os.PathLike) -> dict[str, Any]:
    """The token record of a checkpoint directory: ``{"format": 1, "tokens": [...]}``.

    Raises:
        FileNotFoundError: the directory holds no record (it was not saved by
            :func:`save_token_checkpoint`).
        ValueError: the record is malformed.
    """
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {directory} holds no unlearning token record "
            f"(train one with `unierase token`)"
        )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(state, dict) or not isinstance(state.get("tokens"), list):
        raise ValueError(f"{path}: no 'tokens' list")
    return state
