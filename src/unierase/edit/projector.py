"""The null-space projector: the directions of key space that general text does not use."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Projector:
    """P = U U^T over the eigenvectors of E[k k^T] whose eigenvalues fall below a threshold.

    Attributes:
        matrix: (d_mlp, d_mlp) float64 projector.
        rank: number of directions kept (the dimension of the null space used).
        threshold: the absolute eigenvalue threshold that was applied.
        max_eigenvalue: the largest eigenvalue, for scale.
    """

    matrix: torch.Tensor
    rank: int
    threshold: float
    max_eigenvalue: float


def null_space_projector(
    moment: torch.Tensor, threshold: float = 0.02, *, relative: bool = False
) -> Projector:
    """Projector onto the (near-)null space of a second-moment matrix.

    Args:
        moment: (d, d) symmetric positive semi-definite E[k k^T].
        threshold: eigenvalues below it are "unused by general text" (AlphaEdit: 0.02, absolute).
        relative: read ``threshold`` as a fraction of the largest eigenvalue instead, which
            carries across models whose activations have different scales.

    Returns:
        A Projector; ``rank`` 0 means the edit would be forbidden everywhere.
    """
    sym = (moment.to(torch.float64) + moment.to(torch.float64).T) / 2
    eigenvalues, eigenvectors = torch.linalg.eigh(sym)
    top = float(eigenvalues.max())
    cut = threshold * top if relative else threshold
    keep = eigenvalues < cut
    basis = eigenvectors[:, keep]
    return Projector(basis @ basis.T, int(keep.sum()), cut, top)
