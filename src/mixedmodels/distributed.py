"""``glmer`` out of core on Dask: the scalar kernel mapped over partitions of whole groups.

A Dask frame passed to :func:`mixedmodels.glmer` is fitted here, on a ``dask.distributed``
cluster (the current client, one passed as ``client=``, or a local one). The data stay where
they live:

1. **Stage 1 on the workers.** The formula's columns are read partition by partition. If the
   rows of a group lie in more than one partition, the frame is shuffled on the grouping column
   once. Each partition becomes its own model frame (the in-memory code,
   :func:`mixedmodels.glmm.frame_from_model`) and its own in-memory
   :class:`~mixedmodels.glmm.ScalarObjective` (chunks of whole groups, warm starts of the
   conditional modes), built on its worker and kept there (a persisted future).
2. **Stage 2 on the driver.** :class:`DaskScalarObjective` has the in-memory objective's
   interface (``evaluate``, ``modes``, ``lower``, ``reset``, ``subset``). An evaluation sends
   only the parameters to every partition and adds the sums that come back: log-likelihood,
   gradient, and the outer products of the groups' scores that BHHH uses.
3. **Stages 3-5 are the in-memory ones** (:func:`mixedmodels.glmm.fit_frame`): the same
   optimizer, the same check of the optimum, the same ``nagq="auto"`` (each partition chooses
   its groups' rules where they live and keeps them), so a Dask fit equals an in-memory fit of
   the same rows to rounding.

A lost worker: Dask recomputes the partitions it held from their lineage (the read, the
shuffle, the build), and the fit goes on; a partition that has lost state the fit depends on
(the per-group rules), or a cluster that cannot recover, raises :class:`DistributedFitError`.
An evaluation that fails is never read as a poor log-likelihood.

Not done here: ``lmer`` on Dask, and fitting the merged table of distinct groups in memory
when it is small (each partition already evaluates its distinct groups once, weighted).

Only the starting values are computed differently: the in-memory start solves a least-squares
problem on all rows at once; here the same iteration runs on sums over partitions.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from .covariance import CovarianceLayout
from .families import Family, get_family
from .formula import (ModelStructure, ReTerm, _drop_dependent_columns, _label, _lhs_variables,
                      _model_matrix, _required_fixed, apply_new_level_rule, evaluate_response, match_levels,
                      parse_formula)
from .blas import single_thread_blas
from .glmm import fit_frame
from .glmm_frame import GlmerFrame, _check_zero_denominators, frame_from_model
from .agq import DEFAULT_SPAN
from .compress import WORTHWHILE
from .glmm_objective import ScalarObjective
from .glmm_result import GlmerResult

__all__ = ["glmer_dask", "DaskScalarObjective", "DaskGlmerResult", "DistributedFitError",
           "get_client", "dask_objective"]

#: Rows per kernel chunk inside a partition (bounds the kernel's rows x nodes arrays).
CHUNK_ROWS = 200_000


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


@dataclass
class _Partition:
    """A partition's state on its worker: its in-memory objective (the kernel's chunks of
    whole groups, sorted by group, and the warm starts) and its group keys. The rows are not
    kept twice: every pass over them reads the chunks."""

    obj: ScalarObjective | None
    keys: np.ndarray
    n_dropped: int
    warnings: list[tuple[type, str]]
    summary: dict
    cols: np.ndarray | None = None   # columns of the full X the chunks hold
    rules: Any = None                # the per-group rules installed in obj (nagq="auto")


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
        codes, keys = pd.factorize(col, sort=True)
        codes, keys = np.asarray(codes, dtype=np.int64), np.asarray(keys)
    term = ReTerm(spec=spec.term, group=spec.group, codes=codes, levels=keys, Z=Z,
                  cnames=spec.cnames, correlated=True, level_keys=[], model_spec=spec.z_spec)
    ms = ModelStructure(formula=spec.formula, parsed=parse_formula(spec.formula), data=sub, y=y,
                        lhs_terms=pieces, lhs_ratio=ratio, X=X, xnames=list(spec.xnames),
                        dropped_columns=[], rows=sub.index, n_dropped=0, reterms=[term],
                        fixed_spec=spec.fixed_spec, x_keep=np.arange(X.shape[1]))
    return frame_from_model(ms, sub, spec.family, spec.weights), keys


def _build_partition(df: pd.DataFrame, spec: _Spec) -> _Partition:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sub = df[spec.cols]
        complete = sub.notna().all(axis=1).to_numpy()
        n_dropped = int((~complete).sum())
        sub = sub.loc[complete].reset_index(drop=True)
        del df
        for c, dt in spec.categories.items():
            sub[c] = sub[c].astype(dt)
        obj = None
        summary = {"n": 0, "XtX": None, "colmax": None, "z_one": True}
        if len(sub):
            frame, keys = _partition_frame(sub, spec)
            del sub
            X = frame.ms.X
            summary = {"n": len(frame.y), "XtX": X.T @ X, "colmax": np.max(np.abs(X), axis=0),
                       "z_one": bool(np.all(frame.ms.reterms[0].Z[:, 0] == 1.0))}
            obj = ScalarObjective(frame, 1, max_rows=CHUNK_ROWS)
            obj.frame = None   # the chunks hold the rows now
            summary["unit_hashes"] = _unit_hashes(obj)
            del frame
        else:
            keys = np.asarray(sub[spec.group].iloc[:0])
    msgs = [(w.category, str(w.message)) for w in caught]
    return _Partition(obj, keys, n_dropped, msgs, summary, None)


def _unit_hashes(obj: ScalarObjective) -> np.ndarray:
    """A 64-bit hash of each distinct group's rows in the partition (order-free), so that the
    driver can count the distinct groups of all partitions together, as an in-memory fit's
    compression does (the count steers the warm-up; the sums never depend on it)."""
    from .compress import _GOLD, _mix

    out = []
    for ch in obj.chunks:
        cols = [ch.y, ch.m, ch.z, ch.offset, *ch.X.T]
        rowh = np.zeros(len(ch.y), dtype=np.uint64)
        with np.errstate(over="ignore"):
            for j, c in enumerate(cols):
                bits = np.ascontiguousarray(c, dtype=np.float64).view(np.uint64)
                rowh += _mix(bits + np.uint64(j + 1) * _GOLD)
            h = np.add.reduceat(_mix(rowh), ch.starts) if len(rowh) else rowh
            out.append(_mix(h + np.diff(np.r_[ch.starts, len(ch.y)]).astype(np.uint64)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.uint64)


def _part_keys(df: pd.DataFrame, group: str) -> np.ndarray:
    col = df[group].dropna()
    if isinstance(col.dtype, pd.CategoricalDtype):
        return np.asarray(col.cat.remove_unused_categories().cat.categories)
    return np.asarray(pd.unique(col))


def _summary(part: _Partition) -> dict:
    """What the driver needs once: keys, counts, the Gram matrix of X, warnings."""
    return dict(part.summary, keys=part.keys, n_dropped=part.n_dropped, warnings=part.warnings)


def _objective(part: _Partition, x_keep: np.ndarray) -> ScalarObjective | None:
    """The partition's objective on the kept columns of X (the rank check may drop some)."""
    obj = part.obj
    if obj is not None and (part.cols is None or not np.array_equal(part.cols, x_keep)):
        if part.cols is not None or len(x_keep) != obj.p:
            sel = x_keep if part.cols is None else np.searchsorted(part.cols, x_keep)
            obj.chunks = [replace(ch, X=np.ascontiguousarray(ch.X[:, sel])) for ch in obj.chunks]
            obj.p, obj.nparams = len(x_keep), len(x_keep) + 1
        part.cols = np.asarray(x_keep)
    return obj


