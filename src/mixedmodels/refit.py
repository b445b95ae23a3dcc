"""Fitting a model again: :func:`refit` with a new response, :func:`update` with changes.

``refit(fit, y_new)`` is lme4's ``refit(fit, newresp)``: the same design matrices, random-effect
structure, weights and offsets, a new response, the old estimates as the starting point (so a
parametric bootstrap replicate costs a few optimizer steps, not a fresh formula evaluation).
``update(fit, formula=..., reml=..., ...)`` is R's ``update``: the original call again, with
the changes given; ``"."`` in a formula stands for the old side of ``~`` (``". ~ . + x"``).
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pandas as pd

__all__ = ["refit", "update"]


def _is_glmm(fit) -> bool:
    return hasattr(fit, "frame") and hasattr(fit, "family")


def _check_newresponse(fit, newresponse) -> np.ndarray:
    n = fit.nobs
    if isinstance(newresponse, pd.DataFrame):
        if newresponse.shape[1] != 1:
            raise ValueError(f"`newresponse` must be one column; got a DataFrame with "
                             f"{newresponse.shape[1]} columns (refit each column in turn)")
        newresponse = newresponse.iloc[:, 0]
    y = np.asarray(newresponse, dtype=float).ravel() if not isinstance(newresponse, str) else None
    if y is None or y.shape != (n,):
        got = "a string" if y is None else f"{np.size(newresponse)} values"
        raise ValueError(f"`newresponse` must have one value per observation used in the fit "
                         f"({n}); got {got}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"`newresponse` has {int(np.sum(~np.isfinite(y)))} missing or infinite values")
    return y.copy()


def refit(fit, newresponse, *, start: np.ndarray | None = None):
    """Refit a model to a new response (lme4's ``refit``).

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
        The fitted model whose design, random-effect structure, weights and offsets are kept.
    newresponse : array-like, shape (nobs,)
        The new response, one value per observation used in the fit, in the fit's row order,
        on the scale the fitter stores it: for ``lmer`` the (transformed) response, for a
        binomial GLMM the proportion of successes (out of the same numbers of trials), for
        the other families the response itself. :func:`mixedmodels.bootstrap.simulate`
        returns responses on this scale.
    start : array, optional
        Starting parameters (default: the fit's estimates).

    Returns
    -------
    LinearMixedModel or GlmerResult
        A new fit; ``fit`` is not modified.

    Raises
    ------
    ValueError
        If ``newresponse`` has the wrong length or non-finite values, or is not valid for
        the family (a negative count, a proportion outside [0, 1]).
    """
    y = _check_newresponse(fit, newresponse)
    if _is_glmm(fit):
        return _refit_glmm(fit, y, start)
    from .lmm import LinearMixedModel, LMMProblem, optimize_theta, single_thread_blas

    model = dataclasses.replace(fit.model, y=y, lhs_terms=[y], lhs_ratio=None)
    with single_thread_blas():
        problem = LMMProblem(model, reml=fit.reml)
        theta0 = np.asarray(fit.theta if start is None else start, dtype=float)
        optsum = optimize_theta(problem, theta0)
        out = LinearMixedModel(model, problem, optsum, getattr(fit, "data_name", None))
    out.call = getattr(fit, "call", None)
    return out


def _refit_glmm(fit, y: np.ndarray, start):
    from . import glmm as G

    frame = fit.frame
    fam = frame.family
    if fam.name == "binomial" and (np.any(y < 0) or np.any(y > 1)):
        raise ValueError("`newresponse` of a binomial fit is a proportion of successes in [0, 1]")
    if fam.name != "binomial" and np.any(y < 0):
        raise ValueError(f"`newresponse` of a {fam.name} fit must not be negative")
    new_frame = dataclasses.replace(frame, y=y, const=fam.log_const(y, frame.m))
    x0 = np.asarray(fit.opt.final if start is None else start, dtype=float)
    if fit.nagq == 0:
        # nAGQ = 0 fits optimize theta only (glmm_nagq0.py); warm-started at the estimates.
        with G.single_thread_blas(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = G.fit_frame(new_frame, 0, x0)
        out.call = getattr(fit, "call", None)
        return out
    with G.single_thread_blas():
        obj = G.make_objective(new_frame, fit.nagq)
        try:
            opt = G.optimize_glmer(obj, x0)
        except FloatingPointError:
            opt = G.optimize_glmer(obj, G._default_start(new_frame, obj))
        opt = G.check_optimum(obj, opt)
        out = G.GlmerResult(new_frame, obj, opt, fit.nagq)
    out.call = getattr(fit, "call", None)
    return out


def _substitute_dot(new: str, old: str) -> str:
    """Replace a standalone ``.`` in one side of a formula by the old side."""
    if old and re.search(r"(?<![\w.])\.(?![\w.])", new):
        return re.sub(r"(?<![\w.])\.(?![\w.])", lambda _: old, new)
    return new


def update(fit, formula: str | None = None, **changes):
    """Fit the model again with some arguments changed (R's ``update``).

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
        A fit made by :func:`mixedmodels.lmer` or :func:`mixedmodels.glmer`.
    formula : str, optional
        The new formula. ``.`` stands for the old left or right side:
        ``". ~ . + age"`` adds a fixed effect, ``". ~ . - age"`` drops one,
        ``"log(y) ~ ."`` changes the response.
    **changes
        Any other argument of the original fitter, e.g. ``reml=False``, ``data=...``,
        ``nagq=10``, ``weights="w"``, ``offset=...``.

    Returns
    -------
    LinearMixedModel or GlmerResult

    Raises
    ------
    ValueError
        If the fit does not record how it was made (it was not made by ``lmer`` or
        ``glmer``), or an argument is not one the fitter accepts.
    """
    call = getattr(fit, "call", None)
    if not call:
        raise ValueError("this fit does not record the call that made it (fit it with "
                         "mm.lmer or mm.glmer), so it cannot be updated")
    from . import glmm, lmm

    fitter = {"lmer": lmm.lmer, "glmer": glmm.glmer}[call["fitter"]]
    args = dict(call["args"])
    if formula is not None:
        if not isinstance(formula, str) or "~" not in formula:
            raise ValueError(f"`formula` must be a formula string such as '. ~ . + x', got {formula!r}")
        old_lhs, old_rhs = (s.strip() for s in args["formula"].split("~", 1))
        new_lhs, new_rhs = (s.strip() for s in formula.split("~", 1))
        args["formula"] = (f"{_substitute_dot(new_lhs, old_lhs)} ~ "
                           f"{_substitute_dot(new_rhs, old_rhs)}")
    unknown = [k for k in changes if k not in args]
    if unknown:
        raise ValueError(f"{call['fitter']}() has no argument(s) {unknown}; it takes "
                         f"{sorted(args)}")
    args.update(changes)
    return fitter(**args)
