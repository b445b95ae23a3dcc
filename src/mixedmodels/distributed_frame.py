"""Stage 1 of a Dask fit, shared by its two paths: the client, the formula checked and read
once on the driver (:class:`_Spec`), a partition's model frame (the in-memory code on its rows),
the driver's view of the model without its rows, and the sums of the starting values.

:mod:`mixedmodels.distributed` fits a Dask frame by one of two paths built on these: the
kernel mapped over partitions (:mod:`mixedmodels.distributed`), or the partitions' distinct
groups merged into one table fitted in memory (:mod:`mixedmodels.distributed_patterns`).
"""

from __future__ import annotations

import atexit
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from .covariance import CovarianceLayout
from .families import Family, get_family
from .offsets import attach_offset, evaluate_offsets
from .formula import (ModelStructure, ReTerm, _drop_dependent_columns, _label, _lhs_variables,
                      _model_matrix, _required_fixed, apply_new_level_rule, evaluate_response, match_levels,
                      parse_formula)
from .formula import _formula_variables, _integer_columns, _promote
from .glmm_frame import GlmerFrame, _check_zero_denominators, frame_from_model

__all__ = ["DistributedFitError", "get_client", "DaskReTerm", "DaskModel", "DaskGlmerFrame"]


class DistributedFitError(RuntimeError):
    """The cluster failed during a fit (a worker lost for good, a closed connection).

    Raised instead of returning an estimate: a failed evaluation is never read as a poor
    log-likelihood, so it can never steer the optimizer to a wrong optimum.
    """


# =========================================================================================
# The client
# =========================================================================================

_LOCAL: list = []  # the embedded LocalCluster and its client, created on first use


def get_client(client=None):
    """The ``dask.distributed`` client a fit runs on.

    Parameters
    ----------
    client : Client or str, optional
        A client, or the address of a scheduler (``"tcp://host:8786"``) to connect to.
        Default: the current client if there is one, else a :class:`LocalCluster` on this
        machine, started once and kept for the session: one single-threaded worker process
        per core in a notebook or an interactive session, one worker with a thread per core
        in a script run as a file (worker processes would re-run an unguarded script; create
        your own ``Client`` under ``if __name__ == "__main__":`` for processes there).

    Returns
    -------
    distributed.Client
    """
    from distributed import Client, LocalCluster

    if isinstance(client, str):
        return Client(client)
    if client is not None:
        return client
    try:
        from distributed import get_client as current
        return current()
    except ValueError:
        pass
    if not _LOCAL:
        # Worker processes are started by spawning, which re-runs a script's top level: in a
        # plain `python script.py` without an `if __name__ == "__main__":` guard that fails
        # ("Nanny failed to start") or repeats the script's work. So a script gets threads;
        # a notebook or an interactive session (no __main__.__file__) gets processes.
        import logging
        import __main__

        processes = not hasattr(__main__, "__file__")
        n = max(1, min(os.cpu_count() or 1, 4))
        cluster = LocalCluster(n_workers=n if processes else 1,
                               threads_per_worker=1 if processes else n,
                               processes=processes, dashboard_address=":0",
                               silence_logs=logging.ERROR)
        _LOCAL.extend([cluster, Client(cluster)])
        atexit.register(_close_local)
    return _LOCAL[1]


def _close_local() -> None:
    while _LOCAL:
        try:
            _LOCAL.pop().close()
        except Exception:  # closing at exit: nothing useful to do with a failure
            pass


# =========================================================================================
# Stage 1: what every partition needs, and the partitions' own frames
# =========================================================================================


@dataclass
class _Spec:
    """How to read one partition exactly as the in-memory ``glmer_frame`` reads all rows."""

    formula: str
    lhs: str
    cols: list[str]
    group: str
    term: Any
    categories: dict[str, pd.CategoricalDtype]
    fixed_spec: Any
    xnames: list[str]
    z_spec: Any
    cnames: list[str]
    family: Family
    weights: str | None
    offset: str | None = None           # the ``offset=`` column (added to offset(...) terms)
    offset_vars: list[str] = field(default_factory=list)   # columns the offset(...) terms read



