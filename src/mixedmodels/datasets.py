"""The click-through-rate (CTR) data of the post, and a numpy port of its simulator.

``load_ctr()`` returns the post's own data set: the post's R function ``make_click_data``
run after ``set.seed(1)`` with ``p = 1000, mu = -4.5, tau = 0.5, sig_a = 5,
pois_mean = 20``. R's random streams cannot be reproduced with numpy, so
:func:`make_click_data` makes data *the same way*, not the same numbers.

How the simulator was read off the data (``ctr_seed1.csv``, 1,481 rows, 1,000 users):

- rows come in three blocks: untreated users (one ``display = 0`` row each), then the treated
  users' ``display = 0`` rows, then their ``display = 1`` rows, each block sorted by ``id``;
- 481 of the 1,000 users are treated, so treatment is a fair coin per user (a fixed half
  would give exactly 500);
- a user's total exposures have mean 22.2 and variance 19.8 in both arms (Poisson(20) plus
  2, not plus 1), and a treated user's two rows have means 11.1 and 11.0, variances 9.1 and
  10.0, correlation 0.10 and each at least 3: each arm's count is ``1 + Poisson(pois_mean/2)``
  independently, and an untreated user sees both arms' exposures on the control display.
- clicks are ``Binomial(expos, expit(mu + tau * display + a_user))`` with
  ``a_user ~ N(0, sig_a^2)``.
"""

from __future__ import annotations

from importlib import resources
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy.special import expit

__all__ = ["load_ctr", "make_click_data", "ClickData", "write_click_parquet"]


def load_ctr() -> pd.DataFrame:
    """Load the post's CTR data set (R, ``set.seed(1)``).

    Returns
    -------
    pandas.DataFrame
        1,481 rows: ``clicks`` and ``expos`` (int), ``display`` (0/1), ``id`` (the user,
        categorical with levels in numeric order).

    Examples
    --------
    >>> d = load_ctr()
    >>> d.shape, d["id"].nunique()
    ((1481, 4), 1000)
    """
    with resources.files("mixedmodels").joinpath("data/ctr_seed1.csv").open("r") as fh:
        d = pd.read_csv(fh)
    d["id"] = pd.Categorical(d["id"], categories=sorted(d["id"].unique()))
    return d


class ClickData(NamedTuple):
    """What :func:`make_click_data` returns: unpack as ``data, effects = ...``.

    Attributes
    ----------
    data : pandas.DataFrame
        ``clicks``, ``expos``, ``display``, ``id`` in the post's row layout.
    effects : numpy.ndarray
        The users' random effects on the log-odds scale (``effects[i]`` is user ``i + 1``);
        pass them back as ``effects=`` to draw new data for the same users.
    treated : numpy.ndarray
        Boolean, which users were treated.
    """

    data: pd.DataFrame
    effects: np.ndarray
    treated: np.ndarray


def _check_pos_int(value, name):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"`{name}` must be a whole number >= 1, got {value!r}")
    return int(value)


def _check_real(value, name, positive=False):
    if isinstance(value, bool) or not isinstance(value, Real) or not np.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")
    if positive and value < 0:
        raise ValueError(f"`{name}` must be >= 0, got {value!r}")
    return float(value)


