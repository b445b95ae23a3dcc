"""The covariance parameters of the random effects: their layout in theta.

``theta`` holds, term by term, the lower-triangular relative covariance factor of each term,
column-wise (lme4's order).
"""

from __future__ import annotations

import numpy as np

__all__ = ["tril_index"]


def tril_index(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a k x k lower triangle in lme4's (column-wise) theta order."""
    rows, cols = [], []
    for j in range(k):
        for i in range(j, k):
            rows.append(i)
            cols.append(j)
    return np.array(rows), np.array(cols)
