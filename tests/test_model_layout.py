"""The structural layout is found for every family, from the module tree alone."""

import pytest
import torch

from unierase.model import find_layout, linear_dims, model_fingerprint
from unierase.testing import FAMILIES, tiny_model, tiny_tokenizer

EXPECTED_DOWN_PROJ = {
    "llama": ("model.layers", "mlp.down_proj", False),
    "qwen2": ("model.layers", "mlp.down_proj", False),
    "gemma3": ("model.layers", "mlp.down_proj", False),
    "gpt2": ("transformer.h", "mlp.c_proj", True),
    "gpt_neox": ("gpt_neox.layers", "mlp.dense_4h_to_h", False),
    "phi": ("model.layers", "mlp.fc2", False),
}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.mark.parametrize("family", FAMILIES)
def test_layout_finds_parts(family, tokenizer):
    model = tiny_model(family, tokenizer)
    layout = find_layout(model)
    layers_name, down_suffix, transposed = EXPECTED_DOWN_PROJ[family]
    assert layout.layers_name == layers_name
    assert layout.num_layers == 4
    assert layout.down_proj_names[2] == f"{layers_name}.2.{down_suffix}"
    assert layout.down_proj_transposed is transposed
    assert layout.hidden_size == 64 and layout.mlp_size == 128
    assert layout.final_norm_name is not None
    norm = model.get_submodule(layout.final_norm_name)
    assert all(p.shape == (64,) for p in norm.parameters())
    assert model.get_submodule(layout.embed_name) is model.get_input_embeddings()
    assert model.get_submodule(layout.head_name) is model.get_output_embeddings()
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    assert layout.tied == (head.weight.data_ptr() == embed.weight.data_ptr())
    # The weight view is hidden x mlp whatever the storage.
    assert tuple(layout.down_proj_weight(model, 1).shape) == (64, 128)


@pytest.mark.parametrize("family", FAMILIES)
def test_hook_reads_down_proj_input(family, tokenizer):
    model = tiny_model(family, tokenizer)
    layout = find_layout(model)
    seen = {}
    handle = layout.down_proj(model, 3).register_forward_hook(
        lambda mod, args, out: seen.update(inp=args[0].detach(), out=out.detach())
    )
    ids = torch.tensor([tokenizer("The author was born in London.")["input_ids"]])
    with torch.no_grad():
        model(input_ids=ids)
    handle.remove()
    assert seen["inp"].shape == (1, ids.shape[1], 128)
    assert seen["out"].shape == (1, ids.shape[1], 64)
    # The hooked output is the weight applied to the hooked input (orientation is right).
    weight = layout.down_proj_weight(model, 3)
    bias = getattr(layout.down_proj(model, 3), "bias", None)
    expected = seen["inp"] @ weight.T + (bias if bias is not None else 0)
    torch.testing.assert_close(seen["out"], expected, rtol=1e-4, atol=1e-5)


def test_tied_and_untied_are_told_apart(tokenizer):
    assert find_layout(tiny_model("llama", tokenizer)).tied
    assert not find_layout(tiny_model("qwen2", tokenizer)).tied


def test_linear_dims_rejects_non_linear():
    assert linear_dims(torch.nn.LayerNorm(8)) is None
    assert linear_dims(torch.nn.Linear(3, 5)) == (3, 5, False)


def test_fingerprint_changes_with_weights(tokenizer):
    model = tiny_model("llama", tokenizer)
    before = model_fingerprint(model)
    assert before == model_fingerprint(model)
    with torch.no_grad():
        find_layout(model).down_proj_weight(model, 0)[0, 0] += 1.0
    assert model_fingerprint(model) != before
