"""``glmer`` out of core on Dask: two exact paths, chosen by the data.

A Dask frame passed to :func:`mixedmodels.glmer` is fitted here, on a ``dask.distributed``
cluster (the current client, one passed as ``client=``, or a local one). The data stay where
they live; rows of one group must be in one partition, so a frame whose groups straddle
partitions is shuffled on the grouping column once (Dask's task-based shuffle).

**The pattern path** (:mod:`mixedmodels.distributed_patterns`). Each partition reduces its
groups to their distinct patterns with counts (the in-memory fitter's compression), a tree
reduction merges them, and when the merged table is small (:data:`~mixedmodels.distributed_patterns.PATTERN_BUDGET` bytes) and
compression pays (distinct patterns at most ``compress.WORTHWHILE`` of the groups, the
in-memory rule) it is fitted in memory: one pass over the data, then no more traffic.

**The partition path.** Otherwise the kernel is mapped over the partitions:

1. *Stage 1 on the workers.* Each partition becomes its own model frame (the in-memory code,
   :func:`mixedmodels.glmm.frame_from_model`) and its own in-memory
   :class:`~mixedmodels.glmm.ScalarObjective` (chunks of whole groups, warm starts of the
   conditional modes), built on its worker and kept there (a persisted future).
2. *Stage 2 on the driver.* :class:`DaskScalarObjective` has the in-memory objective's
   interface (``evaluate``, ``modes``, ``lower``, ``reset``, ``subset``). An evaluation sends
   only the parameters to every partition and adds the sums that come back: log-likelihood,
   gradient, the outer products of the groups' scores that BHHH uses, and (for
   ``nagq="auto"``'s Newton steps and the standard errors) the kernel's analytic Hessian.

Either way **stages 3-5 are the in-memory ones** (:func:`mixedmodels.glmm.fit_frame`): the same
optimizer, the same check of the optimum, the same ``nagq="auto"``, so a Dask fit equals an
in-memory fit of the same rows to rounding. ``fit.distributed["path"]`` (``"patterns"`` or
``"partitions"``) and a line of the summary say which path ran, and why.

A lost worker: Dask recomputes what it held from lineage (the read, the shuffle, the build),
and the fit goes on; a partition that has lost state the fit depends on (the per-group rules),
or a cluster that cannot recover, raises :class:`DistributedFitError`. An evaluation that fails
is never read as a poor log-likelihood.

Only the starting values are computed differently: the in-memory start solves a least-squares
problem on all rows at once; here the same iteration runs on sums.
"""

from __future__ import annotations

import copy
import hashlib
import time
import uuid
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from .blas import single_thread_blas
from .agq import DEFAULT_SPAN
from .compress import WORTHWHILE
from .distributed_frame import (DaskGlmerFrame, DaskModel, DaskReTerm,  # noqa: F401 (re-exported)
                                DistributedFitError, _build_spec, _check_spec_input,
                                _partition_frame, _part_keys, _rank_of, _Spec, _SUPPORTED,
                                complete_rows, default_start, get_client, glm_sums,
                                intercept_sums, kept_columns, partition_counts, reissue,
                                build_partitions)
from .distributed_patterns import (PATTERN_BUDGET, PatternObjective, PatternPass,
                                   level_patterns, pattern_pass)
from .families import Family
from .formula import ModelStructure, ReTerm
from .glmm import fit_frame
from .glmm_frame import GlmerFrame
from .glmm_objective import ScalarObjective, fold_points
from .glmm_result import GlmerResult

__all__ = ["glmer_dask", "DaskScalarObjective", "DaskGlmerResult", "DistributedFitError",
           "get_client", "dask_objective", "PATTERN_BUDGET"]

#: The paths a Dask fit can take (``dask_path=``): chosen from the data, or forced.
PATHS = ("auto", "patterns", "partitions")

#: Rows per kernel chunk inside a partition (bounds the kernel's rows x nodes arrays).
CHUNK_ROWS = 200_000


# =========================================================================================
# Stage 1: what every partition needs, and the partitions' own frames
# =========================================================================================


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


