"""unierase: remove chosen knowledge from a language model, and prove it did."""

from unierase.model import DEFAULT_MODEL, EMBEDDED_MODELS, ModelLayout, find_layout, load

__version__ = "0.1.0"

__all__ = ["DEFAULT_MODEL", "EMBEDDED_MODELS", "ModelLayout", "find_layout", "load", "__version__"]
