"""Settings of an attack run, and the data it attacks."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from unierase import prompting as P
from unierase.attacks.prompts import DEFAULT_INSTRUCTIONS, DEFAULT_PREFILLS, INJECTION_PLACES
from unierase.data.schema import QAItem
from unierase.eval.metrics import DEFAULT_MIN_K
from unierase.token.config import DEFAULT_TOKEN_TEXT

# In the order a report lists them; "direct" (no attack) is the reference row.
ATTACK_NAMES: tuple[str, ...] = (
    "direct",
    "prefill",
    "token_ban",
    "paraphrase",
    "token_injection",
    "instruction",
    "few_shot",
    "relearn",
    "membership",
)


@dataclass(frozen=True)
class AttackConfig:
    """Settings of an attack run (all recorded in the summary).

    Attributes:
        attacks: which attacks to run (names of :data:`ATTACK_NAMES`).
        max_new_tokens: generation budget per answer.
        batch_size: sequences per forward pass.
        fmt: prompt format (the one the model was trained and edited with).
        token_text: the unlearning token's text: banned by id where the tokenizer has it, typed
            as text by the injection and instruction attacks.
        prefills: answer starts for the pre-fill attack.
        instructions: templates of the instruction attack (``{question}``, ``{token}``).
        injection_places: where the injection attack types the token text.
        few_shot: answered questions of the same group put before the question.
        relearn_fraction: share of the forget set the relearning attack trains on (the rest is
            measured).
        relearn_epochs: passes over the relearning data.
        relearn_lr: relearning learning rate (AdamW, full fine-tuning).
        relearn_batch_size: items per relearning step.
        relearn_retain_items: retain items for the "retain only" relearning variant.
        min_k: the k of Min-K% and Min-K%++.
        seed: seeds the relearning split and training.
    """

    attacks: tuple[str, ...] = ATTACK_NAMES
    max_new_tokens: int = 200
    batch_size: int = 16
    fmt: P.PromptFormat = P.PromptFormat()
    token_text: str = DEFAULT_TOKEN_TEXT
    prefills: tuple[str, ...] = DEFAULT_PREFILLS
    instructions: tuple[str, ...] = DEFAULT_INSTRUCTIONS
    injection_places: tuple[str, ...] = INJECTION_PLACES
    few_shot: int = 3
    relearn_fraction: float = 0.5
    relearn_epochs: int = 2
    relearn_lr: float = 1e-5
    relearn_batch_size: int = 4
    relearn_retain_items: int = 32
    min_k: float = DEFAULT_MIN_K
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [a for a in self.attacks if a not in ATTACK_NAMES]
        if unknown:
            raise ValueError(
                f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACK_NAMES)}"
            )
        bad_places = [p for p in self.injection_places if p not in INJECTION_PLACES]
        if bad_places:
            raise ValueError(f"unknown injection place(s) {bad_places}; use {INJECTION_PLACES}")
        checks = [
            (self.max_new_tokens >= 1, "max_new_tokens must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.few_shot >= 1, "few_shot must be >= 1"),
            (0 < self.relearn_fraction < 1, "relearn_fraction must be in (0, 1)"),
            (self.relearn_epochs >= 1, "relearn_epochs must be >= 1"),
            (self.relearn_lr > 0, "relearn_lr must be > 0"),
            (self.relearn_batch_size >= 1, "relearn_batch_size must be >= 1"),
            (self.relearn_retain_items >= 1, "relearn_retain_items must be >= 1"),
            (0 < self.min_k <= 1, "min_k must be in (0, 1]"),
            (all(p.strip() for p in self.prefills), "a prefill must contain text"),
            (all("{question}" in t for t in self.instructions), "instructions need {question}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"AttackConfig: {message}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        d = asdict(self)
        d["fmt"] = asdict(self.fmt)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


@dataclass
class AttackData:
    """What the attacks run on.

    Attributes:
        forget: the forgotten items (every attack but injection measures these).
        retain: kept items: the injection attack types the token into their questions, and the
            "retain only" relearning variant trains on them (empty: those parts are skipped).
        holdout: items the model never saw, for membership inference (empty: skipped).
    """

    forget: list[QAItem]
    retain: list[QAItem] = field(default_factory=list)
    holdout: list[QAItem] = field(default_factory=list)