class _PartitionObjective(ScalarObjective):
    """A partition's in-memory objective. Which rules are merged into larger ones for speed
    (:func:`mixedmodels.glmm_objective.fold_points`) is decided over all partitions' distinct
    groups, as one in-memory objective decides it over all its groups, so that every group
    is integrated with the same points as in memory."""

    fold: tuple[np.ndarray, np.ndarray] | None = None   # (chosen points, points used)

    def _fold_points(self, points: np.ndarray, nrows: np.ndarray) -> np.ndarray:
        if self.fold is None:
            return super()._fold_points(points, nrows)
        ks, used = self.fold
        i = np.minimum(np.searchsorted(ks, points), len(ks) - 1)
        return np.where(ks[i] == points, used[i], points)


@dataclass
class _FoldedRules:
    """A partition's per-group rules and the fold decided over all partitions: what a task
    installs before it evaluates (a future, so a rebuilt partition gets both)."""

    rules: Any
    fold: tuple[np.ndarray, np.ndarray]


def _build_partition(df: pd.DataFrame, spec: _Spec) -> _Partition:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sub, n_dropped = complete_rows(df, spec)
        del df
        obj = None
        summary = {"n": 0, "XtX": None, "colmax": None, "z_one": True}
        if len(sub):
            frame, keys = _partition_frame(sub, spec)
            del sub
            X = frame.ms.X
            summary = {"n": len(frame.y), "XtX": X.T @ X, "colmax": np.max(np.abs(X), axis=0),
                       "z_one": bool(np.all(frame.ms.reterms[0].Z[:, 0] == 1.0))}
            obj = _PartitionObjective(frame, 1, max_rows=CHUNK_ROWS)
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
              rules=None, refine=False, hessian=False):
    """One partition's sums at ``params`` (the in-memory objective's ``evaluate``; with
    ``hessian`` the kernel's analytic negative Hessian as the third sum)."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    _install_rules(part, obj, rules)
    t0 = time.perf_counter()
    if reset:
        obj.reset()
    kw = {"refine": True} if refine else {}
    if hessian:
        kw["hessian"] = True
    try:
        with single_thread_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            out = obj.evaluate(params, gradient=gradient, nagq=nagq, keep=keep, opg=opg, **kw)
    except _NUMERIC_ERRORS as exc:
        # Handed back as data, so that the driver raises the same error as in memory.
        return ("error", type(exc).__name__, str(exc))
    return ("ok", out, time.perf_counter() - t0)


def _install_rules(part: _Partition, obj, token) -> None:
    """Make ``obj`` use ``rules`` (the object of a rules future; None: Gauss-Hermite).

    The rules travel as their own futures, inputs of every task that needs them, so that a
    partition copied to another worker, or rebuilt after a loss, gets them too: the worker's
    state is a cache, never the record."""
    if part.rules is not token and hasattr(obj, "set_rules"):
        rules, fold = (token.rules, token.fold) if isinstance(token, _FoldedRules) else (token, None)
        obj.fold = fold
        obj.set_rules(rules)
        part.rules = token


def _choose_rules(part: _Partition, x_keep, params, previous):
    """The partition's per-group rules at ``params`` (never smaller than ``previous``): the
    in-memory objective's ``choose_rules``. The rules themselves are the result (a future)."""
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    _install_rules(part, obj, previous)
    obj.fold = None   # the new rules' fold is decided on the driver, then installed
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
    obj.fold = None   # one rule for every unit: nothing to fold
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


def _rules_info(part: _Partition, rules):
    """A digest of a partition's rules and, per unit (distinct group), its hash, points, rows
    and groups: what the driver needs to compare rules and decide the fold."""
    if rules is None or part.obj is None:
        return None
    h = hashlib.blake2b(digest_size=16)
    for a in (rules.points, rules.span, rules.shift):
        h.update(np.ascontiguousarray(a).tobytes())
    chunks = part.obj.chunks
    nrows = np.concatenate([ch.nrows for ch in chunks])
    count = np.concatenate([np.ones(ch.ngroups) if getattr(ch, "weights", None) is None
                            else ch.weights for ch in chunks])
    return h.hexdigest(), part.summary["unit_hashes"], rules.points, nrows, count


