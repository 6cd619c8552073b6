"""Small helpers shared by the whole package: atomic writes and JSON Lines.

A leaf package: it imports nothing else from ``unierase``, so any module may use it.
"""

from unierase._util.atomic import AtomicWriteError, atomic_dir, atomic_path, write_atomically
from unierase._util.jsonl import JSONLError, dumps_jsonl, iter_jsonl, read_jsonl, write_jsonl

__all__ = [
    "AtomicWriteError",
    "JSONLError",
    "atomic_dir",
    "atomic_path",
    "dumps_jsonl",
    "iter_jsonl",
    "read_jsonl",
    "write_atomically",
    "write_jsonl",
]
