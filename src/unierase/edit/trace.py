"""Read or patch any module's input or output by name, with forward hooks.

A small helper of our own: editing needs (a) the input of a down-projection (the key), (b) the
output of a decoder block (the hidden state the target value replaces), and (c) a way to add a
vector to a block's output at chosen positions while optimising that vector.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


def _first_tensor(value: Any) -> torch.Tensor:
    return value[0] if isinstance(value, (tuple, list)) else value


class Trace:
    """Capture the inputs and/or outputs of named modules during forward passes.

    Use as a context manager::

        with Trace(model, ["model.layers.3.mlp.down_proj"], inputs=True) as tr:
            model(**batch)
        keys = tr.inputs["model.layers.3.mlp.down_proj"]  # (batch, seq, d_mlp)

    Attributes:
        inputs: name -> the module's first positional input of the latest forward pass.
        outputs: name -> the module's output (first element when it returns a tuple).
    """

    def __init__(
        self,
        model: nn.Module,
        names: Iterable[str],
        *,
        inputs: bool = False,
        outputs: bool = False,
        detach: bool = True,
    ) -> None:
        self.model = model
        self.names = list(names)
        self.want_inputs, self.want_outputs, self.detach = inputs, outputs, detach
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles: list[Any] = []

    def _hook(self, name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.want_inputs:
                x = args[0]
                self.inputs[name] = x.detach() if self.detach else x
            if self.want_outputs:
                y = _first_tensor(output)
                self.outputs[name] = y.detach() if self.detach else y

        return hook

    def __enter__(self) -> Trace:
        for name in self.names:
            module = self.model.get_submodule(name)
            self._handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


@contextmanager
def patch_output(model: nn.Module, name: str, fn: Callable[[torch.Tensor], torch.Tensor]):
    """Replace the output of module ``name`` by ``fn(output)`` inside the ``with`` block.

    For modules that return a tuple (decoder blocks), ``fn`` receives and returns the first
    element (the hidden states, batch x seq x hidden); the rest of the tuple is kept.
    """

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    handle = model.get_submodule(name).register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class _StopForward(Exception):
    """Raised by :func:`forward_until` once the last module it needs has run."""


def forward_until(model: nn.Module, name: str, **inputs: Any) -> Any:
    """Run ``model(**inputs)`` but stop right after module ``name`` has produced its output.

    Reading keys or hidden states of early layers does not need the rest of the network:
    stopping there saves most of the forward pass (layer 8 of 30: about 70%). Hooks registered
    earlier on the same module (a :class:`Trace`) still run, since hooks run in registration
    order. Returns the model's output, or None when it stopped early.
    """
    module = model.get_submodule(name)

    def stop(module: nn.Module, args: tuple, output: Any) -> None:
        raise _StopForward

    handle = module.register_forward_hook(stop)
    try:
        return model(**inputs)
    except _StopForward:
        return None
    finally:
        handle.remove()


class _Replayed(nn.Module):
    """Stands in for a decoder block: returns ``out`` when given, else its input unchanged."""

    def __init__(self, out: torch.Tensor | None) -> None:
        super().__init__()
        self.out = out

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states if self.out is None else self.out


@contextmanager
def replay_blocks(layers: nn.ModuleList, last: int, states: torch.Tensor):
    """Inside the ``with`` block, forward passes skip decoder blocks ``0..last`` of ``layers``.

    Block ``last`` returns ``states`` (batch x seq x hidden: what it output for the same inputs
    before, recorded once) and the blocks before it pass their input through. The model still
    computes the embeddings, attention masks and position embeddings itself, so the blocks after
    ``last`` see exactly what a full pass gives them. For loops that re-run the same rows through
    an unchanged lower network (the value optimisation). Hooks registered inside the block on
    ``layers[last]`` attach to the stand-in and see ``states`` as its output.
    """
    originals = [layers[i] for i in range(last + 1)]
    try:
        for i in range(last + 1):
            layers[i] = _Replayed(states if i == last else None)
        yield
    finally:
        for i, block in enumerate(originals):
            layers[i] = block
