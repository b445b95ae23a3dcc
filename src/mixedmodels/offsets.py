"""Offsets: known terms of the linear predictor with a coefficient fixed at 1.

An offset enters as ``offset(log(t))`` in the formula, as an ``offset=`` argument of
:func:`mixedmodels.lmer` / :func:`mixedmodels.glmer` (a column name or an array, like
``weights``), or both (they add up, as in R). A Poisson rate model is the usual case:
``y ~ x + offset(log(t)) + (1 | site)`` models ``E[y] = t * exp(x'beta + b)``. (Rates fitted as
``y / t`` with ``weights = t`` give the same estimates but not the Poisson log-likelihood of
the counts, so their AIC and likelihood-ratio tests are wrong: use an offset.)

The fitted offset is ``ModelStructure.offset`` (length ``n``); :func:`new_offset` evaluates
it on new data for ``predict``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .rows import used_rows

__all__ = ["evaluate_offsets", "attach_offset", "new_offset"]


def evaluate_offsets(exprs, data: pd.DataFrame) -> np.ndarray | None:
    """Sum of the formula's ``offset(expr)`` terms evaluated on ``data`` (None if there are none).

    Parameters
    ----------
    exprs : sequence of str
        The expressions inside ``offset(...)``, e.g. ``["log(t)"]``.
    data : DataFrame

    Returns
    -------
    ndarray (len(data),) or None

    Raises
    ------
    ValueError
        If an expression cannot be evaluated or gives missing or infinite values.
    """
    if not exprs:
        return None
    import formulaic
    from formulaic.errors import FormulaicError

    total = np.zeros(len(data))
    for e in exprs:
        try:
            with np.errstate(divide="ignore", invalid="ignore"):  # log(0) is reported below
                mm = formulaic.model_matrix(f"0 + I({e})", data, na_action="ignore")
        except (FormulaicError, Exception) as exc:  # formulaic raises many types
            raise ValueError(f"could not evaluate offset({e}): {str(exc).splitlines()[0]}") from None
        v = np.asarray(mm, dtype=float)
        if v.ndim != 2 or v.shape[1] != 1:
            raise ValueError(f"offset({e}) must be one numeric value per row")
        v = v[:, 0]
        if not np.all(np.isfinite(v)):
            bad = int(np.sum(~np.isfinite(v)))
            raise ValueError(f"offset({e}) is missing or infinite in {bad} rows (log of 0?)")
        total += v
    return total


def _argument_values(offset, data: pd.DataFrame, ms, name: str = "offset") -> np.ndarray:
    # The rows used, by position (index labels may repeat).
    if isinstance(offset, str):
        if offset not in data.columns:
            raise ValueError(f"`{name}`={offset!r} is not a column of the data")
        col = data[offset]
        if isinstance(col, pd.DataFrame):
            raise ValueError(f"`{name}`={offset!r} names {col.shape[1]} columns of the data (repeated label)")
        if not pd.api.types.is_numeric_dtype(col.dtype):
            raise ValueError(f"`{name}` column {offset!r} must be numeric, got dtype {col.dtype}")
        v = used_rows(col.to_numpy(dtype=float), ms, data)
    else:
        try:
            a = np.asarray(offset, dtype=float).ravel()
        except (TypeError, ValueError):
            raise ValueError(f"`{name}` must be a column name or numbers, got {type(offset).__name__}") from None
        if a.shape[0] != len(data):
            raise ValueError(f"`{name}` has {a.shape[0]} values but the data has {len(data)} rows")
        v = used_rows(a, ms, data)  # only read
    if not np.all(np.isfinite(v)):
        raise ValueError(f"`{name}` has {int(np.sum(~np.isfinite(v)))} missing or infinite values "
                         "in the rows used")
    return v


def attach_offset(ms, offset, data: pd.DataFrame):
    """The model structure with the ``offset=`` argument added to the formula's offsets.

    Parameters
    ----------
    ms : ModelStructure
        From :func:`mixedmodels.formula.build_model` (not modified).
    offset : str, array-like (len(data),) or None
        A column of ``data`` or one value per row of ``data`` (rows dropped for missing
        values are dropped from it too).
    data : DataFrame
        The data given to the fitter.

    Returns
    -------
    ModelStructure
        With ``offset`` set (None when there is no offset at all) and the argument recorded
        for prediction.
    """
    if offset is None:
        return ms
    v = _argument_values(offset, data, ms)
    base = np.zeros(ms.n) if ms.offset is None else ms.offset
    return ms.replace(offset=base + v, offset_argument=offset if isinstance(offset, str) else "array")


def new_offset(ms, newdata: pd.DataFrame | None, offset=None) -> np.ndarray:
    """The offset of new rows for prediction (zeros when the model has none).

    Parameters
    ----------
    ms : ModelStructure
    newdata : DataFrame or None
        None means the fitted rows (their offset).
    offset : str or array-like, optional
        The new rows' values of the ``offset=`` argument; needed when the fit's offset was
        given as an array (a column name is read from ``newdata``).

    Raises
    ------
    ValueError
        A missing offset column, or an array offset without ``offset=`` for the new rows.
    """
    if newdata is None:
        return np.zeros(ms.n) if ms.offset is None else np.asarray(ms.offset, dtype=float)
    out = evaluate_offsets(getattr(ms.parsed, "offsets", ()), newdata)
    out = np.zeros(len(newdata)) if out is None else out
    arg = getattr(ms, "offset_argument", None)
    if offset is not None:
        out = out + _argument_values(offset, newdata, None)
    elif arg == "array":
        raise ValueError("the fit's offset was given as an array: give the new rows' offsets "
                         "with predict(newdata, offset=...)")
    elif arg is not None:
        out = out + _argument_values(arg, newdata, None)
    return out
