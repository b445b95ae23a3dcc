"""Fixed-effect columns on a common scale while the GLMM optimizer runs, and back exactly.

A covariate in seconds since 1970 (values ~1e9) next to an intercept makes the fixed-effect
block of the Hessian span 18 orders of magnitude: the quasi-Newton and Newton steps lose all
precision and the fit stops at a wrong point flagged only as "not converged" (lme4 fails the
same way). The answer must not depend on a covariate's units, so ``glmer`` fits with the
columns of ``X`` centred and scaled (``X_s = (X - 1 c') / s``, centring only when there is an
intercept to absorb it) and maps the optimum back exactly:

``X beta = X_s beta_s``  with  ``beta = A beta_s``, ``A`` = the matrix of that change of basis;

the gradient and the Hessian transform as ``T^-T g`` and ``T^-T H T^-1`` with
``T = blockdiag(A, I)`` (the covariance parameters are untouched), so the estimates, their
covariance and the log-likelihood are those of the original parametrization. The objective
handed to the result speaks the original parameters (:func:`original_objective`).
Well-scaled designs (every column's RMS within ``[1e-3, 1e3]``) are fitted as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

__all__ = ["FixedScaling", "fixed_scaling", "scaled_frame", "original_objective", "to_original"]

#: Columns whose root mean square lies outside this range trigger the rescaling.
WELL_SCALED = (1e-3, 1e3)


@dataclass
class FixedScaling:
    """The change of basis ``beta = A beta_s`` of the fixed effects.

    Attributes
    ----------
    center, scale : ndarray (p,)
        ``X_s[:, j] = (X[:, j] - center[j]) / scale[j]`` (0 and 1 for the intercept).
    A : ndarray (p, p)
    A_inv : ndarray (p, p)
    """

    center: np.ndarray
    scale: np.ndarray
    A: np.ndarray
    A_inv: np.ndarray

    def T(self, nparams: int) -> np.ndarray:
        """``blockdiag(A, I)`` for a parameter vector of ``nparams`` (beta first)."""
        p = len(self.scale)
        out = np.eye(nparams)
        out[:p, :p] = self.A
        return out

    def T_inv(self, nparams: int) -> np.ndarray:
        p = len(self.scale)
        out = np.eye(nparams)
        out[:p, :p] = self.A_inv
        return out


def fixed_scaling(X: np.ndarray, xnames: list[str], force: bool = False) -> FixedScaling | None:
    """The centring and scaling of ``X``'s columns, or None when they are already well scaled.

    Parameters
    ----------
    X : ndarray (n, p)
    xnames : list of str
        ``"(Intercept)"`` marks the intercept column.
    force : bool
        Rescale even a well-scaled design.
    """
    n, p = X.shape
    if p == 0 or n == 0:
        return None
    icpt = [j for j, nm in enumerate(xnames) if nm == "(Intercept)" and np.all(X[:, j] == 1.0)]
    rms = np.sqrt(np.mean(X ** 2, axis=0))
    others = [j for j in range(p) if j not in icpt]
    if not others or (not force and np.all((rms[others] >= WELL_SCALED[0]) & (rms[others] <= WELL_SCALED[1]))):
        return None
    center = np.zeros(p)
    scale = np.ones(p)
    for j in others:
        col = X[:, j]
        c = float(np.mean(col)) if icpt else 0.0
        s = float(np.sqrt(np.mean((col - c) ** 2)))
        if not np.isfinite(s) or s == 0:
            c, s = 0.0, float(rms[j]) if rms[j] > 0 else 1.0
        center[j], scale[j] = c, s
    # X beta = X_s beta_s: beta_j = beta_s,j / s_j (j not the intercept), and the intercept
    # absorbs the centring: beta_0 = beta_s,0 - sum_j c_j beta_s,j / s_j.
    A = np.diag(1.0 / scale)
    if icpt:
        A[icpt[0], :] -= center / scale
        A[icpt[0], icpt[0]] = 1.0
    return FixedScaling(center, scale, A, np.linalg.inv(A))


def scaled_frame(frame, scaling: FixedScaling):
    """A copy of the GLMM frame with ``X`` replaced by ``X_s`` (the user's data untouched)."""
    Xs = np.ascontiguousarray((frame.ms.X - scaling.center) / scaling.scale)
    return replace(frame, ms=replace(frame.ms, X=Xs))


class _OriginalParameters:
    """Overrides making an objective built on ``X_s`` take and return original parameters."""

    def evaluate(self, params, gradient=True, nagq=None, keep=True, opg=False, **kw):
        params = np.asarray(params, dtype=float)
        Ti = self._scaling.T_inv(len(params))
        out = super().evaluate(Ti @ params, gradient=gradient, nagq=nagq, keep=keep, opg=opg, **kw)
        if opg:
            ll, g, B = out
            return ll, Ti.T @ g, Ti.T @ B @ Ti
        ll, g = out
        return ll, (None if g is None else Ti.T @ g)

    # modes(params) needs no override: every objective's modes() evaluates through
    # self.evaluate (mapped above) and reads only the covariance parameters itself.


_CLASSES: dict[type, type] = {}


def original_objective(obj, scaling: FixedScaling):
    """``obj`` (fitted on ``X_s``) as an objective of the original parameters; its class's
    behaviour is kept (``isinstance`` checks hold)."""
    cls = type(obj)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Unscaled{cls.__name__}", (_OriginalParameters, cls), {})
    obj.__class__ = _CLASSES[cls]
    obj._scaling = scaling
    return obj


def to_original(opt, scaling: FixedScaling, history: list | None = None):
    """Map an optimizer record (and the nagq history) from scaled to original parameters:
    ``x = T x_s``, ``g = T^-T g_s``, ``H = T^-T H_s T^-1`` (exact)."""
    m = len(opt.final)
    T, Ti = scaling.T(m), scaling.T_inv(m)
    opt.final = T @ np.asarray(opt.final, dtype=float)
    opt.initial = T @ np.asarray(opt.initial, dtype=float)
    if opt.gradient is not None:
        opt.gradient = Ti.T @ np.asarray(opt.gradient, dtype=float)
    if opt.hessian is not None:
        opt.hessian = Ti.T @ np.asarray(opt.hessian, dtype=float) @ Ti
    cached = getattr(opt, "_hessian_at", None)
    if cached is not None:
        opt._hessian_at = (T @ cached[0], Ti.T @ cached[1] @ Ti)
    if history:
        history[:] = [(k, ll, T @ np.asarray(x, dtype=float)) if len(x) == m else (k, ll, x)
                      for k, ll, x in history]
    return opt
