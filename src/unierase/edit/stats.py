"""Second moments E[k k^T] of down-projection inputs over general text, streamed and cached.

The statistics define what the edit must leave alone: the null-space projector keeps the edit
out of the directions that ordinary text uses. Plain text never contains the chat template's
system prompt and role tags, so part of the corpus is wrapped in the chat template as well
(measured on SmolLM2: it cut the edit's effect at those positions about tenfold).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from unierase import prompting as P
from unierase._util.atomic import atomic_path, write_atomically
from unierase.edit.trace import Trace, forward_until
from unierase.model import ModelLayout, cache_dir, model_fingerprint

log = logging.getLogger(__name__)


@dataclass
class LayerStats:
    """Uncentred second moment of one down-projection's inputs.

    Attributes:
        moment: (d_mlp, d_mlp) float64, the mean of k k^T over all counted tokens.
        count: number of tokens counted.
    """

    moment: torch.Tensor
    count: int


def corpus_sequences(
    tokenizer: Any,
    texts: Sequence[str],
    *,
    max_length: int = 128,
    chat_fraction: float = 0.5,
    fmt: P.PromptFormat = P.PromptFormat(),
) -> list[list[int]]:
    """Token id sequences for statistics: plain text, and a share wrapped in the chat template.

    A chat-wrapped text puts its first sentence in the user turn and the rest in the answer, so
    the template's fixed positions (system prompt, role tags) are counted too.
    """
    chat = P.uses_chat(tokenizer, fmt)
    every = round(1 / chat_fraction) if chat and chat_fraction > 0 else 0
    seqs = []
    for i, text in enumerate(texts):
        text = text.strip()
        if not text:
            continue
        if every and i % every == 0 and ". " in text:
            question, answer = text.split(". ", 1)
            ids = P.encode(tokenizer, question + ".", answer, fmt).input_ids
        else:
            ids = P.encode_user_text(tokenizer, text)
        if len(ids) >= 2:
            seqs.append(ids[:max_length])
    return seqs


@torch.no_grad()
def collect_second_moments(
    model: torch.nn.Module,
    layout: ModelLayout,
    layers: Sequence[int],
    sequences: Sequence[Sequence[int]],
    *,
    batch_size: int = 16,
    pad_id: int = 0,
    progress: bool = True,
) -> dict[int, LayerStats]:
    """Stream ``sequences`` through the model once and accumulate E[k k^T] for each layer.

    Args:
        model: the model (any device; inputs go to its embedding's device).
        layout: its layout.
        layers: layer indices whose down-projection inputs are counted.
        sequences: token id lists (padding positions are never counted).
        batch_size: sequences per forward pass.
        pad_id: id used for padding.
        progress: show a progress bar.

    Returns:
        layer -> LayerStats with a (d_mlp, d_mlp) float64 mean.
    """
    names = {layer: layout.down_proj_names[layer] for layer in layers}
    sums = {
        layer: torch.zeros(layout.mlp_size, layout.mlp_size, dtype=torch.float64)
        for layer in layers
    }
    count = 0
    device = model.get_input_embeddings().weight.device
    # Sorting by length keeps padding (wasted compute) small.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    start = time.perf_counter()
    bar = tqdm(batches, desc="statistics", unit="batch", disable=not progress)
    with Trace(model, names.values(), inputs=True) as tr:
        for batch_idx in bar:
            seqs = [sequences[i] for i in batch_idx]
            width = max(len(s) for s in seqs)
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.bool)
            for row, s in enumerate(seqs):
                ids[row, : len(s)] = torch.tensor(s)
                mask[row, : len(s)] = True
            # Only the layers up to the last one counted are needed: stop the pass there.
            forward_until(
                model,
                f"{layout.layers_name}.{max(layers)}",
                input_ids=ids.to(device),
                attention_mask=mask.long().to(device),
                use_cache=False,
            )
            for layer, name in names.items():
                keys = tr.inputs[name][mask.to(tr.inputs[name].device)].float()
                sums[layer] += (keys.T @ keys).to(device="cpu", dtype=torch.float64)
            count += int(mask.sum())
            bar.set_postfix(tokens=count)
    elapsed = time.perf_counter() - start
    log.info(
        "statistics: %d tokens, %d layers in %.1f s (%.0f tokens/s)",
        count,
        len(layers),
        elapsed,
        count / max(elapsed, 1e-9),
    )
    return {layer: LayerStats(sums[layer] / max(count, 1), count) for layer in layers}


def _corpus_id(sequences: Sequence[Sequence[int]]) -> str:
    h = hashlib.sha256()
    for s in sequences:
        h.update(b"|" + ",".join(map(str, s)).encode())
    return h.hexdigest()[:16]


def cached_second_moments(
    model: torch.nn.Module,
    layout: ModelLayout,
    layers: Sequence[int],
    sequences: Sequence[Sequence[int]],
    *,
    corpus_name: str = "corpus",
    cache: Path | None = None,
    batch_size: int = 16,
    pad_id: int = 0,
    progress: bool = True,
) -> dict[int, LayerStats]:
    """Like ``collect_second_moments``, cached on disk per (model, layer, corpus).

    The cache key holds the model fingerprint (weights and config) and a hash of the exact token
    sequences, so a fine-tuned model or another corpus never reuses stale statistics. Files are
    written to a temporary name and renamed, so an interrupted run leaves no half-written entry.
    """
    root = (cache or cache_dir()) / "stats" / model_fingerprint(model)
    corpus = f"{corpus_name}-{_corpus_id(sequences)}"
    paths = {layer: root / f"{corpus}-layer{layer}.pt" for layer in layers}
    result = {}
    for layer, path in paths.items():
        if path.is_file():
            data = torch.load(path, weights_only=True)
            result[layer] = LayerStats(data["moment"], int(data["count"]))
    missing = [layer for layer in layers if layer not in result]
    if missing:
        fresh = collect_second_moments(
            model,
            layout,
            missing,
            sequences,
            batch_size=batch_size,
            pad_id=pad_id,
            progress=progress,
        )
        root.mkdir(parents=True, exist_ok=True)
        for layer, stats in fresh.items():
            with atomic_path(paths[layer]) as tmp:
                torch.save({"moment": stats.moment, "count": stats.count}, tmp)
            result[layer] = stats
        info = {
            "corpus": corpus_name,
            "sequences": len(sequences),
            "tokens": fresh[missing[0]].count,
            "layers": sorted(result),
        }
        write_atomically(root / f"{corpus}.json", json.dumps(info))
    else:
        log.info("statistics for layers %s reused from %s", list(layers), root)
    return result
