"""The few public entry points: ``unlearn`` (Phase I then Phase II) and its helpers.

A run reads a model, never writes to it, and writes a complete output directory: a standard
Hugging Face checkpoint with the unlearning token (loadable by plain transformers), the token's
record (``unierase_token.json``), the edit state (``unierase_state.json`` / ``.safetensors``: the
projectors and C_prev that a later sequential round continues from) and ``unierase_report.json``.
Outputs are written to a temporary directory and moved into place only when complete, and
only over an earlier ``unlearn`` output (``unierase.artifacts.check_out_dir``): never over the
model, the resume directory (unless continuing in place) or a directory of other files.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from unierase import artifacts as A
from unierase import prompting as P
from unierase._util.atomic import atomic_dir
from unierase.data.schema import DataError, QAItem
from unierase.edit import phase2
from unierase.edit.config import PRESETS, EditConfig, preset_for
from unierase.model import find_layout, load

log = logging.getLogger(__name__)

REPORT_FILE = A.UNLEARN_REPORT
Mode = Literal["batch", "sequential", "precise"]


@dataclass
class UnlearnReport:
    """What an ``unlearn`` run did (JSON-ready through ``to_dict``)."""

    mode: str
    model: str
    out_dir: str
    forget_questions: int
    token: dict[str, Any]
    edit: dict[str, Any]
    seconds: dict[str, float] = field(default_factory=dict)
    rounds: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class ResumeError(ValueError):
    """A resume directory that cannot be continued from (missing state, another model)."""


def refusal_continuation(
    tokenizer: Any, token: dict[str, Any], fmt: P.PromptFormat = P.PromptFormat()
) -> list[int]:
    """Ids the unlearning token was trained to produce after it: its refusal and the ending.

    ``token`` is a token record entry (``unierase_token.json``) or a Phase I report as a dict.
    Empty when the token was trained on varied refusals (no single continuation to keep).
    Records written before the ending became a setting closed the refusal with the token.
    """
    refusals = token.get("refusals") or []
    if token.get("refusal_mode", "fixed") != "fixed" or len(refusals) != 1:
        return []
    closing = bool((token.get("config") or {}).get("closing_token", True))
    text = refusals[0] if P.uses_chat(tokenizer, fmt) else " " + refusals[0].lstrip()
    ids = P.encode_user_text(tokenizer, text)
    if closing:
        ids.append(int(token["id"]))
    return ids + P.end_of_turn_ids(tokenizer, fmt)


def unlearn(
    model: str | os.PathLike,
    forget: Sequence[QAItem],
    out_dir: str | os.PathLike,
    *,
    retain: Sequence[QAItem] = (),
    mode: Mode = "batch",
    resume: str | os.PathLike | None = None,
    edit_config: EditConfig | None = None,
    preset: str | None = None,
    edit_overrides: dict[str, Any] | None = None,
    token_overrides: dict[str, Any] | None = None,
    stats_texts: Sequence[str] | None = None,
    seed: int = 0,
    dtype: torch.dtype | str | None = torch.float32,
    device_map: Any = None,
    progress: bool = True,
) -> UnlearnReport:
    """Forget ``forget`` in ``model`` with UniErase and write the result to ``out_dir``.

    Args:
        model: anything ``unierase.load`` accepts (ignored with ``resume``, which names the
            previous output to continue from).
        forget: the items to forget (subjects improve the edit; groups make entity-level edits).
        out_dir: where the checkpoint, state and report go: a new or empty directory, or an
            earlier unlearn output (replaced as a whole when the run succeeds). It may not be or
            contain ``model``; it may equal ``resume`` (continuing in place).
        retain: items that must be kept; their questions widen Phase I's training (breadth),
            and with ``EditConfig.protect_weight`` their keys are protected in Phase II.
        mode: "batch" (Phase I, then one edit of the whole set in chunks), "sequential" (needs
            ``resume``: reuse its token and continue its C_prev), "precise" (one or a few items,
            question-level edits; reuses the token of ``resume`` or of ``model`` when it has one).
        resume: a previous unierase output directory.
        edit_config: Phase II settings (None: ``preset``, or the preset for the model's width).
        preset: a name from ``unierase.edit.config.PRESETS`` ("small", "paper").
        edit_overrides: EditConfig fields to change from that preset (``{"deep": True}``: deep
            forgetting, see ``EditConfig.deep``).
        token_overrides: Phase I settings to change from the width preset (TokenConfig fields).
        stats_texts: general text for the statistics (None: the Wikipedia summaries).
        seed: seeds Phase I.
        dtype, device_map: passed to ``unierase.load``.
        progress: progress bars.

    Raises:
        unierase.artifacts.OutputDirError: ``out_dir`` may not be written (checked first).
        ResumeError: ``resume`` cannot be continued from.
    """
    from unierase.token import (
        read_token_state,
        save_token_checkpoint,
        token_config_for,
        train_unlearning_token,
        unlearning_token_id,
    )
    from unierase.token.vocab import TokenError

    t0 = time.perf_counter()
    if not forget:
        raise DataError("the forget set is empty")
    if mode not in ("batch", "sequential", "precise"):
        raise ValueError(f"mode must be batch, sequential or precise, not {mode!r}")
    if mode == "sequential" and resume is None:
        raise ResumeError("sequential mode continues a saved run: pass resume=<previous output>")
    source = str(resume) if resume is not None else str(model)
    # Before any work: the output may only replace an earlier unlearn output, never an input.
    A.check_out_dir(out_dir, A.UNLEARN, inputs=(model, resume), allow_in_place=resume)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    net, tokenizer = load(source, dtype=dtype, device_map=device_map)
    layout = find_layout(net)
    seconds["load"] = time.perf_counter() - t
    if edit_config is not None:
        config = edit_config
    elif preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
        config = PRESETS[preset]
    else:
        config = preset_for(layout.hidden_size)
    config = replace(config, **(edit_overrides or {}))
    if mode == "precise":
        config = replace(config, granularity="question")

    state = None
    if resume is not None:
        try:
            state = phase2.EditState.load(Path(resume))
        except FileNotFoundError as err:
            raise ResumeError(str(err)) from None
        config = replace(config, layers=state.layers)

    # Phase I: reuse an existing token, or train one.
    token_report: dict[str, Any]
    try:
        token_id = unlearning_token_id(tokenizer)
        token_report = {"reused": True, "id": token_id, "from": source}
        if state is not None and state.token_id != token_id:
            raise ResumeError(f"{resume}: the state targets token id {state.token_id}, but the "
                              f"checkpoint's unlearning token is {token_id}")  # fmt: skip
        seconds["phase1"] = 0.0
    except TokenError:
        if mode == "sequential":
            raise ResumeError(f"{resume} has no unlearning token: not a unierase output") from None
        t = time.perf_counter()
        layers = config.resolved_layers(layout.num_layers)
        tcfg = token_config_for(net).replace(noise_layers=layers, seed=seed,
                                             **(token_overrides or {}))  # fmt: skip
        report = train_unlearning_token(net, tokenizer, forget, tcfg,
                                        breadth=[r.question for r in retain],
                                        progress=progress)  # fmt: skip
        token_id = report.token_id
        token_report = {"reused": False, **report.to_dict()}
        seconds["phase1"] = time.perf_counter() - t

    # Phase II.
    fmt = P.PromptFormat()
    if token_report.get("reused"):
        try:
            entries = read_token_state(source)["tokens"]
            entry = next((e for e in entries if int(e.get("id", -1)) == token_id), None)
        except (FileNotFoundError, ValueError):
            entry = None
    else:
        entry = {**report.to_dict(), "id": token_id}
    refusal_ids = refusal_continuation(tokenizer, entry, fmt) if entry else []
    kept = list(retain)
    if config.protect_weight > 0 and config.protect_neighbours > 0:
        from unierase.data.neighbours import name_neighbours

        kept += name_neighbours(forget, per_part=config.protect_neighbours, seed=seed)
    t = time.perf_counter()
    if state is None:
        state = phase2.new_state(net, tokenizer, layout, token_id, config, texts=stats_texts,
                                 progress=progress)  # fmt: skip
    seconds["statistics"] = time.perf_counter() - t
    edit = phase2.unlearning_edit(net, tokenizer, layout, forget, state, config, fmt=fmt,
                                  refusal_ids=refusal_ids, retain=kept,
                                  progress=progress)  # fmt: skip
    seconds["phase2"] = edit.seconds.get("total", 0.0)

    result = UnlearnReport(
        mode=mode,
        model=source,
        out_dir=str(out_dir),
        forget_questions=len(forget),
        token=token_report,
        edit=edit.to_dict(),
        rounds=len(state.rounds),
    )

    def write(tmp: Path) -> None:
        t_save = time.perf_counter()
        if token_report.get("reused"):
            # A checkpoint from before the token became untypeable is exported the safe way.
            from unierase.token.config import DEFAULT_TOKEN_TEXT
            from unierase.token.vocab import export_generation_config, make_token_unreachable

            make_token_unreachable(tokenizer, (entry or {}).get("text", DEFAULT_TOKEN_TEXT))
            export_generation_config(net, tokenizer, [token_id])
            net.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            if resume is not None or Path(source).is_dir():
                try:
                    record = read_token_state(source)
                    (tmp / "unierase_token.json").write_text(json.dumps(record, indent=2))
                except FileNotFoundError:
                    pass
        else:
            save_token_checkpoint(net, tokenizer, report, tmp, base_model=source)
        state.save(tmp)
        seconds["save"] = time.perf_counter() - t_save
        seconds["total"] = time.perf_counter() - t0
        result.seconds = {k: round(v, 2) for k, v in seconds.items()}
        (tmp / REPORT_FILE).write_text(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))

    with atomic_dir(out_dir) as tmp:
        write(tmp)
    log.info("unlearned %d questions (edit success %.0f%%) in %.1f s -> %s", len(forget),
             100 * edit.success, time.perf_counter() - t0, out_dir)  # fmt: skip
    return result
