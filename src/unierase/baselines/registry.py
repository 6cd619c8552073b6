"""The registry of baselines: each method is a forget term plus an optional retain term.

    loss = forget_weight * forget_term + retain_weight * retain_term

Each term lives in its own small file (``ga.py``, ``npo.py``, ...); a method only names them,
says which batches and whether a frozen reference model it needs, and lists the settings it
changes from :class:`~unierase.baselines.config.BaselineConfig`'s shared defaults.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from unierase.baselines import ap, ga, idk, idkdpo, me, npo, retain, rmu, simnpo
from unierase.baselines.common import LossContext
from unierase.baselines.config import BaselineConfig

Term = Callable[[LossContext], torch.Tensor]


@dataclass(frozen=True)
class Method:
    """One baseline.

    Attributes:
        name: the registry key (as the paper's tables write it).
        forget_term: the loss on the forget batch(es).
        retain_term: the regulariser on the retain batch(es), or None.
        needs_reference: whether a frozen copy of the original model is kept.
        batches: the batches every step needs ("forget", "retain", "forget_idk", "retain_idk").
        defaults: BaselineConfig fields this method changes from the shared defaults.
        description: one line for tables and ``--help``.
        trainable: names of the parameters to train (None: every parameter).
        prepare: called once before training with (reference or model, forget batches, config,
            device); returns values the terms read from ``LossContext.state``.
    """

    name: str
    forget_term: Term
    retain_term: Term | None
    needs_reference: bool
    batches: tuple[str, ...]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)
    trainable: Callable[[torch.nn.Module, BaselineConfig], set[str]] | None = None
    prepare: Callable[..., dict[str, Any]] | None = None

    def config(self, base: BaselineConfig | None = None, **overrides: Any) -> BaselineConfig:
        """This method's settings: ``base`` (or the shared defaults with this method's defaults
        applied), then ``overrides``."""
        if base is None:
            base = dataclasses.replace(BaselineConfig(), **self.defaults)
        return dataclasses.replace(base, **overrides) if overrides else base


_F, _R = ("forget",), ("forget", "retain")

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("GA", ga.forget_term, None, False, _F, "gradient ascent on the forget answers"),
        Method("GD", ga.forget_term, retain.nll_term, False, _R, "GA + NLL on retain answers"),
        Method(
            "GA+KL",
            ga.forget_term,
            retain.kl_term,
            True,
            _R,
            "GA + KL to the original, on retain",
        ),
        Method(
            "NPO+GD",
            npo.forget_term,
            retain.nll_term,
            True,
            _R,
            "NPO (beta 0.1) + NLL on retain",
        ),
        Method(
            "NPO+KL",
            npo.forget_term,
            retain.kl_term,
            True,
            _R,
            "NPO (beta 0.1) + KL on retain",
        ),
        Method(
            "SimNPO",
            simnpo.forget_term,
            retain.nll_term,
            False,
            _R,
            "reference-free, length-normalised NPO + NLL on retain",
            # open-unlearning's TOFU setting.
            defaults={"beta": 4.5, "forget_weight": 0.125},
        ),
        Method(
            "IdkDPO+GD",
            idkdpo.forget_term,
            retain.nll_term,
            True,
            ("forget", "forget_idk", "retain"),
            "DPO preferring a refusal over the true answer + NLL on retain",
        ),
        Method(
            "IDK+AP",
            idk.forget_term,
            ap.retain_term,
            False,
            ("forget", "forget_idk", "retain", "retain_idk"),
            "fine-tune to refusals + answer preservation on retain",
        ),
        Method(
            "ME+GD",
            me.forget_term,
            retain.nll_term,
            False,
            _R,
            "maximum entropy + NLL on retain",
        ),
        Method(
            "RMU",
            rmu.forget_term,
            rmu.retain_term,
            True,
            _R,
            "steer a block's output on forget towards a random direction, keep it on retain",
            # WMDP's lr; the retain weight balances the two MSEs (not tuned here yet).
            defaults={"lr": 5e-5, "retain_weight": 100.0},
            trainable=rmu.trainable_parameter_names,
            prepare=rmu.prepare,
        ),
    )
}


def get_method(name: str) -> Method:
    """The method called ``name`` (case-insensitive), or a ValueError listing the known ones."""
    for key, method in METHODS.items():
        if key.lower() == name.lower():
            return method
    raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(METHODS)}")
