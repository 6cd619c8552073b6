"""Data layer: the QA item type, loaders, synthetic authors, real people, refusals, probes, text.

Knows no model: everything here reads or writes plain data.
"""

from unierase.data.corpus import text_file_corpus, wikipedia_summaries
from unierase.data.loaders import (
    check_disjoint,
    item_from_record,
    list_tofu_splits,
    load_tofu_hub,
    load_tofu_split,
    read_qa_file,
)
from unierase.data.probes import load_general_probe, probe_is_correct
from unierase.data.realworld import is_known, load_realworld, split_known
from unierase.data.refusals import assign_refusals, is_refusal, load_refusals
from unierase.data.schema import DataError, QAItem, find_subject
from unierase.data.synth import Author, generate_authors, synthetic_file_names, write_synthetic

__all__ = [
    "Author",
    "DataError",
    "QAItem",
    "assign_refusals",
    "check_disjoint",
    "find_subject",
    "generate_authors",
    "is_known",
    "is_refusal",
    "item_from_record",
    "list_tofu_splits",
    "load_general_probe",
    "load_realworld",
    "load_refusals",
    "load_tofu_hub",
    "load_tofu_split",
    "probe_is_correct",
    "read_qa_file",
    "split_known",
    "synthetic_file_names",
    "text_file_corpus",
    "wikipedia_summaries",
    "write_synthetic",
]
