"""Saving a model with its unlearning token: a plain Hugging Face checkpoint plus a JSON record."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from torch import nn

from unierase.token.train import TokenReport

log = logging.getLogger(__name__)

STATE_FILE = "unierase_token.json"
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

    The record lists every unlearning token of the checkpoint: a record already in ``out_dir``
    (or in the directory the model was loaded from, when ``base_model`` names one) is kept and
    the new token appended.

    Args:
        model: the model holding the trained token.
        tokenizer: its tokenizer.
        report: what :func:`train_unlearning_token` returned.
        out_dir: the checkpoint directory (created).
        base_model: where the model came from (recorded).

    Returns:
        the path of the record.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
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
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    path = out / STATE_FILE
    state = {"format": STATE_FORMAT, "tokens": tokens}
    path.write_text(json.dumps(state, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    log.info("saved model, tokenizer and %s to %s", STATE_FILE, out)
    return path


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