_NUMERIC_ERRORS = (np.linalg.LinAlgError, FloatingPointError, ValueError)


def _evaluate(part: _Partition, x_keep, params, gradient, nagq, keep, opg, reset,
              rules=None, refine=False):
    """One partition's sums at ``params`` (the in-memory objective's ``evaluate``)."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    _install_rules(part, obj, rules)
    t0 = time.perf_counter()
    if reset:
        obj.reset()
    kw = {"refine": True} if refine else {}
    try:
        with single_thread_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = obj.evaluate(params, gradient=gradient, nagq=nagq, keep=keep, opg=opg, **kw)
    except _NUMERIC_ERRORS as exc:
        # Handed back as data, so that the driver raises the same error as in memory.
        return ("error", type(exc).__name__, str(exc))
    return ("ok", out, time.perf_counter() - t0)


def _install_rules(part: _Partition, obj, rules) -> None:
    """Make ``obj`` use ``rules`` (the object of a rules future; None: Gauss-Hermite).

    The rules travel as their own futures, inputs of every task that needs them, so that a
    partition copied to another worker, or rebuilt after a loss, gets them too: the worker's
    state is a cache, never the record."""
    if part.rules is not rules and hasattr(obj, "set_rules"):
        obj.set_rules(rules)
        part.rules = rules


def _choose_rules(part: _Partition, x_keep, params, previous):
    """The partition's per-group rules at ``params`` (never smaller than ``previous``): the
    in-memory objective's ``choose_rules``. The rules themselves are the result (a future)."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    _install_rules(part, obj, previous)
    with single_thread_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        rules = obj.choose_rules(params)
    part.rules = rules
    return rules