def _partition_frame(sub: pd.DataFrame, spec: _Spec) -> tuple[GlmerFrame, np.ndarray]:
    """The partition's ``GlmerFrame`` (the in-memory code on its rows) and its group keys."""
    _check_zero_denominators(spec.formula, sub)
    y, pieces, ratio = evaluate_response(spec.lhs, sub)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"the response {spec.lhs!r} has infinite values")
    X = np.ascontiguousarray(np.asarray(spec.fixed_spec.get_model_matrix(sub), dtype=float))
    if not np.all(np.isfinite(X)):
        raise ValueError("the fixed-effects matrix has infinite values")
    if spec.z_spec is None:
        Z = np.ones((len(sub), 1))
    else:
        Z = np.ascontiguousarray(np.asarray(spec.z_spec.get_model_matrix(sub), dtype=float))
    col = sub[spec.group]
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.cat.remove_unused_categories()
        codes = col.cat.codes.to_numpy(dtype=np.int64)
        keys = np.asarray(col.cat.categories)
    else:
        codes, keys = _sorted_codes(col)
    term = ReTerm(spec=spec.term, group=spec.group, codes=codes, levels=keys, Z=Z,
                  cnames=spec.cnames, correlated=True, level_keys=[], model_spec=spec.z_spec)
    ms = ModelStructure(formula=spec.formula, parsed=parse_formula(spec.formula), data=sub, y=y,
                        lhs_terms=pieces, lhs_ratio=ratio, X=X, xnames=list(spec.xnames),
                        dropped_columns=[], rows=sub.index, n_dropped=0, reterms=[term],
                        fixed_spec=spec.fixed_spec, x_keep=np.arange(X.shape[1]))
    if ms.parsed.offsets:   # as build_model evaluates them (integer columns promoted first)
        ms.offset = evaluate_offsets(ms.parsed.offsets,
                                     _promote(sub, _integer_columns(sub, spec.offset_vars)))
    ms = attach_offset(ms, spec.offset, sub)
    return frame_from_model(ms, sub, spec.family, spec.weights), keys


