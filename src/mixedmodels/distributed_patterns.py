"""The pattern path of a Dask fit: the partitions' distinct groups, merged, fitted in memory.

With one scalar random-effect term a group's contribution to every sum depends only on its
rows, so groups with identical rows (a *pattern*, :mod:`mixedmodels.compress`) contribute
identically. Discrete designs repeat a few patterns many times: the post's 1,000 users have
508 distinct (display, clicks, exposures) patterns, ten million users made like them a few
tens of thousands. Then the whole data set is, exactly, a small table of patterns with
counts, and that table is fitted in memory.

1. **Each partition** (on its worker, in one pass over its rows) builds its model frame with
   the in-memory code and reduces its groups to a :class:`PatternTable`: each distinct group's
   rows once, its count, and its key, the 64-bit hash that
   :func:`mixedmodels.compress.group_patterns` gives it (the in-memory fitter's definition of a
   pattern, so both find the same patterns).
2. **A tree reduction** (a ``dask.bag`` reduction, :func:`merge_tables` at every node) merges
   the partitions' tables on their keys, adding counts. Rows with one key are compared bit for
   bit, so a hash collision can never merge different groups (it sends the fit down the
   partition path instead). A merge whose table outgrows the budget stops growing it.
3. **On the driver**, when the merged table is within :data:`PATTERN_BUDGET` bytes,
   :class:`PatternObjective` (the in-memory kernel on the table, each pattern weighted by its
   count) is fitted by the in-memory stages 3-5: the same estimates as an in-memory fit of all
   rows, to rounding.

:func:`mixedmodels.distributed.glmer_dask` chooses this path when the table fits the budget
and compression is worthwhile (distinct patterns at most
:data:`mixedmodels.compress.WORTHWHILE` of the groups, the in-memory fitter's own rule);
otherwise the kernel runs on the partitions.
"""

from __future__ import annotations

import time
import uuid
import warnings
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd

from .compress import group_patterns
from .distributed_frame import (DaskGlmerFrame, _partition_frame, _Spec,
                                complete_rows, default_start, glm_sums, intercept_sums)
from .formula import ModelStructure, ReTerm
from .glmm_frame import GlmerFrame
from .glmm_objective import ScalarObjective

__all__ = ["PATTERN_BUDGET", "PatternTable", "PatternObjective", "merge_tables"]

#: The largest merged table of distinct groups fitted in memory, in bytes of its rows
#: (rows x (5 + fixed-effect columns) x 8: response, trials, random-effect covariate, offset,
#: log-constant and the fixed-effect row). 128 MiB is about 2,400,000 rows of the post's
#: model; the in-memory fit of that many rows stays under ~1.5 GB on the driver.
PATTERN_BUDGET = 128 * 2**20

#: Partial tables merged per node of the reduction tree.
SPLIT_EVERY = 8

#: Rows per kernel chunk of the in-memory fit of the table.
CHUNK_ROWS = 200_000

_LEAD = 5  # the table's leading columns: y, m, z, offset, const; then X


