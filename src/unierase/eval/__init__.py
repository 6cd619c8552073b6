"""Evaluation: per-item scores and the two metric families (TOFU / open-unlearning, UniErase paper).

``unierase.eval.metrics`` holds the metric functions; they take numbers and strings, never a
model.
"""