def _uniform_rules(part: _Partition, x_keep, points, span):
    """The in-memory objective's ``uniform_rules`` on the partition (the rules are the
    result, a future, as :func:`_choose_rules`)."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    obj.uniform_rules(points, span)
    part.rules = obj.rules
    return obj.rules


def _verify_rules(part: _Partition, x_keep, params, rules):
    """The in-memory objective's ``verify_rules`` on the partition's groups:
    ``(ok, loglik with the rules doubled)``."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    _install_rules(part, obj, rules)
    with single_thread_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ok = obj.verify_rules(params)
    return ok, obj.refined_at[1]


def _rules_info(rules):
    """A digest of a partition's rules and its range of points (what the driver keeps)."""
    if rules is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    for a in (rules.points, rules.span, rules.shift):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest(), int(rules.points.min()), int(rules.points.max())


def _modes(part: _Partition, x_keep, params, nagq, rules=None):
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    _install_rules(part, obj, rules)
    obj.nagq = nagq
    with single_thread_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return obj.modes(params)


def _row_weights(ch) -> np.ndarray | float:
    """How many groups each row of a chunk stands for (identical groups are compressed into
    one weighted unit by the in-memory objective)."""
    w = getattr(ch, "weights", None)
    return 1.0 if w is None else w[ch.gidx]


def _glm_pass(part: _Partition, x_keep, beta):
    """Sums of one IRLS step of the GLM start (``beta=None``: the first, from the data)."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    fam, A, b = obj.family, 0.0, 0.0
    for ch in obj.chunks:
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


def _intercept_pass(part: _Partition, x_keep, beta, center):
    """Sums over groups of the empirical link values the random-intercept start uses."""
    obj = _objective(part, x_keep)
    if obj is None:
        return 0.0, 0
    fam, tot, cnt = obj.family, 0.0, 0
    for ch in obj.chunks:
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


def _subset_rows(part: _Partition, x_keep, newcode):
    """Rows of the selected groups (``newcode[local group] >= 0``), with their new codes."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    sel = np.flatnonzero(newcode >= 0)
    pattern = getattr(obj, "pattern", None)
    unit = sel if pattern is None else pattern[sel]     # each group's rows are its unit's
    X, y, m, z, c = (np.concatenate([getattr(ch, f) for ch in obj.chunks])
                     for f in ("X", "y", "m", "z", "const"))
    starts, counts, r0 = [], [], 0
    for ch in obj.chunks:
        n_ch = np.diff(np.r_[ch.starts, len(ch.y)])
        starts.append(ch.starts + r0)
        counts.append(n_ch)
        r0 += len(ch.y)
    starts, counts = np.concatenate(starts)[unit], np.concatenate(counts)[unit]
    rows = np.repeat(starts - np.r_[0, np.cumsum(counts)[:-1]], counts) + np.arange(counts.sum())
    codes = np.repeat(newcode[sel], counts)
    return X[rows], y[rows], m[rows], z[rows][:, None], c[rows], codes


def _pearson(part: _Partition, x_keep, params, nagq, rules=None):
    """Pearson residuals of every row of the partition (each unit's rows once per group)."""
    obj = _objective(part, x_keep)
    if obj is None:
        return np.zeros(0)
    _install_rules(part, obj, rules)
    obj.nagq = nagq
    p = len(x_keep)
    with single_thread_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        obj.modes(params)
    sigma = float(params[p])
    out, g0 = [], 0
    for ch in obj.chunks:
        b = sigma * obj.last.u_hat[g0:g0 + ch.ngroups]
        eta = ch.X @ params[:p] + ch.offset + ch.z * b[ch.gidx]
        r = obj.family.pearson_residuals(ch.y, obj.family.linkinv(eta), ch.m)
        w = getattr(ch, "weights", None)
        out.append(r if w is None else np.repeat(r, w[ch.gidx].astype(np.int64)))
        g0 += ch.ngroups
    return np.concatenate(out)


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
# Stage 2: the objective
# =========================================================================================


@dataclass
class _Last:
    """What the driver keeps of the last evaluation (the modes stay on the workers)."""

    loglik: float


@dataclass
class _RulesDigest:
    """Per-partition digests of the per-group rules the workers hold."""

    points: np.ndarray
    span: np.ndarray
    shift: np.ndarray


