"""What unierase writes: the kinds of output directory, their file names, and the check that an
output directory may be written.

The rule: unierase only replaces what unierase wrote. An output directory (``--out``) must be
new, empty, or an earlier output of the same kind, recognised by that kind's own files; it may
never be, or contain, one of the run's inputs (the model, the data files), except a sequential
``--resume`` that continues in place and says so. :func:`check_out_dir` enforces this before any
work, with an :class:`OutputDirError` that says what is wrong.

Kinds whose writer swaps the whole directory (``unlearn``, ``token``, ``finetune``, ``eval``,
``attack``) also refuse an earlier output that holds files they did not write (a README, notes):
the swap would delete them. Kinds that write into their directory file by file or subdirectory
by subdirectory (``synth``, ``bench``, ``demo``) leave other files alone.

This module imports nothing else from unierase but ``unierase._util``.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# ----------------------------------------------------------------------------- file names

# unlearn (api.unlearn): a checkpoint with the token, the edit state and the run's report.
UNLEARN_REPORT = "unierase_report.json"
EDIT_STATE_JSON = "unierase_state.json"
EDIT_STATE_TENSORS = "unierase_state.safetensors"
# token (Phase I, unierase.token.save_token_checkpoint): the record of the checkpoint's tokens.
TOKEN_RECORD = "unierase_token.json"
# finetune (unierase.finetune): the fine-tune's record.
FINETUNE_META = "unierase_finetune.json"
# demo and bench: the key of the inputs a finished stage was computed from.
STAGE_KEY = "unierase_demo_stage.txt"
# eval (unierase.eval.suite): per-role records, the run's settings, the summary.
EVAL_ROLES: tuple[str, ...] = ("forget", "holdout", "retain", "real_authors", "world_facts",
                               "general")  # fmt: skip
EVAL_RUN = "run.json"
EVAL_SUMMARY = "summary.json"
EVAL_TABLE = "table.txt"
# attack (unierase.attacks): every record, the summary, the table.
ATTACK_RECORDS = "records.jsonl"
ATTACK_SUMMARY = "summary.json"
ATTACK_TABLE = "table.txt"
# data synth (unierase.data.synth): the manifest names the generator and every file written.
SYNTH_MANIFEST = "authors.json"
SYNTH_GENERATOR = "unierase.data.synth"
# bench (unierase.bench, unierase.bench_modes).
BENCH_RESULTS = "results.json"
BENCH_TABLE = "table.md"
BENCH_HTML = "report.html"
BENCH_ROUNDS_CSV = "rounds.csv"
BENCH_PRECISE_CSV = "precise.csv"
BENCH_PLOT = "plot.png"

# What ``save_pretrained`` of a model and its tokenizer writes (transformers 4 and 5).
CHECKPOINT_FILES: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
)


# ----------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class OutputKind:
    """One kind of output directory.

    Attributes:
        name: the key in ``KINDS``.
        command: who writes it, for messages.
        markers: files that an earlier output of this kind always holds (all of them); a kind
            without markers is recognised by holding nothing but its own entries.
        files: patterns (``fnmatch``) of every entry this kind writes at the top of the
            directory; ``.{entry}.*`` (a temporary file of an interrupted write) is its own too.
        replaces_whole: the writer swaps the whole directory, so an entry it did not write would
            be lost (an earlier output holding one is refused).
    """

    name: str
    command: str
    markers: tuple[str, ...]
    files: tuple[str, ...]
    replaces_whole: bool = True

    def owns(self, entry: str) -> bool:
        """Whether an entry of that name at the top of the directory is this kind's."""
        return any(
            fnmatch.fnmatchcase(entry, pattern) or fnmatch.fnmatchcase(entry, f".{pattern}.*")
            for pattern in self.files
        )


UNLEARN, TOKEN, FINETUNE, EVAL, ATTACK, SYNTH, BENCH, DEMO = (
    "unlearn", "token", "finetune", "eval", "attack", "synth", "bench", "demo",
)  # fmt: skip

KINDS: dict[str, OutputKind] = {
    k.name: k
    for k in (
        OutputKind(
            UNLEARN,
            "`unierase unlearn`",
            (UNLEARN_REPORT, EDIT_STATE_JSON),
            (
                *CHECKPOINT_FILES,
                UNLEARN_REPORT,
                EDIT_STATE_JSON,
                EDIT_STATE_TENSORS,
                TOKEN_RECORD,
                STAGE_KEY,
            ),  # fmt: skip
        ),
        OutputKind(TOKEN, "`unierase token`", (TOKEN_RECORD,), (*CHECKPOINT_FILES, TOKEN_RECORD)),
        OutputKind(
            FINETUNE, "`unierase finetune`", (FINETUNE_META,), (*CHECKPOINT_FILES, FINETUNE_META)
        ),
        OutputKind(
            EVAL,
            "`unierase eval`",
            (EVAL_SUMMARY,),
            (
                *(f"{role}.jsonl" for role in EVAL_ROLES),
                EVAL_RUN,
                EVAL_SUMMARY,
                EVAL_TABLE,
                STAGE_KEY,
            ),  # fmt: skip
        ),
        OutputKind(
            ATTACK,
            "`unierase attack`",
            (ATTACK_RECORDS, ATTACK_SUMMARY),
            (ATTACK_RECORDS, ATTACK_SUMMARY, ATTACK_TABLE),
        ),
        OutputKind(
            SYNTH,
            "`unierase data synth`",
            (SYNTH_MANIFEST,),
            (
                "forget*.jsonl",
                "retain*.jsonl",
                "general_probe.jsonl",
                "idontknow.txt",
                SYNTH_MANIFEST,
                ".synth-*",
            ),  # fmt: skip
            replaces_whole=False,
        ),
        OutputKind(
            BENCH,
            "`unierase bench`",
            (),
            (
                "data",
                "filter",
                "target",
                "retain_model",
                "methods",
                BENCH_RESULTS,
                BENCH_TABLE,
                BENCH_HTML,
                BENCH_ROUNDS_CSV,
                BENCH_PRECISE_CSV,
                BENCH_PLOT,
            ),  # fmt: skip
            replaces_whole=False,
        ),
        OutputKind(DEMO, "`unierase demo`", (), ("data", "model", "eval"), replaces_whole=False),
    )
}


