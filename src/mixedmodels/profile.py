"""Profile-likelihood confidence intervals for linear mixed models.

For one parameter at a time -- a random-effect SD or correlation, the residual SD ``sigma``, or
a fixed effect -- the deviance is minimized over all the other parameters with the focal one
held fixed. The signed square root of the increase over the minimum,

    zeta(v) = sign(v - v_hat) * sqrt(D_profiled(v) - D_min),

is approximately standard normal, so the interval at level ``1 - alpha`` is where
``|zeta| <= z_{1 - alpha/2}``. We find its ends with a root finder (``scipy.optimize.brentq``)
on the exact profile, where lme4 interpolates a spline through profile points; hence agreement
to about 1e-3, not 1e-8.

Which deviance: **the ML deviance, also for REML fits**, as lme4's ``profile.merMod`` does (it
refits a REML model by ML before profiling; a REML fit and an ML fit of the same model have the
same profile intervals). The variance parameters are on lme4's scale: standard deviations and
correlations of the random effects, and sigma (``confint(fit, oldNames = FALSE)`` names them
``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``, ``sigma``).

A standard deviation whose profile never rises by the critical amount on its way down to 0 --
in particular one estimated as 0 -- gets the lower limit 0; a correlation whose profile stays
low up to +-1 gets the limit +-1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .boundary import minimize_bounded

from .blas import single_thread_blas
from .covariance import tril_index as _tril_index

if TYPE_CHECKING:
    from .lmm import LinearMixedModel

__all__ = ["profile_confint", "Profiler"]

_LOG2PI = float(np.log(2 * np.pi))


def _psd_cholesky(S: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a positive semi-definite matrix (zero columns where singular)."""
    k = S.shape[0]
    L = np.zeros_like(S)
    scale = max(float(np.max(np.abs(np.diag(S)))), 1e-300)
    for j in range(k):
        d = S[j, j] - L[j, :j] @ L[j, :j]
        if d <= 1e-13 * scale:
            continue
        L[j, j] = np.sqrt(d)
        L[j + 1:, j] = (S[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
    return L


class Profiler:
    """The ML deviance of a fitted LMM as a function of single parameters, others optimized.

    Parameters
    ----------
    fit : LinearMixedModel
        A REML fit is refitted by ML first (see the module docstring).

    Attributes
    ----------
    names : list of str
        Variance parameters (lme4's names) then the fixed effects.
    estimates : ndarray
        ML estimates of those parameters.
    dev_min : float
        ML deviance at the optimum.
    """

    def __init__(self, fit: "LinearMixedModel"):
        self.fit = fit
        self.problem, theta = fit.ml_problem()
        pr = self.problem
        self.theta_hat = theta
        comps = pr.components(theta)
        self.dev_min = comps.deviance
        self.sigma_hat = float(np.sqrt(comps.pwrss / pr.n))
        self.n, self.p = pr.n, pr.p
        self.ks = [t.k for t in pr.terms]
        self.var_names = fit.parameter_names()
        self.fixed_names = list(fit.model.xnames)
        self.names = self.var_names + self.fixed_names
        self.nvar = len(self.var_names) - 1  # without sigma
        self.sdcor_hat = self.theta_to_sdcor(theta, self.sigma_hat)
        self.beta_hat, self.vbeta = self._beta_and_unscaled_vcov(theta)
        self.estimates = np.concatenate([self.sdcor_hat, [self.sigma_hat], self.beta_hat])
        # kind of each variance parameter: "sd" or "cor"
        self.kinds = []
        for k in self.ks:
            ri, ci = _tril_index(k)
            self.kinds += ["sd" if i == j else "cor" for i, j in zip(ri, ci)]

    # ---- parameter maps ------------------------------------------------------------------

    def theta_to_sdcor(self, theta: np.ndarray, sigma: float) -> np.ndarray:
        out = []
        for T in self.problem.split_theta(theta):
            S = sigma**2 * (T @ T.T)
            sd = np.sqrt(np.diag(S))
            ri, ci = _tril_index(T.shape[0])
            for i, j in zip(ri, ci):
                if i == j:
                    out.append(sd[i])
                else:
                    out.append(S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else 0.0)
        return np.array(out)

    def sdcor_to_theta(self, sdcor: np.ndarray, sigma: float) -> np.ndarray:
        theta, pos = [], 0
        for k in self.ks:
            ri, ci = _tril_index(k)
            m = len(ri)
            vals = sdcor[pos:pos + m]
            pos += m
            sd = np.zeros(k)
            R = np.eye(k)
            for v, i, j in zip(vals, ri, ci):
                if i == j:
                    sd[i] = v
                else:
                    R[i, j] = R[j, i] = v
            L = _psd_cholesky(R * np.outer(sd, sd)) / sigma
            theta.extend(L[ri, ci])
        return np.array(theta)

    def _beta_and_unscaled_vcov(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pr = self.problem
        _, _, LRR = pr.factor(theta, need_U=False)
        q, p = pr.qrest, pr.p
        LXX = LRR[q:q + p, q:q + p]
        cX = LRR[-1, q:q + p]
        from scipy.linalg import solve_triangular

        beta = solve_triangular(LXX, cX, lower=True, trans="T")
        Linv = solve_triangular(LXX, np.eye(p), lower=True)
        return beta, Linv.T @ Linv

    # ---- profiled deviances --------------------------------------------------------------

    def _dev_theta_sigma(self, theta: np.ndarray, sigma: float) -> float:
        try:
            c = self.problem.components(theta)
        except np.linalg.LinAlgError:
            return np.inf
        # ldW: the precision weights' Jacobian, as in LMMProblem.components (else the profile
        # is shifted off the optimum's deviance, lme4's bug with weights).
        return self.n * (_LOG2PI + 2 * np.log(sigma)) + c.ldL2 - self.problem.ldW + c.pwrss / sigma**2

    @staticmethod
    def _minimize(fun, x0: np.ndarray, bounds: list) -> tuple[np.ndarray, float]:
        if len(x0) == 0:
            return x0, fun(x0)
        # The boundary rule (mixedmodels.boundary): an SD or correlation that stops on its
        # bound is probed inside, so a profile never stops short at a false boundary optimum.
        return minimize_bounded(fun, x0, bounds, options={"ftol": 1e-13, "gtol": 1e-9, "maxiter": 1000})

    def profile_deviance(self, index: int, value: float, start: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Minimum ML deviance with parameter ``index`` (of :attr:`names`) held at ``value``.

        Returns the deviance and the optimal free parameters (for warm starts).
        """
        nv = self.nvar
        if index < nv:  # an SD or a correlation: free = other sd/cor (natural scale) + log sigma
            free_idx = [i for i in range(nv) if i != index]
            bounds = [(0.0, None) if self.kinds[i] == "sd" else (-1.0, 1.0) for i in free_idx] + [(None, None)]
            x0 = np.concatenate([self.sdcor_hat[free_idx], [np.log(self.sigma_hat)]])

            def fun(x):
                sdcor = np.empty(nv)
                sdcor[free_idx] = x[:-1]
                sdcor[index] = value
                sigma = np.exp(x[-1])
                return self._dev_theta_sigma(self.sdcor_to_theta(sdcor, sigma), sigma)

            return self._minimize_wrapped(fun, x0, bounds, start)
        if index == nv:  # sigma: free = theta
            bounds = [(lo if np.isfinite(lo) else None, None) for lo in self.problem.lower]
            return self._minimize_wrapped(lambda th: self._dev_theta_sigma(th, value), self.theta_hat, bounds, start)
        j = index - nv - 1  # a fixed effect: free = theta (sigma and other betas analytically)

        def fun_beta(th):
            try:
                c = self.problem.components(th)
                beta, V = self._beta_and_unscaled_vcov(th)
            except np.linalg.LinAlgError:
                return np.inf
            pw = c.pwrss + (value - beta[j]) ** 2 / V[j, j]
            return c.ldL2 - self.problem.ldW + self.n * (1 + _LOG2PI + np.log(pw / self.n))

        bounds = [(lo if np.isfinite(lo) else None, None) for lo in self.problem.lower]
        return self._minimize_wrapped(fun_beta, self.theta_hat, bounds, start)

    def _minimize_wrapped(self, fun, x0, bounds, start=None):
        # Start from the previous profile point only if it is better than the optimum's
        # values: a warm start from a far-away point (e.g. a correlation near -1) can leave
        # L-BFGS-B stuck in a poor region.
        x0 = np.asarray(x0, dtype=float)
        if start is not None and len(start) == len(x0) and fun(np.asarray(start)) < fun(x0):
            x0 = np.asarray(start, dtype=float)
        x, f = self._minimize(fun, x0, bounds)
        return f, x

    def zeta(self, index: int, value: float, start: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Signed square root of the deviance increase at ``value`` (and the free parameters)."""
        dev, x = self.profile_deviance(index, value, start)
        inc = max(dev - self.dev_min, 0.0)
        return float(np.sign(value - self.estimates[index]) * np.sqrt(inc)), x

    # ---- interval ends -------------------------------------------------------------------

    def _scale(self, index: int) -> float:
        nv = self.nvar
        if index < nv:
            return max(self.sdcor_hat[index], 0.1 * self.sigma_hat) if self.kinds[index] == "sd" else 0.2
        if index == nv:
            return 0.1 * self.sigma_hat
        j = index - nv - 1
        return float(self.sigma_hat * np.sqrt(self.vbeta[j, j]))

    def limit(self, index: int, z: float, direction: int) -> float:
        """The end of the interval on one side (direction -1 or +1) where |zeta| = z."""
        nv = self.nvar
        est = self.estimates[index]
        kind = self.kinds[index] if index < nv else ("sigma" if index == nv else "beta")
        target = direction * z
        state = {"x": None}

        def g(v):
            zv, x = self.zeta(index, v, state["x"])
            state["x"] = x
            return zv - target

        if kind == "sd" and direction < 0:
            if est <= 1e-8 or g(0.0) * direction <= 0:
                return 0.0
            state["x"] = None
            lo_end = 0.0
        elif kind == "cor":
            edge = direction * (1 - 1e-8)
            if g(edge) * direction <= 0:
                return float(np.sign(direction))
            state["x"] = None
            lo_end = edge
        else:
            step = self._scale(index)
            lo_end = None
            for mult in (1.5, 3.0, 6.0, 12.0, 24.0, 48.0):
                v = est + direction * mult * step
                if kind in ("sd", "sigma") and v <= 0:
                    v = est / (2 ** mult)
                if g(v) * direction > 0:
                    lo_end = v
                    break
            if lo_end is None:
                return float(np.sign(direction) * np.inf)
        state["x"] = None
        a, b = sorted([est, lo_end])
        return float(optimize.brentq(g, a, b, xtol=1e-10 * max(1.0, abs(est)), rtol=1e-10))


def profile_confint(fit: "LinearMixedModel", level: float = 0.95, which: list[str] | None = None) -> pd.DataFrame:
    """Profile-likelihood confidence intervals, rows named as lme4's ``oldNames = FALSE``.

    Parameters
    ----------
    fit : LinearMixedModel
    level : float
    which : list of str, optional
        Subset of parameter names (default: all).

    Returns
    -------
    DataFrame
        Columns like ``"2.5 %"``, ``"97.5 %"``; rows ``sd_...|group``, ``cor_...|group``,
        ``sigma``, then the fixed effects.
    """
    z = float(stats.norm.ppf(0.5 + level / 2))
    cols = [f"{100 * (1 - level) / 2:.3g} %", f"{100 * (1 + level) / 2:.3g} %"]
    with single_thread_blas():
        prof = Profiler(fit)
        names = prof.names if which is None else list(which)
        unknown = [nm for nm in names if nm not in prof.names]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown}; choose from {prof.names}")
        rows = []
        for nm in names:
            i = prof.names.index(nm)
            rows.append((prof.limit(i, z, -1), prof.limit(i, z, +1)))
    return pd.DataFrame(rows, index=names, columns=cols)
