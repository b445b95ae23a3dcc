"""Pieces shared by fitted mixed models: optimizer metadata and the convergence check.

:class:`OptSummary` is the fit's small record of how the optimizer went, one class for the LMM
and the GLMM (like MixedModels.jl's ``OptSummary``, with lme4's field names);
:func:`check_convergence` is lme4's ``checkConv`` in spirit: finite-difference gradient and
Hessian of the objective at the optimum, reported in plain words.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .boundary import probe_directions, probe_inside

__all__ = ["ConvergenceWarning", "OptSummary", "check_convergence"]


class ConvergenceWarning(UserWarning):
    """The optimizer's answer failed a check of the optimum (LMM and GLMM alike)."""


#: The names the two fitters' records used before they became one class, accepted by
#: :class:`OptSummary` (as keywords and attributes) so that older code keeps working.
_OLD_NAMES = {"evaluations": "feval", "nevals": "feval", "return_message": "message",
              "initial_objective": "finitial", "final_objective": "fval"}


@dataclass(init=False, eq=False)
class OptSummary:
    """How the optimization went: one record for LMM and GLMM fits (``fit.optsum``).

    Named as lme4's ``optinfo`` and optimizer results (``optimizer``, ``feval``, ``fval``,
    ``par``, ``conv``, ``message``) and MixedModels.jl's ``OptSummary`` (``initial``,
    ``final``, ``finitial``) where they have a name for it. The older names
    (``evaluations``/``nevals``, ``return_message``, ``initial_objective``,
    ``final_objective``) are accepted as keywords and read as attributes.

    Parameters
    ----------
    optimizer : str
        Name of the method, e.g. ``"L-BFGS-B (scipy)"`` or ``"BHHH + Newton"``.
    initial, final : ndarray
        Parameters at the start and at the optimum: theta for an LMM, ``(beta, theta)`` (then
        ``log(dispersion)`` where the family has one) for a GLMM.
    lower : ndarray, optional
        Lower bounds of the parameters (0 on the diagonals of the covariance factors).
    finitial, fval : float
        The objective at the start and at the optimum: the deviance (ML) or REML criterion of
        an LMM, ``-2 loglik`` of a GLMM (lme4's ``fval``).
    loglik : float, optional
        Instead of ``fval``: the log-likelihood at the optimum (``fval = -2 loglik``).
    feval : int
        Objective evaluations during the optimization (lme4's ``feval``; the convergence
        check's extra evaluations are not counted).
    message : str
        The optimizer's own message.
    converged : bool
        The verdict of the check of the optimum (False until it has been checked).
    convergence_message : str
        That check's result in plain words.
    max_grad : float
        Largest scaled gradient component at the optimum (LMM: lme4's criterion).
    gradient, hessian : ndarray, optional
        GLMM: gradient and negative Hessian of the log-likelihood at the optimum.
    newton_steps : int
        GLMM: Newton polishing steps taken after the quasi-Newton phase.
    newton_decrement : float
        GLMM: ``g' H^-1 g / 2``, the log-likelihood a further Newton step would gain.
    history : list of (ndarray, float), optional
        LMM: every (parameters, objective) pair evaluated, in order.
    seconds : float
        Wall-clock time of the optimization (0 where not timed).

    Raises
    ------
    TypeError
        For a keyword that is neither a field nor one of the older names.
    """

    # The fields (a dataclass, so that ``dataclasses.replace`` copies a record with changes).
    optimizer: str
    initial: np.ndarray | None
    final: np.ndarray | None
    lower: np.ndarray | None
    finitial: float
    fval: float
    feval: int
    message: str
    converged: bool
    convergence_message: str
    max_grad: float
    gradient: np.ndarray | None
    hessian: np.ndarray | None
    newton_steps: int
    newton_decrement: float
    history: list
    seconds: float

    def __init__(self, optimizer: str = "", initial: np.ndarray | None = None,
                 final: np.ndarray | None = None, *, lower: np.ndarray | None = None,
                 finitial: float = np.nan, fval: float = np.nan, loglik: float | None = None,
                 feval: int = 0, message: str = "", converged: bool = False,
                 convergence_message: str = "", max_grad: float = np.nan,
                 gradient: np.ndarray | None = None, hessian: np.ndarray | None = None,
                 newton_steps: int = 0, newton_decrement: float = np.nan,
                 history: list | None = None, seconds: float = 0.0, **old_names) -> None:
        given = dict(finitial=finitial, fval=fval, feval=feval, message=message)
        for name, value in old_names.items():
            if name not in _OLD_NAMES:
                raise TypeError(f"OptSummary() got an unexpected keyword argument {name!r}")
            given[_OLD_NAMES[name]] = value
        self.optimizer = optimizer
        self.initial = initial
        self.final = final
        self.lower = lower
        self.finitial = float(given["finitial"])
        self.fval = float(given["fval"])
        if loglik is not None:
            self.loglik = loglik
        self.feval = int(given["feval"])
        self.message = str(given["message"])
        self.converged = bool(converged)
        self.convergence_message = convergence_message
        self.max_grad = float(max_grad)
        self.gradient = gradient
        self.hessian = hessian
        self.newton_steps = int(newton_steps)
        self.newton_decrement = newton_decrement
        self.history = [] if history is None else history
        self.seconds = float(seconds)

    # ---- derived and older names ------------------------------------------------------------

    @property
    def loglik(self) -> float:
        """``-fval / 2``: the log-likelihood at the optimum (an LMM fitted by REML: the REML
        criterion's, as lme4's ``logLik``)."""
        return -0.5 * self.fval

    @loglik.setter
    def loglik(self, value: float) -> None:
        self.fval = -2.0 * float(value)

    @property
    def par(self) -> np.ndarray:
        """The parameters at the optimum (``final``; lme4's optimizer result ``par``)."""
        return self.final

    @property
    def conv(self) -> int:
        """lme4's convergence code: 0 when the optimum passed the check, 1 otherwise."""
        return 0 if self.converged else 1

    def __getattr__(self, name: str):
        # Only called for names not found the ordinary way: the older names.
        if name in _OLD_NAMES:
            return getattr(self, _OLD_NAMES[name])
        raise AttributeError(f"'OptSummary' object has no attribute {name!r}")

    # ---- display ----------------------------------------------------------------------------

    def __repr__(self) -> str:
        return (f"OptSummary(optimizer={self.optimizer!r}, feval={self.feval}, "
                f"fval={self.fval:.6f}, converged={self.converged})")

    def __str__(self) -> str:
        def vec(x):
            return np.array2string(np.asarray(x, dtype=float), precision=6)

        lines = [f"optimizer: {self.optimizer}"]
        if self.initial is not None:
            start = f"initial parameters: {vec(self.initial)}"
            lines.append(start + (f"  objective {self.finitial:.6f}"
                                  if np.isfinite(self.finitial) else ""))
        lines.append(f"final parameters:   {vec(self.final)}  objective {self.fval:.6f} "
                     f"(logLik {self.loglik:.6f})")
        more = f"; Newton steps: {self.newton_steps}" if self.newton_steps else ""
        timing = f"; {self.seconds * 1000:.1f} ms" if self.seconds else ""
        lines.append(f"evaluations: {self.feval}{more}{timing}; optimizer says: {self.message}")
        lines.append(f"convergence: {self.convergence_message}")
        return "\n".join(lines)