def _modes(part: _Partition, x_keep, params, nagq, rules=None):
    obj = _objective(part, x_keep)
    if obj is None:
        return None
    _install_rules(part, obj, rules)
    obj.nagq = nagq
    with single_thread_blas(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        return obj.modes(params)


def _glm_pass(part: _Partition, x_keep, beta):
    """Sums of one IRLS step of the GLM start (``beta=None``: the first, from the data)."""
    obj = _objective(part, x_keep)
    return None if obj is None else glm_sums(obj.chunks, obj.family, beta)


def _intercept_pass(part: _Partition, x_keep, beta, center):
    """Sums over groups of the empirical link values the random-intercept start uses."""
    obj = _objective(part, x_keep)
    return (0.0, 0) if obj is None else intercept_sums(obj.chunks, obj.family, beta, center)


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

    @property
    def analytic_hessian(self) -> bool:
        """With per-group rules (``nagq="auto"``) the Hessian is the partitions' analytic
        ones added up, as in memory; a fixed Gauss-Hermite rule keeps finite differences."""
        return self.rules is not None

    def evaluate(self, params: np.ndarray, gradient: bool = True, nagq: int | None = None,
                 keep: bool = True, opg: bool = False, refine: bool = False,
                 hessian: bool = False):
        """The in-memory objective's ``evaluate``: the partitions' sums added up."""
        params = np.asarray(params, dtype=float)
        t0 = time.perf_counter()
        # An explicit nagq is a Gauss-Hermite evaluation (the quadrature check), whatever rules
        # are installed; otherwise the rules if there are any, else the objective's nagq.
        k = int(nagq) if nagq is not None else (None if self.rules is not None else self.nagq)
        outs = self._map(_evaluate, params, gradient, k, keep, opg, self._reset,
                         per_part=self._tokens, refine=refine, hessian=hessian)
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
            outs = self.client.gather([self.client.submit(_rules_info, f, r, pure=False)
                                       for f, r in zip(self.parts, futures)])
        except Exception as exc:
            raise DistributedFitError(f"the Dask cluster failed during the fit ({exc})") from exc
        got = [o for o in outs if o is not None]
        hashes = np.concatenate([o[1] for o in got])
        points = np.concatenate([o[2] for o in got]).astype(np.int64)
        nrows = np.concatenate([o[3] for o in got])
        count = np.concatenate([o[4] for o in got])
        if self.nunits < self.ngroups:
            # The in-memory objective's units are the distinct groups: count each once.
            _, first = np.unique(hashes, return_index=True)
            points, nrows = points[first], nrows[first]
        else:
            # ... or every group (compression did not pay).
            points, nrows = np.repeat(points, count.astype(np.int64)), \
                np.repeat(nrows, count.astype(np.int64))
        ks, first_k = np.unique(points, return_index=True)
        fold = (ks, fold_points(points, nrows)[first_k])
        self._tokens = [self.client.submit(_FoldedRules, r, fold, pure=False) for r in futures]
        self.refined_at = None
        self._at_x = None  # an evaluation cached by the optimizer is stale under new rules
        self._points = (int(ks.min()), int(ks.max()))
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
        self._at_x = None
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
        self._at_x = None

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
        return default_start(lambda beta: self._map(_glm_pass, beta),
                             lambda beta, c: self._map(_intercept_pass, beta, c),
                             list(self.frame.ms.xnames), self._z_one)

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


@dataclass
class _DriverModel:
    """What the driver makes of the partitions' summaries (both paths)."""

    frame: DaskGlmerFrame
    x_keep: np.ndarray
    keys: np.ndarray          # the partitions' group keys, concatenated in partition order
    rank: np.ndarray
    order: np.ndarray         # level order: levels = keys[order]
    colmax: np.ndarray
    part_ngroups: list[int]
    z_one: bool


def _driver_model(spec: _Spec, parsed, sums: list[dict], group_dtype) -> _DriverModel:
    """Warnings, counts, the rank check of X and the levels, from the partitions' summaries,
    as the in-memory ``glmer_frame`` finds them on all rows."""
    n, allk = partition_counts(sums, spec.cols, stacklevel=4)
    part_keys = [s["keys"] for s in sums]
    if len(allk) < 2:
        raise ValueError(f"grouping factor {spec.group!r} has {len(allk)} level; a random "
                         "effect needs at least 2 levels")
    XtX = sum(s["XtX"] for s in sums if s["XtX"] is not None)
    x_keep, dropped = kept_columns(XtX, spec.xnames)
    if dropped:
        warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
                      f"column(s): {', '.join(dropped)}", UserWarning, stacklevel=4)
    xnames = [spec.xnames[j] for j in x_keep]
    colmax = np.max([s["colmax"] for s in sums if s["colmax"] is not None], axis=0)[x_keep]
    rank = _rank_of(allk, group_dtype)
    order = np.argsort(rank, kind="stable")
    term = DaskReTerm(spec.term, spec.group, allk[order], spec.cnames, spec.z_spec, None)
    ms = DaskModel(spec.formula, parsed, xnames, [term], spec.fixed_spec, x_keep,
                   spec.categories, n, dropped, spec.offset)
    frame = DaskGlmerFrame(ms, spec.family, n, spec.weights)
    return _DriverModel(frame, x_keep, allk, rank, order, colmax, [len(k) for k in part_keys],
                        all(s["z_one"] for s in sums))


