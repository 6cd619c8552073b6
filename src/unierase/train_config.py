"""What the settings of the two supervised trainers share (fine-tuning and the baselines).

Both are frozen dataclasses that train in one prompt format and travel as plain JSON: into a
report, into a cache key (the fine-tune's key hashes ``to_dict()``, so its output must stay
stable) and back.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Self

from unierase import prompting as P


class TrainConfigMixin:
    """``prompt_format`` and a JSON round trip for a frozen dataclass with a ``system_prompt``.

    Tuple fields are written as lists and read back as tuples; unknown keys are an error.
    """

    system_prompt: str | None

    @property
    def prompt_format(self) -> P.PromptFormat:
        """The prompt format used for training (evaluation must use the same one)."""
        return P.PromptFormat(system_prompt=self.system_prompt)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields, in declaration order."""
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        """Inverse of ``to_dict`` (unknown keys raise ``ValueError``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        # Every list in a written config was a tuple field (no field holds a list).
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})
