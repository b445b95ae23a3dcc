"""``glmer(..., nagq=0)``: lme4's fast first stage, the fixed effects inside PIRLS.

With ``nagq=0`` (lme4's ``nAGQ = 0``) only the covariance parameters ``theta`` (and a family's
dispersion) are optimized. For each ``theta`` the fixed effects ``beta`` join the random effects
``u`` in the penalized iteratively reweighted least squares (lme4's ``pwrssUpdate`` with
``beta`` in the system): ``(beta*, u*)`` maximize the penalized log-likelihood

    ``sum_i l_i(X beta + Z Lambda(theta) u + offset) - |u|^2 / 2``

jointly, and the objective is the Laplace log-likelihood (:class:`mixedmodels.laplace.
LaplaceObjective`) at ``(beta*(theta), theta)``. ``beta*`` is not the Laplace maximizer over
``beta``, so the fit is quick and slightly off the Laplace (``nagq=1``) optimum; its
log-likelihood is never above the ``nagq=1`` one.

The Newton system of the joint mode is solved by block elimination on the blocked sparse factor
of ``A = Lambda' Z' W Z Lambda + I`` (:mod:`mixedmodels.linalg`; no dense ``q x q`` matrix):
with ``C = Lambda' Z' W X`` (``q x p``), ``S = X' W X - C' A^{-1} C`` (``p x p``, lme4's
``RX' RX``) gives the step in ``beta``, then one solve with ``A`` the step in ``u``. The
gradient in ``theta`` is analytic: the Laplace gradient's ``beta`` part times ``d beta* /
d theta`` (implicit differentiation of the joint mode, the same block solve) plus its ``theta``
part.

The fixed effects' covariance is lme4's for nAGQ = 0: ``S^{-1}``, the inverse of the joint
information conditional on ``theta`` (``chol2inv(RX)``; for probit and cloglog with the
expected information, lme4's PIRLS weights). For Gamma, inverse Gaussian and negative binomial
the dispersion is estimated jointly with ``theta`` by maximum likelihood (as for ``nagq=1``;
lme4 has only a moment estimate), and ``S`` includes it.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .dispersion import with_dispersion
from .glmm_frame import GlmerFrame
from .glmm_objective import _default_start
from .glmm_optimize import GlmerOptSummary, check_optimum, optimize_glmer
from .laplace import LaplaceObjective

__all__ = ["Nagq0Objective", "fit_nagq0", "joint_mode"]

#: The joint PIRLS stops when a Newton step would raise the penalized log-likelihood by less
#: than this (the mode is then exact to ~1e-9 relative, the Laplace value to ~1e-16).
JOINT_TOL = 1e-18
JOINT_MAXIT = 100
#: Most chord steps (with the previous evaluation's factor) before Newton steps.
CHORD_MAXIT = 30


def _solve_columns(F, M: np.ndarray) -> np.ndarray:
    """``A^{-1} M`` for a ``q x p`` matrix on the blocked factor, all columns at once (the
    matrix form of :meth:`mixedmodels.linalg.BlockedFactor.solve`)."""
    B = F.blocks
    k1, q1, ncol = B.k1, B.q1, M.shape[1]
    y1 = np.einsum("gij,gjc->gic", F.L11inv, M[:q1].reshape(B.l1, k1, ncol)).reshape(q1, ncol)
    if F.LRR is None:
        return np.einsum("gji,gjc->gic", F.L11inv, y1.reshape(B.l1, k1, ncol)).reshape(q1, ncol)
    y2 = sla.solve_triangular(F.LRR, M[q1:] - F.U.T @ y1, lower=True, check_finite=False)
    x2 = sla.solve_triangular(F.LRR, y2, lower=True, trans="T", check_finite=False)
    r1 = (y1 - F.U @ x2).reshape(B.l1, k1, ncol)
    x1 = np.einsum("gji,gjc->gic", F.L11inv, r1).reshape(q1, ncol)
    return np.vstack([x1, x2])


class _LaplaceAtMode(LaplaceObjective):
    """The Laplace objective told the conditional mode of ``u`` (and its factor) instead of
    finding it: at the joint mode, ``u*`` is also the mode given ``beta*``, so its PIRLS would
    only confirm it at the cost of one more factorization."""

    _given = None

    def _pirls(self, eta0, z1, zr, u0, F0=None):
        if self._given is not None:
            given, self._given = self._given, None
            return given
        return super()._pirls(eta0, z1, zr, u0, F0)


def _schur(B, z1, zr, X, w, F):
    """``C = Lambda' Z' W X``, ``A^{-1} C`` and ``S = X' W X - C' A^{-1} C`` for weights ``w``
    (``F`` the factor of ``A`` with the same weights)."""
    C = np.empty((B.q, X.shape[1]))
    for j in range(X.shape[1]):
        C[:, j] = B.tmult(z1, zr, w * X[:, j])
    AiC = _solve_columns(F, C)
    S = X.T @ (w[:, None] * X) - C.T @ AiC
    return AiC, 0.5 * (S + S.T)


def joint_mode(lap: LaplaceObjective, family, theta: np.ndarray, beta0: np.ndarray,
               u0: np.ndarray, prev: tuple | None = None):
    """The joint conditional mode of ``(beta, u)`` at ``theta``, by Newton steps with step
    halving (PIRLS with the fixed effects in the system).

    Parameters
    ----------
    lap : LaplaceObjective
        Supplies the model frame and the blocked structure of ``Z Lambda``.
    family : Family
        With its dispersion set, for families that have one.
    theta : ndarray (ntheta,)
    beta0 : ndarray (p,), u0 : ndarray (q,)
        Starting values (the previous evaluation's mode).
    prev : tuple, optional
        ``(F, AiC, S)`` of the previous evaluation: chord steps with them first.

    Returns
    -------
    beta : ndarray (p,)
    u : ndarray (q,)
    parts : tuple
        ``(Ts, z1, zr, eta, W, F, AiC, S)`` at the mode: the covariance factors, the rows of
        ``Z Lambda``, the linear predictor, the observed working weights, the factor of ``A``,
        ``A^{-1} C`` and the Schur complement ``S`` (what the gradient and the SEs need).

    Raises
    ------
    numpy.linalg.LinAlgError
        If a weighted cross-product is not positive definite.
    """
    fr = lap.frame
    X, y, m, c = fr.ms.X, fr.y, fr.m, fr.const
    off = 0.0 if fr.ms.offset is None else fr.ms.offset
    B = lap.blocks
    Ts = lap.layout.factors(theta)
    z1, zr = B.ztilde(Ts)
    beta, u = np.array(beta0, dtype=float), np.array(u0, dtype=float)
    eta = X @ beta + off + B.mult(z1, zr, u)
    f = float(np.sum(family.loglik_rows(eta, y, m, c)) - 0.5 * u @ u)

    def step(F, AiC, S, d1):
        gu = B.tmult(z1, zr, d1) - u
        gb = X.T @ d1
        db = sla.solve(S, gb - AiC.T @ gu, assume_a="pos", check_finite=False)
        du = F.solve(gu) - AiC @ db
        small = (np.max(np.abs(du), initial=0.0) < 1e-11 * (1.0 + np.max(np.abs(u), initial=0.0))
                 and np.max(np.abs(db), initial=0.0)
                 < 1e-11 * (1.0 + np.max(np.abs(beta), initial=0.0)))
        return du, db, float(gu @ du + gb @ db), small

    if prev is not None:
        # Chord steps with the previous evaluation's factor and Schur complement (a nearby
        # theta): each costs one solve instead of a factorization, and they bring the mode
        # to nearly the tolerance, so that usually one factorization -- the one the
        # log-determinant and the gradient need anyway -- confirms convergence.
        F0, AiC0, S0 = prev
        last = np.inf
        for _ in range(CHORD_MAXIT):
            d1 = family.derivs(eta, y, m, order=2)[0]
            du, db, dec, small = step(F0, AiC0, S0, d1)
            if dec < JOINT_TOL or small or not np.isfinite(dec):
                break
            un, bn = u + du, beta + db
            etan = eta + X @ db + B.mult(z1, zr, du)
            f_new = float(np.sum(family.loglik_rows(etan, y, m, c)) - 0.5 * un @ un)
            if not f_new >= f - 1e-12 * abs(f):
                break
            beta, u, eta, f = bn, un, etan, f_new
            if dec > 0.3 * last:  # slow contraction: Newton does better from here
                break
            last = dec
    for _ in range(JOINT_MAXIT):
        d1, d2 = family.derivs(eta, y, m, order=2)
        W = -d2
        F = B.factor(z1, zr, W)
        AiC, S = _schur(B, z1, zr, X, W, F)
        du, db, dec, small = step(F, AiC, S, d1)
        if dec < JOINT_TOL or small:
            break
        deta = X @ db + B.mult(z1, zr, du)
        t = 1.0
        while True:
            un, bn, etan = u + t * du, beta + t * db, eta + t * deta
            f_new = float(np.sum(family.loglik_rows(etan, y, m, c)) - 0.5 * un @ un)
            if f_new >= f - 1e-12 * abs(f) or t < 1e-10:
                break
            t *= 0.5
        if not np.isfinite(f_new):
            raise FloatingPointError("the joint PIRLS left the family's range")
        beta, u, eta, f = bn, un, etan, f_new
    return beta, u, (Ts, z1, zr, eta, W, F, AiC, S)


class Nagq0Objective:
    """The nAGQ = 0 log-likelihood as a function of ``theta`` alone (``beta`` profiled out by
    the joint PIRLS), with its analytic gradient; the optimizers of
    :mod:`mixedmodels.glmm_optimize` work on it as on any objective.

    Parameters
    ----------
    frame : GlmerFrame
    beta0 : ndarray (p,)
        The first joint PIRLS's starting fixed effects (a GLM fit).

    Attributes
    ----------
    beta : ndarray (p,)
        The fixed effects at the last kept evaluation's joint mode.
    """

    def __init__(self, frame: GlmerFrame, beta0: np.ndarray):
        self.frame, self.family, self.nagq = frame, frame.family, 0
        self.lap = _LaplaceAtMode(frame)
        self.p = 0                       # the optimizer's parameters: theta (then dispersion)
        self.pfix = frame.ms.p
        self.nparams = self.lap.ntheta
        self._beta_start = np.asarray(beta0, dtype=float).copy()
        self.reset()
        self.nevals = 0

    def lower(self) -> np.ndarray:
        """Lower bounds of ``theta`` (0 for the factors' diagonals)."""
        return np.asarray(self.lap.layout.lower, dtype=float).copy()

    def reset(self) -> None:
        """Back to the GLM's fixed effects and ``u = 0`` (after a failed evaluation)."""
        self.beta = self._beta_start.copy()
        self.u = np.zeros(self.lap.q)
        self._prev = None
        self.lap.reset()

    def evaluate(self, params, gradient: bool = True, nagq=None, keep: bool = True, **kw):
        """The Laplace log-likelihood at ``(beta*(theta), theta)`` and its total gradient in
        ``theta``.

        Parameters
        ----------
        params : ndarray (ntheta,)
        gradient : bool
        nagq : ignored
        keep : bool
            Keep the joint mode as the next evaluation's start.

        Returns
        -------
        loglik : float
        grad : ndarray (ntheta,) or None
        """
        theta = np.asarray(params, dtype=float)
        lap, fam = self.lap, self.family
        beta, u, parts = joint_mode(lap, fam, theta, self.beta, self.u, self._prev)
        Ts, z1, zr, eta, W, F, AiC, S = parts
        # The Laplace value (and its partial derivatives) at the joint mode, which is also
        # the mode of u given beta*.
        lap.family = fam
        lap._given = (u, eta, F)
        ll, g = lap.evaluate(np.concatenate([beta, theta]), gradient=gradient, keep=False)
        self.nevals += 1
        if keep:
            self.beta, self.u, self._prev = beta, u, (F, AiC, S)
        if not gradient:
            return ll, None
        p = self.pfix
        g_beta, g_theta = g[:p], g[p:].copy()
        # d beta* / d theta_r from the joint mode's equations g(beta, u; theta) = 0:
        # K (d beta, d u) = d g / d theta_r, K the joint information (block solve as in PIRLS).
        fr = self.frame
        X = fr.ms.X
        d1 = fam.derivs(eta, fr.y, fr.m, order=2)[0]
        B = lap.blocks
        # Transpose first: each theta_r then costs one solve with S, and none with A.
        a = sla.solve(S, g_beta, assume_a="pos", check_finite=False)       # S^{-1} g_beta
        r_u = -(AiC @ a)                                                   # the u coefficients
        for r, e in enumerate(lap.layout.entries):
            ti, ra, cb = e.term, e.row, e.col
            t = lap.terms[ti]
            za = t.Z[:, ra]
            col = lap.offs[ti] + t.codes * t.k + cb
            Du = za * u[col]                         # d eta / d theta_r at fixed (beta, u)
            WDu = W * Du
            rhs_b = -(X.T @ WDu)
            rhs_u = -B.tmult(z1, zr, WDu)
            # (d Lambda / d theta_r)' Z' d1: level g's column cb gets sum_{i in g} za_i d1_i.
            rhs_u[lap.offs[ti] + np.arange(t.nlevels) * t.k + cb] += np.bincount(
                t.codes, za * d1, t.nlevels)
            g_theta[r] += float(a @ rhs_b + r_u @ rhs_u)
        return ll, g_theta


def _fixef_information(lap: LaplaceObjective, family, beta, u, theta) -> np.ndarray:
    """lme4's ``RX' RX`` at the joint mode: ``S`` with its PIRLS weights (the expected
    information for a non-canonical link, the observed one otherwise)."""
    fr = lap.frame
    X = fr.ms.X
    off = 0.0 if fr.ms.offset is None else fr.ms.offset
    B = lap.blocks
    z1, zr = B.ztilde(lap.layout.factors(theta))
    eta = X @ beta + off + B.mult(z1, zr, u)
    if family.canonical:
        w = -family.derivs(eta, fr.y, fr.m, order=2)[1]
    else:
        w = -family.info_derivs(eta, fr.y, fr.m)[0]
    F = B.factor(z1, zr, w)
    return _schur(B, z1, zr, X, w, F)[1]


def fit_nagq0(frame: GlmerFrame, start: np.ndarray | None = None):
    """Fit by nAGQ = 0: maximize the Laplace log-likelihood at the joint mode over ``theta``.

    Parameters
    ----------
    frame : GlmerFrame
    start : ndarray, optional
        ``(beta, theta[, log dispersion])`` as ``glmer(start=...)``: ``beta`` starts the first
        joint PIRLS, the rest the optimizer.

    Returns
    -------
    obj : LaplaceObjective
        The Laplace objective of ``(beta, theta[, log dispersion])`` (the result reads the
        conditional modes from it).
    opt : GlmerOptSummary
        ``final`` is ``(beta*, theta[, log dispersion])``; ``hessian`` is block diagonal:
        ``S`` (lme4's ``RX' RX``, whose inverse is the fixed effects' covariance) and the
        negative Hessian of the nAGQ = 0 objective in ``theta`` (and the dispersion).
    """
    p = frame.ms.p
    full_obj = with_dispersion(LaplaceObjective(frame), frame)
    if start is None:
        start = _default_start(frame, full_obj)
    start = np.asarray(start, dtype=float)
    obj = with_dispersion(Nagq0Objective(frame, start[:p]), frame)
    opt = optimize_glmer(obj, start[p:])
    opt = check_optimum(obj, opt)
    if not opt.converged:
        alt = check_optimum(obj, optimize_glmer(obj, opt.final))
        if alt.loglik >= opt.loglik - 1e-9:
            opt = alt
    x = opt.final
    if getattr(obj, "has_dispersion", False):
        obj._set_dispersion(float(x[-1]))
    # Leave the joint mode at the final point.
    ll, _ = obj.evaluate(x, gradient=False)
    ntheta = obj.lap.ntheta
    theta = x[:ntheta]
    S = _fixef_information(obj.lap, obj.family, obj.beta, obj.u, theta)
    k = len(x)
    H = np.zeros((p + k, p + k))
    H[:p, :p] = S
    H[p:, p:] = opt.hessian
    final = np.concatenate([obj.beta, x])
    grad = np.concatenate([np.zeros(p), opt.gradient])
    out = GlmerOptSummary(initial=start, final=final, loglik=float(ll),
                          optimizer=opt.optimizer + " (nAGQ=0: beta in PIRLS)",
                          nevals=obj.nevals, newton_steps=opt.newton_steps, message=opt.message,
                          gradient=grad, hessian=H, newton_decrement=opt.newton_decrement,
                          converged=opt.converged, convergence_message=opt.convergence_message)
    return full_obj, out