class DaskScalarObjective(ScalarObjective):
    """The AGQ log-likelihood of a Dask frame: the in-memory objective's interface, evaluated
    by mapping each partition's in-memory objective on its worker and adding the sums.

    Built by :func:`dask_objective`. Attributes beyond the in-memory ones: ``client``,
    ``parts`` (the persisted partition states), ``eval_log`` (per evaluation: wall seconds
    and each partition's compute seconds).
    """

    def __init__(self, client, parts: list, frame: DaskGlmerFrame, nagq: int, x_keep,
                 part_ngroups: list[int], rank: np.ndarray, z_one: bool, verbose: bool = False):
        self.client, self.parts, self.frame = client, parts, frame
        self.family, self.nagq = frame.family, int(nagq)
        self.p = frame.ms.p
        self.nparams = self.p + 1
        self.x_keep = np.asarray(x_keep)
        self.ngroups = int(sum(part_ngroups))
        self._offsets = np.concatenate([[0], np.cumsum(part_ngroups)]).astype(np.int64)
        # Partition-order group i is level pos[i] (the in-memory fit's order of levels).
        self._perm = np.argsort(rank, kind="stable")
        self._pos = np.empty_like(self._perm)
        self._pos[self._perm] = np.arange(len(self._perm))
        self._z_one = z_one
        self._reset = False
        # The per-group rules of nagq="auto": one future per partition (None: Gauss-Hermite).
        self.rules, self._tokens, self._points = None, [None] * len(parts), None
        self.refined_at = None
        self.nevals = 0
        self.last = None
        self.eval_log: list[tuple[float, list[float]]] = []
        self._bar = None
        if verbose:
            from tqdm import tqdm
            self._bar = tqdm(desc="glmer on Dask", unit=" evaluations", leave=False)

    # ---- the cluster -----------------------------------------------------------------
    def _map(self, fn, *args, per_part=None, **kw):
        """Run ``fn(partition, x_keep, *args)`` on every partition's worker; the results in
        partition order. ``per_part``: one more argument per partition."""
        extra = per_part if per_part is not None else [None] * len(self.parts)
        futures = [self.client.submit(fn, f, self.x_keep, *args,
                                      *(() if per_part is None else (e,)), pure=False, **kw)
                   for f, e in zip(self.parts, extra)]
        try:
            return self.client.gather(futures)
        except Exception as exc:
            raise DistributedFitError(
                f"the Dask cluster failed during the fit ({type(exc).__name__}: {exc}); no "
                "estimate is returned from a partial evaluation. Check the workers (memory, "
                "lost connections) and fit again.") from exc

    def reset(self) -> None:
        """Forget the warm starts (after a failed evaluation), on the next evaluation."""
        self._reset = True

    def evaluate(self, params: np.ndarray, gradient: bool = True, nagq: int | None = None,
                 keep: bool = True, opg: bool = False, refine: bool = False):
        params = np.asarray(params, dtype=float)
        t0 = time.perf_counter()
        # An explicit nagq is a Gauss-Hermite evaluation (the quadrature check), whatever rules
        # are installed; otherwise the rules if there are any, else the objective's nagq.
        k = int(nagq) if nagq is not None else (None if self.rules is not None else self.nagq)
        outs = self._map(_evaluate, params, gradient, k, keep, opg, self._reset,
                         per_part=self._tokens, refine=refine)
        self._reset = False
        total, secs = None, []
        for out in outs:
            if out is None:
                continue
            if out[0] == "error":
                err = {"LinAlgError": np.linalg.LinAlgError,
                       "FloatingPointError": FloatingPointError}.get(out[1], ValueError)
                raise err(out[2])
            vals = out[1]
            secs.append(out[2])
            total = list(vals) if total is None else [
                None if a is None or b is None else a + b for a, b in zip(total, vals)]
        self.nevals += 1
        if keep:
            self.last = _Last(float(total[0]))
        self.eval_log.append((time.perf_counter() - t0, secs))
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loglik=f"{total[0]:.4f}", refresh=False)
        return tuple(total)

    # ---- nagq="auto": per-group rules, chosen and kept on the workers -------------------
    def choose_rules(self, params: np.ndarray):
        """Every partition chooses its groups' rules at ``params`` (the in-memory
        objective's ``choose_rules``) and keeps them; returns digests of them per partition
        (compare two with ``np.array_equal`` on ``points``, as the in-memory rules)."""
        params = np.asarray(params, dtype=float)
        futures = [self.client.submit(_choose_rules, f, self.x_keep, params, prev, pure=False)
                   for f, prev in zip(self.parts, self._tokens)]
        try:
            outs = self.client.gather([self.client.submit(_rules_info, r, pure=False)
                                       for r in futures])
        except Exception as exc:
            raise DistributedFitError(f"the Dask cluster failed during the fit ({exc})") from exc
        self._tokens = futures
        self.refined_at = None
        got = [o for o in outs if o is not None]
        self._points = (min(o[1] for o in got), max(o[2] for o in got))
        digest = np.array([o[0] for o in got])
        self.rules = _RulesDigest(digest, digest, digest)
        return self.rules

    def uniform_rules(self, points: int, span: float = DEFAULT_SPAN) -> None:
        """Every partition installs the same trapezoid rule for all its groups (the
        in-memory objective's ``uniform_rules``)."""
        futures = [self.client.submit(_uniform_rules, f, self.x_keep, int(points), float(span),
                                      pure=False) for f in self.parts]
        self._tokens = futures
        self.refined_at = None
        self._points = (int(points), int(points))
        digest = np.array([f"uniform {int(points)} {float(span)}"])
        self.rules = _RulesDigest(digest, digest, digest)

    def set_rules(self, rules) -> None:
        """``None``: back to ``nagq`` Gauss-Hermite points on every partition."""
        if rules is not None:
            raise ValueError("a Dask objective's rules are chosen on its workers "
                             "(choose_rules); only set_rules(None) clears them")
        self.rules, self._tokens = None, [None] * len(self.parts)
        self.refined_at = None

    def verify_rules(self, params: np.ndarray) -> bool | None:
        """Every partition verifies its groups' rules at ``params`` (the in-memory
        objective's ``verify_rules``); keeps the doubled rules' log-likelihood as
        ``refined_at``."""
        if self.rules is None:
            return None
        params = np.asarray(params, dtype=float)
        outs = [o for o in self._map(_verify_rules, params, per_part=self._tokens)
                if o is not None]
        self.refined_at = (params.copy(), float(sum(o[1] for o in outs)))
        return all(o[0] for o in outs)

    @property
    def points_range(self) -> tuple[int, int]:
        """Fewest and most points any group is integrated with."""
        if self.rules is None:
            return self.nagq, self.nagq
        return self._points

    def modes(self, params):
        """Conditional modes ``b`` and their conditional SDs, per level (gathered)."""
        params = np.asarray(params, dtype=float)
        outs = [o for o in self._map(_modes, params, self.nagq, per_part=self._tokens)
                if o is not None]
        b = np.concatenate([o[0] for o in outs])[self._perm]
        sd = np.concatenate([o[1] for o in outs])[self._perm]
        return b, sd

    def subset(self, groups: np.ndarray) -> ScalarObjective:
        """An in-memory objective on a subset of whole groups (level indices): their rows are
        gathered to the driver (the warm-up fit of many groups)."""
        groups = np.sort(np.asarray(groups, dtype=np.int64))
        code = np.full(self.ngroups, -1, dtype=np.int64)
        code[groups] = np.arange(len(groups))
        by_part = code[self._pos]              # partition order -> new code
        futures = []
        for i, f in enumerate(self.parts):
            nc = by_part[self._offsets[i]:self._offsets[i + 1]]
            futures.append(self.client.submit(_subset_rows, f, self.x_keep, nc, pure=False))
        try:
            rows = [r for r in self.client.gather(futures) if r is not None]
        except Exception as exc:
            raise DistributedFitError(f"the Dask cluster failed during the fit ({exc})") from exc
        X, y, m, Z, c, codes = (np.concatenate([r[j] for r in rows]) for j in range(6))
        term = ReTerm(spec=None, group=self.frame.ms.reterms[0].group, codes=codes,
                      levels=np.arange(len(groups)), Z=Z, cnames=["(Intercept)"],
                      correlated=True, level_keys=[])
        ms = ModelStructure(formula=self.frame.ms.formula, parsed=None, data=None, y=y,
                            lhs_terms=[], lhs_ratio=None, X=X, xnames=self.frame.ms.xnames,
                            dropped_columns=[], rows=pd.RangeIndex(len(y)), n_dropped=0,
                            reterms=[term], fixed_spec=None, x_keep=self.x_keep)
        return ScalarObjective(GlmerFrame(ms, self.family, y, m, c), self.nagq)

    # ---- the start: the in-memory `_default_start`, on sums over partitions ---------
    def default_start(self) -> np.ndarray:
        """Starting ``(beta, sigma)``: as :func:`mixedmodels.glmm._default_start`, from sums."""
        def solve(sums):
            A = sum(s[0] for s in sums if s is not None)
            b = sum(s[1] for s in sums if s is not None)
            return np.linalg.lstsq(A, b, rcond=None)[0]

        beta = solve(self._map(_glm_pass, None))
        for _ in range(50):
            step = solve(self._map(_glm_pass, beta))
            beta = beta + step
            if np.max(np.abs(step)) < 1e-8:
                break
        beta = np.clip(beta, -30, 30)
        if self._z_one:
            s1 = self._map(_intercept_pass, beta, None)
            n = sum(k for _, k in s1)
            mean = sum(s for s, _ in s1) / n
            s2 = self._map(_intercept_pass, beta, mean)
            sd = float(np.sqrt(sum(s for s, _ in s2) / n))
            icpt = [j for j, nm in enumerate(self.frame.ms.xnames) if nm == "(Intercept)"]
            if np.isfinite(sd) and sd > 0.1 and icpt:
                beta = beta.copy()
                beta[icpt[0]] += float(mean)
                return np.concatenate([beta, [sd]])
        return np.concatenate([beta, [1.0]])

    def traffic(self) -> dict:
        """What one evaluation moves and costs: bytes sent to and returned by each partition
        (pickled, as the scheduler ships them), and the mean wall time of an evaluation and
        of one partition's computation in it."""
        import pickle

        p = np.zeros(self.nparams)
        sent = len(pickle.dumps((self.x_keep, p, True, self.nagq, True, True, False)))
        back = len(pickle.dumps(("ok", (0.0, p, np.zeros((self.nparams, self.nparams))), 0.0)))
        walls = [w for w, _ in self.eval_log]
        parts = [t for _, ts in self.eval_log for t in ts]
        return {"bytes_to_partition": sent, "bytes_from_partition": back,
                "eval_wall_seconds": float(np.mean(walls)) if walls else float("nan"),
                "partition_eval_seconds": float(np.mean(parts)) if parts else float("nan")}

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# =========================================================================================
# Stage 1 on the driver: check the formula, read the categories, shuffle, build partitions
# =========================================================================================

