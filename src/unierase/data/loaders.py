"""Loaders that turn QA files (a user's own, TOFU's layout, the TOFU hub dataset) into QAItems.

Every loader validates at the boundary: a bad row raises :class:`DataError` naming the file, the
1-based line and the field, so a user can fix the file rather than debug a training run.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from unierase._util.jsonl import iter_jsonl
from unierase.data.schema import DataError, QAItem, find_subject

logger = logging.getLogger(__name__)

# Fields a record may carry; anything else is kept in the item's meta.
_STR_FIELDS = ("question", "answer", "subject", "paraphrased_question", "paraphrased_answer")
_PERTURBED_FIELDS = ("perturbed_answer", "perturbed_answers")
_KNOWN_FIELDS = frozenset((*_STR_FIELDS, *_PERTURBED_FIELDS, "group", "meta", "task_id"))
# Fields a ``*_perturbed.jsonl`` sibling contributes to its base split.
_SIBLING_PERTURBED_FIELDS = ("paraphrased_question", "paraphrased_answer", "perturbed_answer")

SUBJECT_SUFFIX = "_subject"
PERTURBED_SUFFIX = "_perturbed"
TOFU_HUB_ID = "locuslab/TOFU"
# TOFU writes 20 QA per author; synthetic sets may use fewer, so the block size is searched.
_MAX_BLOCK = 20
_MIN_BLOCK = 2
_MIN_DOMINANT_SHARE = 0.9

# A run of two or more capitalised words: a person's name in a question, for grouping only.
_NAME_RE = re.compile(
    r"[A-Z][\w.\-]*(?:['’]s)?"
    r"(?:\s+(?:[A-Z][\w.\-]*|van|von|de|del|der|la|le|al|bin|ben|da|dos)(?:['’]s)?)+"
)
_LEADING_WORDS = frozenset(
    "What Who Whom Whose How Can Could Is Are Was Were Did Does Do Has Have Had In Which Where "
    "When Why Would Will Should Tell Describe Please Name The A An Author Writer Apart Besides "
    "Aside Beyond From Given Since As Like With".split()
)


# --------------------------------------------------------------------------------------------
# Records -> items


def _where(source: str, line: int | None) -> str:
    return f"{source}:{line}" if line is not None else source


def item_from_record(
    record: dict[str, Any], source: str, line: int | None, meta: dict[str, Any] | None = None
) -> QAItem:
    """Build and validate one QAItem from a parsed record (a JSON object or a CSV row).

    Accepts our field names and TOFU's (``perturbed_answer``, ``task_id``); unknown fields are
    kept in ``meta`` next to ``source`` and ``line``.

    Raises:
        DataError: naming ``source:line`` and the field when the record is unusable.
    """
    where = _where(source, line)
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    for name in _STR_FIELDS:
        value = record.get(name)
        if value is not None and not isinstance(value, str):
            raise DataError(f"{where}: field '{name}' must be a string, got {type(value).__name__}")
        if name in ("question", "answer") and (value is None or not value.strip()):
            raise DataError(f"{where}: field '{name}' is missing or empty")

    perturbed: Any = ()
    for name in _PERTURBED_FIELDS:
        if record.get(name) is not None:
            perturbed = record[name]
            break
    if isinstance(perturbed, str):
        perturbed = (perturbed,)
    if not isinstance(perturbed, list | tuple) or not all(isinstance(p, str) for p in perturbed):
        raise DataError(f"{where}: field 'perturbed_answer' must be a list of strings")

    item_meta: dict[str, Any] = {"source": source}
    if line is not None:
        item_meta["line"] = line
    if record.get("task_id") is not None:
        item_meta["task"] = str(record["task_id"])
    extra_meta = record.get("meta")
    if extra_meta is not None:
        if not isinstance(extra_meta, dict):
            raise DataError(f"{where}: field 'meta' must be an object")
        item_meta.update(extra_meta)
    item_meta.update({k: v for k, v in record.items() if k not in _KNOWN_FIELDS})
    if meta:
        item_meta.update(meta)

    group = record.get("group")
    item = QAItem(
        question=record["question"],
        answer=record["answer"],
        subject=record.get("subject"),
        paraphrased_question=record.get("paraphrased_question"),
        paraphrased_answer=record.get("paraphrased_answer"),
        perturbed_answers=tuple(perturbed),
        group=None if group is None else str(group),
        meta=item_meta,
    )
    item.validate(where=where)
    return item


# --------------------------------------------------------------------------------------------
# A user's own file


def _read_text(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        # utf-8-sig: spreadsheet programs often prepend a byte-order mark.
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name}: not UTF-8 text ({e.reason} at byte {e.start})") from e


def read_jsonl_records(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """The objects of a JSON Lines file with their 1-based line numbers (blank lines skipped).

    Lines end at "\n" (or "\r\n") only: U+2028, U+2029 and U+0085 inside a string are text.

    Raises:
        DataError: on malformed JSON, a line that is not an object, or a file with no objects.
    """
    path = Path(path)
    text = _read_text(path)
    if text.lstrip().startswith("["):
        raise DataError(
            f"{path.name}:1: the file is a JSON array; write one JSON object per line (JSON Lines)"
        )
    records = []
    for n, obj in iter_jsonl(text, path.name, DataError):
        if not isinstance(obj, dict):
            raise DataError(f"{path.name}:{n}: expected a JSON object, got {type(obj).__name__}")
        records.append((n, obj))
    if not records:
        raise DataError(f"{path.name}: the file is empty (no QA rows)")
    return records


def _csv_perturbed(value: str, where: str) -> list[str]:
    value = value.strip()
    if not value:
        return []
    if value.startswith("["):
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: field 'perturbed_answer' is not a valid JSON list") from e
        if not isinstance(parsed, list) or not all(isinstance(p, str) for p in parsed):
            raise DataError(f"{where}: field 'perturbed_answer' must be a list of strings")
        return parsed
    return [p.strip() for p in value.split("|") if p.strip()]


def _read_csv_records(path: Path, delimiter: str) -> list[tuple[int, dict[str, Any]]]:
    text = _read_text(path)
    # Lines end at "\n", "\r\n" or "\r" only (not at U+2028, U+2029 or U+0085 in a cell).
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = None
    records = []
    last_line = 0
    try:
        for row in reader:
            start, last_line = last_line + 1, reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [cell.strip() for cell in row]
                for required in ("question", "answer"):
                    if required not in header:
                        raise DataError(
                            f"{path.name}:{start}: field '{required}' is missing from the header "
                            f"(columns: {', '.join(header)})"
                        )
                continue
            where = f"{path.name}:{start}"
            if len(row) > len(header):
                raise DataError(f"{where}: {len(row)} cells but the header has {len(header)}")
            record: dict[str, Any] = {}
            for name, cell in zip(header, row, strict=False):
                if name in _PERTURBED_FIELDS:
                    record["perturbed_answer"] = _csv_perturbed(cell, where)
                elif cell.strip():
                    # An empty cell means "absent", not an empty string.
                    record[name] = cell
            records.append((start, record))
    except csv.Error as e:
        raise DataError(f"{path.name}:{reader.line_num}: malformed CSV ({e})") from e
    if not records:
        raise DataError(f"{path.name}: the file is empty (no QA rows)")
    return records


def read_qa_file(path: str | Path) -> list[QAItem]:
    """Read a user's own QA file: JSON Lines (``.jsonl``, ``.json``, ``.ndjson``) or CSV/TSV.

    Fields (JSONL keys or CSV header): ``question``, ``answer``, optional ``subject``,
    ``paraphrased_question``, ``paraphrased_answer``, ``perturbed_answer`` (or
    ``perturbed_answers``; a JSON list, or in CSV a JSON list or ``|``-separated text) and
    ``group``. Other fields go to ``meta``, together with ``source`` (the file name) and ``line``.

    Raises:
        DataError: naming file, 1-based line and field: malformed JSON/CSV, a missing or empty
            field, an empty file, or a subject that does not occur in its question.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        records = read_jsonl_records(path)
    elif suffix in (".csv", ".tsv"):
        records = _read_csv_records(path, "\t" if suffix == ".tsv" else ",")
    else:
        raise DataError(f"{path.name}: unknown QA file type {suffix!r} (use .jsonl or .csv)")
    items = [item_from_record(record, path.name, line) for line, record in records]
    logger.info("read %d QA items from %s", len(items), path)
    return items


