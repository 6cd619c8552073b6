"""Atomic writes: an output is either the complete new one or the previous one, never a mix.

``atomic_dir(final)`` yields an empty temporary directory beside ``final``; when the block
succeeds the temporary directory is swapped into place (the previous ``final`` is moved aside
first and deleted only after the swap), and when it fails (an exception, Ctrl-C) the temporary
directory is removed and ``final`` is left as it was. ``atomic_path(path)`` and
``write_atomically(path, data)`` do the same for one file: a temporary file in the same
directory, flushed to disk (fsync), then ``os.replace``.

An ``OSError`` while writing (a full disk, no permission) becomes an :class:`AtomicWriteError`
whose message says that the previous output is kept.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path


class AtomicWriteError(OSError):
    """Writing an output failed (a full disk, no permission); the previous output is kept.

    Attributes:
        path: the output that could not be written.
        reason: what went wrong, in words (the operating system's message).
    """

    def __init__(self, path: Path, reason: str, existed: bool, errno: int | None = None):
        kept = f"the previous {path} is kept unchanged" if existed else "nothing was written"
        super().__init__(f"could not write {path}: {reason}; {kept}")
        self.errno = errno
        self.path = path
        self.reason = reason


def _sibling(final: Path, tag: str) -> Path:
    """A hidden, unique name beside ``final`` (``.{name}.{tag}-{pid}-{random}``)."""
    return final.with_name(f".{final.name}.{tag}-{os.getpid()}-{secrets.token_hex(4)}")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def _wrapped(err: OSError, final: Path, existed: bool) -> OSError:
    """``err`` as an AtomicWriteError about ``final``; an OSError without an errno (one of the
    package's own errors, such as a missing model) is returned unchanged."""
    if isinstance(err, AtomicWriteError):
        return AtomicWriteError(final, err.reason, existed, err.errno)
    if err.errno is None:
        return err
    reason = err.strerror or str(err)
    if err.filename is not None and Path(str(err.filename)).name not in reason:
        reason = f"{reason} ({Path(str(err.filename)).name})"
    return AtomicWriteError(final, reason, existed, err.errno)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, final: Path) -> None:
    if not _exists(final):
        os.replace(tmp, final)
        return
    # Move the previous output aside first: deleting it in place and being interrupted would
    # leave half of it under the final name. It is deleted only once the new one is in place.
    old = _sibling(final, "old")
    os.replace(final, old)
    try:
        os.replace(tmp, final)
    except BaseException:
        os.replace(old, final)
        raise
    _remove(old)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """An empty temporary directory that replaces ``final`` when the block succeeds.

    Raises:
        AtomicWriteError: an OSError while writing or swapping; ``final`` is as it was.
    """
    final = Path(final)
    if final.name in ("", ".", ".."):
        final = final.resolve()
    existed = _exists(final)
    tmp = _sibling(final, "tmp")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
    except OSError as err:
        raise _wrapped(err, final, existed) from err
    try:
        yield tmp
        _swap_into_place(tmp, final)
    except OSError as err:
        _remove(tmp)
        wrapped = _wrapped(err, final, existed)
        if wrapped is err:
            raise
        raise wrapped from err
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(final.parent)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write one file to; the file is flushed
    to disk and renamed to ``path`` when the block succeeds, and removed when it fails.

    Raises:
        AtomicWriteError: an OSError while writing (the block did not create the file, a full
            disk); ``path`` is as it was.
    """
    path = Path(path)
    existed = _exists(path)
    tmp = _sibling(path, "tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _wrapped(err, path, existed) from err
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        _remove(tmp)
        wrapped = _wrapped(err, path, existed)
        if wrapped is err:
            raise
        raise wrapped from err
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(path.parent)


def write_atomically(path: str | os.PathLike, data: str | bytes, encoding: str = "utf-8") -> Path:
    """Write ``data`` (text is written as is: no newline translation) to ``path`` atomically.

    Raises:
        AtomicWriteError: the write failed (a full disk); ``path`` is as it was.
    """
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            with open(tmp, "w", encoding=encoding, newline="") as f:
                f.write(data)
        else:
            tmp.write_bytes(data)
    return Path(path)