_SUPPORTED = ("the Dask fitter supports one grouping factor with a scalar random effect, "
              "such as (1 | id), for the binomial and Poisson families")


def _check_spec_input(formula, data, family, weights):
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
    return parsed, term


def _build_spec(formula, data, family, weights, link):
    parsed, term = _check_spec_input(formula, data, family, weights)
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
    for v in sorted(_required_fixed(parsed.fixed_rhs, "fixed-effects part")):
        needed.setdefault(v, "fixed effects")
    for v in sorted(_required_fixed(term.lhs, f"random-effects term {term}")):
        needed.setdefault(v, f"random-effects term {term}")
    group = term.group_vars[0]
    needed.setdefault(group, f"grouping factor of {term}")
    if weights is not None:
        needed.setdefault(weights, "weights")
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
        if c == group or c in lhs_vars or c == weights:
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
    sample = data[cols].head(500, npartitions=-1).dropna()
    if len(sample) == 0:
        raise ValueError("no complete rows in the first partitions of the data")
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
                 z_spec, cnames, fam, weights), parsed


def _rank_of(keys: np.ndarray, dtype) -> np.ndarray:
    """Sort keys of the grouping column into the in-memory fit's order of levels."""
    if isinstance(dtype, pd.CategoricalDtype) and len(dtype.categories):
        return dtype.categories.get_indexer(keys)
    return keys


