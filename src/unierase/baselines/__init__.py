"""Fine-tuning baselines for LLM unlearning, one small file per loss on one shared trainer.

GA, GD, GA+KL, NPO+GD, NPO+KL, SimNPO, IdkDPO+GD, IDK+AP, ME+GD and RMU (``METHODS``), all run by
:func:`run_baseline` on the same data model, prompt format and answer-token masking as the rest
of unierase, so that their results compare with UniErase's side by side.
"""

from unierase.baselines.config import BaselineConfig
from unierase.baselines.registry import METHODS, Method, get_method
from unierase.baselines.trainer import BaselineReport, mean_answer_nll, run_baseline

__all__ = [
    "METHODS",
    "BaselineConfig",
    "BaselineReport",
    "Method",
    "get_method",
    "mean_answer_nll",
    "run_baseline",
]
