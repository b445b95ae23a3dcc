"""Pieces shared by fitted mixed models: optimizer metadata and the convergence check.

:class:`OptSummary` is the fit's small record of how the optimizer went (like MixedModels.jl's
``OptSummary``); :func:`check_convergence` is lme4's ``checkConv`` in spirit: finite-difference
gradient and Hessian of the objective at the optimum, reported in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .boundary import probe_directions, probe_inside

__all__ = ["ConvergenceWarning", "OptSummary", "check_convergence"]


class ConvergenceWarning(UserWarning):
    """The optimizer's answer failed a check of the optimum (LMM and GLMM alike)."""


@dataclass
class OptSummary:
    """How the optimization went.

    Attributes
    ----------
    optimizer : str
        Name of the method, e.g. ``"L-BFGS-B (scipy)"``.
    initial : ndarray
        Starting values of the parameters (theta for an LMM).
    final : ndarray
        Values at the optimum.
    lower : ndarray
        Lower bounds (``0`` for diagonal elements of the relative covariance factor).
    initial_objective, final_objective : float
        The objective (deviance or REML criterion) at start and at the optimum.
    evaluations : int
        Number of objective evaluations during the optimization (the convergence check's
        extra evaluations are not counted).
    return_message : str
        The optimizer's own message.
    converged : bool
        The outcome of :func:`check_convergence`.
    convergence_message : str
        Plain-words result of the convergence check.
    max_grad : float
        Largest scaled gradient component at the optimum (lme4's criterion).
    history : list of (ndarray, float)
        Every (parameters, objective) pair evaluated, in order.
    seconds : float
        Wall-clock time of the optimization.
    """

    optimizer: str
    initial: np.ndarray
    final: np.ndarray
    lower: np.ndarray
    initial_objective: float
    final_objective: float
    evaluations: int
    return_message: str
    converged: bool = True
    convergence_message: str = ""
    max_grad: float = 0.0
    history: list[tuple[np.ndarray, float]] = field(default_factory=list, repr=False)
    seconds: float = 0.0

    # The GLMM record's names for the same things (GlmerOptSummary), so code reading
    # ``fit.optsum`` works on both kinds of fit.
    @property
    def nevals(self) -> int:
        """Objective evaluations (``evaluations``)."""
        return self.evaluations

    @property
    def message(self) -> str:
        """The optimizer's message (``return_message``)."""
        return self.return_message

    def __str__(self) -> str:
        return (
            f"optimizer: {self.optimizer}\n"
            f"initial parameters: {np.array2string(np.asarray(self.initial), precision=6)}  "
            f"objective {self.initial_objective:.6f}\n"
            f"final parameters:   {np.array2string(np.asarray(self.final), precision=6)}  "
            f"objective {self.final_objective:.6f}\n"
            f"evaluations: {self.evaluations}; {self.seconds * 1000:.1f} ms; optimizer says: {self.return_message}\n"
            f"convergence: {self.convergence_message}"
        )