class OutputDirError(ValueError):
    """An output directory that unierase must not write to; the message says why."""


def _kind(kind: str | OutputKind) -> OutputKind:
    if isinstance(kind, OutputKind):
        return kind
    try:
        return KINDS[kind]
    except KeyError:
        raise ValueError(f"unknown output kind {kind!r}; choose from {sorted(KINDS)}") from None


def synth_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest of a directory ``unierase data synth`` wrote, else None."""
    try:
        manifest = json.loads((Path(directory) / SYNTH_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(manifest, dict) and manifest.get("generator") == SYNTH_GENERATOR:
        return manifest
    return None


def _has_markers(directory: Path, kind: OutputKind, names: set[str]) -> bool:
    if kind.name == SYNTH:
        return synth_manifest(directory) is not None
    if kind.markers:
        return all(m in names for m in kind.markers)
    visible = [n for n in names if not n.startswith(".")]
    return bool(visible) and all(kind.owns(n) for n in names)


def foreign_entries(directory: str | os.PathLike, kind: str | OutputKind) -> list[str]:
    """The entries at the top of ``directory`` that ``kind`` does not write (sorted)."""
    kind = _kind(kind)
    directory = Path(directory)
    if not directory.is_dir():
        return []
    owned = set()
    if kind.name == SYNTH:
        manifest = synth_manifest(directory) or {}
        owned = {f for f in manifest.get("files", ()) if isinstance(f, str)}
    return sorted(
        p.name for p in directory.iterdir() if p.name not in owned and not kind.owns(p.name)
    )


def is_output(directory: str | os.PathLike, kind: str | OutputKind) -> bool:
    """Whether ``directory`` is an earlier output of ``kind`` (by its own files)."""
    kind = _kind(kind)
    directory = Path(directory)
    if not directory.is_dir():
        return False
    names = {p.name for p in directory.iterdir()}
    return bool(names) and _has_markers(directory, kind, names)


def kind_of(directory: str | os.PathLike) -> str | None:
    """The kind of output ``directory`` is: the kind whose markers it holds and nothing that
    kind does not write (None when no kind is such)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    names = {p.name for p in directory.iterdir()}
    for kind in KINDS.values():
        if kind.markers and names and _has_markers(directory, kind, names):
            if not foreign_entries(directory, kind):
                return kind.name
    return None


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def _listing(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def check_out_dir(
    out: str | os.PathLike,
    kind: str | OutputKind,
    *,
    inputs: Iterable[str | os.PathLike | None] = (),
    allow_in_place: str | os.PathLike | None = None,
) -> Path:
    """Check that ``out`` may be written as an output of ``kind``, before any work; returns it.

    ``out`` may be missing, empty, or an earlier output of ``kind`` (holding, when the writer
    replaces the whole directory, nothing else). It may not be or contain any of ``inputs``
    (paths that do not exist, such as hub ids, are skipped; so is None), except that ``out`` may
    equal an input when it equals ``allow_in_place`` (a sequential resume continuing in place).

    Raises:
        OutputDirError: ``out`` may not be written; the message says why and what to do.
    """
    kind = _kind(kind)
    out = Path(out)
    target = _resolved(out)
    in_place = allow_in_place is not None and _resolved(allow_in_place) == target
    for given in inputs:
        if given is None or not Path(given).expanduser().exists():
            continue
        path = _resolved(given)
        if path == target:
            if in_place:
                continue
            raise OutputDirError(
                f"the output directory {out} is the input {given}; unierase never writes over "
                f"its inputs: choose another output directory"
            )
        if target in path.parents:
            raise OutputDirError(
                f"the output directory {out} contains the input {given}; replacing it would "
                f"delete that input: choose another output directory"
            )
    if kind.replaces_whole or kind.name == SYNTH:
        cwd = Path.cwd().resolve()
        if target == cwd or target in cwd.parents:
            raise OutputDirError(
                f"the output directory {out} is (or contains) the current directory; it is "
                f"replaced as a whole when the run succeeds: choose a subdirectory"
            )
    if not (out.exists() or out.is_symlink()):
        return out
    if not out.is_dir():
        raise OutputDirError(f"the output {out} exists and is not a directory")
    names = {p.name for p in out.iterdir()}
    if not names:
        return out
    own = _has_markers(out, kind, names)
    foreign = foreign_entries(out, kind) if own else []
    if own and (not foreign or not kind.replaces_whole):
        return out
    other = kind_of(out)
    if other is not None and other != kind.name:
        raise OutputDirError(
            f"the output directory {out} holds an output of {KINDS[other].command}, not of "
            f"{kind.command}; unierase only replaces an output of the same kind: choose "
            f"another output directory"
        )
    if not own:
        what = f" (it has no {', '.join(kind.markers)})" if kind.markers else ""
        raise OutputDirError(
            f"the output directory {out} is not empty and is not an earlier output of "
            f"{kind.command}{what}; unierase only replaces what it wrote: choose a new or empty "
            f"directory"
        )
    raise OutputDirError(
        f"the output directory {out} is an earlier output of {kind.command} but also holds "
        f"{_listing(foreign)}, which {kind.command} does not write; replacing the directory "
        f"would delete them: move them, or choose another output directory"
    )
