"""JSON Lines: the one reader and the one writer of the package.

Records are written with ``ensure_ascii=False``, so a string may hold U+2028, U+2029 or U+0085;
``str.splitlines()`` breaks lines there and would cut such a record in two. The reader splits on
``"\\n"`` only (a ``"\\r"`` before it is dropped, so Windows files read too) and skips blank
lines; its errors name the file and the line.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from unierase._util.atomic import write_atomically


class JSONLError(ValueError):
    """A JSON Lines file that cannot be read: the message names the file and the line."""


def iter_jsonl(
    text: str, source: str = "<text>", error: Callable[[str], Exception] = JSONLError
) -> Iterator[tuple[int, Any]]:
    """The values of JSON Lines ``text`` with their 1-based line numbers, blank lines skipped.

    Args:
        text: the file's content.
        source: the file's name in error messages.
        error: the exception class (or factory) raised for a malformed line.
    """
    for n, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\r"):
            line = line[:-1]
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise error(f"{source}:{n}: malformed JSON ({err.msg} at column {err.colno})") from err
        yield n, value


def read_jsonl(
    path: str | os.PathLike,
    source: str | None = None,
    error: Callable[[str], Exception] = JSONLError,
) -> list[Any]:
    """The values of a JSON Lines file (UTF-8, a leading byte-order mark allowed).

    Args:
        path: the file.
        source: its name in error messages (default: the file's name).
        error: the exception class (or factory) for undecodable text or a malformed line.

    Raises:
        FileNotFoundError: no such file.
    """
    path = Path(path)
    source = path.name if source is None else source
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise error(f"{source}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return [value for _n, value in iter_jsonl(text, source, error)]


def dumps_jsonl(rows: Iterable[Any], default: Callable[[Any], Any] | None = None) -> str:
    """``rows`` as JSON Lines text: one compact JSON value per line, non-ASCII kept as is."""
    return "".join(json.dumps(row, ensure_ascii=False, default=default) + "\n" for row in rows)


def write_jsonl(
    path: str | os.PathLike, rows: Iterable[Any], default: Callable[[Any], Any] | None = None
) -> Path:
    """Write ``rows`` to ``path`` as JSON Lines, atomically (see ``write_atomically``)."""
    return write_atomically(path, dumps_jsonl(rows, default=default))
