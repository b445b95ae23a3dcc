"""The covariance parameters of the random effects: the one owner of their layout.

Every random-effects term ``(expr | g)`` with ``k`` columns has a ``k x k`` covariance
``sigma^2 T T'`` (``sigma = 1`` for a GLMM without a scale parameter), where ``T`` is lower
triangular: lme4's relative covariance factor. ``theta`` stacks, term by term, the lower
triangle of each ``T`` column by column (lme4's order). A ``||`` term has been expanded by the
formula parser into separate terms, as lme4's ``expandDoubleVerts`` does (a factor's block stays
one correlated term), so every term here is a full lower triangle.

:class:`CovarianceLayout` is built once from the random-effect terms and holds each theta
entry's (term, row, column), the lower bounds, lme4's parameter names in lme4's order
(``sd_(Intercept)|Subject``, ``cor_Days.(Intercept)|Subject``), the transforms between theta
and the standard deviations and correlations both ways, the ``VarCorr`` table with R's
``make.unique`` group names, the summary's random-effects rows, and the sign normalization. The
LMM, the GLMM, the profiler and the results all read it; nothing else computes a layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

__all__ = ["CovarianceLayout", "ThetaEntry", "tril_index", "make_unique"]


def tril_index(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a k x k lower triangle in lme4's (column-wise) theta order."""
    rows, cols = [], []
    for j in range(k):
        for i in range(j, k):
            rows.append(i)
            cols.append(j)
    return np.array(rows, dtype=int), np.array(cols, dtype=int)


def make_unique(names: Sequence[str]) -> list[str]:
    """R's ``make.unique``: ``["Subject", "Subject"]`` -> ``["Subject", "Subject.1"]``."""
    seen: dict[str, int] = {}
    taken = set(names)
    out = []
    for nm in names:
        if nm not in seen:
            seen[nm] = 0
            out.append(nm)
            continue
        while True:
            seen[nm] += 1
            cand = f"{nm}.{seen[nm]}"
            if cand not in taken:
                break
        taken.add(cand)
        out.append(cand)
    return out