def dask_objective(formula: str, data, family: str | Family = "binomial",
                   weights: str | None = None, nagq: int = 1, link: str | None = None, *,
                   client=None, verbose: bool = False
                   ) -> tuple[DaskGlmerFrame, DaskScalarObjective]:
    """Stages 1-2 of a Dask fit: the frame and the objective (lme4's ``devFunOnly``).

    Parameters
    ----------
    formula, family, weights, link
        As :func:`mixedmodels.glmer` (``weights`` a column name).
    data : dask.dataframe.DataFrame
    nagq : int
        Points of the rule the objective evaluates by default.
    client : distributed.Client or str, optional
        See :func:`get_client`.
    verbose : bool
        A progress bar over evaluations.

    Returns
    -------
    frame : DaskGlmerFrame
    objective : DaskScalarObjective
        ``objective.evaluate(params)`` returns ``(loglik, gradient)`` at ``(beta, sigma)``.

    Raises
    ------
    ValueError
        Anything but one grouping column with a scalar random effect; a missing column.
    DistributedFitError
        The cluster failed.
    """
    import dask

    spec, parsed = _build_spec(formula, data, family, weights, link)
    client = get_client(client)
    group_dtype = data._meta[spec.group].dtype
    # Rows of a group must be in one partition: shuffle once if they are not.
    key_parts = client.compute([dask.delayed(_part_keys)(p, spec.group)
                                for p in data[[spec.group]].to_delayed()])
    keys = client.gather(key_parts)
    allk = np.concatenate(keys) if keys else np.zeros(0)
    shuffled = len(pd.unique(allk)) != len(allk)
    if shuffled:
        # The task-based shuffle: its pieces are ordinary tasks, recomputed if a worker is lost.
        data = data.shuffle(on=spec.group, method="tasks")
    token = uuid.uuid4().hex[:12]
    parts = data[spec.cols].to_delayed()
    states = [dask.delayed(_build_partition, pure=False)(p, spec,
                                                        dask_key_name=f"mm-partition-{token}-{i}")
              for i, p in enumerate(parts)]
    futures = client.compute(states)
    try:
        sums = client.gather([client.submit(_summary, f, pure=False) for f in futures])
    except ValueError:
        raise
    except Exception as exc:
        raise DistributedFitError(f"building the partitions failed ({exc})") from exc
    seen = set()
    for s in sums:
        for cat, msg in s["warnings"]:
            if msg not in seen:
                seen.add(msg)
                warnings.warn(msg, cat, stacklevel=3)
    n = sum(s["n"] for s in sums)
    ndrop = sum(s["n_dropped"] for s in sums)
    if n == 0:
        raise ValueError("no complete rows left after dropping rows with missing values")
    if ndrop:
        warnings.warn(f"dropped {ndrop} of {n + ndrop} rows with missing values in the "
                      f"formula's columns ({', '.join(spec.cols)}) (like R's na.omit)",
                      UserWarning, stacklevel=3)
    part_keys = [s["keys"] for s in sums]
    allk = np.concatenate(part_keys)
    if len(pd.unique(allk)) != len(allk):
        raise DistributedFitError("a group's rows are in more than one partition after the "
                                  "shuffle on the grouping column")
    if len(allk) < 2:
        raise ValueError(f"grouping factor {spec.group!r} has {len(allk)} level; a random "
                         "effect needs at least 2 levels")
    # The rank of X from its Gram matrix, by the in-memory rule (a square root of X'X has the
    # same column dependencies as X).
    XtX = sum(s["XtX"] for s in sums if s["XtX"] is not None)
    w, V = np.linalg.eigh(XtX)
    M = np.sqrt(np.clip(w, 0, None))[:, None] * V.T
    x_keep = _drop_dependent_columns(M, spec.xnames)
    dropped = [spec.xnames[j] for j in range(len(spec.xnames)) if j not in set(x_keep.tolist())]
    if dropped:
        warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
                      f"column(s): {', '.join(dropped)}", UserWarning, stacklevel=3)
    xnames = [spec.xnames[j] for j in x_keep]
    colmax = np.max([s["colmax"] for s in sums if s["colmax"] is not None], axis=0)[x_keep]
    rank = _rank_of(allk, group_dtype)
    order = np.argsort(rank, kind="stable")
    term = DaskReTerm(spec.term, spec.group, allk[order], spec.cnames, spec.z_spec, None)
    ms = DaskModel(formula, parsed, xnames, [term], spec.fixed_spec, x_keep, spec.categories,
                   n, dropped)
    frame = DaskGlmerFrame(ms, spec.family, n, spec.weights)
    obj = DaskScalarObjective(client, futures, frame, nagq, x_keep, [len(k) for k in part_keys],
                              rank, all(s["z_one"] for s in sums), verbose=verbose)
    obj.colmax = colmax
    # Distinct groups over all partitions, counted as the in-memory objective counts them.
    hashes = [s["unit_hashes"] for s in sums if s.get("unit_hashes") is not None]
    distinct = len(np.unique(np.concatenate(hashes))) if hashes else 0
    obj.nunits = distinct if distinct <= WORTHWHILE * obj.ngroups else obj.ngroups
    obj.shuffled = shuffled
    return frame, obj