@dataclass
class PatternTable:
    """Distinct groups with counts: what a set of groups contributes to every sum.

    Attributes
    ----------
    key : ndarray of uint64 (P,)
        Each pattern's hash (:attr:`mixedmodels.compress.GroupPatterns.key`), ascending.
    count : ndarray of int64 (P,)
        Groups with the pattern.
    nrows : ndarray of int64 (P,)
        Rows of one such group.
    rows : ndarray of float64 (R, 5 + p)
        Every pattern's rows once (``R = nrows.sum()``), pattern after pattern in key order,
        each pattern's rows in a canonical order (by their bits): columns ``y, m, z, offset,
        const`` then the fixed-effect row. ``None`` when :attr:`over_budget`.
    collision : bool
        Two different patterns share a key (merging on keys would be wrong).
    over_budget : bool
        The table outgrew the budget of the reduction and was not completed.
    """

    key: np.ndarray
    count: np.ndarray
    nrows: np.ndarray
    rows: np.ndarray | None
    collision: bool = False
    over_budget: bool = False
    seen_bytes: int = 0        # over budget: the bytes of the table that outgrew it
    seen_patterns: int = 0     # over budget: its patterns (a lower bound of the total)

    @property
    def npatterns(self) -> int:
        return self.seen_patterns if self.over_budget else len(self.key)

    @property
    def ngroups(self) -> int:
        return int(self.count.sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the rows (over budget: of the table that outgrew it)."""
        return self.seen_bytes if self.rows is None else int(self.rows.nbytes)

    @property
    def starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.nrows)[:-1]]).astype(np.int64)


def _over(table_bytes: int, npatterns: int, collision: bool) -> PatternTable:
    e = np.zeros(0, dtype=np.int64)
    return PatternTable(np.zeros(0, dtype=np.uint64), e, e, None, collision, True,
                        int(table_bytes), int(npatterns))


def _row_blocks(starts: np.ndarray, nrows: np.ndarray) -> np.ndarray:
    """Row indices of the blocks ``starts[i] : starts[i] + nrows[i]``, concatenated."""
    total = int(nrows.sum())
    shift = np.repeat(starts - np.concatenate([[0], np.cumsum(nrows)[:-1]]), nrows)
    return shift + np.arange(total)


def _canonical_order(bits: np.ndarray, pid: np.ndarray) -> np.ndarray:
    """Rows sorted by pattern, then by their bits (so a pattern's rows always come in one
    order, whatever order its groups had them in)."""
    keys = [bits[:, j] for j in range(bits.shape[1] - 1, -1, -1)]
    return np.lexsort((*keys, pid))


def table_from_groups(V: np.ndarray, codes: np.ndarray, ngroups: int,
                      varying: np.ndarray | None = None) -> tuple[PatternTable, np.ndarray]:
    """Reduce groups to their distinct patterns.

    Parameters
    ----------
    V : ndarray (n, 5 + p)
        Rows: ``y, m, z, offset, const`` and the fixed-effect row.
    codes : ndarray of int (n,)
        Group of each row, ``0..ngroups-1`` (every group has a row).
    ngroups : int
    varying : ndarray of int, optional
        The columns of ``V`` that can differ between rows (default: all but ``const``, a
        function of ``y`` and ``m``). Columns constant by construction (an intercept, a
        random intercept's ``z``, a zero offset) cannot tell groups apart, and hashing them
        costs time; a merge compares whole rows all the same.

    Returns
    -------
    table : PatternTable
    group_pattern : ndarray of int64 (ngroups,)
        Each group's pattern (an index into the table).
    """
    # The pattern of a group is what the in-memory fitter compresses on: y, m, z, offset, X
    # (const is a function of y and m).
    if varying is None:
        varying = np.r_[0:4, _LEAD:V.shape[1]]
    gp = group_patterns([V[:, varying]], codes, ngroups)
    counts = np.bincount(codes, minlength=ngroups)
    order = np.argsort(codes, kind="stable")
    gstarts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    # Patterns in key order.
    by_key = np.argsort(gp.key, kind="stable")
    key = gp.key[by_key]
    reps = gp.rep[by_key]
    nrows = counts[reps].astype(np.int64)
    rows = order[_row_blocks(gstarts[reps], nrows)]
    R = V[rows]
    pid = np.repeat(np.arange(len(reps)), nrows)
    R = R[_canonical_order(R.view(np.uint64), pid)]
    rank = np.empty(len(by_key), dtype=np.int64)
    rank[by_key] = np.arange(len(by_key))
    collision = bool(len(key) > 1 and np.any(key[1:] == key[:-1]))
    table = PatternTable(key, gp.count.astype(np.int64)[by_key], nrows, np.ascontiguousarray(R),
                         collision)
    return table, rank[gp.pattern]


def merge_tables(tables, budget: int | None = None) -> PatternTable:
    """Merge tables of patterns on their keys, adding counts (a node of the reduction tree).

    Patterns with one key must have the same rows bit for bit; if they do not (a hash
    collision) the result is marked ``collision``. A result whose rows would exceed ``budget``
    bytes is returned marked ``over_budget``, without rows, and stays so through later merges.

    Parameters
    ----------
    tables : iterable of PatternTable
    budget : int, optional
        Bytes.

    Returns
    -------
    PatternTable
    """
    tables = [t for t in tables if t is not None]
    if not tables:
        return None
    collision = any(t.collision for t in tables)
    if any(t.over_budget for t in tables):
        return _over(max(t.nbytes for t in tables), max(t.npatterns for t in tables), collision)
    if len(tables) == 1:
        t = tables[0]
        if budget is not None and t.nbytes > budget:
            return _over(t.nbytes, t.npatterns, collision)
        return t
    K = np.concatenate([t.key for t in tables])
    C = np.concatenate([t.count for t in tables])
    N = np.concatenate([t.nrows for t in tables])
    S = np.concatenate([t.starts + off for t, off in
                        zip(tables, np.cumsum([0] + [len(t.rows) for t in tables[:-1]]))])
    V = np.concatenate([t.rows for t in tables])
    order = np.argsort(K, kind="stable")
    Ks = K[order]
    first = np.concatenate([[True], Ks[1:] != Ks[:-1]])
    run = np.cumsum(first) - 1                      # run (merged pattern) of each entry
    head = order[np.flatnonzero(first)][run]        # each entry's run's first entry
    dup = order[~first]                             # the entries merged into another
    hd = head[~first]
    if len(dup):
        same_n = N[dup] == N[hd]
        collision |= not bool(np.all(same_n))
        d, h = dup[same_n], hd[same_n]
        bits = V.view(np.uint64)
        a = bits[_row_blocks(S[d], N[d])]
        b = bits[_row_blocks(S[h], N[d])]
        collision |= not bool(np.array_equal(a, b))
    heads = order[first]
    count = np.add.reduceat(C[order], np.flatnonzero(first)).astype(np.int64)
    nrows = N[heads]
    nbytes = int(nrows.sum()) * V.shape[1] * 8
    if budget is not None and nbytes > budget:
        return _over(nbytes, len(heads), collision)
    rows = V[_row_blocks(S[heads], nrows)]
    return PatternTable(Ks[first], count, nrows, rows, collision)


# =========================================================================================
# On the workers: one pass over each partition
# =========================================================================================


@dataclass
class _PartPatterns:
    """A partition reduced to its patterns, and what the driver needs of it."""

    table: PatternTable | None
    keys: np.ndarray                # the partition's group keys (sorted, as its codes)
    group_pattern: np.ndarray       # each group's pattern: an index into `table`
    n: int
    n_dropped: int
    warnings: list
    XtX: np.ndarray | None
    colmax: np.ndarray | None
    z_one: bool
    seconds: float
    extra: dict = field(default_factory=dict)


def _pattern_part(df: pd.DataFrame, spec: _Spec) -> _PartPatterns:
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sub, n_dropped = complete_rows(df, spec)
        del df
        if len(sub) == 0:
            keys = np.asarray(sub[spec.group].iloc[:0])
            out = _PartPatterns(None, keys, np.zeros(0, dtype=np.int64), 0, n_dropped, [],
                                None, None, True, 0.0)
        else:
            frame, keys = _partition_frame(sub, spec)
            del sub
            X = frame.ms.X
            t = frame.ms.reterms[0]
            z = t.Z[:, 0]
            off = np.zeros(len(frame.y)) if frame.ms.offset is None else \
                np.asarray(frame.ms.offset, dtype=float)
            V = np.column_stack([frame.y, frame.m, z, off, frame.const, X])
            # Constant by construction: a random intercept's z, a zero offset, X's intercept.
            varying = [0, 1] + ([2] if spec.z_spec is not None else []) + \
                ([3] if frame.ms.offset is not None else []) + \
                [_LEAD + j for j, nm in enumerate(spec.xnames) if nm != "(Intercept)"]
            table, gpat = table_from_groups(V, t.codes, len(keys), np.asarray(varying))
            out = _PartPatterns(table, keys, gpat, len(frame.y), n_dropped, [], X.T @ X,
                                np.max(np.abs(X), axis=0), bool(np.all(z == 1.0)), 0.0)
    out.warnings = [(w.category, str(w.message)) for w in caught]
    out.seconds = time.perf_counter() - t0
    return out


def _part_summary(part: _PartPatterns) -> dict:
    """The partition's summary for the driver (everything but the table's rows)."""
    t = part.table
    return {"keys": part.keys, "group_pattern": part.group_pattern, "n": part.n,
            "n_dropped": part.n_dropped, "warnings": part.warnings, "XtX": part.XtX,
            "colmax": part.colmax, "z_one": part.z_one, "seconds": part.seconds,
            "table_key": None if t is None else t.key,
            "npatterns": 0 if t is None else t.npatterns,
            "table_bytes": 0 if t is None else t.nbytes,
            "collision": False if t is None else t.collision}


def _table_items(part: _PartPatterns) -> list:
    return [] if part.table is None else [part.table]


# =========================================================================================
# On the driver
# =========================================================================================


@dataclass
class PatternPass:
    """The result of the pattern pass over a Dask frame.

    Attributes
    ----------
    table : PatternTable
        The merged table (over budget or with a collision: not usable).
    summaries : list of dict
        Per partition: its keys, groups' patterns, rows, Gram matrix, warnings, seconds.
    data : dask.dataframe.DataFrame
        The frame the pass read (shuffled on the grouping column if it had to be).
    shuffled : bool
    seconds, merge_seconds : float
        The whole pass, and the reduction within it.
    """

    table: PatternTable | None
    summaries: list
    data: object
    shuffled: bool
    seconds: float
    merge_seconds: float

    @property
    def ngroups(self) -> int:
        return int(sum(len(s["keys"]) for s in self.summaries))


def pattern_pass(spec: _Spec, data, client, budget: int, verbose: bool = False) -> PatternPass:
    """Reduce every partition to its patterns and merge them by a tree reduction.

    The frame is read once when each partition holds whole groups; if a group's rows turn out
    to be in several partitions, the frame is shuffled on the grouping column and read again.
    """
    import dask
    import dask.bag as db

    from .distributed_frame import DistributedFitError

    t0 = time.perf_counter()

    def run(frame):
        token = uuid.uuid4().hex[:12]
        parts = [dask.delayed(_pattern_part, pure=False)(p, spec,
                                                         dask_key_name=f"mm-patterns-{token}-{i}")
                 for i, p in enumerate(frame[spec.cols].to_delayed())]
        futures = client.compute(parts)
        if verbose:
            from distributed import as_completed
            from tqdm import tqdm
            with tqdm(total=len(futures), desc="glmer on Dask: distinct groups per partition",
                      unit=" partitions", leave=False) as bar:
                for _ in as_completed(futures):
                    bar.update(1)
        try:
            sums = client.gather([client.submit(_part_summary, f, pure=False) for f in futures])
        except ValueError:
            raise
        except Exception as exc:
            raise DistributedFitError(f"reading the partitions failed ({exc})") from exc
        return futures, sums

    futures, sums = run(data)
    allk = np.concatenate([s["keys"] for s in sums]) if sums else np.zeros(0)
    shuffled = len(pd.unique(allk)) != len(allk)
    if shuffled:
        client.cancel(futures)
        data = data.shuffle(on=spec.group, method="tasks")
        futures, sums = run(data)
    t1 = time.perf_counter()
    merge = partial(merge_tables, budget=budget)
    bag = db.from_delayed([dask.delayed(_table_items, pure=False)(f) for f in futures])
    try:
        table = client.compute(bag.reduction(merge, merge, split_every=SPLIT_EVERY)).result()
    except Exception as exc:
        raise DistributedFitError(f"merging the partitions' patterns failed ({exc})") from exc
    finally:
        client.cancel(futures)
    t2 = time.perf_counter()
    return PatternPass(table, sums, data, shuffled, t2 - t0, t2 - t1)


def level_patterns(pp: PatternPass, order: np.ndarray) -> np.ndarray:
    """Each level's pattern (an index into the merged table), levels in ``order`` of the
    partitions' concatenated keys."""
    key = pp.table.key
    out = []
    for s in pp.summaries:
        if s["table_key"] is None:
            continue
        g = np.searchsorted(key, s["table_key"])
        if np.any(g >= len(key)) or not np.array_equal(key[np.minimum(g, len(key) - 1)],
                                                       s["table_key"]):
            raise RuntimeError("a partition's pattern is missing from the merged table")
        out.append(g[s["group_pattern"]])
    return np.concatenate(out)[order]


class PatternObjective(ScalarObjective):
    """The in-memory kernel on a merged table of patterns, each weighted by its count.

    Exactly the log-likelihood (gradient, Hessian, per-group rules of ``nagq="auto"``) of all
    the groups the table stands for: the in-memory :class:`ScalarObjective` with the table's
    patterns as its units. ``ngroups`` counts groups, ``nunits`` patterns; ``pattern`` maps
    every level to its pattern (so :meth:`modes` returns one value per level).

    Parameters
    ----------
    table : PatternTable
    frame : DaskGlmerFrame
        The driver's view of the model.
    nagq : int
    level_pattern : ndarray of int (G,)
        Each level's pattern, levels in the fit's order.
    x_keep : ndarray of int
        Fixed-effect columns kept by the rank check.
    """

    def __init__(self, table: PatternTable, frame: DaskGlmerFrame, nagq: int,
                 level_pattern: np.ndarray, x_keep: np.ndarray):
        self.table, self.x_keep = table, np.asarray(x_keep)
        gf = self._table_frame(table, frame, np.arange(table.npatterns))
        super().__init__(gf, nagq, max_rows=CHUNK_ROWS, group_weights=table.count)
        self.frame = frame
        self.ngroups = len(level_pattern)
        self.pattern = np.asarray(level_pattern, dtype=np.int64)
        self.colmax = None

    def _table_frame(self, table: PatternTable, frame: DaskGlmerFrame, sel: np.ndarray
                     ) -> GlmerFrame:
        """A model frame of the rows of patterns ``sel`` (each pattern one group)."""
        nrows = table.nrows[sel]
        V = table.rows[_row_blocks(table.starts[sel], nrows)]
        X = np.ascontiguousarray(V[:, _LEAD:][:, self.x_keep])
        codes = np.repeat(np.arange(len(sel)), nrows)
        term = ReTerm(spec=None, group=frame.ms.reterms[0].group, codes=codes,
                      levels=np.arange(len(sel)), Z=V[:, 2:3].copy(),
                      cnames=list(frame.ms.reterms[0].cnames), correlated=True, level_keys=[])
        off = V[:, 3].copy()
        ms = ModelStructure(formula=frame.ms.formula, parsed=None, data=None, y=V[:, 0].copy(),
                            lhs_terms=[], lhs_ratio=None, X=X, xnames=list(frame.ms.xnames),
                            dropped_columns=[], rows=pd.RangeIndex(len(V)), n_dropped=0,
                            reterms=[term], fixed_spec=None, x_keep=self.x_keep,
                            offset=off if np.any(off != 0) else None)
        return GlmerFrame(ms, frame.family, V[:, 0].copy(), V[:, 1].copy(), V[:, 4].copy())

    def subset(self, groups: np.ndarray) -> ScalarObjective:
        """The objective of a subset of whole groups (level indices): their patterns, each
        weighted by its number of groups in the subset (the warm-up fit)."""
        groups = np.asarray(groups, dtype=np.int64)
        cnt = np.bincount(self.pattern[groups], minlength=self.table.npatterns)
        sel = np.flatnonzero(cnt)
        gf = self._table_frame(self.table, self.frame, sel)
        sub = ScalarObjective(gf, self.nagq, max_rows=CHUNK_ROWS, group_weights=cnt[sel])
        sub.frame = self.frame
        sub.ngroups = len(groups)
        return sub

    def default_start(self) -> np.ndarray:
        """Starting ``(beta, sigma)`` as the in-memory fit's, from the weighted table."""
        fam = self.family
        return default_start(lambda beta: [glm_sums(self.chunks, fam, beta)],
                             lambda beta, c: [intercept_sums(self.chunks, fam, beta, c)],
                             list(self.frame.ms.xnames),
                             bool(np.all(self.table.rows[:, 2] == 1.0)))

    def pearson_residuals(self, params: np.ndarray) -> np.ndarray:
        """Pearson residuals of every row the table stands for (each pattern's rows once per
        group with the pattern, patterns in table order)."""
        self.modes(params)
        sigma = float(params[self.p])
        out, g0 = [], 0
        for ch in self.chunks:
            b = sigma * self.last.u_hat[g0:g0 + ch.ngroups]
            eta = ch.X @ params[:self.p] + ch.offset + ch.z * b[ch.gidx]
            r = self.family.pearson_residuals(ch.y, self.family.linkinv(eta), ch.m)
            out.append(np.repeat(r, ch.weights[ch.gidx].astype(np.int64)))
            g0 += ch.ngroups
        return np.concatenate(out)

