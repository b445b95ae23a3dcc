"""Precision (prior) weights for ``lmer``: rows whose residual variance is ``sigma^2 / w``.

A row that is the mean of ``w`` observations (meta-analysis data, aggregated experiments)
has weight ``w``. The model is fitted as an unweighted one on rows scaled by ``sqrt(w)``
(``y``, ``X`` and every random-effect column), and the log-likelihood gets back the
Jacobian of that scaling, ``+ sum(log w) / 2``, so it is the likelihood of the data as given
(lme4's ``ldW``). :func:`working_model` is that transformation; offsets are subtracted from
the response first.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .rows import used_rows

__all__ = ["attach_weights", "working_model"]


def attach_weights(ms, weights, data: pd.DataFrame):
    """The model structure with ``lmer``'s ``weights=`` argument (None: unchanged).

    Parameters
    ----------
    ms : ModelStructure
        Not modified.
    weights : str, array-like (len(data),) or None
        A column of ``data`` or one value per row of ``data``; strictly positive and finite.
    data : DataFrame
        The data given to the fitter (rows dropped for missing values are dropped from the
        weights too).

    Raises
    ------
    ValueError
        A missing column, a wrong length, or weights that are not positive finite numbers.
    """
    if weights is None:
        return ms
    # The rows used, by position (index labels may repeat).
    if isinstance(weights, str):
        if weights not in data.columns:
            raise ValueError(f"`weights`={weights!r} is not a column of the data")
        col = data[weights]
        if isinstance(col, pd.DataFrame):
            raise ValueError(f"`weights`={weights!r} names {col.shape[1]} columns of the data (repeated label)")
        if not pd.api.types.is_numeric_dtype(col.dtype):
            raise ValueError(f"`weights` column {weights!r} must be numeric, got dtype {col.dtype}")
        w = used_rows(col.to_numpy(dtype=float), ms, data)
    else:
        try:
            a = np.asarray(weights, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ValueError(f"`weights` must be a column name or numbers, got {type(weights).__name__}") from None
        if a.shape[0] != len(data):
            raise ValueError(f"`weights` has {a.shape[0]} values but the data has {len(data)} rows")
        w = used_rows(_read_only_copy(a), ms, data)
    if not np.all(np.isfinite(w)):
        raise ValueError(f"`weights` has {int(np.sum(~np.isfinite(w)))} missing or infinite values")
    if np.any(w <= 0):
        raise ValueError(f"`weights` must be positive ({int(np.sum(w <= 0))} values are zero or "
                         "negative); drop rows that should not count")
    return ms.replace(weights=w)


def _read_only_copy(a: np.ndarray) -> np.ndarray:
    """A copy of the user's array, read-only as the copy-on-write array pandas gave before."""
    out = a.copy()
    out.flags.writeable = False
    return out


def working_model(ms):
    """The unweighted, offset-free problem an LMM with weights and offsets reduces to.

    Returns
    -------
    model : ModelStructure
        ``y - offset``, ``X`` and each term's ``Z``, all multiplied row-wise by ``sqrt(w)``;
        the same object when there are neither weights nor an offset.
    ldW : float
        ``sum(log w)`` (0 without weights), to be subtracted from the deviance.
    """
    w = getattr(ms, "weights", None)
    off = getattr(ms, "offset", None)
    if w is None and off is None:
        return ms, 0.0
    y = np.asarray(ms.y, dtype=float)
    if off is not None:
        y = y - off
    if w is None:
        return ms.replace(y=y, offset=None), 0.0
    sw = np.sqrt(w)
    terms = [dataclasses.replace(t, Z=np.ascontiguousarray(t.Z * sw[:, None])) for t in ms.reterms]
    out = ms.replace(y=y * sw, X=np.ascontiguousarray(ms.X * sw[:, None]), reterms=terms, offset=None,
                     weights=None)
    return out, float(np.sum(np.log(w)))