# --------------------------------------------------------------------------------------------
# Checks


def _normalise_question(question: str) -> str:
    return " ".join(question.split()).casefold()


def check_disjoint(forget: Sequence[QAItem], retain: Sequence[QAItem], max_listed: int = 5) -> None:
    """Raise DataError if a question occurs in both ``forget`` and ``retain``.

    Questions are compared case-insensitively with whitespace collapsed; the message names the
    number of shared questions and the first ``max_listed`` of them.
    """
    retain_questions = {_normalise_question(item.question) for item in retain}
    shared: list[str] = []
    seen: set[str] = set()
    for item in forget:
        key = _normalise_question(item.question)
        if key in retain_questions and key not in seen:
            seen.add(key)
            shared.append(item.question)
    if shared:
        listed = "; ".join(repr(q) for q in shared[:max_listed])
        more = f" and {len(shared) - max_listed} more" if len(shared) > max_listed else ""
        raise DataError(
            f"{len(shared)} question(s) occur in both the forget and the retain set: {listed}{more}"
        )


# --------------------------------------------------------------------------------------------
# Author groups


def _name_in_question(question: str) -> str | None:
    """The first person-like name (two or more capitalised words) in a question, if any."""
    for match in _NAME_RE.finditer(question):
        words = match.group(0).split()
        while words and words[0] in _LEADING_WORDS:
            words.pop(0)
        if len(words) >= 2:
            return re.sub(r"['’]s$", "", " ".join(words))
    return None