def _sorted_codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Codes of a grouping column in the order of its sorted values, and those values
    (``pd.factorize(sort=True)``), in one linear pass when the rows come sorted by group, as
    logs written user by user do."""
    a = col.to_numpy()
    if a.dtype.kind in "iu" and len(a):
        step = a[1:] != a[:-1]
        if np.all(a[1:] >= a[:-1]):
            codes = np.concatenate([[0], np.cumsum(step)]).astype(np.int64)
            return codes, a[np.concatenate([[True], step])]
    codes, keys = pd.factorize(col, sort=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(keys)


def _part_keys(df: pd.DataFrame, group: str) -> np.ndarray:
    col = df[group].dropna()
    if isinstance(col.dtype, pd.CategoricalDtype):
        return np.asarray(col.cat.remove_unused_categories().cat.categories)
    return np.asarray(pd.unique(col))


def _row_weights(ch) -> np.ndarray | float:
    """How many groups each row of a chunk stands for (identical groups are compressed into
    one weighted unit)."""
    w = getattr(ch, "weights", None)
    return 1.0 if w is None else w[ch.gidx]


def glm_sums(chunks, fam: Family, beta):
    """Sums of one IRLS step of the GLM start over ``chunks`` (``beta=None``: the first, from
    the data): the normal equations ``(A, b)`` of :func:`mixedmodels.glmm._glm_start`."""
    A, b = 0.0, 0.0
    for ch in chunks:
        X, y, m, wr = ch.X, ch.y, ch.m, _row_weights(ch)
        if beta is None:
            mu0 = (m * y + 0.5) / (m + 1.0) if fam.name == "binomial" else y + 0.1
            Xw = X * np.broadcast_to(wr, len(y))[:, None]
            A, b = A + Xw.T @ X, b + Xw.T @ fam.linkfun(mu0)
        else:
            d1, d2 = fam.derivs(X @ beta, y, m)
            w = (-d2 + 1e-10) * wr
            A, b = A + (X * w[:, None]).T @ X, b + X.T @ (d1 * wr)
    return A, b


def intercept_sums(chunks, fam: Family, beta, center):
    """Sums over groups of the empirical link values the random-intercept start uses
    (``center=None``: their sum and count; else the sum of squares about ``center``)."""
    tot, cnt = 0.0, 0
    for ch in chunks:
        S = ch.group_sum(ch.y * ch.m)
        N = ch.group_sum(ch.m)
        fixed = ch.group_sum((ch.X @ beta) * ch.m)
        wg = np.ones(ch.ngroups) if getattr(ch, "weights", None) is None else ch.weights
        ok = N > 0
        if fam.name == "binomial" and fam.link == "logit":
            e = np.log((S[ok] + 0.5) / (N[ok] - S[ok] + 0.5))
        elif fam.name == "binomial":
            e = fam.linkfun((S[ok] + 0.5) / (N[ok] + 1.0))
        else:
            e = np.log((S[ok] + 0.5) / N[ok])
        e = e - fixed[ok] / N[ok]
        w = wg[ok]
        tot += float(w @ e) if center is None else float(w @ (e - center) ** 2)
        cnt += float(np.sum(w))
    return tot, cnt


def default_start(glm, intercept, xnames: list[str], z_one: bool) -> np.ndarray:
    """Starting ``(beta, sigma)`` as :func:`mixedmodels.glmm._default_start`, from sums:
    ``glm(beta)`` returns the IRLS step's ``[(A, b), ...]`` of every piece of the data,
    ``intercept(beta, center)`` the pieces' :func:`intercept_sums`."""
    def solve(sums):
        A = sum(s[0] for s in sums if s is not None)
        b = sum(s[1] for s in sums if s is not None)
        return np.linalg.lstsq(A, b, rcond=None)[0]

    beta = solve(glm(None))
    for _ in range(50):
        step = solve(glm(beta))
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    beta = np.clip(beta, -30, 30)
    if z_one:
        s1 = intercept(beta, None)
        n = sum(k for _, k in s1)
        mean = sum(s for s, _ in s1) / n
        s2 = intercept(beta, mean)
        sd = float(np.sqrt(sum(s for s, _ in s2) / n))
        icpt = [j for j, nm in enumerate(xnames) if nm == "(Intercept)"]
        if np.isfinite(sd) and sd > 0.1 and icpt:
            beta = beta.copy()
            beta[icpt[0]] += float(mean)
            return np.concatenate([beta, [sd]])
    return np.concatenate([beta, [1.0]])


def complete_rows(df: pd.DataFrame, spec: "_Spec") -> tuple[pd.DataFrame, int]:
    """The partition's rows with every formula column present (as R's na.omit), its text
    columns coded with the levels of all partitions; and the number of rows dropped."""
    sub = df[spec.cols]
    complete = sub.notna().all(axis=1).to_numpy()
    n_dropped = int((~complete).sum())
    sub = sub.loc[complete].reset_index(drop=True) if n_dropped else sub.reset_index(drop=True)
    for c, dt in spec.categories.items():
        sub[c] = sub[c].astype(dt)
    return sub, n_dropped


def reissue(messages, stacklevel: int) -> None:
    """Warn each distinct message the partitions recorded once, on the driver."""
    seen = set()
    for cat, msg in messages:
        if msg not in seen:
            seen.add(msg)
            warnings.warn(msg, cat, stacklevel=stacklevel + 1)


def build_partitions(client, parts, build, summary, spec, prefix: str):
    """Build each partition's state on its worker once (kept there as futures) and gather
    the partitions' small summaries.

    Parameters
    ----------
    client : dask.distributed.Client
    parts : list of dask.delayed.Delayed
        The partitions (``frame[cols].to_delayed()``), whole groups each.
    build, summary : callable
        ``build(partition_frame, spec) -> state`` runs on the workers; ``summary(state)`` is
        what comes back to the driver.
    spec : object
        Passed to ``build``.
    prefix : str
        The tasks' key prefix (a random token is added so two fits never share keys).

    Returns
    -------
    futures : list of Future
        The partitions' states, one per partition, kept on the workers.
    sums : list
        ``summary(state)`` of each partition.

    Raises
    ------
    ValueError
        A partition found bad input (raised as is).
    DistributedFitError
        The cluster failed while building.
    """
    import uuid

    import dask

    token = uuid.uuid4().hex[:12]
    states = [dask.delayed(build, pure=False)(p, spec, dask_key_name=f"{prefix}-{token}-{i}")
              for i, p in enumerate(parts)]
    futures = client.compute(states)
    try:
        sums = client.gather([client.submit(summary, f, pure=False) for f in futures])
    except ValueError:
        raise
    except Exception as exc:
        raise DistributedFitError(f"building the partitions failed ({exc})") from exc
    return futures, sums