# =========================================================================================
# Stage 5: the result
# =========================================================================================


class DaskGlmerResult(GlmerResult):
    """A GLMM fitted on Dask: the in-memory result, with the accessors that need rows
    computed on the workers.

    Attributes (beyond :class:`~mixedmodels.glmm.GlmerResult`'s)
    ------------------------------------------------------------
    distributed : dict
        How the fit ran: ``path``, ``npartitions``, ``nworkers``, ``shuffled``, ``evaluations``,
        ``seconds``.
    """

    def _separation_columns(self) -> list[str]:
        scale = self._obj.colmax
        out = []
        for j, nm in enumerate(self.xnames):
            big = abs(self.fixef.iloc[j]) * scale[j] > 12
            if big and (not np.isfinite(self.se.iloc[j]) or self.se.iloc[j] * scale[j] > 5):
                out.append(nm)
        return out

    def pearson_residuals(self) -> np.ndarray:
        """Pearson residuals of every row (gathered; rows in partition order)."""
        obj = self._obj
        return np.concatenate(obj._map(_pearson, self._params, self.nagq, per_part=obj._tokens))

    def evaluation_log(self) -> pd.DataFrame:
        """Each objective evaluation of the fit: its wall time on the driver and every
        partition's compute time on its worker (seconds).

        Returns
        -------
        DataFrame
            Columns ``evaluation``, ``partition``, ``seconds`` and ``wall_seconds``.
        """
        rows = [(i, j, t, wall) for i, (wall, ts) in enumerate(self._obj.eval_log)
                for j, t in enumerate(ts)]
        return pd.DataFrame(rows, columns=["evaluation", "partition", "seconds", "wall_seconds"])

    def fitted(self):
        raise ValueError("the fitted rows of a Dask fit live on the cluster: call "
                         "predict(newdata, type='response') on the rows you need (a pandas or "
                         "Dask frame)")

    def predict(self, newdata=None, type: str = "link", population_average: bool = False,
                include_random: bool = True, allow_new_levels: bool = False):
        """Predictions for ``newdata`` (pandas, or Dask: then a Dask Series), as the in-memory
        :meth:`~mixedmodels.glmm.GlmerResult.predict`; ``newdata`` is required."""
        if newdata is None:
            self.fitted()
        if newdata.__class__.__module__.startswith("dask"):
            meta = pd.Series([], dtype=float, name="population_average" if population_average
                             else type)
            return newdata.map_partitions(
                lambda d: GlmerResult.predict(self, d, type=type,
                                              population_average=population_average,
                                              include_random=include_random,
                                              allow_new_levels=allow_new_levels), meta=meta)
        return GlmerResult.predict(self, newdata, type=type,
                                   population_average=population_average,
                                   include_random=include_random, allow_new_levels=allow_new_levels)


