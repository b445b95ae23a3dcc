"""The boundary rule: a fit may stop on a bound only when the objective says so.

A variance parameter at its bound (a diagonal element of a relative covariance factor at 0, or
a GLMM's standard deviation at 0) is a legitimate optimum only if the objective does not fall
when the parameter moves inside. The first derivative is no guide there: the profiled
deviance of a scalar term depends on ``theta`` through ``theta^2``, so it is flat to first
order at ``theta = 0`` whatever the optimum. A gradient method started at 1 can walk onto the
bound and stop with a zero gradient although the objective has negative curvature there and
the optimum is inside (``near_singular`` in the lme4 references: lme4 finds ``theta = 0.0694``
where a bare bounded quasi-Newton stops at 0).

:func:`probe_inside` is the test, used by both fitters and by their convergence checks: from
the bound, step a few sizes inside along each bounded parameter (and along all of them
together) and report the best point if the objective falls by more than a tolerance there.
:func:`probe_directions` does the same along directions of negative curvature of an
interior point (a saddle is not an optimum).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

__all__ = ["STEPS", "probe_inside", "probe_directions", "minimize_bounded"]

# Steps inside the bound, on the scale of a relative SD (theta) or an SD: from well inside
# the region where the deviance is quadratic in the parameter to a sizeable move.
STEPS: tuple[float, ...] = (1e-3, 1e-2, 0.05, 0.2, 0.5)


def probe_inside(fun: Callable[[np.ndarray], float], x: np.ndarray, indices: Sequence[int], f0: float,
                 tol: float = 1e-6, steps: Sequence[float] = STEPS,
                 sign: np.ndarray | None = None) -> tuple[np.ndarray, float] | None:
    """Does the objective fall when bounded parameters move inside their bound?

    Parameters
    ----------
    fun : callable
        The objective to minimize (a deviance: ``-2 log L`` or the REML criterion).
    x : ndarray
        The point on the bound.
    indices : sequence of int
        The parameters at their bound.
    f0 : float
        ``fun(x)``.
    tol : float
        A fall smaller than this (deviance units) does not count.
    steps : sequence of float
        Distances tried inside the bound.
    sign : ndarray, optional
        Direction "inside" for each parameter (+1 by default).

    Returns
    -------
    (ndarray, float) or None
        The best point found and its objective, or None if no step lowers the objective by
        more than ``tol`` (the bound is then an optimum as far as these steps can tell).
    """
    indices = [int(i) for i in indices]
    if not indices or not np.isfinite(f0):
        return None
    x = np.asarray(x, dtype=float)
    direction = np.ones(len(x)) if sign is None else np.asarray(sign, dtype=float)
    best_x, best_f = None, f0 - tol
    groups = [[i] for i in indices] + ([indices] if len(indices) > 1 else [])
    for group in groups:
        for t in steps:
            xt = x.copy()
            xt[group] = x[group] + t * direction[group]
            ft = fun(xt)
            if np.isfinite(ft) and ft < best_f:
                best_x, best_f = xt, ft
    return None if best_x is None else (best_x, float(best_f))


def probe_directions(fun: Callable[[np.ndarray], float], x: np.ndarray, directions: np.ndarray, f0: float,
                     tol: float = 1e-6, steps: Sequence[float] = STEPS,
                     project: Callable[[np.ndarray], np.ndarray] | None = None) -> tuple[np.ndarray, float] | None:
    """Does the objective fall along any of ``directions`` (columns, both signs)?

    ``project`` maps a trial point back into the feasible region (e.g. clips at lower bounds).
    Returns the best point and its objective if one is lower than ``f0 - tol``, else None.
    """
    x = np.asarray(x, dtype=float)
    best_x, best_f = None, f0 - tol
    for v in np.atleast_2d(np.asarray(directions, dtype=float).T):
        v = v / max(np.linalg.norm(v), 1e-300)
        for s in (1.0, -1.0):
            for t in steps:
                xt = x + s * t * v
                if project is not None:
                    xt = project(xt)
                ft = fun(xt)
                if np.isfinite(ft) and ft < best_f:
                    best_x, best_f = xt, ft
    return None if best_x is None else (best_x, float(best_f))


def minimize_bounded(fun: Callable[[np.ndarray], float], x0: np.ndarray, bounds: Sequence[tuple],
                     options: dict | None = None, max_restarts: int = 5, tol: float = 1e-6):
    """L-BFGS-B (scipy) with the boundary rule: a point on a bound is probed inside
    (:func:`probe_inside`) and the optimizer restarted from a better point if there is one.

    Parameters
    ----------
    fun : callable
        Objective to minimize.
    x0 : ndarray
    bounds : sequence of (lower, upper)
        ``None`` for no bound, as scipy's.
    options : dict, optional
        Passed to ``scipy.optimize.minimize``.
    max_restarts : int
    tol : float
        Smallest fall of the objective that moves the fit off a bound.

    Returns
    -------
    (ndarray, float)
        The minimizer and the objective there.
    """
    from scipy import optimize

    lo = np.array([-np.inf if b[0] is None else b[0] for b in bounds], dtype=float)
    hi = np.array([np.inf if b[1] is None else b[1] for b in bounds], dtype=float)
    x = np.asarray(x0, dtype=float)
    best = None
    for _ in range(max_restarts + 1):
        res = optimize.minimize(fun, x, method="L-BFGS-B", bounds=bounds, options=options or {})
        x, fx = np.asarray(res.x, dtype=float), float(res.fun)
        if best is not None and best[1] < fx:
            x, fx = best
        span = np.maximum(1.0, np.abs(x))
        at_lo = np.isfinite(lo) & (x - lo < 1e-4 * span)
        at_hi = np.isfinite(hi) & (hi - x < 1e-4 * span)
        idx = np.flatnonzero(at_lo | at_hi)
        if not idx.size:
            break
        sign = np.where(at_hi & ~at_lo, -1.0, 1.0)
        width = np.where(np.isfinite(hi - lo), hi - lo, np.inf)
        steps = [t for t in STEPS if t < np.min(width[idx])]

        def inside(z: np.ndarray) -> float:
            return fun(np.clip(z, lo, hi))

        best = probe_inside(inside, x, idx, fx, tol=tol, steps=steps, sign=sign)
        if best is None:
            break
        x = np.clip(best[0], lo, hi)
        best = (x, best[1])
    return x, fx