def check_convergence(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    lower: np.ndarray,
    tol: float = 2e-3,
    boundary_tol: float = 1e-4,
) -> tuple[bool, str, float]:
    """Check an optimum with a finite-difference gradient and Hessian (lme4's ``checkConv``).

    Components at their lower bound whose gradient points out of the feasible region are
    ignored (a boundary optimum is a legitimate optimum). The remaining gradient is scaled
    by the Hessian (``H^{-1} g``, the Newton step) and compared with ``tol``, as lme4 does.

    Returns
    -------
    converged : bool
    message : str
        Plain words, e.g. "converged: the gradient at the optimum is negligible".
    max_grad : float
        Largest absolute scaled gradient component.
    """
    x = np.asarray(x, dtype=float)
    m = len(x)
    h = 1e-4 * np.maximum(1.0, np.abs(x))
    f0 = fun(x)
    at_bound = np.isfinite(lower) & (x - lower < boundary_tol)
    grad = np.zeros(m)
    fp = np.zeros(m)
    fm = np.full(m, np.nan)
    for i in range(m):
        e = np.zeros(m)
        e[i] = h[i]
        fp[i] = fun(x + e)
        if at_bound[i]:
            # One-sided difference: the objective is not defined below the bound.
            grad[i] = (fp[i] - f0) / h[i]
        else:
            fm[i] = fun(x - e)
            grad[i] = (fp[i] - fm[i]) / (2 * h[i])
    # The boundary rule (see mixedmodels.boundary): a parameter at its bound with a
    # non-negative one-sided gradient is at an optimum only if the objective also rises when it
    # moves inside -- the criterion is flat to first order at theta_i = 0, so the gradient
    # alone cannot tell (negative curvature there means the optimum is inside).
    held = np.flatnonzero(at_bound & (grad >= 0))
    inside = probe_inside(fun, x, held, f0)
    if inside is not None:
        gain = f0 - inside[1]
        return (False, f"may not have converged: a parameter stopped on its bound, but the objective falls by "
                f"{gain:.3g} when it moves inside (negative curvature at the bound)", float(gain))
    free = ~(at_bound & (grad >= 0))
    if not np.any(free):
        return True, "converged at the boundary: every parameter at its bound has a gradient pointing outward", 0.0
    idx = np.flatnonzero(free)
    # f(x + h_i e_i) from the gradient step is reused, so the Hessian costs one evaluation per
    # pair: H_ij ~ (f(x + e_i + e_j) - f(x + e_i) - f(x + e_j) + f(x)) / (h_i h_j).
    f_plus = {i: fp[i] for i in idx}
    H = np.zeros((len(idx), len(idx)))
    for a, i in enumerate(idx):
        ei = np.zeros(m)
        ei[i] = h[i]
        if at_bound[i]:
            e2 = ei.copy()
            e2[i] = 2 * h[i]
            H[a, a] = (fun(x + e2) - 2 * f_plus[i] + f0) / h[i] ** 2
        else:
            H[a, a] = (f_plus[i] - 2 * f0 + fm[i]) / h[i] ** 2
        for b in range(a + 1, len(idx)):
            j = idx[b]
            ej = np.zeros(m)
            ej[j] = h[j]
            H[a, b] = H[b, a] = (fun(x + ei + ej) - f_plus[i] - f_plus[j] + f0) / (h[i] * h[j])
    g = grad[idx]
    try:
        np.linalg.cholesky(H)
        scaled = np.linalg.solve(H, g)
        max_grad = float(np.max(np.abs(scaled)))
        if max_grad < tol:
            return True, f"converged: the scaled gradient at the optimum is negligible (max {max_grad:.2g} < {tol:g})", max_grad
        return (False, f"may not have converged: the scaled gradient at the optimum is {max_grad:.2g}, "
                f"above the tolerance {tol:g}", max_grad)
    except np.linalg.LinAlgError:
        max_grad = float(np.max(np.abs(g)))
        # A flat direction (a poorly determined parameter) is an optimum; a direction along
        # which the objective falls is not (a saddle point).
        w, V = np.linalg.eigh(H)
        neg = V[:, w < 0]
        full = np.zeros((m, neg.shape[1]))
        full[idx] = neg
        lower_ = np.asarray(lower, dtype=float)
        saddle = probe_directions(fun, x, full, f0, project=lambda z: np.maximum(z, lower_)) if neg.size else None
        if saddle is not None:
            gain = f0 - saddle[1]
            return (False, f"may not have converged: the Hessian has negative curvature and the objective "
                    f"falls by {gain:.3g} along it (a saddle point, not a minimum)", float(gain))
        if max_grad < tol:
            return (True, "converged, but the Hessian at the optimum is not positive definite: "
                    "some parameters are poorly determined", max_grad)
        return (False, f"may not have converged: the Hessian at the optimum is not positive definite "
                f"and the gradient is {max_grad:.2g}", max_grad)