def glmer_dask(formula: str, data, family: str | Family = "binomial",
               weights: str | None = None, nagq: int | str = "auto",
               start: np.ndarray | None = None, link: str | None = None, *, client=None,
               verbose: bool = True) -> DaskGlmerResult:
    """Fit a GLMM to a Dask frame, out of core (what :func:`mixedmodels.glmer` calls).

    Parameters
    ----------
    formula, family, weights, nagq, start, link
        As :func:`mixedmodels.glmer`; one grouping factor with a scalar random effect.
    data : dask.dataframe.DataFrame
        Any partitioning: rows of a group spread over partitions are shuffled together once.
    client : distributed.Client or str, optional
        See :func:`get_client`.
    verbose : bool
        A progress bar over objective evaluations (stderr).

    Returns
    -------
    DaskGlmerResult
        ``result.distributed`` says how the fit ran.
    """
    t0 = time.perf_counter()
    auto = isinstance(nagq, str)
    if auto and nagq != "auto":
        raise ValueError(f"`nagq` must be a whole number >= 1 or 'auto', got {nagq!r}")
    if not auto and (isinstance(nagq, bool) or not isinstance(nagq, (int, np.integer))
                     or nagq < 1):
        raise ValueError(f"`nagq` must be a whole number >= 1 or 'auto', got {nagq!r}")
    frame, obj = dask_objective(formula, data, family, weights, 10 if auto else int(nagq), link,
                                client=client, verbose=verbose)
    t1 = time.perf_counter()
    try:
        with single_thread_blas():
            res = fit_frame(frame, nagq, start, obj=obj, result_class=DaskGlmerResult)
    finally:
        obj.close_progress()
    t2 = time.perf_counter()
    info = obj.client.scheduler_info()
    res.distributed = {"path": "kernel", "npartitions": len(obj.parts),
                       "nworkers": len(info.get("workers", {})), "shuffled": obj.shuffled,
                       "evaluations": obj.nevals, "seconds": t2 - t0,
                       "setup_seconds": t1 - t0, "fit_seconds": t2 - t1,
                       **obj.traffic()}
    res.notes.append(f"fitted out of core on Dask: {len(obj.parts)} partitions on "
                     f"{res.distributed['nworkers']} workers, the kernel mapped over partitions")
    return res