def partition_counts(sums: list[dict], cols: list[str], stacklevel: int) -> tuple[int, np.ndarray]:
    """What the partitions' summaries say about all rows, as an in-memory frame finds it.

    Re-issues the partitions' warnings once each, warns about rows dropped for missing values
    and checks that every group's rows are in one partition.

    Parameters
    ----------
    sums : list of dict
        One summary per partition, with ``"warnings"``, ``"n"``, ``"n_dropped"`` and
        ``"keys"`` (the partition's group keys).
    cols : list of str
        The formula's columns (named in the message about dropped rows).
    stacklevel : int
        Where the warnings point, counted from the caller.

    Returns
    -------
    n : int
        The number of complete rows.
    keys : ndarray, shape (groups,)
        Every partition's group keys, in partition order.

    Raises
    ------
    ValueError
        No complete rows.
    DistributedFitError
        A group's rows are in more than one partition.
    """
    reissue([w for s in sums for w in s["warnings"]], stacklevel=stacklevel + 1)
    n = sum(s["n"] for s in sums)
    ndrop = sum(s["n_dropped"] for s in sums)
    if n == 0:
        raise ValueError("no complete rows left after dropping rows with missing values")
    if ndrop:
        warnings.warn(f"dropped {ndrop} of {n + ndrop} rows with missing values in the "
                      f"formula's columns ({', '.join(cols)}) (like R's na.omit)",
                      UserWarning, stacklevel=stacklevel + 1)
    keys = np.concatenate([s["keys"] for s in sums])
    if len(pd.unique(keys)) != len(keys):
        raise DistributedFitError("a group's rows are in more than one partition after the "
                                  "shuffle on the grouping column")
    return n, keys


def kept_columns(XtX: np.ndarray, xnames: list[str]) -> tuple[np.ndarray, list[str]]:
    """The fixed-effect columns kept by the in-memory rank rule, from the Gram matrix (a square
    root of X'X has the same column dependencies as X), and the names of those dropped."""
    w, V = np.linalg.eigh(XtX)
    M = np.sqrt(np.clip(w, 0, None))[:, None] * V.T
    x_keep = _drop_dependent_columns(M, xnames)
    kept = set(x_keep.tolist())
    return x_keep, [xnames[j] for j in range(len(xnames)) if j not in kept]


# =========================================================================================
# The driver's view of the model: what the result needs, without the rows
# =========================================================================================


class DaskReTerm:
    """The random-effects term of a Dask fit: its levels, not its rows.

    Attributes
    ----------
    group : str
    cnames : list of str
    keys : ndarray
        The grouping column's values, one per level, in the levels' order.
    """

    def __init__(self, spec, group, keys, cnames, z_spec, rank_of):
        self.spec, self.group, self.keys, self.cnames = spec, group, keys, cnames
        self.model_spec, self._rank_of, self._levels = z_spec, rank_of, None
        self.correlated = True

    @property
    def nlevels(self) -> int:
        return len(self.keys)

    k = 1
    q = property(lambda self: self.nlevels)

    @property
    def levels(self) -> list[str]:
        """Level labels (as the in-memory fit's), made on first use."""
        if self._levels is None:
            self._levels = [_label(v.item() if isinstance(v, np.generic) else v)
                            for v in self.keys]
        return self._levels

    @property
    def variables(self) -> list[str]:
        """The data columns the term's columns read."""
        return [] if self.model_spec is None else sorted(_required_fixed(self.spec.lhs, str(self.spec)))

    def new_codes(self, data: pd.DataFrame, allow_new_levels: bool = False) -> np.ndarray:
        """Level indices of the rows of ``data``, matched by value; a new level is an error
        unless ``allow_new_levels`` (then -1), as :meth:`mixedmodels.formula.ReTerm.new_codes`."""
        codes = match_levels(data[self.group], list(self.keys))
        return apply_new_level_rule(codes, data, (self.group,), self.group, allow_new_levels)

    def new_Z(self, data: pd.DataFrame) -> np.ndarray:
        if self.model_spec is None:
            return np.ones((len(data), 1))
        return np.asarray(self.model_spec.get_model_matrix(data), dtype=float)


