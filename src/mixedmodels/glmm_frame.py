"""Stage 1 of ``glmer``: the model frame -- the formula evaluated and the response read the
GLM way (binomial proportions and trials, ``cbind(successes, failures)``, ``a/b``, Poisson
counts), validated, with each row's log-probability constant.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from . import _validate
from .covariance import CovarianceLayout
from .families import Family, get_family
from .formula import ModelStructure, build_model, row_argument
from .rows import used_rows
from .offsets import attach_offset

__all__ = ["GlmerFrame", "glmer_frame"]


@dataclass
class GlmerFrame:
    """The model structure plus the response read the GLM way.

    Attributes
    ----------
    ms : ModelStructure
        From :func:`mixedmodels.formula.build_model`.
    family : Family
    y : ndarray
        Response on the mean scale (a proportion for the binomial).
    m : ndarray
        Prior weights (binomial: numbers of trials).
    const : ndarray
        Each row's log-probability constant (binomial coefficient, ``-log y!``).
    weights_label : str or None
        How the weights were given (for the summary's ``Weights:`` line).
    """

    ms: ModelStructure
    family: Family
    y: np.ndarray
    m: np.ndarray
    const: np.ndarray
    weights_label: str | None = None

    @property
    def n(self) -> int:
        return len(self.y)

    @cached_property
    def layout(self) -> CovarianceLayout:
        """The covariance parameters' layout (positions, bounds, lme4's names)."""
        return CovarianceLayout(self.ms.reterms)

    @property
    def scalar(self) -> bool:
        """A single random-effect term with one column: the AGQ kernel applies."""
        r = self.ms.reterms
        return len(r) == 1 and r[0].k == 1


def _weights_array(weights, data: pd.DataFrame, ms) -> tuple[np.ndarray | None, str | None]:
    if weights is None:
        return None, None
    # The rows used, by position (index labels may repeat).
    if isinstance(weights, str):
        if weights not in data.columns:
            raise ValueError(f"`weights`={weights!r} is not a column of data")
        col = data[weights]
        if isinstance(col, pd.DataFrame):
            raise ValueError(f"`weights`={weights!r} names {col.shape[1]} columns of the data (repeated label)")
        w = used_rows(col.to_numpy(dtype=float), ms, data)
        label = weights
    else:
        w_all = np.asarray(weights, dtype=float).ravel()
        if len(w_all) != len(data):
            raise ValueError(f"`weights` has {len(w_all)} values but data has {len(data)} rows")
        w = used_rows(w_all, ms, data)
        label = "weights"
    if not np.all(np.isfinite(w)):
        raise ValueError("`weights` must be finite numbers")
    if np.any(w < 0):
        raise ValueError(f"`weights` must not be negative ({int(np.sum(w < 0))} negative values)")
    return w, label


def _is_whole(a: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    return np.abs(a - np.round(a)) <= tol * np.maximum(1.0, np.abs(a))


def _binomial_response(ms: ModelStructure, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    lhs = ms.parsed.lhs
    if ms.y.ndim == 2:  # cbind(successes, failures)
        if w is not None:
            raise ValueError("`weights` cannot be combined with a cbind(successes, failures) response")
        s, f = ms.y[:, 0], ms.y[:, 1]
        if np.any(s < 0) or np.any(f < 0):
            raise ValueError(f"the response {lhs!r}: successes and failures must not be negative")
        m = s + f
        if not np.all(_is_whole(s) & _is_whole(f)):
            warnings.warn(f"non-integer counts in the binomial response {lhs!r} (R: 'non-integer "
                          "counts in a binomial glm!')", UserWarning, stacklevel=5)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(m > 0, s / np.where(m > 0, m, 1.0), 0.0)
        return y, m
    if ms.lhs_ratio is not None and w is None:
        # `clicks/expos` without weights: successes out of trials, as the post means it.
        num, den = ms.lhs_ratio
        if np.any(den < 0) or np.any(num < 0):
            raise ValueError(f"the response {lhs!r}: counts must not be negative")
        if np.any(num > den):
            raise ValueError(f"the response {lhs!r} has proportions above 1 (numerator > denominator "
                             f"in {int(np.sum(num > den))} rows)")
        m = den.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(m > 0, num / np.where(m > 0, m, 1.0), 0.0)
    else:
        y = np.asarray(ms.y, dtype=float)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"the response {lhs!r} has missing or infinite values "
                             "(a zero denominator?)")
        if np.any(y < 0) or np.any(y > 1):
            raise ValueError(f"the binomial response {lhs!r} must be a proportion in [0, 1] "
                             f"(or 0/1); {int(np.sum((y < 0) | (y > 1)))} values are outside")
        m = np.ones_like(y) if w is None else w
    if not np.all(_is_whole(m * y)):
        warnings.warn(f"non-integer #successes in a binomial glm! (response {lhs!r}: "
                      "weights x proportion is not a whole number in "
                      f"{int(np.sum(~_is_whole(m * y)))} rows)", UserWarning, stacklevel=5)
    return y, m


def _check_zero_denominators(formula: str, data: pd.DataFrame) -> None:
    """``clicks/expos`` with ``expos == 0`` is 0/0: say so before the formula code sees a NaN."""
    from .formula import parse_formula

    if not isinstance(data, pd.DataFrame):
        return
    lhs = parse_formula(formula).lhs
    halves = [h.strip() for h in lhs.split("/")]
    if len(halves) == 2 and all(h in data.columns for h in halves):
        den = pd.to_numeric(data[halves[1]], errors="coerce")
        k = int((den == 0).sum())
        if k:
            raise ValueError(
                f"{k} rows have zero trials ({halves[1]} == 0), so the proportion {lhs} is 0/0 "
                f"there; drop those rows, or write cbind({halves[0]}, {halves[1]} - {halves[0]}), "
                "which keeps them (they carry no information)")


def glmer_frame(formula: str, data: pd.DataFrame, family: str | Family = "binomial",
                weights: str | np.ndarray | None = None, link: str | None = None,
                offset: str | np.ndarray | None = None) -> GlmerFrame:
    """Stage 1: evaluate the formula and read the response (see :func:`glmer`)."""
    fam = get_family(family, link)
    _check_zero_denominators(formula, data)
    _validate.check_dataframe(data, allow_empty=False)
    # Per-row arguments: a Series is matched by index; a row missing one is dropped (warned).
    w_rows, o_rows = row_argument(weights, data, "weights"), row_argument(offset, data, "offset")
    ms = build_model(formula, data, row_arguments={"weights": w_rows, "offset": o_rows})
    ms = attach_offset(ms, offset if isinstance(offset, str) or o_rows is None else o_rows.to_numpy(), data)
    if w_rows is not None and not isinstance(weights, str):
        weights = w_rows.to_numpy()
    if not ms.reterms:
        raise ValueError(f"formula {formula!r} has no random-effects term such as (1 | g); "
                         "use a GLM for a model without random effects")
    frame = frame_from_model(ms, data, fam, weights)
    # Binomial counts: every trial is an observation (rows of aggregated data carry many).
    nobs = int(round(float(np.sum(frame.m)))) if fam.name == "binomial" else ms.n
    _validate.check_glmm_structure(ms, max(nobs, ms.n))
    _validate.check_glmm_response(frame.y, frame.m, ms.parsed.lhs, fam.name)
    return frame


def _positive_response(ms: ModelStructure, w, fam: Family) -> tuple[np.ndarray, np.ndarray]:
    """The response of a Gamma, inverse-Gaussian (positive) or negative binomial (counts) fit."""
    lhs = ms.parsed.lhs
    if ms.y.ndim != 1:
        raise ValueError(f"a {fam.name} response must be a single column, got {lhs!r}")
    y = np.asarray(ms.y, dtype=float)
    if fam.name == "negative_binomial":
        if np.any(y < 0) or not np.all(_is_whole(y)):
            raise ValueError(f"the negative binomial response {lhs!r} must be counts (whole "
                             f"numbers >= 0); {int(np.sum((y < 0) | ~_is_whole(y)))} values are not")
    elif np.any(y <= 0):
        raise ValueError(f"the {fam.name} response {lhs!r} must be positive; "
                         f"{int(np.sum(y <= 0))} values are zero or negative")
    return y, (np.ones_like(y) if w is None else w)


def frame_from_model(ms: ModelStructure, data: pd.DataFrame, fam: Family,
                     weights: str | np.ndarray | None = None) -> GlmerFrame:
    """Read the response of an evaluated formula the GLM way (the second half of
    :func:`glmer_frame`; the Dask fitter runs it on each partition).

    Parameters
    ----------
    ms : ModelStructure
        The evaluated formula (rows ``ms.rows`` of ``data``).
    data : DataFrame
        The data ``ms`` was built from (for a ``weights`` column).
    fam : Family
    weights : str or array, optional
        As in :func:`mixedmodels.glmer`.
    """
    w, wlabel = _weights_array(weights, data, ms)
    if fam.name == "binomial":
        y, m = _binomial_response(ms, w)
    elif fam.name != "poisson":
        y, m = _positive_response(ms, w, fam)
    else:
        if ms.y.ndim != 1:
            raise ValueError("a Poisson response must be a single column of counts")
        y = np.asarray(ms.y, dtype=float)
        if np.any(y < 0):
            raise ValueError(f"the Poisson response {ms.parsed.lhs!r} has "
                             f"{int(np.sum(y < 0))} negative counts")
        if not np.all(_is_whole(y)):
            warnings.warn(f"the Poisson response {ms.parsed.lhs!r} has non-integer counts in "
                          f"{int(np.sum(~_is_whole(y)))} rows; the log-likelihood uses "
                          "lgamma(y + 1) for log y!", UserWarning, stacklevel=4)
        m = np.ones_like(y) if w is None else w
    zero = m == 0
    if np.any(zero):
        warnings.warn(f"{int(zero.sum())} rows have zero trials/weight and carry no information",
                      UserWarning, stacklevel=4)
    const = fam.log_const(y, m)
    return GlmerFrame(ms, fam, y, m, const, wlabel)


# =========================================================================================
# Stage 2: the objective
# =========================================================================================