def check_convergence(
    fun: Callable[[np.ndarray], float],
    x: np.ndarray,
    lower: np.ndarray,
    tol: float = 2e-3,
    boundary_tol: float = 1e-4,
    f0: float | None = None,
    gradient: Callable[[np.ndarray], np.ndarray | None] | None = None,
    derivatives: tuple[np.ndarray, np.ndarray] | None = None,
    equivalents: Callable[[np.ndarray, np.ndarray], list[np.ndarray]] | None = None,
) -> tuple[bool, str, float]:
    """Check an optimum with a finite-difference gradient and Hessian (lme4's ``checkConv``).

    Components at their lower bound whose gradient points out of the feasible region are
    ignored (a boundary optimum is a legitimate optimum). The remaining gradient is scaled
    by the Hessian (``H^{-1} g``, the Newton step) and compared with ``tol``, as lme4 does.

    Parameters
    ----------
    fun : callable
        The objective, ``fun(x) -> float``.
    x : ndarray (m,)
        The optimizer's answer.
    lower : ndarray (m,)
        Lower bounds (``-inf`` where none).
    tol, boundary_tol : float
        Tolerance of the scaled gradient; distance from a bound that counts as on it.
    f0 : float, optional
        ``fun(x)``, when the caller already has it (saves an evaluation).
    gradient : callable, optional
        The objective's exact gradient, ``gradient(x) -> ndarray (m,)`` or None where it
        does not apply. Where it applies at ``x`` and no parameter is on its bound, the check
        uses it, and the Hessian from its forward differences (``m`` gradients instead of
        ``m (m + 3) / 2`` objective values); otherwise finite differences of ``fun``.
    derivatives : (ndarray (m,), ndarray (m, m)), optional
        The exact gradient at ``x`` and a Hessian the caller already has (from forward
        differences of the exact gradient near ``x``); used in place of ``gradient`` when no
        parameter is on its bound.
    equivalents : callable, optional
        ``equivalents(x, indices)``: other parametrizations of the same model as ``x`` with
        the parameters ``indices`` on their bound (for a covariance factor, the mirror images
        of :meth:`mixedmodels.covariance.CovarianceLayout.flipped_at_zero`); the boundary
        rule probes inside from each of them as well.

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
    f0 = fun(x) if f0 is None else float(f0)
    at_bound = np.isfinite(lower) & (x - lower < boundary_tol)
    if derivatives is not None and not at_bound.any():
        return _scaled_gradient_verdict(fun, x, lower, f0, np.arange(m), np.asarray(derivatives[0], dtype=float),
                                        np.asarray(derivatives[1], dtype=float), tol)
    if gradient is not None and not at_bound.any():
        exact = _exact_gradient_and_hessian(gradient, x, h)
        if exact is not None:
            return _scaled_gradient_verdict(fun, x, lower, f0, np.arange(m), exact[0], exact[1], tol)
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
    for mirror in ([] if inside is not None or equivalents is None else equivalents(x, np.flatnonzero(at_bound))):
        inside = probe_inside(fun, mirror, np.flatnonzero(at_bound), f0)
        if inside is not None:
            break
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
    return _scaled_gradient_verdict(fun, x, lower, f0, idx, grad[idx], H, tol)


def _exact_gradient_and_hessian(gradient, x: np.ndarray, h: np.ndarray,
                                g0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
    """The gradient at ``x`` (``g0`` when the caller has it) and the Hessian from its forward
    differences (symmetrized); None where the gradient does not apply at one of the points."""
    g0 = gradient(x) if g0 is None else np.asarray(g0, dtype=float)
    if g0 is None or not np.all(np.isfinite(g0)):
        return None
    m = len(x)
    H = np.empty((m, m))
    for i in range(m):
        xi = x.copy()
        xi[i] += h[i]
        gi = gradient(xi)
        if gi is None or not np.all(np.isfinite(gi)):
            return None
        H[:, i] = (gi - g0) / h[i]
    return np.asarray(g0, dtype=float), 0.5 * (H + H.T)


def _scaled_gradient_verdict(fun, x, lower, f0, idx, g, H, tol) -> tuple[bool, str, float]:
    """lme4's test on the free parameters ``idx``: the Newton step ``H^{-1} g`` against ``tol``;
    a Hessian that is not positive definite is probed for a direction of descent."""
    m = len(x)
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
