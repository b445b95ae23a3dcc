"""Model comparison: likelihood-ratio tests of nested fits, as lme4's ``anova(m1, m2, ...)``.

:func:`anova` (alias :func:`compare`) lines the fits up by number of parameters and tests each
against the one before it: ``Chisq = 2 (logLik_i - logLik_{i-1})`` on ``npar_i - npar_{i-1}``
degrees of freedom. Restricted-likelihood (REML) criteria of models with different fixed
effects are not comparable, so REML fits are first refitted by maximum likelihood, with a
notice, exactly as lme4 does (``refit=False`` keeps REML when every fit shares its fixed
effects).

Fits must be of the same observations (same rows, same response) and nested: the smaller
model's fixed-effect columns and random-effect terms must all be in the larger one. Anything
else is refused with a message that says which check failed; a likelihood-ratio test of
non-nested models has no chi-square reference distribution (compare their AIC instead).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["anova", "compare", "RefitNotice"]


class RefitNotice(UserWarning):
    """A REML fit was refitted by ML before a likelihood-ratio test (lme4's message)."""


def _is_reml(fit) -> bool:
    return bool(getattr(fit, "reml", False))


def _response(fit) -> np.ndarray:
    frame = getattr(fit, "frame", None)
    if frame is not None and hasattr(frame, "y"):  # a GLMM: the response read the GLM way
        return np.column_stack([np.asarray(frame.y, float), np.asarray(frame.m, float)])
    return np.asarray(fit.model.y, dtype=float)


def _re_columns(fit) -> set[tuple[str, str]]:
    """(grouping factor, column) pairs of every random-effect term."""
    return {(t.group, c) for t in fit.model.reterms for c in t.cnames}


def _kind(fit) -> str:
    fam = getattr(fit, "family", None)
    if fam is None:
        return "gaussian (lmer)"
    return f"{fam.name} ({fam.link})"


def _check_same_data(fits: list, names: list[str]) -> None:
    ref, rname = fits[0], names[0]
    for f, nm in zip(fits[1:], names[1:]):
        if f.nobs != ref.nobs:
            raise ValueError(
                f"models were not all fitted to the same data: {rname} has {ref.nobs} observations "
                f"and {nm} has {f.nobs} (missing values in a variable one model uses drop rows "
                "from that model only; fit both on the same complete rows)")
        if not f.model.rows.equals(ref.model.rows):
            raise ValueError(f"models were not all fitted to the same data: {rname} and {nm} "
                             "use different rows of the data")
        a, b = _response(ref), _response(f)
        if a.shape != b.shape or not np.allclose(a, b, rtol=1e-12, atol=0.0):
            raise ValueError(f"models were not all fitted to the same response: {rname} "
                             f"({ref.model.parsed.lhs}) and {nm} ({f.model.parsed.lhs}) differ")
        if _kind(f) != _kind(ref):
            raise ValueError(f"models differ in family: {rname} is {_kind(ref)}, {nm} is {_kind(f)}; "
                             "a likelihood-ratio test needs the same family and link")


def _check_nested(small, large, sname: str, lname: str) -> None:
    fx_s, fx_l = set(small.fixef.index), set(large.fixef.index)
    re_s, re_l = _re_columns(small), _re_columns(large)
    missing = sorted(fx_s - fx_l) + [f"({c} | {g})" for g, c in sorted(re_s - re_l)]
    if missing or small.npar == large.npar and (fx_s != fx_l or re_s != re_l):
        what = ", ".join(missing) if missing else "terms"
        raise ValueError(
            f"models are not nested: {sname} has {what} that {lname} lacks; a likelihood-ratio "
            "test needs each model to contain the one before it (compare non-nested models "
            "by AIC/BIC instead)")


def _default_names(fits: list) -> list[str]:
    """Each fit's formula right of ``~`` (blanks folded), or ``m1``, ``m2``, ... if two agree."""
    rhs = []
    for f in fits:
        formula = str(getattr(f, "formula", ""))
        rhs.append(" ".join(formula.split("~", 1)[-1].split()))
    if all(rhs) and len(set(rhs)) == len(rhs):
        return rhs
    return [f"m{i + 1}" for i in range(len(fits))]


def _ml_refit(fit):
    from .refit import update

    return update(fit, reml=False)


def anova(*fits, refit: bool = True, names: list[str] | None = None) -> pd.DataFrame:
    """Likelihood-ratio tests of nested mixed models (lme4's ``anova.merMod``).

    Parameters
    ----------
    *fits : LinearMixedModel or GlmerResult
        Two or more fits of the same data, in any order (they are sorted by number of
        parameters).
    refit : bool
        Refit REML fits by maximum likelihood first (lme4's default, with a
        :class:`RefitNotice`). ``False`` keeps the REML criterion, which is valid only when
        the fits share their fixed effects (then they differ in random effects only).
    names : list of str, optional
        Row labels. lme4 labels rows with the fits' variable names, which Python cannot see;
        the default is each fit's formula right of ``~`` (``"Days + (1 | Subject)"``: the
        fits share their response), or ``m1``, ``m2``, ... in the order given where two
        right-hand sides are the same.

    Returns
    -------
    DataFrame
        One row per model, ordered by ``npar``, with lme4's columns: ``npar``, ``AIC``,
        ``BIC``, ``logLik``, ``deviance`` (``-2 logLik``), ``Chisq`` (twice the gain in
        log-likelihood over the row above, floored at 0 as lme4 does), ``Df`` (the
        difference in ``npar``) and ``Pr(>Chisq)`` (upper chi-square tail; NaN on the first
        row and where ``Df`` is 0).

    Raises
    ------
    ValueError
        Fewer than two fits; fits of different rows, responses or families; fits that are
        not nested; ``refit=False`` with REML fits whose fixed effects differ.

    Notes
    -----
    A variance tested on its boundary (is a random effect needed at all?) makes the
    chi-square p-value conservative (about twice too large for one variance); lme4 reports
    it unadjusted and so do we.

    Examples
    --------
    >>> m0 = mm.lmer("Reaction ~ Days + (1 | Subject)", sleepstudy)        # doctest: +SKIP
    >>> m1 = mm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)     # doctest: +SKIP
    >>> mm.anova(m0, m1)                                                  # doctest: +SKIP
    """
    fits = list(fits)
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = list(fits[0])
    if len(fits) < 2:
        raise ValueError("anova() compares two or more fits; for one fit see its summary()")
    for i, f in enumerate(fits):
        if not all(hasattr(f, a) for a in ("loglik", "npar", "nobs", "fixef", "model")):
            raise ValueError(f"argument {i + 1} is not a fitted mixed model (got {type(f).__name__})")
    if names is None:
        names = _default_names(fits)
    elif len(names) != len(fits) or len(set(names)) != len(names):
        raise ValueError(f"`names` must give {len(fits)} distinct labels, got {names!r}")
    names = [str(n) for n in names]
    _check_same_data(fits, names)
    reml = [_is_reml(f) for f in fits]
    if any(reml):
        if refit:
            which = ", ".join(n for n, r in zip(names, reml) if r)
            warnings.warn(f"refitting model(s) with ML (instead of REML): {which}", RefitNotice,
                          stacklevel=2)
            fits = [_ml_refit(f) if r else f for f, r in zip(fits, reml)]
        else:
            fx = [tuple(f.fixef.index) for f in fits]
            if len(set(fx)) > 1 or not all(reml):
                raise ValueError("refit=False compares REML criteria, which is valid only for REML "
                                 "fits with the same fixed effects; these differ (use refit=True)")
    order = sorted(range(len(fits)), key=lambda i: (fits[i].npar, i))
    fits = [fits[i] for i in order]
    names = [names[i] for i in order]
    for a in range(len(fits) - 1):
        _check_nested(fits[a], fits[a + 1], names[a], names[a + 1])
    npar = np.array([f.npar for f in fits], dtype=int)
    ll = np.array([float(f.loglik) for f in fits])
    n = fits[0].nobs
    chisq = np.concatenate([[np.nan], 2.0 * np.maximum(0.0, np.diff(ll))])
    df = np.concatenate([[np.nan], np.diff(npar)]).astype(float)
    with np.errstate(invalid="ignore"):
        p = np.where(df > 0, stats.chi2.sf(chisq, np.where(df > 0, df, 1.0)), np.nan)
    return pd.DataFrame({
        "npar": npar,
        "AIC": -2.0 * ll + 2.0 * npar,
        "BIC": -2.0 * ll + np.log(n) * npar,
        "logLik": ll,
        "deviance": -2.0 * ll,
        "Chisq": chisq,
        "Df": df,
        "Pr(>Chisq)": p,
    }, index=pd.Index(names, name="model"))


#: The same function under a plainer name.
compare = anova