def dask_objective(formula: str, data, family: str | Family = "binomial",
                   weights: str | None = None, nagq: int = 1, link: str | None = None, *,
                   client=None, verbose: bool = False
                   ) -> tuple[DaskGlmerFrame, DaskScalarObjective]:
    """Stages 1-2 of the partition path: the frame and the objective (lme4's ``devFunOnly``).

    Parameters
    ----------
    formula, family, weights, link
        As :func:`mixedmodels.glmer` (``weights`` a column name).
    data : dask.dataframe.DataFrame
    nagq : int
        Points of the rule the objective evaluates by default.
    client : distributed.Client or str, optional
        See :func:`~mixedmodels.distributed_frame.get_client`.
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
    spec, parsed = _build_spec(formula, data, family, weights, link)
    return _kernel_objective(spec, parsed, data, get_client(client), nagq, verbose)


def _kernel_objective(spec: _Spec, parsed, data, client, nagq: int, verbose: bool,
                      shuffled: bool | None = None):
    """The partition path's stages 1-2. ``shuffled``: already known (``data`` then holds
    whole groups per partition, shuffled or not); None: find out."""
    import dask

    group_dtype = data._meta[spec.group].dtype
    if shuffled is None:
        # Rows of a group must be in one partition: shuffle once if they are not.
        key_parts = client.compute([dask.delayed(_part_keys)(p, spec.group)
                                    for p in data[[spec.group]].to_delayed()])
        keys = client.gather(key_parts)
        allk = np.concatenate(keys) if keys else np.zeros(0)
        shuffled = len(pd.unique(allk)) != len(allk)
        if shuffled:
            # The task-based shuffle: its pieces are ordinary tasks, recomputed if a worker
            # is lost.
            data = data.shuffle(on=spec.group, method="tasks")
    futures, sums = build_partitions(client, data[spec.cols].to_delayed(), _build_partition,
                                     _summary, spec, "mm-partition")
    dm = _driver_model(spec, parsed, sums, group_dtype)
    obj = DaskScalarObjective(client, futures, dm.frame, nagq, dm.x_keep, dm.part_ngroups,
                              dm.rank, dm.z_one, verbose=verbose)
    obj.colmax = dm.colmax
    # Distinct groups over all partitions, counted as the in-memory objective counts them.
    hashes = [s["unit_hashes"] for s in sums if s.get("unit_hashes") is not None]
    distinct = len(np.unique(np.concatenate(hashes))) if hashes else 0
    obj.nunits = distinct if distinct <= WORTHWHILE * obj.ngroups else obj.ngroups
    obj.shuffled = shuffled
    obj.partition_stats = pd.DataFrame({"rows": [s["n"] for s in sums],
                                        "groups": dm.part_ngroups})
    return dm.frame, obj


def _choose_path(pp: PatternPass, requested: str, budget: int) -> tuple[str, str]:
    """Which path fits the data, and why (a sentence for the summary)."""
    t, G = pp.table, pp.ngroups
    if t is None:
        return "partitions", "no rows"
    if t.collision:
        reason = ("two different groups' rows share a 64-bit hash, so the partitions' "
                  "distinct groups cannot be merged on it")
        if requested == "patterns":
            raise DistributedFitError(f"dask_path='patterns': {reason}; use "
                                      "dask_path='partitions'")
        return "partitions", reason
    if t.over_budget:
        reason = (f"the merged table of distinct groups outgrew the budget: at least "
                  f"{t.npatterns:,} distinct groups of {G:,}, over {t.nbytes / 2**20:,.0f} MiB "
                  f"(pattern_budget={budget:,} bytes)")
        if requested == "patterns":
            raise ValueError(f"dask_path='patterns': {reason}; raise pattern_budget (the table "
                             "is fitted in the driver's memory) or use dask_path='partitions'")
        return "partitions", reason
    what = (f"{t.npatterns:,} distinct groups of {G:,} ({int(t.nrows.sum()):,} rows, "
            f"{t.nbytes / 2**20:,.1f} MiB)")
    if requested == "patterns":
        return "patterns", f"{what}; dask_path='patterns'"
    if t.npatterns > WORTHWHILE * G:
        return "partitions", (f"{what}: too few repeated groups for the merged table to pay "
                              f"(more than {WORTHWHILE:.0%} of the groups are distinct)")
    return "patterns", f"{what}, within the budget of {budget / 2**20:,.0f} MiB"


def _pattern_objective(spec: _Spec, parsed, pp: PatternPass, group_dtype, nagq: int):
    """The pattern path's stages 1-2: the frame and the in-memory objective of the table."""
    dm = _driver_model(spec, parsed, pp.summaries, group_dtype)
    obj = PatternObjective(pp.table, dm.frame, nagq, level_patterns(pp, dm.order), dm.x_keep)
    obj.colmax = dm.colmax
    obj.shuffled = pp.shuffled
    obj.partition_stats = pd.DataFrame({
        "rows": [s["n"] for s in pp.summaries], "groups": dm.part_ngroups,
        "patterns": [s["npatterns"] for s in pp.summaries],
        "seconds": [s["seconds"] for s in pp.summaries]})
    return dm.frame, obj