@dataclass
class DaskModel:
    """The model structure of a Dask fit, without the rows (they stay on the workers)."""

    formula: str
    parsed: Any
    xnames: list[str]
    reterms: list
    fixed_spec: Any
    x_keep: np.ndarray
    categories: dict
    n: int
    dropped_columns: list[str] = field(default_factory=list)
    offset_argument: str | None = None   # the ``offset=`` column, read from new data by predict

    @property
    def p(self) -> int:
        return len(self.xnames)

    @property
    def fixed_variables(self) -> list[str]:
        """The data columns the fixed part reads."""
        return sorted(_required_fixed(self.parsed.fixed_rhs, "fixed-effects part"))

    def fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """The fixed-effects matrix of new data (same coding, same kept columns)."""
        newdata = newdata.copy()
        for c, dt in self.categories.items():
            if c in newdata:
                newdata[c] = newdata[c].astype(dt)
        mm = np.asarray(self.fixed_spec.get_model_matrix(newdata), dtype=float)
        return mm[:, self.x_keep]


@dataclass
class DaskGlmerFrame:
    """Stage 1 of a Dask fit, as the driver sees it (the rows are on the workers).

    Attributes
    ----------
    ms : DaskModel
    family : Family
    n : int
        Rows used.
    weights_label : str or None
    """

    ms: DaskModel
    family: Family
    n: int
    weights_label: str | None = None
    scalar: bool = True

    @property
    def layout(self) -> CovarianceLayout:
        """The covariance parameters' layout (one scalar term)."""
        return CovarianceLayout(self.ms.reterms)


# =========================================================================================
# Stage 1 on the driver: check the formula, read the categories, shuffle, build partitions
# =========================================================================================

_SUPPORTED = ("the Dask fitter supports one grouping factor with a scalar random effect, "
              "such as (1 | id), for the binomial and Poisson families")


def _check_spec_input(formula, data, family, weights, offset=None):
    parsed = parse_formula(formula)
    if not parsed.lhs:
        raise ValueError(f"formula {formula!r} has no response on the left of '~'")
    if not parsed.random:
        raise ValueError(f"formula {formula!r} has no random-effects term such as (1 | g); "
                         "use a GLM for a model without random effects")
    if len(parsed.random) != 1:
        raise ValueError(f"{_SUPPORTED}; {formula!r} has {len(parsed.random)} terms. Each "
                         "partition must hold whole groups so that the likelihood is a sum over "
                         "partitions, which several crossed factors do not allow.")
    term = parsed.random[0]
    if len(term.group_vars) != 1:
        raise ValueError(f"{_SUPPORTED}; the grouping factor of {term} is an interaction "
                         f"{term.group!r}: make it one column first")
    if weights is not None and not isinstance(weights, str):
        raise ValueError("with a Dask frame, `weights` must be the name of a column")
    if offset is not None and not isinstance(offset, str):
        raise ValueError("with a Dask frame, `offset` must be the name of a column (an array "
                         "would have to be aligned with rows spread over the workers); add it "
                         "to the frame as a column, or write offset(...) in the formula")
    return parsed, term