def make_click_data(p: int, mu: float, tau: float, sig_a: float, pois_mean: float,
                    effects: np.ndarray | None = None,
                    seed: int | np.random.Generator | None = None) -> ClickData:
    """Simulate an A/B test of a display on click-through, as the post's ``make_click_data``.

    Parameters
    ----------
    p : int
        Number of users.
    mu : float
        Log-odds of a click for the control display at a user effect of 0 (the post: -4.5).
    tau : float
        Effect of the new display on the log-odds (0.5).
    sig_a : float
        Standard deviation of the users' effects (5).
    pois_mean : float
        Mean exposures per user, less 2 (20); see the module notes.
    effects : array of length ``p``, optional
        Users' effects to reuse (from an earlier call); drawn from ``N(0, sig_a^2)`` if
        omitted. Display assignment and exposures are always drawn afresh.
    seed : int or numpy.random.Generator, optional
        Seed (or generator) for reproducible draws.

    Returns
    -------
    ClickData
        ``(data, effects, treated)``.

    Examples
    --------
    >>> data, effects, _ = make_click_data(1000, -4.5, 0.5, 5, 20, seed=1)
    >>> list(data.columns)
    ['clicks', 'expos', 'display', 'id']
    >>> new, _, _ = make_click_data(1000, -4.5, 0.5, 5, 20, effects=effects, seed=2)
    """
    p = _check_pos_int(p, "p")
    mu = _check_real(mu, "mu")
    tau = _check_real(tau, "tau")
    sig_a = _check_real(sig_a, "sig_a", positive=True)
    pois_mean = _check_real(pois_mean, "pois_mean", positive=True)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if effects is None:
        a = rng.normal(0.0, sig_a, size=p)
    else:
        a = np.asarray(effects, dtype=float).copy()
        if a.shape != (p,) or not np.all(np.isfinite(a)):
            raise ValueError(f"`effects` must be {p} finite numbers (one per user), "
                             f"got shape {a.shape}")
    treated = rng.random(p) < 0.5
    e0 = 1 + rng.poisson(pois_mean / 2.0, size=p)
    e1 = 1 + rng.poisson(pois_mean / 2.0, size=p)
    ids = np.arange(1, p + 1)
    # Untreated users see all their exposures on the control display.
    blocks = [
        (ids[~treated], (e0 + e1)[~treated], 0),
        (ids[treated], e0[treated], 0),
        (ids[treated], e1[treated], 1),
    ]
    ids_all = np.concatenate([b[0] for b in blocks])
    expos = np.concatenate([b[1] for b in blocks]).astype(np.int64)
    display = np.concatenate([np.full(len(b[0]), b[2], dtype=np.int64) for b in blocks])
    prob = expit(mu + tau * display + a[ids_all - 1])
    clicks = rng.binomial(expos, prob).astype(np.int64)
    data = pd.DataFrame({
        "clicks": clicks,
        "expos": expos,
        "display": display,
        "id": pd.Categorical(ids_all, categories=ids),
    })
    return ClickData(data, a, treated)


def write_click_parquet(folder, users: int, *, users_per_file: int = 250_000, seed: int = 2016,
                        mu: float = -4.5, tau: float = 0.5, sig_a: float = 5.0,
                        pois_mean: float = 20.0) -> list:
    """Write ``users`` users made like the post's to Parquet files, block by block of users.

    Each block of ``users_per_file`` users is simulated by :func:`make_click_data` with the
    generator ``numpy.random.default_rng([seed, block])`` and written to its own file
    ``part-00000.parquet``, ``part-00001.parquet``, ... with pyarrow, so the whole data set is
    never in memory and any block can be remade alone. User ids (column ``id``, int64)
    continue from block to block, so every file holds whole users.

    Parameters
    ----------
    folder : str or path
        Created if missing; existing ``part-*.parquet`` files in it are replaced.
    users : int
        Number of users (about 1.5 rows each).
    users_per_file : int
        Users per file (the Dask partitions when the folder is read back).
    seed : int
    mu, tau, sig_a, pois_mean : float
        As :func:`make_click_data` (the post's values by default).

    Returns
    -------
    list of pathlib.Path
        The files written.

    Raises
    ------
    ImportError
        Without pyarrow (``pip install pyarrow``).
    """
    from pathlib import Path

    import pyarrow as pa
    import pyarrow.parquet as pq

    users = _check_pos_int(users, "users")
    users_per_file = _check_pos_int(users_per_file, "users_per_file")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("part-*.parquet"):
        old.unlink()
    files, first = [], 0
    for block in range((users + users_per_file - 1) // users_per_file):
        n = min(users_per_file, users - first)
        data, _, _ = make_click_data(n, mu, tau, sig_a, pois_mean,
                                     seed=np.random.default_rng([seed, block]))
        table = pa.table({"clicks": data["clicks"].to_numpy(), "expos": data["expos"].to_numpy(),
                          "display": data["display"].to_numpy(),
                          "id": data["id"].cat.codes.to_numpy().astype(np.int64) + first + 1})
        path = folder / f"part-{block:05d}.parquet"
        pq.write_table(table, path)
        files.append(path)
        first += n
    return files
