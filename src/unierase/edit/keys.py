"""Keys (down-projection inputs at the subject's last token) and current hidden states."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from unierase.edit.requests import EditRequest, Row, left_pad
from unierase.edit.trace import Trace, forward_until
from unierase.model import ModelLayout


@torch.no_grad()
def read_rows(
    model: torch.nn.Module,
    layout: ModelLayout,
    rows: Sequence[Row],
    *,
    key_layers: Sequence[int] = (),
    hidden_layers: Sequence[int] = (),
    pad_id: int = 0,
    batch_size: int = 32,
    logits: bool = True,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor], torch.Tensor | None]:
    """Read, at each row's position, down-projection inputs, block outputs and the logits.

    Args:
        logits: also return the last-token logits; without them the forward pass stops after
            the last block read (much cheaper for early layers).

    Returns:
        keys: layer -> (n_rows, d_mlp) float32 down-projection inputs.
        hidden: layer -> (n_rows, d_hidden) float32 outputs of the decoder block.
        last_logits: (n_rows, vocab) logits at each row's last token (None without ``logits``).
    """
    device = model.get_input_embeddings().weight.device
    key_names = {layer: layout.down_proj_names[layer] for layer in key_layers}
    block_names = {layer: f"{layout.layers_name}.{layer}" for layer in hidden_layers}
    keys = {layer: [] for layer in key_layers}
    hidden = {layer: [] for layer in hidden_layers}
    last_logits = []
    stop = f"{layout.layers_name}.{max([*key_layers, *hidden_layers])}" if not logits else None
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        ids, mask, position_ids, pos = left_pad(chunk, pad_id, device)
        with (
            Trace(model, key_names.values(), inputs=True) as tk,
            Trace(model, block_names.values(), outputs=True) as th,
        ):
            inputs = dict(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=False,
                logits_to_keep=1,
            )
            out = forward_until(model, stop, **inputs) if stop else model(**inputs)
        arange = torch.arange(len(chunk), device=device)
        for layer, name in key_names.items():
            keys[layer].append(tk.inputs[name][arange, pos].float().cpu())
        for layer, name in block_names.items():
            hidden[layer].append(th.outputs[name][arange, pos].float().cpu())
        if logits:
            last_logits.append(out.logits[:, -1].float().cpu())
    return (
        {layer: torch.cat(v) for layer, v in keys.items()},
        {layer: torch.cat(v) for layer, v in hidden.items()},
        torch.cat(last_logits) if logits else None,
    )


def request_keys_and_hidden(
    model: torch.nn.Module,
    layout: ModelLayout,
    requests: Sequence[EditRequest],
    key_layer: int,
    value_layer: int,
    *,
    plain_weight: float = 0.5,
    pad_id: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One key and one current hidden state per request, with the model's current weights.

    The key of a prompt is ``plain_weight`` x its plain key + (1 - plain_weight) x the mean of
    its prefixed keys; a request's key is the mean over its prompts. The hidden state is the
    value layer's output at the subject position of the plain prompts, averaged likewise.

    Returns:
        keys (n_requests, d_mlp) and hidden (n_requests, d_hidden), float32 on the CPU.
    """
    rows: list[Row] = []
    for req in requests:
        rows += req.prompts
        for ctx in req.contexts:
            rows += ctx
    keys, hidden, _ = read_rows(
        model,
        layout,
        rows,
        key_layers=[key_layer],
        hidden_layers=[value_layer],
        pad_id=pad_id,
        logits=False,
    )
    k_all, h_all = keys[key_layer], hidden[value_layer]
    out_k, out_h = [], []
    i = 0
    for req in requests:
        n = len(req.prompts)
        k_plain, h_plain = k_all[i : i + n], h_all[i : i + n]
        i += n
        prompt_keys = []
        for j, ctx in enumerate(req.contexts):
            if ctx:
                k_ctx = k_all[i : i + len(ctx)].mean(0)
                prompt_keys.append(plain_weight * k_plain[j] + (1 - plain_weight) * k_ctx)
                i += len(ctx)
            else:
                prompt_keys.append(k_plain[j])
        if not req.contexts:
            prompt_keys = list(k_plain)
        out_k.append(torch.stack(prompt_keys).mean(0))
        out_h.append(h_plain.mean(0))
    return torch.stack(out_k), torch.stack(out_h)