# =========================================================================================
# Stage 5: the result
# =========================================================================================


class DaskGlmerResult(GlmerResult):
    """A GLMM fitted on Dask: the in-memory result, with the accessors that need rows
    computed on the workers.

    Attributes (beyond :class:`~mixedmodels.glmm.GlmerResult`'s)
    ------------------------------------------------------------
    distributed : dict
        How the fit ran: ``path`` (``"patterns"``: the distinct groups merged and fitted in
        memory; ``"partitions"``: the kernel mapped over partitions), ``path_reason``,
        ``npartitions``, ``nworkers``, ``shuffled``, ``groups``, ``patterns`` (distinct groups,
        when counted), ``evaluations``, ``seconds``, ``setup_seconds``, ``fit_seconds``, and
        per path its costs (see :func:`glmer_dask`).
    """

    @property
    def distributed_path(self) -> str:
        """``"patterns"`` or ``"partitions"``: which path the fit took."""
        return self.distributed["path"]

    def partition_log(self) -> pd.DataFrame:
        """One row per partition: rows and groups, and on the pattern path its distinct
        groups and the seconds its pass took on its worker (reading, the model frame,
        hashing)."""
        return self._obj.partition_stats.rename_axis("partition").reset_index()

    def _separation_columns(self) -> list[str]:
        scale = self._obj.colmax
        out = []
        for j, nm in enumerate(self.xnames):
            big = abs(self.fixef.iloc[j]) * scale[j] > 12
            if big and (not np.isfinite(self.se.iloc[j]) or self.se.iloc[j] * scale[j] > 5):
                out.append(nm)
        return out

    def pearson_residuals(self) -> np.ndarray:
        """Pearson residuals of every row (gathered; rows in partition order, or on the
        pattern path each distinct group's rows once per group)."""
        obj = self._obj
        if isinstance(obj, PatternObjective):
            return obj.pearson_residuals(self._params)
        return np.concatenate(obj._map(_pearson, self._params, self.nagq, per_part=obj._tokens))

    def evaluation_log(self) -> pd.DataFrame:
        """Each objective evaluation of the fit: its wall time on the driver and every
        partition's compute time on its worker (seconds).

        Returns
        -------
        DataFrame
            Columns ``evaluation``, ``partition``, ``seconds`` and ``wall_seconds``.

        Raises
        ------
        ValueError
            On the pattern path, whose evaluations run in memory (see :meth:`partition_log`).
        """
        if isinstance(self._obj, PatternObjective):
            raise ValueError("this fit took the pattern path: its evaluations ran in memory "
                             "on the merged table of distinct groups, not on the partitions "
                             "(partition_log() shows the partitions' pass)")
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
            return newdata.map_partitions(_predict_part, _Predictor(self), type,
                                          population_average, include_random,
                                          allow_new_levels, meta=meta)
        return GlmerResult.predict(self, newdata, type=type,
                                   population_average=population_average,
                                   include_random=include_random, allow_new_levels=allow_new_levels)