def psd_cholesky(S: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a positive semi-definite matrix (zero columns where singular)."""
    k = S.shape[0]
    L = np.zeros_like(S, dtype=float)
    scale = max(float(np.max(np.abs(np.diag(S)))) if k else 0.0, 1e-300)
    for j in range(k):
        d = S[j, j] - L[j, :j] @ L[j, :j]
        if d <= 1e-13 * scale:
            continue
        L[j, j] = np.sqrt(d)
        L[j + 1:, j] = (S[j + 1:, j] - L[j + 1:, :j] @ L[j, :j]) / L[j, j]
    return L


@dataclass(frozen=True)
class ThetaEntry:
    """Where one theta entry sits: term ``term``'s factor ``T[row, col]``."""

    term: int
    row: int
    col: int

    @property
    def diagonal(self) -> bool:
        return self.row == self.col


class CovarianceLayout:
    """The layout of the covariance parameters ``theta`` of a set of random-effects terms.

    Parameters
    ----------
    terms : sequence of ReTerm
        The model's random-effects terms in the fitter's order (lme4's: by decreasing number
        of levels). Only ``group`` and ``cnames`` are read.

    Attributes
    ----------
    groups : list of str
        Grouping factor of each term, as written (``"cask:batch"``).
    unique_groups : list of str
        The same, made unique as R's ``make.unique`` (``Subject``, ``Subject.1``): the group
        labels of ``VarCorr`` and the summary.
    cnames : list of list of str
        Column names of each term.
    ks : list of int
        Columns per term.
    entries : list of ThetaEntry
        Theta entries in order.
    ntheta : int
    offsets : list of int
        Position of each term's first entry in theta.
    lower : ndarray
        Lower bounds (0 on diagonals, -inf elsewhere), as lme4's.
    diagonal : ndarray of bool
        Which entries are diagonal (standard deviations on the sd/cor scale).
    names : list of str
        lme4's ``oldNames = FALSE`` names of the sd/cor parameters, in theta order.
    theta_names : list of str
        lme4's names of theta itself (``getME(fit, "theta")``: ``Subject.(Intercept)``,
        ``Subject.Days.(Intercept)``), the order of ``start=``.
    kinds : list of {"sd", "cor"}
    """

    def __init__(self, terms: Sequence) -> None:
        self.groups = [str(t.group) for t in terms]
        self.unique_groups = make_unique(self.groups)
        self.cnames = [list(t.cnames) for t in terms]
        self.ks = [len(c) for c in self.cnames]
        self.entries: list[ThetaEntry] = []
        self.offsets: list[int] = []
        names, kinds, theta_names = [], [], []
        for ti, (g, cn, k) in enumerate(zip(self.groups, self.cnames, self.ks)):
            self.offsets.append(len(self.entries))
            for i, j in zip(*tril_index(k)):
                self.entries.append(ThetaEntry(ti, int(i), int(j)))
                if i == j:
                    names.append(f"sd_{cn[i]}|{g}")
                    kinds.append("sd")
                    theta_names.append(f"{g}.{cn[i]}")
                else:
                    names.append(f"cor_{cn[i]}.{cn[j]}|{g}")
                    kinds.append("cor")
                    theta_names.append(f"{g}.{cn[i]}.{cn[j]}")
        self.ntheta = len(self.entries)
        self.names, self.kinds, self.theta_names = names, kinds, theta_names
        self.diagonal = np.array([e.diagonal for e in self.entries], dtype=bool)
        self.lower = np.where(self.diagonal, 0.0, -np.inf)
        self._rows = [np.array([e.row for e in self.entries if e.term == ti], dtype=int)
                      for ti in range(len(self.ks))]
        self._cols = [np.array([e.col for e in self.entries if e.term == ti], dtype=int)
                      for ti in range(len(self.ks))]
        self._slices = [slice(o, o + len(r)) for o, r in zip(self.offsets, self._rows)]

    def __len__(self) -> int:
        return self.ntheta

    def __repr__(self) -> str:
        return f"CovarianceLayout({self.names})"

    @property
    def nterms(self) -> int:
        return len(self.ks)

    def term_slice(self, ti: int) -> slice:
        """Positions of term ``ti``'s entries in theta."""
        return self._slices[ti]

    def start(self) -> np.ndarray:
        """lme4's default start: 1 on the diagonals, 0 elsewhere."""
        return np.where(self.diagonal, 1.0, 0.0)

    # ---- theta <-> factors ----------------------------------------------------------------

    def factors(self, theta: np.ndarray) -> list[np.ndarray]:
        """The lower-triangular factor ``T`` (``k x k``) of each term, in term order.

        Raises
        ------
        ValueError
            If ``theta`` does not have :attr:`ntheta` entries.
        """
        theta = self._check(theta)
        out = []
        # Called at every evaluation of the LMM objective and the GLMM's Laplace: kept lean.
        for k, ri, ci, sl in zip(self.ks, self._rows, self._cols, self._slices):
            T = np.zeros((k, k))
            T[ri, ci] = theta[sl]
            out.append(T)
        return out

    def stacked_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Row and column of each theta entry in the block-diagonal stack of the factors.

        For random-effect terms that share one grouping factor, the stack (``sum(ks)`` square)
        is the factor of the grouping factor's whole covariance block (used by the vector
        quadrature kernel, :mod:`mixedmodels.agq_vector`).
        """
        col0 = np.concatenate([[0], np.cumsum(self.ks)[:-1]]).astype(int) if self.ks else []
        rows = np.array([col0[e.term] + e.row for e in self.entries], dtype=int)
        cols = np.array([col0[e.term] + e.col for e in self.entries], dtype=int)
        return rows, cols

    def factor(self, theta: np.ndarray, ti: int) -> np.ndarray:
        """Term ``ti``'s factor ``T``."""
        theta = self._check(theta)
        k = self.ks[ti]
        T = np.zeros((k, k))
        T[self._rows[ti], self._cols[ti]] = theta[self.term_slice(ti)]
        return T

    def theta_from_factors(self, factors: Sequence[np.ndarray]) -> np.ndarray:
        """Stack each term's lower triangle in theta order (inverse of :meth:`factors`)."""
        return np.concatenate([np.asarray(T, dtype=float)[self._rows[ti], self._cols[ti]]
                               for ti, T in enumerate(factors)]) if factors else np.zeros(0)

    def covariances(self, theta: np.ndarray, sigma: float = 1.0) -> list[np.ndarray]:
        """Each term's covariance ``sigma^2 T T'``."""
        return [sigma**2 * (T @ T.T) for T in self.factors(theta)]

    def flipped_at_zero(self, theta: np.ndarray, indices) -> list[np.ndarray]:
        """Equivalent thetas at a singular point: for each diagonal entry among ``indices``
        that is 0, the same theta with the rest of its column negated.

        With ``T[i, i] = 0`` the covariance ``T T'`` does not change when column ``i`` changes
        sign, but the criterion's derivative in ``T[i, i]`` does: a point where raising the
        zero diagonal looks uphill may be downhill from its mirror image (a saddle that the
        boundary rule's probes along ``T[i, i]`` alone cannot see).

        Parameters
        ----------
        theta : ndarray (ntheta,)
        indices : sequence of int
            Positions in theta to consider (those at their bound).

        Returns
        -------
        list of ndarray
            One theta per zero diagonal entry whose column has a nonzero entry below it.
        """
        theta = self._check(theta)
        out = []
        for i in indices:
            e = self.entries[int(i)]
            if not e.diagonal or theta[int(i)] != 0.0:
                continue
            below = [j for j, f in enumerate(self.entries)
                     if f.term == e.term and f.col == e.col and f.row > e.row and theta[j] != 0.0]
            if below:
                flipped = np.array(theta, dtype=float)
                flipped[below] = -flipped[below]
                out.append(flipped)
        return out

    def normalize(self, theta: np.ndarray) -> np.ndarray:
        """Flip the sign of each factor column whose diagonal is negative (same covariance)."""
        theta = np.array(self._check(theta), dtype=float)
        Ts = self.factors(theta)
        for T in Ts:
            neg = np.diag(T) < 0
            T[:, neg] = -T[:, neg]
        return self.theta_from_factors(Ts)

    def singular(self, theta: np.ndarray, tol: float = 1e-4) -> bool:
        """lme4's ``isSingular``: a diagonal entry of a factor within ``tol`` of zero."""
        theta = self._check(theta)
        return bool(np.any(np.abs(theta[self.diagonal]) < tol))

    # ---- theta <-> standard deviations and correlations ------------------------------------

    def sdcor(self, theta: np.ndarray, sigma: float = 1.0, undefined: float = 0.0) -> np.ndarray:
        """Standard deviations and correlations, in theta order (lme4's profile scale).

        Parameters
        ----------
        theta : ndarray (ntheta,)
        sigma : float
            The residual SD of an LMM (1 for a GLMM without a scale parameter).
        undefined : float
            The value of a correlation involving a zero standard deviation: 0 (the default,
            a point the profiler can move from) or NaN (as R's ``VarCorr`` reports it).
        """
        out = np.empty(self.ntheta)
        for ti, S in enumerate(self.covariances(theta, sigma)):
            sd = np.sqrt(np.maximum(np.diag(S), 0.0))
            for r, (i, j) in enumerate(zip(self._rows[ti], self._cols[ti])):
                pos = self.offsets[ti] + r
                if i == j:
                    out[pos] = sd[i]
                else:
                    out[pos] = S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else undefined
        return out

    def theta_from_sdcor(self, sdcor: np.ndarray, sigma: float = 1.0) -> np.ndarray:
        """Theta with the given standard deviations and correlations (inverse of :meth:`sdcor`).

        The factor is the Cholesky factor of ``S / sigma^2`` (non-negative diagonal); a
        singular ``S`` gets zero columns.
        """
        sdcor = np.asarray(sdcor, dtype=float)
        if sdcor.shape != (self.ntheta,):
            raise ValueError(f"expected {self.ntheta} sd/cor values, got shape {sdcor.shape}")
        Ts = []
        for ti, k in enumerate(self.ks):
            vals = sdcor[self.term_slice(ti)]
            sd = np.zeros(k)
            R = np.eye(k)
            for v, i, j in zip(vals, self._rows[ti], self._cols[ti]):
                if i == j:
                    sd[i] = v
                else:
                    R[i, j] = R[j, i] = v
            Ts.append(psd_cholesky(R * np.outer(sd, sd)) / sigma)
        return self.theta_from_factors(Ts)

    # ---- tables ------------------------------------------------------------------------------

    def varcorr(self, theta: np.ndarray, sigma: float | None = None) -> pd.DataFrame:
        """R's ``as.data.frame(VarCorr(fit))``.

        Parameters
        ----------
        theta : ndarray
        sigma : float, optional
            The residual SD of an LMM: scales the covariances and adds the ``Residual`` row.
            None for a GLMM without a scale parameter.

        Returns
        -------
        DataFrame
            Columns group, var1, var2, vcov, sdcor. For each term: one row per variance (sdcor
            the SD), then one per covariance (sdcor the correlation); groups made unique as R
            does (``Subject``, ``Subject.1``). Every empty cell is NaN, as R's NA: ``var2`` of
            a variance, ``var1`` and ``var2`` of ``Residual``, the correlation of a zero SD.
        """
        s = 1.0 if sigma is None else float(sigma)
        rows = []
        for g, cn, S in zip(self.unique_groups, self.cnames, self.covariances(theta, s)):
            k = len(cn)
            sd = np.sqrt(np.maximum(np.diag(S), 0.0))
            for i in range(k):
                rows.append((g, cn[i], np.nan, S[i, i], sd[i]))
            for j in range(k):
                for i in range(j + 1, k):
                    cor = S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan
                    rows.append((g, cn[j], cn[i], S[i, j], cor))
        if sigma is not None:
            rows.append(("Residual", np.nan, np.nan, s * s, s))
        return pd.DataFrame(rows, columns=["group", "var1", "var2", "vcov", "sdcor"])

    def summary_rows(self, theta: np.ndarray, sigma: float = 1.0
                     ) -> list[tuple[str, str, float, list[float]]]:
        """Rows ``(group, name, sd, correlations with the earlier columns)`` for the summary's
        random-effects table (:func:`mixedmodels.summary.random_effects_table`)."""
        rows = []
        for g, cn, S in zip(self.unique_groups, self.cnames, self.covariances(theta, sigma)):
            sd = np.sqrt(np.maximum(np.diag(S), 0.0))
            for i in range(len(cn)):
                cors = [S[i, j] / (sd[i] * sd[j]) if sd[i] * sd[j] > 0 else np.nan
                        for j in range(i)]
                rows.append((g, cn[i], float(sd[i]), cors))
        return rows

    def _check(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta, dtype=float)
        if theta.shape != (self.ntheta,):
            raise ValueError(f"theta must have {self.ntheta} entries ({self.names}), "
                             f"got shape {theta.shape}")
        return theta