def _author_groups(keys: Sequence[str | None], tasks: Sequence[str | None]) -> list[str] | None:
    """Group labels for files written author by author in equal consecutive blocks.

    ``keys`` holds, per row, the subject or else the name found in the question. TOFU writes 20
    QA per author; synthetic sets may use another block size, so each size from 20 down is
    tried. A size fits when no block straddles two tasks, at least 90% of blocks have a
    dominant key (in more than half of the block) and no two blocks share one. Among the sizes
    that fit, the one whose labels agree with most rows' keys wins (a misaligned size splits
    authors, so fewer rows agree). Returns None when no size fits.
    """
    n = len(keys)
    best: tuple[int, list[str | None], int] | None = None  # (agreeing rows, tops, size)
    for size in range(min(_MAX_BLOCK, n), _MIN_BLOCK - 1, -1):
        if n % size or any(
            len(set(tasks[start : start + size])) > 1 for start in range(0, n, size)
        ):
            continue
        tops: list[str | None] = []
        agreeing = 0
        for start in range(0, n, size):
            counts = Counter(k for k in keys[start : start + size] if k)
            top = counts.most_common(1)[0] if counts else None
            dominant = top is not None and top[1] * 2 > size
            tops.append(top[0] if dominant else None)
            agreeing += top[1] if dominant else 0
        named = [t for t in tops if t is not None]
        if len(named) != len(set(named)) or len(named) < _MIN_DOMINANT_SHARE * len(tops):
            continue
        if best is None or agreeing > best[0]:
            best = (agreeing, tops, size)
    if best is None:
        return None
    _, tops, size = best
    labels = []
    for block, top in enumerate(tops):
        labels.extend([top if top is not None else f"author{block:03d}"] * size)
    return labels


# --------------------------------------------------------------------------------------------
# TOFU layout


class _Sibling:
    """Rows of a sibling file (``*_subject``, ``*_perturbed``) indexed by question text."""

    def __init__(self, name: str, records: Iterable[tuple[int, dict[str, Any]]]) -> None:
        self.name = name
        self.by_question: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        for line, record in records:
            question = record.get("question")
            if isinstance(question, str):
                self.by_question.setdefault(question, []).append((line, record))

    def find(self, question: str, answer: Any) -> tuple[int, dict[str, Any]] | None:
        candidates = self.by_question.get(question)
        if not candidates:
            return None
        # A question text can repeat with different answers (TOFU's retain90 has one such pair):
        # when the sibling has answers, only the row with the same answer belongs to this one.
        for candidate in candidates:
            if candidate[1].get("answer") in (answer, None):
                return candidate
        return None

    def coverage(self, records: Iterable[tuple[int, dict[str, Any]]]) -> int:
        """How many of ``records`` this sibling has a row for."""
        return sum(self.find(r.get("question"), r.get("answer")) is not None for _, r in records)


def _read_sibling(path: Path) -> _Sibling | None:
    if not path.is_file():
        return None
    return _Sibling(path.name, read_jsonl_records(path))


def _is_sibling_name(stem: str, stems: set[str]) -> bool:
    for suffix in (SUBJECT_SUFFIX, PERTURBED_SUFFIX):
        if stem.endswith(suffix) and stem[: -len(suffix)] in stems:
            return True
    return False


