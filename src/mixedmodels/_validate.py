"""Small named input checks (in the spirit of lme4's R/modular.R checkers).

Each function raises ``ValueError`` with a message that names the argument or column at fault,
so a reader never meets a numpy traceback for a mistake in their input.
"""

from __future__ import annotations

from numbers import Integral, Real
from typing import Sequence

import numpy as np
import pandas as pd

from .formula import ModelStructure

__all__ = [
    "check_count", "check_real", "check_positive", "check_dataframe", "check_columns", "check_level", "check_choice", "check_theta",
    "check_nlevels", "check_nobs_vs_nre", "check_has_random", "check_lmm_structure", "predictor_columns",
]


def check_count(value: object, name: str, minimum: int) -> int:
    """``value`` must be a whole number of at least ``minimum``; returns it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"`{name}` must be a whole number, got {value!r}")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value}")
    return int(value)


def check_real(value: object, name: str, nonnegative: bool = False) -> float:
    """``value`` must be a finite number (and >= 0 with ``nonnegative``); returns a ``float``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if nonnegative and value < 0:
        raise ValueError(f"`{name}` must be zero or positive, got {value}")
    return float(value)


def check_positive(value: object, name: str) -> float:
    """``value`` must be a finite number above zero; returns a ``float``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}")
    return float(value)


def check_dataframe(data: object, name: str = "data", allow_empty: bool = True) -> None:
    """``data`` must be a pandas DataFrame (with rows, unless ``allow_empty``)."""
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"{name} must be a pandas DataFrame, got {type(data).__name__}")
    if not allow_empty and len(data) == 0:
        raise ValueError(f"{name} has no rows (columns: {', '.join(map(str, data.columns)) or 'none'})")


def check_columns(data: pd.DataFrame, columns: Sequence[str], name: str = "data") -> None:
    """Every name in ``columns`` must be a column of ``data``."""
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ValueError(f"{name} is missing column(s) {', '.join(repr(c) for c in missing)} that the model needs")


def check_level(level: float) -> None:
    """A confidence level strictly between 0 and 1."""
    if not isinstance(level, (int, float, np.floating)) or not 0 < float(level) < 1:
        raise ValueError(f"level must be a number strictly between 0 and 1, got {level!r}")


def check_choice(value: str, choices: Sequence[str], name: str) -> str:
    """``value`` (case-insensitive) must be one of ``choices``."""
    if not isinstance(value, str) or value.lower() not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value.lower()


def check_theta(theta: object, ntheta: int, lower: np.ndarray, name: str = "theta") -> np.ndarray:
    """A vector of ``ntheta`` finite numbers respecting the lower bounds."""
    try:
        arr = np.asarray(theta, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a vector of {ntheta} numbers") from None
    if arr.size != ntheta:
        raise ValueError(f"{name} must have {ntheta} elements, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    if np.any(arr < lower):
        raise ValueError(f"{name}: diagonal elements of the relative covariance factor must be >= 0")
    return arr


def check_has_random(model: ModelStructure) -> None:
    """A mixed model needs at least one random-effects term."""
    if not model.reterms:
        raise ValueError(
            f"formula {model.formula!r} has no random-effects term such as (1 | group); "
            "for a model without random effects use ordinary least squares"
        )


def check_nlevels(model: ModelStructure) -> None:
    """Each grouping factor needs fewer levels than observations (lme4's checkNlevels)."""
    for t in model.reterms:
        if t.nlevels >= model.n:
            raise ValueError(
                f"grouping factor {t.group!r} has {t.nlevels} levels for {model.n} observations; "
                "the number of levels must be smaller than the number of observations "
                "(otherwise the random effect and the residual cannot be told apart)"
            )


def check_nobs_vs_nre(model: ModelStructure) -> None:
    """More observations than random effects in each term (lme4's check.nobs.vs.nRE)."""
    for t in model.reterms:
        if t.q >= model.n:
            raise ValueError(
                f"random-effects term {t.spec} has {t.q} random effects ({t.k} per level x {t.nlevels} levels) "
                f"for only {model.n} observations; the random-effects parameters and the residual "
                "variance are unidentifiable"
            )


def check_response_varies(model: ModelStructure) -> None:
    """A constant response leaves nothing to model."""
    y = np.asarray(model.y)
    if y.ndim != 1:
        raise ValueError(f"the response {model.parsed.lhs!r} must be a single numeric column for a linear mixed model")
    if np.ptp(y) == 0:
        raise ValueError(f"the response {model.parsed.lhs!r} is constant")


def check_df(model: ModelStructure) -> None:
    """More observations than fixed effects."""
    if model.n <= model.p:
        raise ValueError(f"{model.n} observations are not enough for {model.p} fixed effects")


def check_lmm_structure(model: ModelStructure) -> None:
    """All structural checks of a linear mixed model, in lme4's order."""
    check_has_random(model)
    check_response_varies(model)
    check_df(model)
    check_nlevels(model)
    check_nobs_vs_nre(model)


def predictor_columns(model: ModelStructure, include_random: bool) -> list[str]:
    """The data columns a prediction needs (grouping columns only with ``include_random``)."""
    cols = list(model.fixed_variables)
    if include_random:
        for t in model.reterms:
            cols += list(t.variables)
            cols += list(t.spec.group_vars)
    return list(dict.fromkeys(cols))


def check_whole_number(value: object, name: str, minimum: int = 1) -> int:
    """A count given as an int or a whole float (``nagq=2.0``); returns it as ``int``."""
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        value = int(value)
    return check_count(value, name, minimum)


def check_glmm_nlevels(model: ModelStructure, nobs: int | None = None) -> None:
    """No grouping factor with more levels than observations (lme4's checkNlevels with
    ``allow.n = TRUE``, as ``glFormula`` calls it: an observation-level effect is allowed)."""
    n = model.n if nobs is None else nobs
    for t in model.reterms:
        if t.nlevels > n:
            raise ValueError(
                f"grouping factor {t.group!r} has {t.nlevels} levels for {n} observations; "
                "the number of levels must not exceed the number of observations")


def check_glmm_nobs_vs_nre(model: ModelStructure, nobs: int | None = None) -> None:
    """No term with more random effects than observations (lme4's checkZdims /
    ``check.nobs.vs.nRE`` with ``allow.n = TRUE``, as ``glFormula`` runs them).

    ``nobs`` counts the observations the likelihood sees: for a binomial response given as
    successes out of trials, the trials (lme4 counts rows, and so refuses a random slope on
    aggregated data whose rows carry thousands of trials each)."""
    n = model.n if nobs is None else nobs
    for t in model.reterms:
        if t.q > n:
            raise ValueError(
                f"random-effects term {t.spec} has {t.q} random effects ({t.k} per level x {t.nlevels} "
                f"levels) for only {n} observations; the random-effects parameters are "
                "unidentifiable (lme4: 'number of observations <= number of random effects')")


def check_glmm_structure(model: ModelStructure, nobs: int | None = None) -> None:
    """The structural checks ``glmer`` shares with ``lmer`` (lme4's glFormula runs them too);
    ``nobs`` as in :func:`check_glmm_nobs_vs_nre`."""
    check_has_random(model)
    check_glmm_nlevels(model, nobs)
    check_glmm_nobs_vs_nre(model, nobs)


def check_glmm_response(y: np.ndarray, m: np.ndarray, lhs: str, family: str) -> None:
    """A GLMM response must vary among the rows that carry weight (lme4: "Response is
    constant"); all-zero weights or trials leave nothing to fit."""
    live = np.asarray(m) > 0
    if not live.any():
        raise ValueError("every row has zero weight (or zero trials): there is nothing to fit; "
                         "check the `weights` argument or the trials column")
    yl = np.asarray(y)[live]
    if np.ptp(yl) == 0:
        what = {0.0: "every observation is 0", 1.0: "every observation is 1"}.get(float(yl[0]), f"every value is {yl[0]:g}")
        if family == "poisson" and yl[0] == 0:
            extra = " (all-zero counts: the log of the mean would be minus infinity)"
        elif family == "binomial" and yl[0] in (0.0, 1.0):
            extra = " (the estimates would run off to infinity)"
        else:
            # A constant strictly inside the range has a finite fit (the intercept alone, every
            # variance zero); like lme4's check.response.not.const, it is refused as no data to
            # estimate effects or variances from.
            extra = (" (there is no variation to estimate effects or variances from; lme4 "
                     "refuses it too: 'Response is constant')")
        raise ValueError(f"the response {lhs!r} is constant: {what}{extra}")


def check_start(start: object, names: list[str], name: str = "start") -> np.ndarray:
    """A vector of starting values, one per parameter named in ``names`` (in that order)."""
    try:
        arr = np.asarray(start, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a vector of {len(names)} numbers ({', '.join(names)})") from None
    if arr.size != len(names):
        raise ValueError(f"`{name}` must have {len(names)} values, in this order: {', '.join(names)}; "
                         f"got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must be finite numbers")
    return arr
