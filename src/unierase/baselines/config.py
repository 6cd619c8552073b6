"""Settings of the fine-tuning baselines: one dataclass, per-method defaults in the registry.

The shared defaults are the UniErase authors' setting (their paper's baselines): full
fine-tuning, AdamW, lr 1e-5, 5 epochs, weight decay 0.01, loss on answer tokens only. A method
changes only the fields it needs (``unierase.baselines.registry.METHODS[name].defaults``); a
caller's overrides come last.
"""

from __future__ import annotations

from dataclasses import dataclass

from unierase.train_config import TrainConfigMixin


@dataclass(frozen=True)
class BaselineConfig(TrainConfigMixin):
    """Settings of one baseline run.

    Training (shared by every method):
        epochs: passes over the forget set (each forget batch is paired with a retain batch).
        lr: peak AdamW learning rate, reached after the warm-up and then held constant.
        batch_size: forget items (and as many retain items) per forward pass.
        grad_accum: forward passes per optimizer step.
        warmup_ratio: share of the optimizer steps spent warming up linearly from 0.
        weight_decay: AdamW weight decay (not applied to norms and biases).
        max_grad_norm: gradient clipping (0 disables).
        max_length: longest sequence (prompt + answer + end of turn); longer answers are cut.
        system_prompt: the prompt format's system prompt (None: the template's own default).
        seed: seeds batch order, retain pairing, refusal assignment and RMU's direction.
        cpu: force the CPU even when an accelerator is present (None: let ``accelerate`` choose,
            which is the CPU on a machine without one and the launcher's devices under
            ``accelerate launch``).

    Loss (used by the methods that name them):
        forget_weight: weight of the forget term (gamma in open-unlearning).
        retain_weight: weight of the retain term (alpha in open-unlearning).
        beta: inverse temperature of NPO, SimNPO, DPO and answer preservation.
        simnpo_margin: SimNPO's reward margin (gamma in the SimNPO paper).
        refusals: the "I don't know" answers of IdkDPO and IDK+AP (empty: the package's list),
            assigned to questions with a seeded RNG.
        rmu_layer: the decoder block whose output RMU steers (None: a quarter of the depth).
        rmu_trained_layers: RMU trains the MLPs of this many blocks, ending at ``rmu_layer``.
        rmu_steering: length of RMU's control vector, as a multiple of the mean norm of the
            reference model's hidden state at ``rmu_layer`` on the forget answers (the WMDP
            authors set an absolute length per model; a relative one carries across models).
    """

    epochs: int = 5
    lr: float = 1e-5
    batch_size: int = 4
    grad_accum: int = 1
    warmup_ratio: float = 0.2
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 256
    system_prompt: str | None = None
    seed: int = 0
    cpu: bool | None = None
    forget_weight: float = 1.0
    retain_weight: float = 1.0
    beta: float = 0.1
    simnpo_margin: float = 0.0
    refusals: tuple[str, ...] = ()
    rmu_layer: int | None = None
    rmu_trained_layers: int = 3
    rmu_steering: float = 4.0

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0"),
            (self.max_length >= 8, "max_length must be >= 8"),
            (self.forget_weight >= 0, "forget_weight must be >= 0"),
            (self.retain_weight >= 0, "retain_weight must be >= 0"),
            (self.beta > 0, "beta must be > 0"),
            (self.rmu_layer is None or self.rmu_layer >= 0, "rmu_layer must be >= 0"),
            (self.rmu_trained_layers >= 1, "rmu_trained_layers must be >= 1"),
            (self.rmu_steering > 0, "rmu_steering must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"BaselineConfig: {message}")
        if not isinstance(self.refusals, tuple):
            object.__setattr__(self, "refusals", tuple(self.refusals))