def _build_spec(formula, data, family, weights, link, offset=None):
    parsed, term = _check_spec_input(formula, data, family, weights, offset)
    fam = get_family(family, link)
    if fam.name not in ("binomial", "poisson"):
        raise ValueError(f"{_SUPPORTED}; family {fam.name!r} has a dispersion parameter, which "
                         "the Dask fitter does not estimate: fit it in memory")
    columns = pd.Index(data.columns)
    needed: dict[str, str] = {}
    lhs_vars = _lhs_variables(parsed.lhs, columns)
    if not lhs_vars:
        raise ValueError(f"response {parsed.lhs!r}: no such column in data (columns: "
                         f"{', '.join(map(str, columns))})")
    for v in lhs_vars:
        needed.setdefault(v, "response")
    offset_vars: list[str] = []
    for e in parsed.offsets:
        found, miss = _formula_variables(f"0 + I({e})", columns, f"offset({e})")
        offset_vars += found
        for v in found + miss:
            needed.setdefault(v, f"offset({e})")
    for v in sorted(_required_fixed(parsed.fixed_rhs, "fixed-effects part")):
        needed.setdefault(v, "fixed effects")
    for v in sorted(_required_fixed(term.lhs, f"random-effects term {term}")):
        needed.setdefault(v, f"random-effects term {term}")
    group = term.group_vars[0]
    needed.setdefault(group, f"grouping factor of {term}")
    if weights is not None:
        needed.setdefault(weights, "weights")
    if offset is not None:
        needed.setdefault(offset, "offset")
    missing = [v for v in needed if v not in columns]
    if missing:
        detail = "; ".join(f"{v!r} (used in the {needed[v]})" for v in missing)
        raise ValueError(f"column(s) not found in data: {detail}")
    cols = list(needed)
    # Text columns of the model matrices: their levels over all partitions, so that every
    # partition codes them alike (as one in-memory frame would).
    categories = {}
    meta = data._meta
    for c in cols:
        if c == group or c in lhs_vars or c == weights or c == offset:
            continue
        dt = meta[c].dtype
        if isinstance(dt, pd.CategoricalDtype) and not (dt.categories.dtype == object
                                                        and len(dt.categories) == 0):
            if getattr(data[c].cat, "known", True):
                categories[c] = dt
                continue
        if isinstance(dt, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(dt):
            vals = data[c].dropna().unique().compute()
            vals = vals.astype(str) if isinstance(vals.dtype, pd.CategoricalDtype) else vals
            categories[c] = pd.CategoricalDtype(sorted(pd.unique(vals)))
    sample = _sample_rows(data[cols])
    if len(sample) == 0:
        raise ValueError("no complete rows in the data")
    for c, dt in categories.items():
        sample[c] = sample[c].astype(dt)
    _, xnames, fixed_spec = _model_matrix(parsed.fixed_rhs, sample, "fixed-effects matrix")
    if term.lhs.strip() == "1":
        z_spec, cnames = None, ["(Intercept)"]
    else:
        Z, cnames, z_spec = _model_matrix(term.lhs, sample, f"random-effects term {term}")
        if Z.shape[1] != 1:
            raise ValueError(f"{_SUPPORTED}; the term {term} has {Z.shape[1]} columns "
                             f"({', '.join(cnames)}). The Dask fitter maps the scalar "
                             "adaptive-quadrature kernel; a vector term needs the Laplace "
                             "path, which is in memory only.")
    return _Spec(formula, parsed.lhs, cols, group, term, categories, fixed_spec, xnames,
                 z_spec, cnames, fam, weights, offset, offset_vars), parsed


def _sample_rows(data, n: int = 500) -> pd.DataFrame:
    """Up to ``n`` complete rows for formulaic to learn the model matrices from, reading as few
    partitions as it takes (``head(npartitions=-1)`` would read them all)."""
    k = 1
    while True:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # "fewer than n rows in the partitions"
            sample = data.head(n, npartitions=min(k, data.npartitions)).dropna()
        if len(sample) or k >= data.npartitions:
            return sample
        k *= 4


def _rank_of(keys: np.ndarray, dtype) -> np.ndarray:
    """Sort keys of the grouping column into the in-memory fit's order of levels."""
    if isinstance(dtype, pd.CategoricalDtype) and len(dtype.categories):
        return dtype.categories.get_indexer(keys)
    return keys

