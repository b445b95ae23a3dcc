"""What every fitted mixed model offers, LMM and GLMM alike (lme4's ``merMod`` methods).

:class:`MixedModel` is the base of :class:`mixedmodels.lmm.LinearMixedModel` and
:class:`mixedmodels.glmm_result.GeneralizedLinearMixedModel`. The two share one covariance
layout (:class:`mixedmodels.covariance.CovarianceLayout`), so the parameter names, ``varcorr()``,
``ranef()``, ``coef()``, ``confint()`` (case-insensitive ``"profile"``, ``"wald"`` or
``"boot"``, R's ``2.5 %`` labels), ``profile()``, ``residuals(type=)`` and the HTML summary are written once.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import stats

from . import _validate
from .covariance import CovarianceLayout
from .fitmethods import FitMethods
from .profile import Profile, profile_model
from .summary import percent_labels

if TYPE_CHECKING:
    from .formula import ModelStructure
    from .summary import ModelSummary

__all__ = ["MixedModel", "percent_labels", "CONFINT_METHODS", "RESIDUAL_TYPES"]

#: Accepted ``confint(method=)`` values (case-insensitive).
CONFINT_METHODS = ("profile", "wald", "boot")
#: lme4's ``residuals(type=)`` values.
RESIDUAL_TYPES = ("response", "working", "pearson", "deviance")


class MixedModel(FitMethods):
    """A fitted mixed model: the accessors LMM and GLMM results share.

    With :class:`~mixedmodels.fitmethods.FitMethods` (``anova``, ``simulate``, ``refit``,
    ``update``, ``bootstrap``, ``coef_table``, ``tidy``, ``to_dict``, ``to_json``) every result
    class has the same methods.

    Subclasses set ``model`` (:class:`~mixedmodels.formula.ModelStructure`), ``layout``
    (:class:`~mixedmodels.covariance.CovarianceLayout`), ``theta``, ``fixef``, ``se``,
    ``vcov``, ``loglik``, ``nobs``, ``formula`` and ``optsum``, and implement
    :meth:`_scale` (the residual SD, or None), :meth:`_modes` (conditional modes and SDs per
    term), :meth:`_mu` (fitted means), :meth:`_eta` (linear predictor at the modes) and
    :meth:`_response_parts` (response, prior weights and variance function).
    """

    model: "ModelStructure"
    layout: CovarianceLayout
    theta: np.ndarray
    fixef: pd.Series
    se: pd.Series
    vcov: pd.DataFrame
    loglik: float
    nobs: int
    formula: str

    # ---- hooks ------------------------------------------------------------------------------

    def _scale(self) -> float | None:
        """The residual standard deviation (LMM), or None (no scale parameter)."""
        raise NotImplementedError

    def _modes(self, condvar: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Per term: conditional modes ``b`` (levels x k) and their conditional SDs."""
        raise NotImplementedError

    def _mu(self) -> np.ndarray:
        """Fitted means at the conditional modes (response scale), rows of the fit."""
        raise NotImplementedError

    def _eta(self) -> np.ndarray:
        """Linear predictor at the conditional modes, rows of the fit."""
        raise NotImplementedError

    def _response_parts(self):
        """``(y, prior weights, variance(mu), dmu/deta)`` on the rows of the fit."""
        raise NotImplementedError

    # ---- counts -------------------------------------------------------------------------------

    @property
    def ngroups(self) -> dict[str, int]:
        """Number of levels of each grouping factor."""
        out: dict[str, int] = {}
        for t in self.model.reterms:
            out.setdefault(t.group, t.nlevels)
        return out

    # ---- variance parameters ---------------------------------------------------------------

    def parameter_names(self) -> list[str]:
        """lme4's ``oldNames = FALSE`` names of the variance parameters in lme4's order
        (``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``), then ``sigma`` for a
        model with a residual SD."""
        return list(self.layout.names) + ([] if self._scale() is None else ["sigma"])

    def varcorr(self) -> pd.DataFrame:
        """Variance components shaped like R's ``as.data.frame(VarCorr(fit))``.

        Returns
        -------
        DataFrame
            Columns group, var1, var2, vcov, sdcor. For each term: one row per variance
            (sdcor the SD), then one per covariance (sdcor the correlation); then
            ``Residual`` for an LMM. Groups are made unique as R's ``make.unique``
            (``Subject``, ``Subject.1``).
        """
        return self.layout.varcorr(self.theta, self._scale())

    # ---- random effects ------------------------------------------------------------------------

    def ranef(self, condvar: bool = True) -> pd.DataFrame:
        """Conditional modes of the random effects, long format.

        Parameters
        ----------
        condvar : bool
            Add ``condsd``, the conditional SD of each effect at the estimates (lme4's
            ``condVar``).

        Returns
        -------
        DataFrame
            Columns group, term, level, value (and condsd), as R's
            ``as.data.frame(ranef(fit))``; terms of the same grouping factor are listed
            together. Select a factor with ``df[df.group == "Subject"]``.
        """
        frames: dict[str, list[pd.DataFrame]] = {}
        for t, (b, sd) in zip(self.model.reterms, self._modes(condvar)):
            for j, cname in enumerate(t.cnames):
                d = {"group": t.group, "term": cname, "level": t.levels, "value": b[:, j]}
                if condvar:
                    d["condsd"] = sd[:, j]
                frames.setdefault(t.group, []).append(pd.DataFrame(d))
        return pd.concat([f for fs in frames.values() for f in fs], ignore_index=True)

    def coef(self) -> dict[str, pd.DataFrame]:
        """lme4's ``coef(fit)``: per grouping factor, each level's coefficients.

        Returns
        -------
        dict of DataFrame
            One DataFrame per grouping factor, indexed by its levels (index named after the
            factor), with a column per fixed effect holding the fixed effect plus the level's
            random effect of the same name (random effects without a fixed counterpart come
            first, as lme4 puts them).
        """
        out: dict[str, pd.DataFrame] = {}
        by_group: dict[str, dict[str, np.ndarray]] = {}
        levels: dict[str, list] = {}
        for t, (b, _) in zip(self.model.reterms, self._modes(False)):
            cols = by_group.setdefault(t.group, {})
            levels.setdefault(t.group, list(t.levels))
            for j, cname in enumerate(t.cnames):
                cols[cname] = cols.get(cname, 0.0) + b[:, j]
        fe = self.fixef
        for g, cols in by_group.items():
            missing = [c for c in cols if c not in fe.index]
            names = missing + list(fe.index)
            idx = pd.Index(levels[g], name=g)
            df = pd.DataFrame({nm: np.full(len(idx), fe.get(nm, 0.0)) for nm in names}, index=idx)
            for c, v in cols.items():
                df[c] = df[c] + v
            out[g] = df
        return out

    # ---- fitted values and residuals -------------------------------------------------------

    def fitted(self) -> pd.Series:
        """Fitted means at the conditional modes (response scale), on the rows of the fit."""
        return pd.Series(self._mu(), index=self.model.rows, name="fitted")

    def residuals(self, type: str | None = None) -> pd.Series:
        """Residuals of the kinds lme4's ``residuals(fit, type=)`` offers.

        Parameters
        ----------
        type : {"response", "working", "pearson", "deviance"}, optional
            ``"response"``: ``y - mu``; ``"working"``: ``(y - mu) / (dmu/deta)``;
            ``"pearson"``: ``(y - mu) sqrt(w / V(mu))`` (not divided by sigma, as lme4);
            ``"deviance"``: signed square roots of the deviance contributions. The default is
            lme4's: ``"response"`` for an LMM, ``"deviance"`` for a GLMM.

        Returns
        -------
        Series
            Indexed by the rows of the data used in the fit.
        """
        if type is None:
            type = "response" if self._scale() is not None else "deviance"
        type = _validate.check_choice(type, RESIDUAL_TYPES, "type")
        y, w, var, mu_eta = self._response_parts()
        mu = self._mu()
        r = y - mu
        if type == "working":
            r = r / mu_eta
        elif type == "pearson":
            with np.errstate(divide="ignore", invalid="ignore"):
                r = r * np.sqrt(w / var)
        elif type == "deviance":
            r = np.sign(r) * np.sqrt(np.maximum(self._deviance_rows(y, mu, w), 0.0))
        return pd.Series(r, index=self.model.rows, name="residuals")

    def _deviance_rows(self, y: np.ndarray, mu: np.ndarray, w: np.ndarray) -> np.ndarray:
        """Each row's contribution to the deviance (Gaussian: weighted squared residual)."""
        return w * (y - mu) ** 2

    # ---- inference ---------------------------------------------------------------------------

    def _all_names(self) -> list[str]:
        return self.parameter_names() + list(self.fixef.index)

    def confint(self, method: str = "profile", level: float = 0.95,
                parm: list[str] | str | None = None, *, nsim: int = 500,
                seed: int | np.random.Generator | None = None,
                progress: bool | None = None) -> pd.DataFrame:
        """Confidence intervals, rows named as lme4's ``confint(fit, oldNames = FALSE)``.

        Parameters
        ----------
        method : {"profile", "wald", "boot"}
            Case-insensitive. ``"profile"`` inverts the profiled likelihood-ratio test on the
            sd/cor scale (:meth:`profile`; an LMM is profiled on the ML deviance, also for
            REML fits, as lme4 does). ``"wald"``: estimate +- z * SE for the fixed effects;
            the variance parameters get NaN, as lme4 gives NA. ``"boot"``: percentile
            intervals of a parametric bootstrap (:func:`mixedmodels.bootstrap_confint`), as
            lme4's ``confint(fit, method = "boot")``.
        level : float
            Coverage, strictly between 0 and 1.
        parm : list of str or str, optional
            Rows to compute (default all): names from :meth:`parameter_names` or fixed
            effects.
        nsim, seed, progress
            ``method="boot"`` only: replicates (lme4's default 500), the seed of every draw,
            and whether to show a progress bar (see :func:`mixedmodels.bootstrap`).

        Returns
        -------
        DataFrame
            Columns as R labels them (``"2.5 %"``, ``"97.5 %"``); variance parameters first,
            then the fixed effects.

        Raises
        ------
        ValueError
            For an unknown method or parameter name, or a level outside (0, 1).
        """
        _validate.check_level(level)
        method = _validate.check_choice(method, CONFINT_METHODS, "method")
        names = self._all_names()
        which = self._check_parm(parm, names)
        cols = percent_labels(level)
        if method == "wald":
            z = stats.norm.ppf(0.5 + level / 2)
            nv = len(self.parameter_names())
            lo = np.concatenate([np.full(nv, np.nan), self.fixef - z * self.se])
            hi = np.concatenate([np.full(nv, np.nan), self.fixef + z * self.se])
            out = pd.DataFrame({cols[0]: lo, cols[1]: hi}, index=names)
            return out.loc[which]
        if method == "boot":
            from .bootstrap import bootstrap_confint

            out = bootstrap_confint(self, level=level, nsim=nsim, seed=seed, progress=progress)
            return out.reindex(which)
        return self.profile(parm=which, level=level).confint(level)

    @staticmethod
    def _check_parm(parm, names: list[str]) -> list[str]:
        if parm is None:
            return list(names)
        if isinstance(parm, str):
            parm = [parm]
        parm = list(parm)
        bad = [p for p in parm if p not in names]
        if bad:
            raise ValueError(f"`parm`: unknown parameter(s) {bad}; available: {names}")
        return list(dict.fromkeys(parm))  # the order asked for, once each

    def profile(self, parm: list[str] | str | None = None, level: float = 0.95,
                npoints: int = 0) -> Profile:
        """Profile the likelihood, one parameter at a time, on the sd/cor scale.

        Parameters
        ----------
        parm : list of str or str, optional
            Parameters to profile (default all).
        level : float
            The profile reaches at least ``|zeta| = z_{(1 + level)/2}`` on each side.
        npoints : int
            Extra points per side between the estimate and the interval ends (for plots).

        Returns
        -------
        mixedmodels.profile.Profile
            ``zeta`` against each parameter (``.table``, ``.plot()``), ``.confint(level)``.
        """
        _validate.check_level(level)
        which = self._check_parm(parm, self._all_names())
        return profile_model(self, which, level=level, npoints=npoints)

    # ---- display ----------------------------------------------------------------------------

    def summary(self) -> "ModelSummary":
        raise NotImplementedError

    def _repr_html_(self) -> str:
        return self.summary()._repr_html_()
