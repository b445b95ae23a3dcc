"""Profile-likelihood confidence intervals and profiles, for LMMs and GLMMs alike.

For one parameter at a time -- a random-effect SD or correlation, the residual SD ``sigma``, or
a fixed effect -- the deviance is minimized over all the other parameters with the focal one
held fixed. The signed square root of the increase over the minimum,

    zeta(v) = sign(v - v_hat) * sqrt(D_profiled(v) - D_min),

is approximately standard normal, so the interval at level ``1 - alpha`` is where
``|zeta| <= z_{1 - alpha/2}``. We find its ends with a root finder (``scipy.optimize.brentq``)
on the exact profile, where lme4 interpolates a spline through profile points; hence agreement
to about 1e-3, not 1e-8.

Which deviance: for an LMM **the ML deviance, also for REML fits**, as lme4's ``profile.merMod``
does (it refits a REML model by ML before profiling; a REML fit and an ML fit of the same model
have the same profile intervals); for a GLMM, ``-2`` times the fit's log-likelihood (Laplace
or quadrature). The variance parameters are on lme4's scale: standard deviations and
correlations of the random effects (read from
:class:`mixedmodels.covariance.CovarianceLayout`), and sigma (``confint(fit, oldNames =
FALSE)`` names them ``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``, ``sigma``).

A standard deviation whose profile never rises by the critical amount on its way down to 0 --
in particular one estimated as 0 -- gets the lower limit 0; a correlation whose profile stays
low up to +-1 gets the limit +-1.

:func:`profile_model` returns a :class:`Profile`: the points (parameter, value, zeta) a
chapter can plot (:meth:`Profile.plot`, like lme4's ``xyplot(profile(fit))``) and the interval
ends read off it (:meth:`Profile.confint`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import interpolate, optimize, stats

from .boundary import minimize_bounded

from .blas import single_thread_blas
from .summary import percent_labels

if TYPE_CHECKING:
    from .lmm import LinearMixedModel

__all__ = ["profile_confint", "profile_model", "Profile", "Profiler", "GlmmProfiler"]

_LOG2PI = float(np.log(2 * np.pi))


class _ProfilerCore:
    """What LMM and GLMM profilers share: zeta, the search for the interval ends, the record.

    Subclasses set ``names``, ``kinds`` (``"sd"``, ``"cor"``, ``"sigma"`` or ``"beta"`` per
    name), ``estimates``, ``dev_min`` and implement :meth:`profile_deviance` and
    :meth:`_scale`.
    """

    names: list[str]
    kinds: list[str]
    estimates: np.ndarray
    dev_min: float
    xtol: float = 1e-10

    def _record(self, index: int, value: float, z: float) -> None:
        if not hasattr(self, "points"):
            self.points: list[tuple[str, float, float]] = []
        self.points.append((self.names[index], float(value), float(z)))

    def profile_deviance(self, index: int, value: float, start: np.ndarray | None = None
                         ) -> tuple[float, np.ndarray]:
        raise NotImplementedError

    def _scale(self, index: int) -> float:
        raise NotImplementedError

    def zeta(self, index: int, value: float, start: np.ndarray | None = None) -> tuple[float, np.ndarray]:
        """Signed square root of the deviance increase at ``value`` (and the free parameters)."""
        dev, x = self.profile_deviance(index, value, start)
        inc = max(dev - self.dev_min, 0.0)
        z = float(np.sign(value - self.estimates[index]) * np.sqrt(inc))
        self._record(index, value, z)
        return z, x

    def limit(self, index: int, z: float, direction: int) -> float:
        """The end of the interval on one side (direction -1 or +1) where |zeta| = z."""
        est = self.estimates[index]
        kind = self.kinds[index]
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
            if direction * (edge - est) <= 0 or g(edge) * direction <= 0:
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
        return float(optimize.brentq(g, a, b, xtol=self.xtol * max(1.0, abs(est)), rtol=1e-10))


class Profiler(_ProfilerCore):
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
        self.layout = fit.layout
        self.problem, theta = fit.ml_problem()
        pr = self.problem
        self.theta_hat = theta
        comps = pr.components(theta)
        self.dev_min = comps.deviance
        self.sigma_hat = float(np.sqrt(comps.pwrss / pr.n))
        self.n, self.p = pr.n, pr.p
        self.var_names = fit.parameter_names()
        self.fixed_names = list(fit.model.xnames)
        self.names = self.var_names + self.fixed_names
        self.nvar = len(self.var_names) - 1  # without sigma
        self.sdcor_hat = self.theta_to_sdcor(theta, self.sigma_hat)
        self.beta_hat, self.vbeta = self._beta_and_unscaled_vcov(theta)
        self.estimates = np.concatenate([self.sdcor_hat, [self.sigma_hat], self.beta_hat])
        self.kinds = list(self.layout.kinds) + ["sigma"] + ["beta"] * self.p

    # ---- parameter maps ------------------------------------------------------------------

    def theta_to_sdcor(self, theta: np.ndarray, sigma: float) -> np.ndarray:
        """SDs and correlations (theta order) of the random effects at ``theta`` and ``sigma``."""
        return self.layout.sdcor(theta, sigma)

    def sdcor_to_theta(self, sdcor: np.ndarray, sigma: float) -> np.ndarray:
        """Theta with the given SDs and correlations (inverse of :meth:`theta_to_sdcor`)."""
        return self.layout.theta_from_sdcor(sdcor, sigma)

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

    # ---- interval ends -------------------------------------------------------------------

    def _scale(self, index: int) -> float:
        nv = self.nvar
        if index < nv:
            return max(self.sdcor_hat[index], 0.1 * self.sigma_hat) if self.kinds[index] == "sd" else 0.2
        if index == nv:
            return 0.1 * self.sigma_hat
        j = index - nv - 1
        return float(self.sigma_hat * np.sqrt(self.vbeta[j, j]))


class GlmmProfiler(_ProfilerCore):
    """The deviance (``-2 loglik``) of a fitted GLMM as a function of single parameters.

    The free parameters are the fixed effects and the random effects' standard deviations
    and correlations (lme4's profile scale; the covariance factor is rebuilt from them by
    :meth:`CovarianceLayout.theta_from_sdcor`). Each profile point is an L-BFGS-B fit with the
    objective's analytic gradient carried to the sd/cor scale by the Jacobian of that map.

    Parameters
    ----------
    fit : GeneralizedLinearMixedModel

    Attributes
    ----------
    names : list of str
        Variance parameters (lme4's names, theta order), then the fixed effects.
    estimates : ndarray
        Their estimates.
    dev_min : float
        ``-2 loglik`` at the optimum.
    """

    xtol = 1e-5

    def __init__(self, fit) -> None:
        from .glmm_optimize import _safe_evaluate  # the GLMM's optimizer stage; no cycle

        self._safe_evaluate = _safe_evaluate
        self.fit = fit
        self.obj = fit._obj
        self.layout = fit.layout
        self.p = len(fit.fixef)
        self.nv = self.layout.ntheta
        self.params_hat = np.asarray(fit._params, dtype=float)
        self.sdcor_hat = self.layout.sdcor(fit.theta)
        self.names = list(self.layout.names) + list(fit.fixef.index)
        self.kinds = list(self.layout.kinds) + ["beta"] * self.p
        self.estimates = np.concatenate([self.sdcor_hat, fit.fixef.to_numpy()])
        # A family's dispersion (log scale, last in the objective's parameters) is a nuisance
        # parameter: optimized at every profile point, not profiled itself.
        self.ndisp = len(self.params_hat) - self.p - self.nv
        self._z_hat = np.concatenate([self.estimates, self.params_hat[self.p + self.nv:]])
        self.dev_min = -2.0 * float(fit.loglik)
        self.se = np.concatenate([np.full(self.nv, np.nan), fit.se.to_numpy()])
        kinds = self.kinds + ["disp"] * self.ndisp
        self._lo = np.array([0.0 if k == "sd" else -1.0 if k == "cor" else -np.inf for k in kinds])
        self._hi = np.array([1.0 if k == "cor" else np.inf for k in kinds])
        self._curv = self._curvatures(getattr(fit.opt, "hessian", None))

    def _curvatures(self, H) -> np.ndarray:
        """sqrt of the deviance's second derivative along each parameter (sd/cor scale) at the
        optimum, from the fit's Hessian in ``(beta, theta)``; 1 where unknown."""
        n, p, nv = len(self._z_hat), self.p, self.nv
        out = np.ones(n)
        if H is None or np.shape(H) != (n, n) or not np.all(np.isfinite(H)):
            return out
        Jz = np.zeros((n, n))          # d(beta, theta, disp) / d(sdcor, beta, disp)
        Jz[:p, nv:nv + p] = np.eye(p)
        Jz[p:p + nv, :nv] = self._jacobian(self.sdcor_hat)
        Jz[p + nv:, nv + p:] = np.eye(n - p - nv)
        d = 2.0 * np.einsum("ji,jk,ki->i", Jz, H, Jz)
        ok = np.isfinite(d) & (d > 0)
        out[ok] = np.sqrt(d[ok])
        return out

    def _params(self, z: np.ndarray) -> np.ndarray:
        """``(beta, theta[, log dispersion])`` of the objective from ``(sdcor, beta[, ...])``."""
        nv, p = self.nv, self.p
        return np.concatenate([z[nv:nv + p], self.layout.theta_from_sdcor(z[:nv]), z[nv + p:]])

    def _jacobian(self, sdcor: np.ndarray) -> np.ndarray:
        """d theta / d sdcor by differences (one-sided at the bounds)."""
        nv = self.nv
        J = np.empty((nv, nv))
        for i in range(nv):
            h = 1e-7 * max(1.0, abs(sdcor[i]))
            up = sdcor[i] + h <= self._hi[i]
            dn = sdcor[i] - h >= self._lo[i]
            zp, zm = sdcor.copy(), sdcor.copy()
            if up:
                zp[i] += h
            if dn:
                zm[i] -= h
            J[:, i] = ((self.layout.theta_from_sdcor(zp) - self.layout.theta_from_sdcor(zm))
                       / (h * (up + dn)))
        return J

    def _deviance_and_gradient(self, z: np.ndarray) -> tuple[float, np.ndarray]:
        ll, g = self._safe_evaluate(self.obj, self._params(z))
        if not np.isfinite(ll) or g is None:
            return np.inf, np.zeros(len(z))
        nv, p = self.nv, self.p
        J = self._jacobian(z[:nv])
        gz = np.concatenate([J.T @ g[p:p + nv], g[:p], g[p + nv:]])
        return -2.0 * ll, -2.0 * gz

    def profile_deviance(self, index: int, value: float, start: np.ndarray | None = None
                         ) -> tuple[float, np.ndarray]:
        """Minimum deviance with parameter ``index`` (of :attr:`names`) held at ``value``.

        Returns the deviance and the optimal free parameters (for warm starts).
        """
        n = len(self._z_hat)
        free = np.array([i for i in range(n) if i != index], dtype=int)

        def full(xf):
            z = np.empty(n)
            z[free] = xf
            z[index] = value
            return z

        def fun(xf):
            d, gz = self._deviance_and_gradient(full(xf))
            if not np.isfinite(d):
                return 1e300, np.zeros(len(xf))
            return d, gz[free]

        # Scale each free parameter by the curvature at the optimum, so that L-BFGS-B's first
        # steps have the right size (an unscaled step can leave the region where the
        # objective can be evaluated).
        c = self._curv[free]
        bounds = [(None if not np.isfinite(self._lo[i]) else self._lo[i] * c[k],
                   None if not np.isfinite(self._hi[i]) else self._hi[i] * c[k])
                  for k, i in enumerate(free)]
        x0 = self._z_hat[free]
        if start is not None and len(start) == len(x0) and fun(np.asarray(start))[0] < fun(x0)[0]:
            x0 = np.asarray(start, dtype=float)
        if len(free) == 0:
            return fun(x0)[0], x0

        def fun_scaled(w):
            d, g = fun(w / c)
            return d, g / c

        res = optimize.minimize(fun_scaled, x0 * c, jac=True, method="L-BFGS-B", bounds=bounds,
                                options={"ftol": 1e-15, "gtol": 1e-8, "maxiter": 2000})
        return float(res.fun), np.asarray(res.x, dtype=float) / c

    def _scale(self, index: int) -> float:
        kind = self.kinds[index]
        if kind == "beta":
            se = self.se[index]
            return float(se) if np.isfinite(se) and se > 0 else 0.1 * (1 + abs(self.estimates[index]))
        if kind == "sd":
            return max(0.5 * self.estimates[index], 0.1)
        return 0.2

    def restore(self) -> None:
        """Leave the objective's warm starts at the optimum again."""
        self.obj.evaluate(self.params_hat)


@dataclass
class Profile:
    """A likelihood profile: ``zeta`` against each parameter (lme4's ``profile(fit)``).

    Attributes
    ----------
    table : DataFrame
        Columns parameter, value, zeta: every point evaluated, sorted by parameter and value
        (the estimate is the point with zeta 0).
    estimates : Series
        The estimates, indexed by parameter name.
    limits : DataFrame
        The interval ends found by root finding at :attr:`level` (columns as R labels them).
    level : float
    bounds : dict
        ``(lower, upper)`` of each bounded parameter (SDs: 0; correlations: -1, 1).
    """

    table: pd.DataFrame
    estimates: pd.Series
    limits: pd.DataFrame
    level: float
    bounds: dict = field(default_factory=dict)

    @property
    def parameters(self) -> list[str]:
        return list(self.estimates.index)

    def confint(self, level: float | None = None) -> pd.DataFrame:
        """Interval ends read off the profile.

        At the profile's own ``level`` these are the ends found by root finding; at another
        level they are interpolated (monotone cubic in zeta) between the profile's points, and
        NaN where the profile does not reach far enough.
        """
        if level is None or np.isclose(level, self.level):
            return self.limits.copy()
        z = float(stats.norm.ppf(0.5 + level / 2))
        rows = []
        for nm in self.parameters:
            t = self.table[self.table.parameter == nm].sort_values("value")
            zz, vv = t.zeta.to_numpy(), t.value.to_numpy()
            # zeta increases with the value; drop points where optimizer noise breaks that
            keep = zz > np.concatenate([[-np.inf], np.maximum.accumulate(zz)[:-1]])
            zz, vv = zz[keep], vv[keep]
            lo_b, hi_b = self.bounds.get(nm, (-np.inf, np.inf))
            ends = []
            for target in (-z, z):
                if len(zz) >= 2 and zz[0] <= target <= zz[-1]:
                    ends.append(float(interpolate.PchipInterpolator(zz, vv)(target)))
                elif target < 0 and len(vv) and vv[0] <= lo_b + 1e-6:
                    ends.append(float(lo_b))   # the profile stays low down to the bound
                elif target > 0 and len(vv) and vv[-1] >= hi_b - 1e-6:
                    ends.append(float(hi_b))
                else:
                    ends.append(np.nan)
            rows.append(ends)
        return pd.DataFrame(rows, index=self.parameters, columns=percent_labels(level))

    def plot(self, parm: list[str] | None = None, ncols: int = 3, axes=None):
        """Plot zeta against each parameter, as lme4's ``xyplot(profile(fit))``.

        Dashed horizontal lines mark ``zeta = +-z`` of the profile's level; the dotted vertical
        line the estimate. Points with ``|zeta|`` beyond 1.3 z (the search's far brackets,
        such as an SD of 0) are left out, as lme4's profile stops near ``|zeta| = 2.6``.

        Parameters
        ----------
        parm : list of str, optional
            Parameters to draw (default all the profile has), one panel each.
        ncols : int
            Panels per row of a new figure.
        axes : matplotlib Axes or array of Axes, optional
            Draw into these (one per parameter) instead of a new figure.

        Returns
        -------
        matplotlib Figure
        """
        import matplotlib.pyplot as plt

        names = self.parameters if parm is None else list(parm)
        z = float(stats.norm.ppf(0.5 + self.level / 2))
        if axes is None:
            nrows = int(np.ceil(len(names) / ncols))
            fig, axs = plt.subplots(nrows, min(ncols, len(names)), squeeze=False,
                                    figsize=(3.2 * min(ncols, len(names)), 2.6 * nrows))
            axs = axs.ravel()
            for ax in axs[len(names):]:
                ax.set_visible(False)
        else:
            axs = np.atleast_1d(axes).ravel()
            fig = axs[0].figure
        for ax, nm in zip(axs, names):
            t = self.table[self.table.parameter == nm].sort_values("value")
            t = t[t.zeta.abs() <= 1.3 * z]
            ax.plot(t.value, t.zeta, "o-", ms=3, lw=1)
            for h in (-z, z):
                ax.axhline(h, ls="--", lw=0.8, color="grey")
            ax.axvline(self.estimates[nm], ls=":", lw=0.8, color="grey")
            ax.set_title(nm, fontsize=9)
            ax.set_ylabel("zeta")
        fig.tight_layout()
        return fig


def _profiler(fit) -> _ProfilerCore:
    return GlmmProfiler(fit) if fit._scale() is None else Profiler(fit)


def profile_model(fit, which: list[str] | None = None, level: float = 0.95,
                  npoints: int = 0) -> Profile:
    """Profile a fitted LMM or GLMM (see :meth:`mixedmodels.mixedmodel.MixedModel.profile`).

    Parameters
    ----------
    fit : LinearMixedModel or GeneralizedLinearMixedModel
    which : list of str, optional
        Parameter names (default all, lme4's order).
    level : float
        The interval ends at this level are found by root finding.
    npoints : int
        Extra points per side, evenly spaced between the estimate and each finite end.

    Returns
    -------
    Profile
    """
    z = float(stats.norm.ppf(0.5 + level / 2))
    with single_thread_blas():
        prof = _profiler(fit)
        names = prof.names if which is None else list(which)
        unknown = [nm for nm in names if nm not in prof.names]
        if unknown:
            raise ValueError(f"unknown parameter name(s) {unknown}; choose from {prof.names}")
        prof.points = []
        rows = []
        try:
            for nm in names:
                i = prof.names.index(nm)
                lo, hi = prof.limit(i, z, -1), prof.limit(i, z, +1)
                rows.append((lo, hi))
                for end in (lo, hi):
                    if npoints and np.isfinite(end):
                        for v in np.linspace(prof.estimates[i], end, npoints + 2)[1:-1]:
                            prof.zeta(i, v)
        finally:
            if hasattr(prof, "restore"):
                prof.restore()
    est = pd.Series(prof.estimates, index=prof.names).loc[names]
    pts = prof.points + [(nm, float(est[nm]), 0.0) for nm in names]
    table = (pd.DataFrame(pts, columns=["parameter", "value", "zeta"])
             .query("parameter in @names")
             .drop_duplicates(["parameter", "value"])
             .assign(order=lambda d: d.parameter.map({nm: k for k, nm in enumerate(names)}))
             .sort_values(["order", "value"]).drop(columns="order").reset_index(drop=True))
    limits = pd.DataFrame(rows, index=names, columns=percent_labels(level))
    bounds = {nm: (0.0, np.inf) if k == "sd" else (-1.0, 1.0)
              for nm, k in zip(prof.names, prof.kinds) if k in ("sd", "cor")}
    return Profile(table=table, estimates=est, limits=limits, level=float(level), bounds=bounds)


def profile_confint(fit, level: float = 0.95, which: list[str] | None = None) -> pd.DataFrame:
    """Profile-likelihood confidence intervals, rows named as lme4's ``oldNames = FALSE``.

    Parameters
    ----------
    fit : LinearMixedModel or GeneralizedLinearMixedModel
    level : float
    which : list of str, optional
        Subset of parameter names (default: all).

    Returns
    -------
    DataFrame
        Columns like ``"2.5 %"``, ``"97.5 %"``; rows ``sd_...|group``, ``cor_...|group``,
        (``sigma``), then the fixed effects.
    """
    return profile_model(fit, which, level=level).confint(level)
