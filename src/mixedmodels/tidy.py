"""Results in the shapes pandas users expect: a coefficient table, long ("tidy") frames of the
fixed and random effects (as R's broom.mixed), and a plain dictionary / JSON of a fit's
estimates for saving results without pickle.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["coef_table", "tidy", "to_dict", "to_json"]


def _is_glmm(fit) -> bool:
    return hasattr(fit, "frame") and hasattr(fit, "family")


def _ci_columns(level: float) -> list[str]:
    a = (1 - level) / 2
    return [f"{100 * a:.3g} %", f"{100 * (1 - a):.3g} %"]


def coef_table(fit, level: float = 0.95) -> pd.DataFrame:
    """The fixed effects as a table: estimate, standard error, Wald statistic, p-value, interval.

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
    level : float
        Coverage of the Wald interval, strictly between 0 and 1.

    Returns
    -------
    DataFrame
        One row per fixed effect (design-matrix order), columns ``Estimate``,
        ``Std. Error``, ``z value`` (GLMM) or ``t value`` (LMM), ``Pr(>|z|)`` and the interval
        (``"2.5 %"``, ``"97.5 %"``: estimate +- z * SE). For an LMM the p-value and interval
        use the normal reference distribution, which is anti-conservative with few groups
        (lme4 prints no p-value there; profile or bootstrap intervals are better).
    """
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"`level` must be strictly between 0 and 1, got {level!r}")
    est = fit.fixef.astype(float)
    se = fit.se.astype(float)
    z = est / se
    q = stats.norm.ppf(0.5 + level / 2)
    lo, hi = _ci_columns(level)
    stat = "z value" if _is_glmm(fit) else "t value"
    return pd.DataFrame({"Estimate": est, "Std. Error": se, stat: z,
                         "Pr(>|z|)": 2 * stats.norm.sf(np.abs(z)),
                         lo: est - q * se, hi: est + q * se})


def tidy(fit, effects: str = "fixed", level: float = 0.95) -> pd.DataFrame:
    """A long frame of one kind of estimate (R's ``broom.mixed::tidy``).

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
    effects : {"fixed", "ran_pars", "ran_vals", "all"}
        ``"fixed"``: one row per fixed effect (estimate, std_error, statistic, p_value,
        conf_low, conf_high: Wald). ``"ran_pars"``: the random-effect standard deviations and
        correlations (terms ``sd__(Intercept)``, ``cor__(Intercept).Days``), the residual SD
        of an LMM (group ``Residual``, term ``sd__Observation``) and a GLMM family's
        dispersion. ``"ran_vals"``: the conditional modes of the random effects, one row per
        level and term, ``std_error`` their conditional SD. ``"all"``: fixed and ran_pars.
    level : float
        Coverage of the Wald intervals of the fixed effects.

    Returns
    -------
    DataFrame
        Columns ``effect``, ``group``, ``level``, ``term``, ``estimate``, ``std_error``,
        ``statistic``, ``p_value``, ``conf_low``, ``conf_high`` (NaN / None where they do not
        apply).
    """
    cols = ["effect", "group", "level", "term", "estimate", "std_error", "statistic", "p_value",
            "conf_low", "conf_high"]
    choices = ("fixed", "ran_pars", "ran_vals", "all")
    if effects not in choices:
        raise ValueError(f"`effects` must be one of {choices}, got {effects!r}")
    if effects == "all":
        return pd.concat([tidy(fit, "fixed", level), tidy(fit, "ran_pars", level)], ignore_index=True)
    if effects == "fixed":
        ct = coef_table(fit, level)
        out = pd.DataFrame({
            "effect": "fixed", "group": None, "level": None, "term": ct.index,
            "estimate": ct["Estimate"].to_numpy(), "std_error": ct["Std. Error"].to_numpy(),
            "statistic": ct.iloc[:, 2].to_numpy(), "p_value": ct["Pr(>|z|)"].to_numpy(),
            "conf_low": ct.iloc[:, 4].to_numpy(), "conf_high": ct.iloc[:, 5].to_numpy()})
        return out[cols].reset_index(drop=True)
    if effects == "ran_vals":
        re = fit.ranef(condvar=True)
        out = pd.DataFrame({"effect": "ran_vals", "group": re["group"], "level": re["level"].astype(str),
                            "term": re["term"], "estimate": re["value"], "std_error": re["condsd"]})
        for c in ("statistic", "p_value", "conf_low", "conf_high"):
            out[c] = np.nan
        return out[cols]
    rows = []
    for _, r in fit.varcorr().iterrows():
        v2 = r["var2"]
        if r["group"] == "Residual":
            term = "sd__Observation"
        elif pd.isna(v2):
            term = f"sd__{r['var1']}"
        else:
            term = f"cor__{r['var1']}.{v2}"
        rows.append(("ran_pars", r["group"], None, term, float(r["sdcor"])))
    disp = getattr(fit, "dispersion", None)
    if disp is not None:
        rows.append(("ran_pars", "Residual", None, getattr(fit.family, "dispersion_name", "dispersion"),
                     float(disp)))
    out = pd.DataFrame(rows, columns=cols[:5])
    for c in cols[5:]:
        out[c] = np.nan
    return out[cols]


def _plain(x):
    """numpy / pandas scalars and arrays -> JSON-able Python values (NaN -> None)."""
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_plain(v) for v in x.tolist()]
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return None if math.isnan(x) else x
    if x is None or isinstance(x, (int, str)):
        return x
    return str(x)


def to_dict(fit) -> dict:
    """A fit's estimates as plain Python values (JSON-ready; no arrays, no pickle).

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult

    Returns
    -------
    dict
        Keys: ``model`` ("lmer" or "glmer"), ``formula``, ``family``, ``link``, ``reml``,
        ``nagq``, ``nobs``, ``ngroups``, ``fixef`` and ``se`` (name -> value), ``vcov``
        (rows of the fixed effects' covariance matrix, in ``fixef`` order), ``theta`` (lme4's
        relative covariance parameters; for a GLMM the factor itself), ``sigma`` (LMM residual
        SD, else None), ``dispersion``, ``varcorr`` (records as ``varcorr()``), ``loglik``,
        ``aic``, ``bic``, ``deviance``, ``npar``, ``df_resid``, ``converged``, ``singular``,
        ``version`` (of mixedmodels). NaN becomes None.
    """
    from . import __version__

    glmm = _is_glmm(fit)
    vc = fit.varcorr()
    vc = vc.astype(object).where(pd.notna(vc), None)
    d = {
        "model": "glmer" if glmm else "lmer",
        "formula": fit.formula,
        "family": fit.family.name if glmm else "gaussian",
        "link": fit.family.link if glmm else "identity",
        "reml": bool(getattr(fit, "reml", False)),
        "nagq": int(fit.nagq) if glmm else None,
        "nobs": int(fit.nobs),
        "ngroups": dict(fit.ngroups),
        "fixef": fit.fixef.to_dict(),
        "se": fit.se.to_dict(),
        "vcov": np.asarray(fit.vcov, dtype=float),
        "theta": np.asarray(fit.theta, dtype=float),
        "sigma": None if glmm else float(fit.sigma),
        "dispersion": getattr(fit, "dispersion", None),
        "varcorr": vc.to_dict(orient="records"),
        "loglik": float(fit.loglik),
        "aic": float(fit.aic),
        "bic": float(fit.bic),
        "deviance": float(fit.deviance),
        "npar": int(fit.npar),
        "df_resid": int(fit.df_resid),
        "converged": bool(fit.converged),
        "singular": bool(fit.singular),
        "version": __version__,
    }
    return _plain(d)


def to_json(fit, path=None, indent: int | None = 1) -> str:
    """:func:`to_dict` as JSON text, written to ``path`` too when given.

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
    path : str or path-like, optional
        File to write (UTF-8).
    indent : int or None
        JSON indentation.

    Returns
    -------
    str
    """
    text = json.dumps(to_dict(fit), indent=indent)
    if path is not None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return text
