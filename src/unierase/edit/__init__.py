"""Phase II: the null-space-constrained unlearning edit (AlphaEdit) and its building blocks."""
