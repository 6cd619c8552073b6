"""Hyper-parameters of the unlearning edit, with presets chosen by model size (never by name)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal


@dataclass(frozen=True)
class EditConfig:
    """Everything Phase II needs to know.

    Attributes:
        layers: decoder layers whose MLP down-projections are edited, in order (None: the
            preset's band). The last one is where the target value is optimised.
        lambda_: ridge weight of the closed-form solve (AlphaEdit: 10).
        null_threshold: eigenvalue threshold of the null-space projector.
        null_threshold_relative: read the threshold as a fraction of the largest eigenvalue.
        granularity: "entity" makes one request per group (author) with its key averaged over
            the group's questions; "question" makes one request per question.
        sequential: solve requests one chunk at a time, each chunk seeing the earlier chunks'
            keys in C_prev (the authors' released script did one request at a time).
        chunk_size: requests per solve.
        repair_rounds: after the edit, questions whose first token is not yet the unlearning
            token get their own per-question edits, up to this many rounds.
        strip_subject_punctuation: read a subject's key at its last word, not at a closing quote
            or punctuation mark that many questions share ("the author of 'The Salt Road'").
        context_prefixes: words that start the generated prefixes used to average keys.
        prefix_tokens: length of each generated prefix.
        key_plain_weight: weight of the plain prompt's key against the prefixed keys' mean.
        v_lr, v_steps, v_loss_stop: Adam learning rate, step budget and early stop of the
            target-value optimisation.
        v_clamp: the value shift is clamped to ``v_clamp * ||h||`` after every step.
        v_kl_weight: weight of the KL term that keeps the subject's own meaning.
        v_weight_decay: weight of ||delta|| / ||h||^2.
        v_refusal_weight: weight of the refusal term: the mean NLL of the refusal the token was
            trained to produce (teacher-forced after the target token, with the shift applied),
            so the shift that opens the refusal does not break what follows it (0: off).
        v_refusal_stop: with the refusal term, a request is done only when that NLL is below
            this.
        v_refusal_prompts: the refusal term uses at most this many of a request's prompts (each
            costs a longer row at every step; the shift is shared by all of them).
        protect_weight: weight of the kept items' keys on the preserved side of the solve:
            ``K_r K_r^T`` over every position of the kept questions and answers (chat format)
            is added to C_prev for this edit (MEMIT's preservation term), so the edit changes
            their down-projection outputs as little as it can (0: off, or no kept items).
        protect_items: at most this many kept items (a seeded sample) are protected.
        protect_neighbours: also protect invented look-alikes of the forget questions, this
            many per name part of a person's name (``unierase.data.neighbours``: "Where was
            Mateus Estravelle born?" -> "Where was Kelbar Estravelle born?", "Where was Mateus
            Dorhol born?"), so that a kept person who shares a name part with a forgotten one
            is not forgotten with them (0: none; needs ``protect_weight``).
        stats_texts: general texts used for the second-moment statistics.
        stats_max_length: tokens per text.
        stats_chat_fraction: share of texts wrapped in the chat template.
        deep: "deep forgetting": the value shift must also make the true answer unlikely at its
            first teacher-forced positions (and, with ``deep_prefills``, produce the target
            behind answer pre-fills), not only gate the first answer token (about 2x the
            Phase II time). The defaults below were chosen by measurement on the demo preset
            (benchmarks/README.md, "Attacks"): unlikelihood on 4 answer tokens at weight 0.3,
            no pre-fill rows, kept MU within 2% of the plain edit while cutting every attack's
            answer probability to <= 0.04; the first defaults (both pre-fills, 16 tokens,
            weight 1.0, p < 0.05) cost 33% of MU.
        deep_prefills: answer starts behind which every prompt must also produce the target
            (none by default; the pre-fill attack uses "Sure, " and "The answer is").
        deep_answer_tokens: leading answer tokens made unlikely (unlikelihood loss).
        deep_weight: weight of the unlikelihood term.
        deep_p_stop: a request is done only when its mean answer-token probability is below this.
    """

    layers: tuple[int, ...] | None = None
    lambda_: float = 10.0
    null_threshold: float = 0.02
    null_threshold_relative: bool = False
    granularity: Literal["entity", "question"] = "entity"
    sequential: bool = True
    chunk_size: int = 1
    repair_rounds: int = 2
    strip_subject_punctuation: bool = False
    context_prefixes: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
    prefix_tokens: int = 10
    key_plain_weight: float = 0.5
    v_lr: float = 0.1
    v_steps: int = 25
    v_loss_stop: float = 0.05
    v_clamp: float = 0.75
    v_kl_weight: float = 0.0625
    v_weight_decay: float = 0.5
    v_refusal_weight: float = 0.0
    v_refusal_stop: float = 0.1
    v_refusal_prompts: int = 4
    protect_weight: float = 0.0
    protect_items: int = 400
    protect_neighbours: int = 0
    stats_texts: int = 600
    stats_max_length: int = 128
    stats_chat_fraction: float = 0.5
    deep: bool = False
    deep_prefills: tuple[str, ...] = ()
    deep_answer_tokens: int = 4
    deep_weight: float = 0.3
    deep_p_stop: float = 0.1
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        checks = [
            (self.layers is None or (len(self.layers) > 0 and all(
                isinstance(x, int) and x >= 0 for x in self.layers)),
             "layers must be None or non-empty non-negative layer indices"),
            (self.lambda_ >= 0, "lambda_ must be >= 0"),
            (self.null_threshold >= 0, "null_threshold must be >= 0"),
            (self.granularity in ("entity", "question"), "granularity: 'entity' or 'question'"),
            (isinstance(self.chunk_size, int) and self.chunk_size >= 1, "chunk_size must be >= 1"),
            (self.repair_rounds >= 0, "repair_rounds must be >= 0"),
            (self.prefix_tokens >= 0, "prefix_tokens must be >= 0"),
            (0 <= self.key_plain_weight <= 1, "key_plain_weight must be in [0, 1]"),
            (self.v_lr > 0, "v_lr must be > 0"),
            (self.v_steps >= 1, "v_steps must be >= 1"),
            (self.v_clamp > 0, "v_clamp must be > 0"),
            (self.v_kl_weight >= 0 and self.v_weight_decay >= 0,
             "v_kl_weight and v_weight_decay must be >= 0"),
            (self.v_refusal_weight >= 0 and self.v_refusal_prompts >= 1,
             "v_refusal_weight must be >= 0 and v_refusal_prompts >= 1"),
            (self.protect_weight >= 0, "protect_weight must be >= 0"),
            (self.protect_items >= 0 and self.protect_neighbours >= 0,
             "protect_items and protect_neighbours must be >= 0"),
            (self.stats_texts >= 1 and self.stats_max_length >= 2,
             "stats_texts must be >= 1 and stats_max_length >= 2"),
            (0 <= self.stats_chat_fraction <= 1, "stats_chat_fraction must be in [0, 1]"),
            (self.deep_answer_tokens >= 1, "deep_answer_tokens must be >= 1"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ValueError(f"EditConfig: {message}")

    def resolved_layers(self, num_layers: int) -> tuple[int, ...]:
        """The edited layers: the explicit ones, or 5 layers from 1/8 of the depth."""
        if self.layers is not None:
            bad = [x for x in self.layers if not 0 <= x < num_layers]
            if bad:
                raise ValueError(f"layers {bad} out of range for a {num_layers}-layer model")
            return tuple(self.layers)
        # Authors: layers 4-8 of 32. Scale the band with depth, keep 5 layers when possible.
        start = round(num_layers / 8)
        count = min(5, max(1, num_layers - start - 1))
        return tuple(range(start, start + count))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["layers"] = list(self.layers) if self.layers is not None else None
        d["context_prefixes"] = list(self.context_prefixes)
        d["deep_prefills"] = list(self.deep_prefills)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EditConfig:
        d = dict(d)
        if d.get("layers") is not None:
            d["layers"] = tuple(d["layers"])
        for name in ("context_prefixes", "deep_prefills"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)


# The authors' settings for Llama-3.1-8B (32 layers, width 4096).
PAPER = EditConfig(
    layers=None, granularity="question", sequential=False, chunk_size=10_000, repair_rounds=0
)

# Small models (width <= 1024): measured on SmolLM2-135M (benchmarks/README.md, "Phase II"):
# the authors' value optimisation never reaches the token from the subject position, and joint
# solves of same-subject requests conflict, so values get a larger step and clamp and requests
# are solved one at a time at entity level. Chosen by benchmarks/locality.py on the demo preset
# (benchmarks/README.md, "Locality"): the refusal term keeps the refusal whole after the edit,
# and the kept items' keys (weight 0.5, with invented name look-alikes, keys at a subject's last
# word) keep what must be kept: retain ROUGE-L 0.553 -> 0.828 of 0.847, no kept question
# refused, edit success 1.0.
SMALL = EditConfig(
    v_lr=0.5,
    v_steps=100,
    v_clamp=1.5,
    v_refusal_weight=1.0,
    protect_weight=0.5,
    protect_neighbours=1,
    strip_subject_punctuation=True,
)

PRESETS = {"paper": PAPER, "small": SMALL}


def preset_for(hidden_size: int, **overrides: Any) -> EditConfig:
    """The preset for a model of this residual width, with ``overrides`` applied."""
    base = SMALL if hidden_size <= 1024 else PAPER
    return replace(base, **overrides)
