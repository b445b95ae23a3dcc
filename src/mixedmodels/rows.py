"""The rows of the user's data a model used, for the fitters' per-row arguments."""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["used_rows"]


def used_rows(values: np.ndarray, ms, data: pd.DataFrame) -> np.ndarray:
    """The entries of a per-row array for the rows a model used.

    Parameters
    ----------
    values : ndarray (len(data),)
        One value per row of ``data``, in order (a column's values or a user's array).
    ms : ModelStructure or None
        The model built from ``data`` (None: every row is used, as for new data).
    data : DataFrame
        The data the model was built from.

    Returns
    -------
    ndarray
        ``values`` at the rows used, selected by position (through the model's
        ``row_mask``), so index labels that repeat are no obstacle.
    """
    if ms is None:
        return values
    mask = getattr(ms, "row_mask", None)
    if mask is not None:
        return values[mask]
    if len(ms.rows) == len(data):
        return values
    # A model built without its mask (elsewhere than build_model): by label, which needs
    # unique labels.
    return pd.Series(values, index=data.index).loc[ms.rows].to_numpy()
