"""Gauss-Hermite rules for integrals against the standard normal density.

Every adaptive Gauss-Hermite (AGQ) fit needs the same few rules over and over (once per
objective evaluation), so they are computed once and memoized, as MixedModels.jl does.

We use the *probabilists'* form: nodes ``z`` and weights ``w`` such that

    integral f(z) phi(z) dz  ~=  sum_k w[k] f(z[k]),   sum_k w[k] = 1,

where ``phi`` is the standard normal density. ``scipy.special.roots_hermitenorm`` stays
accurate for several hundred points; numpy's ``hermegauss`` overflows past about 150.
"""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.special import roots_hermitenorm

__all__ = ["GHRule", "gauss_hermite", "MAX_POINTS"]

#: The largest rule we hand out. Weights of the outermost nodes underflow to zero well
#: before this, which is harmless: we carry log-weights and drop nothing but zeros.
MAX_POINTS = 1000


class GHRule(NamedTuple):
    """A Gauss-Hermite rule for the standard normal density.

    Attributes
    ----------
    z : numpy.ndarray
        Nodes, ascending (symmetric about 0).
    w : numpy.ndarray
        Weights, summing to 1 (for integrals against ``phi``).
    logw : numpy.ndarray
        ``log(w)``; ``-inf`` where a weight underflowed.
    logw_adapt : numpy.ndarray
        ``log(w) + z**2/2 + log(sqrt(2 pi))``: the log-weights of the rule for a plain
        integral ``integral g(z) dz ~= sum_k exp(logw_adapt[k]) g(z[k])``, which is the form
        adaptive quadrature uses after centring and scaling on the integrand's mode.
    """

    z: np.ndarray
    w: np.ndarray
    logw: np.ndarray
    logw_adapt: np.ndarray


@lru_cache(maxsize=64)
def gauss_hermite(n: int) -> GHRule:
    """Return the ``n``-point Gauss-Hermite rule for the standard normal density (memoized).

    Parameters
    ----------
    n : int
        Number of points, 1 to :data:`MAX_POINTS`. One point is the node 0 with weight 1,
        which makes adaptive quadrature the Laplace approximation.

    Returns
    -------
    GHRule
        Read-only arrays ``z``, ``w``, ``logw`` and ``logw_adapt``.

    Examples
    --------
    >>> r = gauss_hermite(5)
    >>> float(np.sum(r.w * r.z**2))  # the variance of N(0, 1)
    1.0
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"the number of quadrature points must be a whole number, got {n!r}")
    n = int(n)
    if not 1 <= n <= MAX_POINTS:
        raise ValueError(f"the number of quadrature points must be in 1..{MAX_POINTS}, got {n}")
    if n == 1:
        z = np.zeros(1)
        w = np.ones(1)
    else:
        z, w = roots_hermitenorm(n)
        z = np.asarray(z, dtype=float)
        # roots_hermitenorm's weights integrate exp(-z^2/2): divide by sqrt(2 pi) for phi.
        w = np.asarray(w, dtype=float) / np.sqrt(2.0 * np.pi)
        # The rule is symmetric in exact arithmetic; enforce it so odd moments vanish exactly.
        z = 0.5 * (z - z[::-1])
        w = 0.5 * (w + w[::-1])
        w = w / w.sum()
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    logw_adapt = logw + 0.5 * z * z + 0.5 * np.log(2.0 * np.pi)
    for a in (z, w, logw, logw_adapt):
        a.setflags(write=False)
    return GHRule(z, w, logw, logw_adapt)