def _check_directory(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: not a directory (expected TOFU's layout of JSONL files)")
    return directory


def list_tofu_splits(directory: str | Path) -> list[str]:
    """Names of the splits in a TOFU-layout directory, sorted.

    Every ``*.jsonl`` file is a split except the siblings that only add fields to another split
    (``forget01_subject``, ``forget01_perturbed`` when ``forget01`` exists); those can still be
    loaded by name. Standalone perturbed sets (``retain_perturbed``, ``real_authors_perturbed``,
    ``world_facts_perturbed``) are listed.
    """
    directory = _check_directory(directory)
    stems = {p.stem for p in directory.glob("*.jsonl")}
    return sorted(s for s in stems if not _is_sibling_name(s, stems))


def _normalise_task(task: str | int | None) -> str | None:
    return None if task is None else str(task).strip()


def _build_items(
    source: str,
    records: list[tuple[int, dict[str, Any]]],
    task: str | None,
    subjects: Sequence[_Sibling],
    perturbed: _Sibling | None,
    warn_missing_subject: bool = True,
) -> list[QAItem]:
    """Merge sibling fields into ``records``, derive author groups, filter by task, validate."""
    has_tasks = any("task_id" in record for _, record in records)
    if task is not None and has_tasks:
        available = sorted({str(r.get("task_id")) for _, r in records}, key=_task_sort_key)
        if task not in available:
            raise DataError(
                f"{source}: no task {task!r} (tasks: {', '.join(available)}); pass task=None "
                f"for all tasks"
            )

    merged: list[tuple[int, dict[str, Any], dict[str, Any]]] = []
    missing_subject = missing_perturbed = 0
    for line, record in records:
        where = _where(source, line)
        question, answer = record.get("question"), record.get("answer")
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{where}: field 'question' is missing or empty")
        record = dict(record)
        extra: dict[str, Any] = {}
        if record.get("subject") is None and subjects:
            for sibling in subjects:
                hit = sibling.find(question, answer)
                if hit is None:
                    continue
                subject_line, subject_record = hit
                subject = subject_record.get("subject")
                if not isinstance(subject, str) or not subject.strip():
                    raise DataError(
                        f"{sibling.name}:{subject_line}: field 'subject' is missing or empty"
                    )
                if find_subject(question, subject) is None:
                    raise DataError(
                        f"{sibling.name}:{subject_line}: field 'subject' ({subject!r}) does not "
                        f"occur in the question ({question!r}) of {where}"
                    )
                record["subject"] = subject
                if sibling.name != f"{Path(source).stem}{SUBJECT_SUFFIX}.jsonl":
                    extra["subject_source"] = sibling.name
                break
            else:
                missing_subject += 1
        if perturbed is not None:
            hit = perturbed.find(question, answer)
            if hit is None:
                missing_perturbed += 1
            else:
                for name in _SIBLING_PERTURBED_FIELDS:
                    if record.get(name) is None and hit[1].get(name) is not None:
                        record[name] = hit[1][name]
        merged.append((line, record, extra))
    if subjects and missing_subject:
        log = logger.warning if warn_missing_subject else logger.info
        log("%s: %d question(s) have no subject in the sibling files", source, missing_subject)
    if perturbed is not None and missing_perturbed:
        logger.warning(
            "%s: %d question(s) are missing from %s", source, missing_perturbed, perturbed.name
        )

    tasks = [None if r.get("task_id") is None else str(r["task_id"]) for _, r, _ in merged]
    keys = [r.get("subject") or _name_in_question(r["question"]) for _, r, _ in merged]
    groups: Sequence[str | None] = _author_groups(keys, tasks) or tasks
    if groups is tasks and has_tasks:
        logger.info("%s: author blocks do not align; grouping by task id", source)

    items = []
    for (line, record, extra), group in zip(merged, groups, strict=True):
        if task is not None and has_tasks and str(record.get("task_id")) != task:
            continue
        if record.get("group") is None and group is not None:
            record["group"] = group
        items.append(item_from_record(record, source, line, extra))
    if not items:
        raise DataError(f"{source}: the split is empty")
    return items


def _task_sort_key(task: str) -> tuple[int, str]:
    return (int(task), task) if task.isdigit() else (10**9, task)


def load_tofu_split(
    directory: str | Path, split: str, task: str | int | None = "1"
) -> list[QAItem]:
    """Load one split of a directory in TOFU's layout (see ``list_tofu_splits``).

    For a split with a ``task_id`` column (``forget01``, ``forget05``, ``forget10``) only the rows
    of ``task`` are kept (``None``: all tasks; files without task ids ignore ``task``). Fields of
    the sibling files ``{split}_subject.jsonl`` and ``{split}_perturbed.jsonl`` are merged in by
    question text when those files exist. When ``{split}_subject.jsonl`` is missing (TOFU has
    none for forget05), subjects are looked up in the directory's other ``*_subject.jsonl``
    files, and ``meta["subject_source"]`` names the file used.

    ``group`` is the author: the name that dominates each block of consecutive QA (TOFU: 20 per
    author), or ``author<block>`` for a block whose questions never name the author; when the
    file is not laid out in author blocks, the task id. ``meta`` holds ``source`` (file name),
    ``line`` (1-based), ``task`` and any extra field of the file (``original_answer``).

    Raises:
        DataError: unknown split or task, an empty split, or a bad row (naming file:line:field).
    """
    directory = _check_directory(directory)
    path = directory / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(
            f"{directory}: no split {split!r} (no {path.name}); available: "
            f"{', '.join(list_tofu_splits(directory)) or 'none'}"
        )
    records = read_jsonl_records(path)
    is_sibling = split.endswith((SUBJECT_SUFFIX, PERTURBED_SUFFIX))
    subjects: list[_Sibling] = []
    perturbed = own_subjects = None
    if not is_sibling:
        own_subjects = _read_sibling(directory / f"{split}{SUBJECT_SUFFIX}.jsonl")
        if own_subjects is not None:
            subjects = [own_subjects]
        else:
            # The file that covers most of this split first, so one split takes its subjects
            # from one file where it can (their wording differs slightly between TOFU's files).
            others = sorted(directory.glob(f"*{SUBJECT_SUFFIX}.jsonl"))
            found = [s for s in map(_read_sibling, others) if s is not None]
            coverage = {s.name: s.coverage(records) for s in found}
            subjects = sorted(
                (s for s in found if coverage[s.name]), key=lambda s: (-coverage[s.name], s.name)
            )
        perturbed = _read_sibling(directory / f"{split}{PERTURBED_SUFFIX}.jsonl")
    items = _build_items(
        path.name, records, _normalise_task(task), subjects, perturbed, own_subjects is not None
    )
    logger.info("loaded %d QA items from %s (task %s)", len(items), path, task)
    return items


def load_tofu_hub(split: str, task: str | int | None = "1") -> list[QAItem]:
    """Load a TOFU split from the Hugging Face hub (``locuslab/TOFU``) with ``datasets``.

    The hub holds the standard splits only (``forget01``, ``retain90``, ``retain_perturbed``,
    ``real_authors_perturbed``, ...), which are task ``"1"`` of the local layout, and no subject
    files. For a forget split, ``{split}_perturbed`` is merged in when the hub has it.

    Raises:
        DataError: when ``datasets`` is not installed, the hub cannot be reached, or ``task`` is
            not ``"1"``/``None``; the message says how to proceed (install, or pass a local
            directory to ``load_tofu_split``).
    """
    task = _normalise_task(task)
    if task not in (None, "1"):
        raise DataError(
            f"the hub's {TOFU_HUB_ID} has only the standard splits (task '1'), not task "
            f"{task!r}; for sequential tasks pass a local directory to load_tofu_split"
        )
    try:
        import datasets  # noqa: PLC0415 - optional dependency, imported only when used
    except ImportError as e:
        raise DataError(
            f"loading {TOFU_HUB_ID} from the Hugging Face hub needs the 'datasets' package "
            f"(pip install datasets) and network access; or download TOFU and pass its directory "
            f"to load_tofu_split(directory, {split!r})"
        ) from e

    def fetch(config: str) -> list[tuple[int, dict[str, Any]]]:
        try:
            rows = datasets.load_dataset(TOFU_HUB_ID, config, split="train")
        except Exception as e:  # noqa: BLE001 - any hub failure becomes one clear error
            raise DataError(
                f"could not load {TOFU_HUB_ID} config {config!r} from the Hugging Face hub "
                f"({type(e).__name__}: {e}); check the network or the split name, or pass a "
                f"local directory in TOFU's layout to load_tofu_split"
            ) from e
        return [(n, dict(row)) for n, row in enumerate(rows, start=1)]

    records = fetch(split)
    perturbed = None
    if split.startswith("forget") and not split.endswith(PERTURBED_SUFFIX):
        try:
            perturbed = _Sibling(f"{split}{PERTURBED_SUFFIX}", fetch(f"{split}{PERTURBED_SUFFIX}"))
        except DataError as e:
            logger.warning("no perturbed fields for %s: %s", split, e)
    return _build_items(f"hf:{TOFU_HUB_ID}/{split}", records, None, [], perturbed)
