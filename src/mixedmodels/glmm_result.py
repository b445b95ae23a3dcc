"""Stage 5 of ``glmer``: the fitted GLMM (:class:`GeneralizedLinearMixedModel`, also known by
its old name ``GlmerResult``). The accessors shared with the LMM (``varcorr()``, ``ranef()``,
``coef()``, ``confint()``, ``profile()``, ``residuals()``...) come from
:class:`mixedmodels.mixedmodel.MixedModel`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import xlogy
from scipy.stats import norm

from . import _validate
from .glmm_frame import GlmerFrame
from .glmm_objective import ScalarObjective
from .mixedmodel import MixedModel
from .offsets import new_offset
from .results import OptSummary
from .summary import ModelSummary, random_effects_table, residual_quantiles

__all__ = ["GeneralizedLinearMixedModel", "GlmerResult"]


def _mu_eta(family, eta: np.ndarray) -> np.ndarray:
    """``dmu/deta`` of the family's inverse link."""
    link = family.link
    if link == "logit":
        mu = family.linkinv(eta)
        return mu * (1 - mu)
    if link == "log":
        return np.exp(eta)
    if link == "probit":
        return norm.pdf(eta)
    if link == "cloglog":
        e = np.minimum(eta, 700.0)
        return np.exp(e - np.exp(e))
    h = 1e-6 * (1 + np.abs(eta))
    return (family.linkinv(eta + h) - family.linkinv(eta - h)) / (2 * h)


