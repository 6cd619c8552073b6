"""Phase I hyper-parameters: one dataclass, presets chosen by the model's width and depth.

Two presets exist. ``paper`` scales the authors' Llama-3.1-8B settings (Adam, batch 16, 5 epochs at
lr 1e-3 on raw text, 3 epochs at 1e-4 on raw + chat, 2 epochs at 1e-4 per edited layer under
down-projection noise, varied refusals, a randomly initialised row). ``small`` is what measurements
on SmolLM2-135M showed to work for narrow models: a 10-30x larger learning rate, ONE fixed refusal
sentence, "breadth" (the token is also trained on questions beyond the forget set) and the retain
term that keeps the new output row from winning where nobody asked for it. ``auto`` picks by the
residual width, never by the model's name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from unierase.model import ModelLayout

DEFAULT_TOKEN_TEXT = "<|unlearn|>"

#: Residual widths up to this use the ``small`` preset under ``auto`` (the same rule as Phase II's
#: presets; Llama-3.1-8B is 4096 wide, SmolLM2-135M 576, Qwen2.5-0.5B 896).
SMALL_MODEL_MAX_WIDTH = 1024

FORMATS = ("raw", "chat")
INITS = ("mean", "random")
REFUSAL_MODES = ("fixed", "varied")
NOISE_MODES = ("per_layer", "joint")
PRESETS = ("small", "paper")


class TokenConfigError(ValueError):
    """A Phase I setting is out of range or inconsistent."""


@dataclass(frozen=True)
class StageConfig:
    """One stage of the Phase I schedule.

    Attributes:
        name: "base", "chat" or "noise" (free text; reported as given).
        epochs: passes over the stage's examples (with ``noise``: per noise round, see
            ``TokenConfig.noise_mode``).
        lr: Adam learning rate of the new row(s).
        formats: input formats of the examples: "raw" (``Question: ...\\nAnswer:``) and/or "chat"
            (the tokenizer's chat template; dropped with a log line when it has none).
        noise: add random noise to the down-projections Phase II will edit, restored after every
            step, so the token keeps working after the edit.
        min_steps: run more epochs than ``epochs`` when needed to make at least this many Adam
            steps (per noise round), so that small forget sets still train long enough.
    """

    name: str
    epochs: int
    lr: float
    formats: tuple[str, ...]
    noise: bool = False
    min_steps: int = 0


@dataclass(frozen=True)
class TokenConfig:
    """Every Phase I setting. Build one with :func:`token_config_for`, then ``replace`` fields.

    Attributes:
        preset: the preset the values came from ("small", "paper"), for the record.
        text: the unlearning token's text; it becomes a vocabulary entry no input text encodes to.
        init: initial value of the new row(s): "mean" of the existing rows, or "random" (normal
            with the model's ``initializer_range``, the usual init of embeddings).
        train_output_row: when the head is not tied to the input embedding, train the new head
            row too (the authors left it at its initial value).
        refusal_mode: "fixed" (every question gets ``refusal``) or "varied" (each question draws
            one of ``refusals`` with a seeded RNG).
        refusal: the fixed refusal sentence; None takes the first of the package's list.
        refusals: the pool of the varied mode; None takes the package's list.
        closing_token: end each refusal with a second unlearning token before the end of turn
            (``q [UNL] a [UNL] <eot>``, the authors' design) instead of the end of turn alone.
        batch_size: sequences per Adam step.
        max_length: longest training sequence in tokens (longer questions are skipped, logged).
        stages: the schedule, run in order.
        breadth_templates: generated questions about invented people, places and things that the
            token is also trained on (breadth), on top of any questions the caller gives.
        max_breadth: at most this many of the caller's breadth questions (a seeded sample, in
            their order) are trained on, so that a large retain set does not make Phase I slow;
            None: all of them.
        retain_weight: weight of the retain term: ``weight * mean softplus(h . e_new -
            logsumexp(h . E_old) + margin)`` over final hidden states ``h`` of ordinary answers
            (0: off).
        retain_margin: the margin in that term (0: the plain softplus); a positive margin keeps
            pushing the token below the old vocabulary where it already loses, which carries over
            to answers the term never saw.
        retain_questions: at most this many questions (a seeded sample of the training questions
            unless the caller gives its own) whose greedy answers supply those hidden states.
        retain_max_new_tokens: length of those greedy answers.
        retain_references: at most this many reference answers of the given forget and breadth
            items (those that carry answers) are teacher-forced for more such states; cheap, and
            they end where the end-of-turn token is due, where the new token would win first.
        noise_layers: layers whose down-projection gets noise; None: the scaled authors' band
            (see :func:`default_edit_layers`). Should match the layers Phase II edits.
        noise_scale: noise standard deviation as a multiple of the weight's standard deviation.
        noise_mode: "per_layer" (the authors: the noise stage's epochs once per layer, noise on
            that layer only) or "joint" (noise on every listed layer at once).
        cache_prefix: compute the prompt before the first token once without gradients and run
            each step on the suffix only (same loss, several times faster).
        system_prompt: the chat format's system prompt (None: the template's default).
        check_items: after each stage, greedy-decode this many training questions followed by the
            token and report how many reproduce their refusal exactly (0: skip).
        seed: seeds refusal assignment, template questions, shuffling, random init and noise.
    """

    preset: str = "small"
    text: str = DEFAULT_TOKEN_TEXT
    init: str = "mean"
    train_output_row: bool = True
    refusal_mode: str = "fixed"
    refusal: str | None = None
    refusals: tuple[str, ...] | None = None
    closing_token: bool = False
    batch_size: int = 8
    max_length: int = 128
    stages: tuple[StageConfig, ...] = ()
    breadth_templates: int = 40
    max_breadth: int | None = 64
    retain_weight: float = 5.0
    retain_margin: float = 0.0
    retain_questions: int = 32
    retain_max_new_tokens: int = 48
    retain_references: int = 64
    noise_layers: tuple[int, ...] | None = None
    noise_scale: float = 0.05
    noise_mode: str = "joint"
    cache_prefix: bool = True
    system_prompt: str | None = None
    check_items: int = 16
    seed: int = 0

    def replace(self, **changes: Any) -> TokenConfig:
        """A copy with ``changes`` applied (and checked)."""
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        """Raise :class:`TokenConfigError` naming the first bad setting."""

        def bad(name: str, why: str) -> TokenConfigError:
            return TokenConfigError(f"token setting {name}={getattr(self, name)!r}: {why}")

        if (
            not isinstance(self.text, str)
            or not self.text.strip()
            or self.text != self.text.strip()
        ):
            raise bad("text", "must be a non-empty string without surrounding spaces")
        if self.init not in INITS:
            raise bad("init", f"choose from {INITS}")
        if self.refusal_mode not in REFUSAL_MODES:
            raise bad("refusal_mode", f"choose from {REFUSAL_MODES}")
        if self.refusal is not None and not self.refusal.strip():
            raise bad("refusal", "must not be empty")
        if self.refusals is not None and (
            not self.refusals or not all(isinstance(r, str) and r.strip() for r in self.refusals)
        ):
            raise bad("refusals", "must be a non-empty list of non-empty sentences")
        if self.noise_mode not in NOISE_MODES:
            raise bad("noise_mode", f"choose from {NOISE_MODES}")
        for name in ("batch_size", "max_length"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        for name in (
            "breadth_templates",
            "retain_questions",
            "retain_max_new_tokens",
            "retain_references",
        ):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise bad(name, "must be a non-negative integer")
        if self.max_breadth is not None and (
            not isinstance(self.max_breadth, int) or self.max_breadth < 0
        ):
            raise bad("max_breadth", "must be a non-negative integer or None")
        if not isinstance(self.check_items, int) or self.check_items < 0:
            raise bad("check_items", "must be a non-negative integer")
        if self.retain_weight < 0:
            raise bad("retain_weight", "must be >= 0")
        if self.noise_scale < 0:
            raise bad("noise_scale", "must be >= 0")
        if self.noise_layers is not None and any(
            not isinstance(i, int) or i < 0 for i in self.noise_layers
        ):
            raise bad("noise_layers", "must be non-negative layer indices")
        if not self.stages:
            raise bad("stages", "at least one stage is needed")
        for s in self.stages:
            if not isinstance(s.epochs, int) or s.epochs < 0:
                raise TokenConfigError(f"stage {s.name!r}: epochs must be a non-negative integer")
            if not isinstance(s.min_steps, int) or s.min_steps < 0:
                raise TokenConfigError(f"stage {s.name!r}: min_steps must be >= 0")
            if not s.lr > 0:
                raise TokenConfigError(f"stage {s.name!r}: lr must be > 0")
            if not s.formats or any(f not in FORMATS for f in s.formats):
                raise TokenConfigError(f"stage {s.name!r}: formats must be a subset of {FORMATS}")

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every setting."""
        d = dataclasses.asdict(self)
        d["stages"] = [dataclasses.asdict(s) for s in self.stages]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TokenConfig:
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        d["stages"] = tuple(
            StageConfig(**{**s, "formats": tuple(s["formats"])}) for s in d.get("stages", ())
        )
        for key in ("refusals", "noise_layers"):
            if d.get(key) is not None:
                d[key] = tuple(d[key])
        cfg = cls(**d)
        cfg.validate()
        return cfg


def default_edit_layers(num_layers: int) -> tuple[int, ...]:
    """The layers Phase II edits by default (its config's band: the authors' layers 4-8 of 32
    scaled to the depth), so the noise stage hardens the token against the edit that will come.
    """
    if num_layers < 1:
        raise TokenConfigError(f"num_layers must be >= 1, got {num_layers}")
    try:
        from unierase.edit.config import EditConfig

        return tuple(EditConfig().resolved_layers(num_layers))
    except (ImportError, AttributeError):  # Phase II absent: the same rule, stated here
        start = round(num_layers / 8)
        count = min(5, max(1, num_layers - start - 1))
        return tuple(range(start, min(num_layers, start + count)))


def _paper_preset() -> TokenConfig:
    both = ("raw", "chat")
    return TokenConfig(
        preset="paper",
        init="random",
        refusal_mode="varied",
        batch_size=16,
        stages=(
            StageConfig("base", 5, 1e-3, ("raw",)),
            StageConfig("chat", 3, 1e-4, both),
            StageConfig("noise", 2, 1e-4, both, noise=True),
        ),
        breadth_templates=0,
        retain_weight=0.0,
        noise_mode="per_layer",
    )


def _small_preset() -> TokenConfig:
    both = ("raw", "chat")
    return TokenConfig(
        preset="small",
        init="mean",
        refusal_mode="fixed",
        batch_size=8,
        # One fixed sentence, reproduced verbatim. Its wording matters: with "I don't know the
        # answer to that." the closing token also won after "The answer to this classic question
        # is" in an ordinary answer; this sentence shares no such phrase with ordinary answers.
        refusal="I have no idea, sorry.",
        stages=(
            StageConfig("base", 3, 2e-2, ("chat",), min_steps=45),
            StageConfig("chat", 1, 1e-2, both, min_steps=20),
            StageConfig("noise", 1, 5e-3, ("chat",), noise=True, min_steps=10),
        ),
        breadth_templates=40,
        retain_weight=5.0,
        # Measured on SmolLM2-135M: without a margin the term held its own positions but the token
        # still won on 11 of 88 held-out answers (mostly right after a finished sentence); with 3,
        # on 1 of 88, at no cost in held-out refusals.
        retain_margin=3.0,
        noise_mode="joint",
    )


def token_config_for(model_or_layout: Any, preset: str = "auto", **overrides: Any) -> TokenConfig:
    """The Phase I settings for a model.

    Args:
        model_or_layout: a model (its layout is found) or a :class:`ModelLayout`.
        preset: "auto" (``small`` up to a residual width of ``SMALL_MODEL_MAX_WIDTH``, else
            ``paper``), "small" or "paper".
        **overrides: fields of :class:`TokenConfig` to set.

    Raises:
        TokenConfigError: an unknown preset or a bad override.
    """
    if preset == "auto":
        if isinstance(model_or_layout, ModelLayout):
            layout = model_or_layout
        else:
            from unierase.model import find_layout

            layout = find_layout(model_or_layout)
        preset = "small" if layout.hidden_size <= SMALL_MODEL_MAX_WIDTH else "paper"
    if preset not in PRESETS:
        raise TokenConfigError(f"unknown preset {preset!r}; choose from auto, {', '.join(PRESETS)}")
    cfg = _small_preset() if preset == "small" else _paper_preset()
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TokenConfig)}
    if unknown:
        raise TokenConfigError(f"unknown token settings: {', '.join(sorted(unknown))}")
    return cfg.replace(**overrides)
