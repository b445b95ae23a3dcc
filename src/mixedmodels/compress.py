"""Exact compression of groups: groups with identical data have identical integrals.

With one scalar random-effect term the marginal log-likelihood is a sum of one integral per
group, and a group's integral depends on nothing but its rows (response, weights, offset,
random-effect covariate, fixed-effect design) -- not on their order, nor on the group's
label. Data with discrete covariates repeat the same groups many times: the post's 1,000
users have about 500 distinct groups, 100,000 users made like them under 10,000. Evaluating
each *pattern* once and weighting it by its number of groups gives the same sums (and the
same gradient, and the same outer products of scores) exactly, not approximately.

:func:`group_patterns` finds the patterns: a 64-bit hash of each group's sorted rows, then a
bitwise comparison of every group's rows with its pattern's representative, so that a hash
collision can only cost compression, never correctness.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["GroupPatterns", "group_patterns"]

#: Compress only when the patterns are at most this fraction of the groups (below that the
#: saving is worth the indirection).
WORTHWHILE = 0.8

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLD = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer (a bijection of uint64 that scatters every input bit)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


@dataclass(frozen=True)
class GroupPatterns:
    """Which groups share their data.

    Attributes
    ----------
    pattern : ndarray of int (G,)
        Pattern of each group, ``0..P-1``.
    rep : ndarray of int (P,)
        A representative group of each pattern (its first in group order).
    count : ndarray of float (P,)
        Number of groups with each pattern (the pattern's weight in every sum).
    key : ndarray of uint64 (P,), optional
        The 64-bit hash of each pattern's rows (its representative's): the same rows give
        the same key in any data set, so tables of patterns built apart (the Dask fitter's
        partitions) can be merged on it. Two patterns with one key (a hash collision) are
        still told apart here; a merge must compare their rows.
    """

    pattern: np.ndarray
    rep: np.ndarray
    count: np.ndarray
    key: np.ndarray | None = None

    @property
    def npatterns(self) -> int:
        return len(self.rep)

    @property
    def ngroups(self) -> int:
        return len(self.pattern)

    @property
    def worthwhile(self) -> bool:
        """Whether evaluating patterns instead of groups saves enough to bother."""
        return self.npatterns <= WORTHWHILE * self.ngroups


def group_patterns(columns: Sequence[np.ndarray], group_codes: np.ndarray, ngroups: int
                   ) -> GroupPatterns:
    """Find the groups whose rows are identical as multisets (exact, bitwise).

    Parameters
    ----------
    columns : sequence of ndarray, each (n,) or (n, k)
        Everything a group's integral depends on, per row (for the GLMM: response, weights,
        offset, random-effect covariate, fixed-effect design). Compared bit for bit as
        float64, so ``0.0`` and ``-0.0`` count as different (which only costs compression).
    group_codes : ndarray of int (n,)
        Group of each row, ``0..ngroups-1``.
    ngroups : int
        Number of groups; every group must have a row.

    Returns
    -------
    GroupPatterns

    Raises
    ------
    ValueError
        When the columns' lengths differ from the codes', or a group has no rows.
    """
    codes = np.asarray(group_codes)
    n = len(codes)
    cols = []
    for c in columns:
        a = np.ascontiguousarray(np.asarray(c, dtype=np.float64))
        a = a.reshape(n, -1) if a.size else a.reshape(n, 0)
        if a.shape[0] != n:
            raise ValueError(f"group_patterns: a column has {a.shape[0]} rows, the codes {n}")
        cols.append(a)
    V = np.concatenate(cols, axis=1) if cols else np.zeros((n, 0))
    bits = V.view(np.uint64)
    counts = np.bincount(codes, minlength=ngroups)
    if np.any(counts == 0):
        raise ValueError("group_patterns: every group must have at least one row")
    # One hash per row: column j's bits, salted by j, mixed, summed (wrapping uint64).
    with np.errstate(over="ignore"):
        rowh = np.zeros(n, dtype=np.uint64)
        for j in range(bits.shape[1]):
            rowh += _mix(bits[:, j] + np.uint64(j + 1) * _GOLD)
        # Rows sorted within groups by their hash, so that row order does not matter.
        bits_g = max(int(ngroups - 1).bit_length(), 1)
        if bits_g <= 40:
            # One sort of a combined key (group in the high bits, the row hash's top bits
            # below): rows whose top bits tie may sort either way, which can only cost
            # compression (the check below), never correctness.
            key = (codes.astype(np.uint64) << np.uint64(64 - bits_g)) | \
                (rowh >> np.uint64(bits_g))
            order = np.argsort(key, kind="stable")
        else:
            order = np.lexsort((rowh, codes))
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        pos = np.arange(n) - np.repeat(starts, counts)          # position within the group
        hs = rowh[order]
        gh = np.add.reduceat(_mix(hs + (pos.astype(np.uint64) + np.uint64(1)) * _M1), starts)
        gh = _mix(gh + counts.astype(np.uint64) * _M2)
    _, first, inverse = np.unique(gh, return_index=True, return_inverse=True)
    rep_of_group = first[inverse]
    # Exactness: every group's sorted rows must equal its representative's, bit for bit.
    same = counts == counts[rep_of_group]
    rows_rep = np.repeat(starts[rep_of_group], counts) + pos
    rows_rep = np.where(np.repeat(same, counts), rows_rep, np.arange(n))
    row_ok = np.all(bits[order] == bits[order[rows_rep]], axis=1) if bits.shape[1] else \
        np.ones(n, dtype=bool)
    ok = same & (np.add.reduceat(row_ok.astype(np.int64), starts) == counts)
    key = np.where(ok, rep_of_group, np.arange(ngroups))        # a collision: its own pattern
    rep, pattern = np.unique(key, return_inverse=True)
    count = np.bincount(pattern, minlength=len(rep)).astype(float)
    return GroupPatterns(pattern.astype(np.int64), rep.astype(np.int64), count, gh[rep])