class GeneralizedLinearMixedModel(MixedModel):
    """A fitted GLMM (the result of :func:`mixedmodels.glmer`).

    Accessors and arguments match the LMM's (:class:`mixedmodels.mixedmodel.MixedModel`).

    Attributes
    ----------
    fixef : Series
    se : Series
    vcov : DataFrame
    theta : ndarray
    loglik, aic, bic, deviance : float
    nagq : int
        Quadrature points of the final fit (1 = Laplace); with ``nagq="auto"`` the most points
        any group needed.
    points_range : tuple of int or None
        ``nagq="auto"``: the fewest and the most points of the per-group rules (each group's
        integral converged to 1e-8); None otherwise.
    distinct_groups : int or None
        Scalar models: how many groups have distinct data (each distinct group's integral is
        computed once, weighted by how many groups share it).
    quadrature_converged : bool or None
        Whether more points leave the log-likelihood unchanged (to 0.01, scalar models and
        one grouping factor with 2-3 columns); ``loglik_check`` is ``(points, loglik)`` of
        that finer rule at the estimates.
    quadrature_shift : float or None
        A fixed rule that did not converge: how far the finer rule would move the
        estimates, in standard errors (the largest over the parameters; one Newton step on
        its log-likelihood). ``QuadratureWarning`` is issued when it exceeds 0.1 or the
        log-likelihood differs by more than 1; otherwise the difference is only a note in
        ``summary()``. None when not computed.
    converged : bool
    singular : bool
    optsum : OptSummary
        The optimizer's record (the LMM's class and name; ``opt`` is an alias).
    layout : CovarianceLayout
        Positions, bounds and lme4's names of the covariance parameters.
    dispersion : float or None
        The family's dispersion parameter estimated with the rest (Gamma: shape; negative
        binomial: theta; inverse Gaussian: phi; its name is ``family.dispersion_name``); None
        for the binomial and Poisson.
    notes : list of str
        Warnings about this fit (also printed by ``summary()``).
    """

    def __init__(self, frame: GlmerFrame, obj, opt: OptSummary, nagq: int, auto=False,
                 history=None):
        self.frame, self._obj, self.optsum = frame, obj, opt
        self.model = frame.ms
        self.layout = frame.layout
        self.nagq, self.auto = int(nagq), auto
        self.history = history or []
        self.family = frame.family
        ms = frame.ms
        self.formula = ms.formula
        self.xnames = list(ms.xnames)
        p = ms.p
        x = opt.final
        self._params = x.copy()
        # A family's dispersion (Gamma shape, NB theta) is the last parameter, on the log scale.
        self.dispersion = float(np.exp(x[-1])) if getattr(obj, "has_dispersion", False) else None
        self.theta = x[p:len(x) - (self.dispersion is not None)].copy()
        if self.dispersion is not None:
            self.family = frame.family.with_dispersion(self.dispersion)
        self.fixef = pd.Series(x[:p], index=self.xnames, name="Estimate")
        self.loglik = float(opt.loglik)
        self.loglik_check: tuple[int, float] | None = None
        rules = getattr(obj, "rules", None)
        self.points_range = obj.points_range if rules is not None else None
        self.distinct_groups = getattr(obj, "nunits", None)
        self.quadrature_converged: bool | None = None
        self.quadrature_shift: float | None = None
        self.notes: list[str] = []
        H = opt.hessian
        try:
            cov = np.linalg.inv(H)
        except (np.linalg.LinAlgError, TypeError):
            cov = np.full((len(x), len(x)), np.nan)
        self._cov_all = cov
        V = cov[:p, :p]
        self.vcov = pd.DataFrame(V, index=self.xnames, columns=self.xnames)
        with np.errstate(invalid="ignore"):
            self.se = pd.Series(np.sqrt(np.diag(V)), index=self.xnames, name="Std. Error")
        self.converged = bool(opt.converged)

    # ---- counts and criteria ---------------------------------------------------------
    @property
    def nobs(self) -> int:
        """Number of observations (rows) used in the fit, as lme4's ``nobs``."""
        return self.frame.n

    @property
    def npar(self) -> int:
        """Number of estimated parameters: fixed effects, covariance parameters and, for
        Gamma, inverse Gaussian and negative binomial, the dispersion."""
        return len(self._params)

    @property
    def deviance(self) -> float:
        """``-2 loglik`` (as lme4's ``deviance`` column of the summary)."""
        return -2.0 * self.loglik

    @property
    def aic(self) -> float:
        """Akaike information criterion, ``-2 loglik + 2 npar`` (every constant kept)."""
        return -2.0 * self.loglik + 2 * self.npar

    @property
    def bic(self) -> float:
        """Bayesian information criterion, ``-2 loglik + npar log(nobs)``."""
        return -2.0 * self.loglik + self.npar * np.log(self.nobs)

    @property
    def df_resid(self) -> int:
        """Residual degrees of freedom, ``nobs - npar`` (lme4's ``df.residual``)."""
        return self.nobs - self.npar

    @property
    def singular(self) -> bool:
        """A variance factor at (or within 1e-4 of) zero, as lme4's ``isSingular``."""
        return self.layout.singular(self.theta)

    # ---- the hooks of MixedModel ----------------------------------------------------------

    def _scale(self) -> None:
        return None

    def _re_matrices(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per term: conditional modes ``b`` (levels x k) and their conditional SDs."""
        obj = self._obj
        if isinstance(obj, ScalarObjective):
            b, sd = obj.modes(self._params)
            return [(b[:, None], sd[:, None])]
        return obj.modes(self._params)

    def _modes(self, condvar: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Conditional modes per term and their conditional SDs (for a scalar term
        ``sigma / sqrt(-g''(u_hat))``, lme4's ``condVar``)."""
        return self._re_matrices()

    def _eta(self) -> np.ndarray:
        return self.predict(type="link").to_numpy()

    def _mu(self) -> np.ndarray:
        return self.family.linkinv(self._eta())

    def _response_parts(self):
        f = self.frame
        eta = self._eta()
        mu = self.family.linkinv(eta)
        return f.y, f.m, self.family.variance(mu), _mu_eta(self.family, eta)

    def _deviance_rows(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        name = self.family.name
        if name == "binomial":
            return 2 * w * (xlogy(y, y / mu) + xlogy(1 - y, (1 - y) / (1 - mu)))
        if name == "poisson":
            return 2 * w * (xlogy(y, y / mu) - (y - mu))
        if name == "Gamma":
            return 2 * w * (-np.log(y / mu) + (y - mu) / mu)
        if name == "inverse_gaussian":
            return w * (y - mu) ** 2 / (y * mu**2)
        if name == "negative_binomial":
            th = self.dispersion
            return 2 * w * (xlogy(y, y / mu) - (y + th) * np.log((y + th) / (mu + th)))
        raise ValueError(f"deviance residuals are not available for the {name} family")

    @property
    def opt(self) -> OptSummary:
        """The optimizer's record: an alias of ``optsum``."""
        return self.optsum

    # ---- prediction ---------------------------------------------------------------------
    def _re_sd_rows(self, terms, Zs, which=None):
        """Per-row variance of the random part ``sum_t z_t' b_t`` under the model (only the
        terms' rows flagged in ``which``, a list of boolean arrays, when given)."""
        var = np.zeros(len(Zs[0]))
        for ti, (t, Z, S) in enumerate(zip(terms, Zs, self.layout.covariances(self.theta))):
            v = np.einsum("ij,jk,ik->i", Z, S, Z)
            var += v if which is None else np.where(which[ti], v, 0.0)
        return var

    def _marginal_mean(self, eta: np.ndarray, sd: np.ndarray) -> np.ndarray:
        """``E[g^-1(eta + sd u)]`` for ``u ~ N(0, 1)``, row by row."""
        # Trapezoid on a fine fixed grid, not Gauss-Hermite: expit(eta + sd u) has poles
        # pi/sd from the real axis, which slows Gauss-Hermite badly when sd is large,
        # while the trapezoid rule's error stays ~exp(-2 pi^2 / (sd h)). (The probit's and
        # cloglog's inverse links are entire functions; the same grid serves them.)
        grid = np.linspace(-12.0, 12.0, 4001)
        w = norm.pdf(grid) * (grid[1] - grid[0])
        w[[0, -1]] *= 0.5
        out = np.empty(len(eta))
        for a in range(0, len(eta), 2000):
            sl = slice(a, a + 2000)
            out[sl] = self.family.linkinv(eta[sl, None] + sd[sl, None] * grid[None, :]) @ w
        return out

    def predict(self, newdata: pd.DataFrame | None = None, type: str = "link",
                population_average: bool = False, include_random: bool = True,
                offset=None, allow_new_levels: bool = False) -> pd.Series:
        """Predictions on the link or the response scale.

        Parameters
        ----------
        newdata : DataFrame, optional
            Defaults to the fitted data. Labels are matched by value (a group fitted as 101
            is found as 101, 101.0 or "101"); a fixed-factor level not seen in the fit is
            always an error.
        type : {"link", "response"}
        population_average : bool
            With ``type="response"``: the mean response of a *random* member of the
            population at these covariates, ``E[g^-1(x'beta + z'b)]`` integrated over the
            random effects' distribution (lme4 issue #281). ``g^-1(x'beta)``, the response at
            ``b = 0``, is far below it when the random-effect SD is large. Needs no grouping
            column.
        include_random : bool
            False sets every random effect to 0 (lme4's ``re.form = NA``), as the LMM's
            ``predict``; no grouping column is needed then.
        allow_new_levels : bool
            lme4's ``allow.new.levels``. False (the default, as lme4): a group not seen in the
            fit, or a missing group, is an error naming the grouping factor and the levels.
            True: such a row gets the population value for that term, which on the link scale
            is random effect 0 and with ``type="response"`` is the population-averaged mean
            over the new group's random effects (``E[g^-1(eta + z'b)]``, the mean response of
            a group never seen; ``g^-1`` at ``b = 0`` is lower than that for a logit model).
        offset : str or array-like, optional
            The new rows' ``offset=`` values when the fit's offset argument was an array (a
            column name is read from ``newdata``; the formula's ``offset(...)`` terms are
            evaluated on ``newdata``).

        Returns
        -------
        Series
            Indexed like ``newdata`` (or the rows used in the fit); NaN where a covariate is
            missing.

        Raises
        ------
        ValueError
            For a bad ``type``, a missing column, a new fixed-factor level, or (unless allowed)
            a new group.
        """
        if type not in ("link", "response"):
            raise ValueError(f"`type` must be 'link' or 'response', got {type!r}")
        if population_average and type != "response":
            raise ValueError("`population_average=True` needs type='response' (on the link scale "
                             "the population average is x'beta: use include_random=False)")
        ms = self.frame.ms
        terms = ms.reterms
        need_z = include_random or population_average
        if newdata is None:
            X = ms.X
            codes = [t.codes for t in terms]
            Zs = [t.Z for t in terms]
            index = ms.rows
        else:
            _validate.check_dataframe(newdata, "newdata")
            needed = _validate.predictor_columns(ms, include_random and not population_average)
            if need_z:
                needed += [v for t in terms for v in t.variables]
            _validate.check_columns(newdata, list(dict.fromkeys(needed)), "newdata")
            X = ms.fixed_matrix(newdata)
            Zs = [t.new_Z(newdata) for t in terms] if need_z else None
            codes = ([t.new_codes(newdata, allow_new_levels) for t in terms]
                     if include_random and not population_average else None)
            index = newdata.index
        eta = X @ self.fixef.to_numpy() + new_offset(ms, newdata, offset)
        if population_average:
            sd = np.sqrt(self._re_sd_rows(terms, Zs))
            return pd.Series(self._marginal_mean(eta, sd), index=index, name="population_average")
        if include_random:
            for t, c, Z, (B, _) in zip(terms, codes, Zs, self._re_matrices()):
                Bx = np.vstack([B, np.zeros((1, B.shape[1]))])  # row -1 -> new level -> 0
                eta = eta + np.sum(Z * Bx[c], axis=1)
        if type == "link":
            return pd.Series(eta, index=index, name=type)
        out = self.family.linkinv(eta)
        if include_random:
            new = [c < 0 for c in codes]
            if any(n.any() for n in new):
                rows = np.logical_or.reduce(new)
                sd = np.sqrt(self._re_sd_rows(terms, Zs, which=new))
                out[rows] = self._marginal_mean(eta[rows], sd[rows])
        return pd.Series(out, index=index, name=type)

    def pearson_residuals(self) -> np.ndarray:
        """Pearson residuals (as ``residuals(type="pearson")``, an array)."""
        f = self.frame
        return f.family.pearson_residuals(f.y, self._mu(), f.m)

    def profile(self, parm=None, level: float = 0.95, npoints: int = 0):
        """Profile the likelihood (see :meth:`mixedmodels.mixedmodel.MixedModel.profile`).

        Raises
        ------
        ValueError
            For a ``nagq=0`` fit: its estimates are not the optimum of a likelihood that
            could be profiled (refit with ``nagq=1``, or use ``confint(method="wald")``).
        """
        if self.nagq == 0:
            raise ValueError("a nagq=0 fit cannot be profiled: its fixed effects come from the "
                             "joint PIRLS, not from maximizing a likelihood; refit with nagq=1 "
                             "(or use confint(method='wald'))")
        return super().profile(parm, level=level, npoints=npoints)

    # ---- checks -----------------------------------------------------------------------
    def _separation_columns(self) -> list[str]:
        X = self.frame.ms.X
        out = []
        for j, nm in enumerate(self.xnames):
            scale = np.max(np.abs(X[:, j])) if len(X) else 1.0
            big = abs(self.fixef.iloc[j]) * scale > 12
            if big and (not np.isfinite(self.se.iloc[j]) or self.se.iloc[j] * scale > 5):
                out.append(nm)
        return out

    # ---- summary ----------------------------------------------------------------------
    def summary(self) -> ModelSummary:
        """lme4-style summary (``print`` it, or let a notebook render its HTML)."""
        if self.points_range is not None:
            lo, hi = self.points_range
            method = (f"adaptive quadrature chosen by nagq='auto': {lo}-{hi} points per group, "
                      "each group's integral to 1e-8")
        elif self.nagq == 0:
            method = "nAGQ = 0: Laplace Approximation at the joint mode of the fixed and random effects"
        elif self.nagq == 1:
            method = "Laplace Approximation"
        else:
            auto = ", chosen by nagq='auto'" if self.auto else ""
            method = f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq}{auto}"
        title = [f"Generalized linear mixed model fit by maximum likelihood ({method})",
                 f" Family: {self.family.name}  ( {self.family.link} )",
                 f"Formula: {self.formula}"]
        if self.frame.weights_label:
            title.append(f"Weights: {self.frame.weights_label}")
        stats = {"AIC": self.aic, "BIC": self.bic, "logLik": self.loglik,
                 "deviance": self.deviance, "df.resid": float(self.df_resid)}
        re_tab = random_effects_table(self.layout.summary_rows(self.theta))
        z = self.fixef / self.se
        fe = pd.DataFrame({"Estimate": self.fixef, "Std. Error": self.se, "z value": z,
                           "Pr(>|z|)": 2 * norm.sf(np.abs(z))})
        V = self.vcov.to_numpy()
        d = np.sqrt(np.diag(V))
        with np.errstate(invalid="ignore", divide="ignore"):
            C = pd.DataFrame(V / np.outer(d, d), index=self.xnames, columns=self.xnames)
        notes = list(self.notes)
        if self.dispersion is not None:
            notes.insert(0, f"{self.family.dispersion_name} of the {self.family.name} family "
                         f"(estimated by ML with the rest): {self.dispersion:.4g}")
        if self.nagq == 0:
            notes.append("nagq=0 (lme4's nAGQ=0): the fixed effects were estimated inside PIRLS "
                         "jointly with the random effects and only the covariance parameters "
                         "optimized; a quick fit whose log-likelihood is at most the Laplace "
                         "(nagq=1) one. Standard errors: the inverse joint information given "
                         "the covariance parameters, as lme4's")
        if self.loglik_check is not None:
            k, llc = self.loglik_check
            if self.points_range is not None:
                lo, hi = self.points_range
                notes.append(f"logLik: the exact marginal log-likelihood with all constants "
                             f"(trapezoid rules of {lo}-{hi} points centred and scaled on each "
                             f"group's mode); with every rule about doubled ({2 * lo - 1}-{k} "
                             f"points) it is {llc:.6f}")
                if self.distinct_groups is not None:
                    ng = sum(self.ngroups.values())
                    notes.append(f"{self.distinct_groups} of the {ng} groups have distinct data "
                                 "(each distinct group's integral is computed once)")
            else:
                rule = ("the Laplace approximation" if self.nagq == 1
                        else f"{self.nagq}-point quadrature")
                notes.append(f"logLik: the marginal log-likelihood with all constants, by {rule}; "
                             f"with {k} points at the same estimates it is {llc:.3f}")
        return ModelSummary(title=title, fit_statistics=stats, random_effects=re_tab,
                            ngroups=self.ngroups, nobs=self.nobs, fixed_effects=fe,
                            residuals=residual_quantiles(self.pearson_residuals()),
                            correlation=C, notes=notes)

    def __repr__(self) -> str:
        fam = self.family.name if self.family.canonical else \
            f"{self.family.name}({self.family.link})"
        return (f"<GeneralizedLinearMixedModel {self.formula!r} {fam}, nagq={self.nagq}, "
                f"logLik={self.loglik:.3f}>")


#: The old name, kept for code that imports it.
GlmerResult = GeneralizedLinearMixedModel