class _Predictor:
    """What a partition of new data needs to be predicted: the fit without its cluster state
    (a lambda over the fit cannot be tokenized by Dask, nor should the workers get futures)."""

    def __init__(self, fit: DaskGlmerResult):
        light = copy.copy(fit)
        light._obj, light.call = _KnownModes(fit._re_matrices()), None
        self.fit, self.token = light, uuid.uuid4().hex

    def __dask_tokenize__(self):
        return self.token


@dataclass
class _KnownModes:
    """The conditional modes, computed once on the driver, in place of the objective."""

    mats: list

    def modes(self, params):
        return self.mats


def _predict_part(df: pd.DataFrame, pred: _Predictor, type, population_average,
                  include_random, allow_new_levels):
    return GlmerResult.predict(pred.fit, df, type=type, population_average=population_average,
                               include_random=include_random, allow_new_levels=allow_new_levels)


def glmer_dask(formula: str, data, family: str | Family = "binomial",
               weights: str | None = None, nagq: int | str = "auto",
               start: np.ndarray | None = None, link: str | None = None, *, client=None,
               verbose: bool = True, path: str = "auto",
               pattern_budget: int = PATTERN_BUDGET,
               offset: str | None = None) -> DaskGlmerResult:
    """Fit a GLMM to a Dask frame, out of core (what :func:`mixedmodels.glmer` calls).

    Parameters
    ----------
    formula, family, weights, nagq, start, link
        As :func:`mixedmodels.glmer`; one grouping factor with a scalar random effect.
        ``offset(...)`` terms in the formula are evaluated on each partition's rows.
    data : dask.dataframe.DataFrame
        Any partitioning: rows of a group spread over partitions are shuffled together once.
    client : distributed.Client or str, optional
        See :func:`~mixedmodels.distributed_frame.get_client`.
    verbose : bool
        Progress bars over the partitions' pass and the objective's evaluations, and a line
        saying which path the fit takes and why (stderr).
    path : {"auto", "patterns", "partitions"}
        ``"auto"``: first reduce every partition to its distinct groups and merge them (a tree
        reduction); fit the merged table in memory when its rows take at most
        ``pattern_budget`` bytes and at most ``compress.WORTHWHILE`` (80%) of the groups are
        distinct, else map the kernel over the partitions. ``"patterns"`` forces the first
        (ValueError when the table exceeds the budget), ``"partitions"`` the second (without
        the pattern pass). Both give the in-memory fit's estimates.
    pattern_budget : int
        Bytes of the merged table's rows (rows x (5 + fixed-effect columns) x 8) that the
        pattern path may hold on the driver; default :data:`~mixedmodels.distributed_patterns.PATTERN_BUDGET` (128 MiB).
    offset : str, optional
        A column of ``data`` added to the formula's offsets (as ``glmer``'s ``offset=``; an
        array is refused: its rows could not be matched on the workers).

    Returns
    -------
    DaskGlmerResult
        ``result.distributed`` says how the fit ran (``result.distributed_path``).

    Raises
    ------
    ValueError
        An unsupported model or bad argument (the message says what is supported).
    DistributedFitError
        The cluster failed; no estimate is returned from a partial computation.
    """
    t0 = time.perf_counter()
    auto = isinstance(nagq, str)
    if auto and nagq != "auto":
        raise ValueError(f"`nagq` must be a whole number >= 1 or 'auto', got {nagq!r}")
    if not auto and (isinstance(nagq, bool) or not isinstance(nagq, (int, np.integer))
                     or nagq < 1):
        raise ValueError(f"`nagq` must be a whole number >= 1 or 'auto', got {nagq!r}")
    if path not in PATHS:
        raise ValueError(f"`dask_path` must be one of {', '.join(map(repr, PATHS))}, got {path!r}")
    if isinstance(pattern_budget, bool) or not isinstance(pattern_budget, (int, np.integer)) \
            or pattern_budget < 0:
        raise ValueError(f"`pattern_budget` must be a number of bytes >= 0, got {pattern_budget!r}")
    k0 = 10 if auto else int(nagq)
    spec, parsed = _build_spec(formula, data, family, weights, link, offset)
    client = get_client(client)
    info: dict[str, Any] = {}
    pp = None
    chosen, reason = "partitions", "dask_path='partitions'"
    if path != "partitions":
        pp = pattern_pass(spec, data, client, int(pattern_budget), verbose=verbose)
        chosen, reason = _choose_path(pp, path, int(pattern_budget))
        t = pp.table
        info.update(pattern_pass_seconds=pp.seconds, merge_seconds=pp.merge_seconds,
                    patterns=None if t is None or t.over_budget else t.npatterns,
                    pattern_rows=None if t is None or t.over_budget else int(t.nrows.sum()),
                    pattern_bytes=None if t is None else t.nbytes)
    if verbose:
        import sys

        print(f"glmer on Dask, the {chosen[:-1]} path: {reason}", file=sys.stderr)
    if chosen == "patterns":
        frame, obj = _pattern_objective(spec, parsed, pp, data._meta[spec.group].dtype, k0)
    else:
        if pp is not None:
            data, known = pp.data, pp.shuffled
            del pp
        else:
            known = None
        frame, obj = _kernel_objective(spec, parsed, data, client, k0, verbose, known)
    t1 = time.perf_counter()
    try:
        with single_thread_blas():
            res = fit_frame(frame, nagq, start, obj=obj, result_class=DaskGlmerResult)
    finally:
        if chosen == "partitions":
            obj.close_progress()
    t2 = time.perf_counter()
    nworkers = len(client.scheduler_info().get("workers", {}))
    nparts = len(obj.partition_stats)
    res.distributed = {"path": chosen, "path_reason": reason, "npartitions": nparts,
                       "nworkers": nworkers, "shuffled": obj.shuffled,
                       "groups": int(obj.ngroups), "evaluations": obj.nevals,
                       "seconds": t2 - t0, "setup_seconds": t1 - t0, "fit_seconds": t2 - t1,
                       **info}
    if chosen == "partitions":
        res.distributed.update(obj.traffic())
        if res.distributed.get("patterns") is None:
            res.distributed["patterns"] = int(obj.nunits) if obj.nunits < obj.ngroups else None
        res.notes.append(f"fitted out of core on Dask by the partition path: the kernel mapped "
                         f"over {nparts} partitions on {nworkers} workers ({reason})")
    else:
        res.notes.append(f"fitted out of core on Dask by the pattern path: {nparts} partitions "
                         f"on {nworkers} workers reduced to {reason}; the merged table fitted "
                         "in memory")
    return res
