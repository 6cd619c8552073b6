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
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_atomically(tmp / STATE_FILE, json.dumps(state, indent=2, ensure_ascii=False) + "\n")
    path = out / STATE_FILE
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
