"""Linear mixed models fitted by REML or ML, as lme4's ``lmer`` does.

The fit is a pipeline of named stages, like lme4's ``lmer``:

1. :func:`mixedmodels.formula.build_model` -- parse the formula, build ``y``, ``X`` and the
   random-effects terms (lme4's ``lFormula``);
2. :class:`LMMProblem` -- the cross-product blocks and the profiled objective as a function of
   the relative covariance parameters ``theta`` only (lme4's ``mkLmerDevfun``);
   :func:`deviance_function` hands this objective to the reader, like ``devFunOnly = TRUE``;
3. :func:`optimize_theta` -- bounded minimization over ``theta`` plus a convergence check;
4. :class:`LinearMixedModel` -- the fitted model (lme4's ``mkMerMod``).

The objective (Bates, Maechler, Bolker and Walker 2015, section 3) is evaluated by a blocked
Cholesky factorization (Bates, Alday and Kokandakar 2025; MixedModels.jl). Random-effects terms
are ordered by decreasing number of levels. The first term's block of
``Lambda' Z' Z Lambda + I`` is block diagonal (one ``k x k`` block per level), so its
Cholesky factor is a stack of small factors. Everything after it -- the other terms, ``X`` and
``y`` -- is one dense block, reached through the (sparse, for large problems) cross-product of
the first term with the rest. The factor's last diagonal element is the penalized residual sum
of squares; the log-determinants are sums of logs of diagonal elements. No ``n x q`` matrix is
ever formed.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import scipy.linalg as sla
import scipy.sparse as sp
from scipy import optimize

from . import _validate
from .blas import single_thread_blas
from .boundary import probe_inside
from .covariance import CovarianceLayout
from .formula import ModelStructure, ReTerm, build_model, row_argument
from .mixedmodel import MixedModel
from .offsets import attach_offset, new_offset
from .weights import attach_weights, working_model
from .results import ConvergenceWarning, OptSummary, check_convergence
from .summary import ModelSummary, random_effects_table, residual_quantiles

__all__ = ["lmer", "LinearMixedModel", "LMMProblem", "deviance_function", "optimize_theta"]

_LOG2PI = float(np.log(2 * np.pi))

def _term_sparse(term: ReTerm, n: int) -> sp.csr_matrix:
    """The term's n x (k * nlevels) indicator-times-columns matrix, level-major columns."""
    k = term.k
    indptr = np.arange(0, n * k + 1, k)
    indices = (term.codes[:, None] * k + np.arange(k)[None, :]).ravel()
    return sp.csr_matrix((term.Z.ravel(), indices, indptr), shape=(n, term.q))


def _dense_cross_products(t1: ReTerm, rest: list[ReTerm], XY: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The dense layout's cross-products by ``bincount`` over pairs of levels: ``A1R``
    (l1, k1, r), the first term against ``[Z_rest, X, y]``, and ``ARR`` (r, r), ``[Z_rest, X,
    y]`` against itself (columns level-major within each term, as :func:`_term_sparse`).
    Building sparse matrices for these costs more than a small model's whole optimization."""
    l1, k1, pxy = t1.nlevels, t1.k, XY.shape[1]
    offs = np.cumsum([0] + [t.q for t in rest])
    qrest = int(offs[-1])
    r = qrest + pxy
    A1R = np.empty((l1, k1, r))
    ARR = np.empty((r, r))
    for j in range(k1):
        for c in range(pxy):
            A1R[:, j, qrest + c] = np.bincount(t1.codes, t1.Z[:, j] * XY[:, c], l1)
    ARR[qrest:, qrest:] = XY.T @ XY
    for i, (s, t) in enumerate(zip(offs[:-1], rest)):
        nl, k = t.nlevels, t.k
        key1 = t1.codes * nl + t.codes
        for a in range(k):
            cols = slice(s + a, s + t.q, k)
            for j in range(k1):
                A1R[:, j, cols] = np.bincount(key1, t1.Z[:, j] * t.Z[:, a], l1 * nl).reshape(l1, nl)
            for c in range(pxy):
                ARR[cols, qrest + c] = ARR[qrest + c, cols] = np.bincount(t.codes, t.Z[:, a] * XY[:, c], nl)
        for s2, t2 in zip(offs[:i + 1], rest[:i + 1]):
            key = t.codes * t2.nlevels + t2.codes
            for a in range(k):
                for b in range(t2.k):
                    M = np.bincount(key, t.Z[:, a] * t2.Z[:, b], nl * t2.nlevels).reshape(nl, t2.nlevels)
                    ARR[s + a:s + t.q:k, s2 + b:s2 + t2.q:t2.k] = M
                    ARR[s2 + b:s2 + t2.q:t2.k, s + a:s + t.q:k] = M.T
    return A1R, ARR


def _chol2(M: np.ndarray) -> np.ndarray:
    """Cholesky factors of a stack of 2 x 2 positive definite matrices (no LAPACK call per level)."""
    L = np.zeros_like(M)
    l11 = np.sqrt(M[:, 0, 0])
    l21 = M[:, 1, 0] / l11
    d = M[:, 1, 1] - l21 * l21
    if np.any(d <= 0):
        raise np.linalg.LinAlgError("2 x 2 block not positive definite")
    L[:, 0, 0] = l11
    L[:, 1, 0] = l21
    L[:, 1, 1] = np.sqrt(d)
    return L


def _tri_inv_stack(L: np.ndarray) -> np.ndarray:
    """Inverses of a stack of lower-triangular k x k matrices (closed form for k = 2)."""
    if L.shape[1] != 2:
        return np.linalg.inv(L)
    out = np.zeros_like(L)
    out[:, 0, 0] = 1.0 / L[:, 0, 0]
    out[:, 1, 1] = 1.0 / L[:, 1, 1]
    out[:, 1, 0] = -L[:, 1, 0] * out[:, 0, 0] * out[:, 1, 1]
    return out


def _lower_solve2(L: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Solve L_g X_g = W_g for a stack of 2 x 2 lower-triangular L_g; W has shape (l, 2, r)."""
    X = np.empty_like(W)
    X[:, 0, :] = W[:, 0, :] / L[:, 0, 0, None]
    X[:, 1, :] = (W[:, 1, :] - L[:, 1, 0, None] * X[:, 0, :]) / L[:, 1, 1, None]
    return X


# The residual sum of squares an exactly fitting response is given, relative to y'y: small
# enough that sigma is ~0 (1e-7 of the response's scale), large enough for logs and solves.
EXACT_FIT_FLOOR = 1e-14
# The analytic gradient divides by T's diagonal: below this, finite differences instead
# (at 1e-4 the formula still keeps ~8 digits).
_GRADIENT_MIN_DIAG = 1e-4


def _cholesky_exact_fit(L: np.ndarray, info: int, yty: float) -> np.ndarray:
    """Finish a Cholesky factorization of the dense block that failed on the response's pivot.

    ``L`` is LAPACK's ``potrf`` output that stopped with ``info`` (the 1-based order of the
    failing minor). The last row and column belong to ``y``; their pivot is the penalized
    residual sum of squares, which is 0 (rounded to a tiny negative number) when ``y`` lies in
    the span of ``X`` (and ``Z``). lme4 fits such a model as singular with a residual SD of
    ~0; so do we, by flooring that pivot at ``EXACT_FIT_FLOOR * y'y``. Every column before it
    is already factored. A failure anywhere else is re-raised.
    """
    r = L.shape[0]
    floor = EXACT_FIT_FLOOR * max(yty, np.finfo(float).tiny)
    if info != r or not L[-1, -1] <= floor:
        raise np.linalg.LinAlgError("the dense block is not positive definite")
    L[-1, -1] = np.sqrt(floor)
    return L


def first_term_cholesky(T1: np.ndarray, A11: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The first term's diagonal blocks ``M_g = T1' A11_g T1 + I`` and their Cholesky factors.

    A pure function of the term's relative covariance factor and any set of whole levels'
    cross-products, so the in-memory objective and the Dask one (which maps it over
    partitions of whole groups, :mod:`mixedmodels.distributed_lmm`) share it.

    Parameters
    ----------
    T1 : ndarray (k, k)
        Lower-triangular relative covariance factor.
    A11 : ndarray (l, k, k)
        ``Z_g' Z_g`` of each level ``g``.

    Returns
    -------
    M, L11 : ndarray (l, k, k)

    Raises
    ------
    numpy.linalg.LinAlgError
        If a block is not positive definite (only through rounding: ``M_g >= I``).
    """
    k = T1.shape[0]
    # Broadcast matmul: ~10x faster than the three-operand einsum on many levels.
    M = T1.T @ A11 @ T1 if k > 1 else A11 * T1[0, 0] ** 2
    M = M + np.eye(k)
    if k == 1:
        L11 = np.sqrt(M)
    elif k == 2:
        L11 = _chol2(M)
    else:
        L11 = np.linalg.cholesky(M)
    return M, L11


def first_term_U(L11: np.ndarray, T1: np.ndarray, A1R: np.ndarray) -> np.ndarray:
    """``U_g = L11_g^{-1} T1' A1R_g`` per level: ``(l, k, r)`` from ``A1R`` ``(l, k, r)``, the
    first term's cross-products with the dense block's columns (see :func:`first_term_cholesky`).
    Summed over levels, ``U_g' U_g`` is what the dense block's Schur complement subtracts."""
    k = T1.shape[0]
    if k == 1:
        return A1R * (T1[0, 0] / L11)
    if k == 2:
        return _lower_solve2(L11, T1.T @ A1R)
    return np.linalg.solve(L11, T1.T @ A1R)


def one_factor_sums(T1: np.ndarray, A11: np.ndarray, A1R: np.ndarray, gradient: bool = False):
    """A model with one grouping factor: the sums over levels that its objective (and, with
    ``gradient``, the gradient of :func:`one_factor_gradient`) needs.

    With ``M_g = T' Z_g'Z_g T + I``, ``K_g = T M_g^{-1}`` and ``P_g = I - Z_g'Z_g T K_g'``:
    ``log det`` of the random-effects block is ``sum_g log det M_g``, and the dense block
    ``[X y]' [X y]`` loses ``sum_g A1R_g' T M_g^{-1} T' A1R_g = sum_g (T' A1R_g)' (K_g'
    A1R_g)``. For the gradient, the residual's cross-product with the group's columns is
    ``Z_g' r_g = P_g A1R_g e`` and the group's spherical mode ``u_g = K_g' A1R_g e`` (``e =
    [-beta; 1]``); both are linear in ``e``, so their outer products summed over levels are
    one fixed tensor, contracted with ``e e'`` (or, for the REML determinant, with ``(R_X'
    R_X)^{-1}``) once ``beta`` is known. Closed forms for ``k <= 2`` (no LAPACK call per level).

    A pure function of ``T`` and any set of whole levels' blocks: the in-memory objective and
    the Dask one (which maps it over partitions of whole groups,
    :mod:`mixedmodels.distributed_lmm`) share it.

    Parameters
    ----------
    T1 : ndarray (k, k)
        Lower-triangular relative covariance factor.
    A11 : ndarray (l, k, k)
        ``Z_g' Z_g`` of each level.
    A1R : ndarray (l, k, r)
        ``Z_g' [X y]`` of each level (``r = p + 1``).
    gradient : bool
        Also return the gradient's sums.

    Returns
    -------
    ldL : float
        ``sum_g log det M_g``.
    UtU : ndarray (r, r)
        ``sum_g A1R_g' T M_g^{-1} T' A1R_g``.
    SK : ndarray (k, k)
        With ``gradient``: ``sum_g Z_g'Z_g K_g``, half the gradient of ``ldL`` in ``T``'s shape.
    D : ndarray (k * r, k * r)
        With ``gradient``: ``sum_g vec(P_g A1R_g) vec(K_g' A1R_g)'`` (row-major ``vec``).

    Raises
    ------
    numpy.linalg.LinAlgError
        If a block's determinant is not positive (only through rounding: ``M_g >= I``).
    """
    k, l, r = T1.shape[0], A1R.shape[0], A1R.shape[2]
    if k == 1:
        t = T1[0, 0]
        a = A11[:, 0, 0]
        B = A1R[:, 0, :]
        m = a * (t * t) + 1.0
        Kv = t / m
        ldL = float(np.sum(np.log(m)))
        UtU = (B * (t * Kv)[:, None]).T @ B
        if not gradient:
            return ldL, UtU
        AK = a * Kv
        # P_g K_g: (1 - a t K) K
        D = (B * ((1.0 - AK * t) * Kv)[:, None]).T @ B
        return ldL, UtU, np.array([[AK.sum()]]), D
    AT = A11 @ T1
    M = T1.T @ AT
    M += np.eye(k)
    if k == 2:
        det = M[:, 0, 0] * M[:, 1, 1] - M[:, 0, 1] * M[:, 1, 0]
        if not (det > 0).all():
            raise np.linalg.LinAlgError("a 2 x 2 block is not positive definite")
        Minv = np.empty_like(M)
        Minv[:, 0, 0] = M[:, 1, 1]
        Minv[:, 1, 1] = M[:, 0, 0]
        Minv[:, 0, 1] = Minv[:, 1, 0] = -M[:, 0, 1]
        Minv /= det[:, None, None]
        ldL = float(np.log(det).sum())
    else:
        sign, logdet = np.linalg.slogdet(M)
        if not (sign > 0).all():
            raise np.linalg.LinAlgError("a block is not positive definite")
        ldL = float(logdet.sum())
        Minv = np.linalg.inv(M)
    TA = T1.T @ A1R                                       # (l, k, r)
    KA = Minv @ TA                                        # K' A1R = M^{-1} T' A1R
    UtU = TA.reshape(l * k, r).T @ KA.reshape(l * k, r)
    if not gradient:
        return ldL, UtU
    AK = AT @ Minv                                        # A11 K
    PA = A1R - AK @ TA                                    # (I - A11 T M^{-1} T') A1R
    D = PA.reshape(l, k * r).T @ KA.reshape(l, k * r)
    return ldL, UtU, AK.sum(axis=0), D


def one_factor_gradient(SK: np.ndarray, D: np.ndarray, LRR: np.ndarray, n: int, pwrss: float,
                        reml: bool) -> np.ndarray | None:
    """The gradient of the profiled objective in ``T``'s shape (``k x k``; its upper triangle
    is not a parameter) for one grouping factor, from :func:`one_factor_sums`.

    ``d/dT sum_g log det M_g = 2 sum_g Z_g'Z_g K_g``; for REML ``d/dT log det(R_X'R_X) = -2
    sum_g P_g A1X_g H A1X_g' K_g`` with ``H = (R_X' R_X)^{-1}``; the penalized residual sum
    of squares is a minimum in ``(beta, u)``, so its derivative is the partial one at fixed
    ``(beta, u)``: ``-2 sum_g (Z_g' r_g) u_g'``. No ``T^{-1}``: exact on the boundary, where
    the criterion is flat to first order in a zero diagonal of ``T``.

    Parameters
    ----------
    SK, D : ndarray
        From :func:`one_factor_sums`, summed over all levels.
    LRR : ndarray (p + 1, p + 1)
        Lower Cholesky factor of the dense block ``[X y]`` (after the levels' update).
    n : int
        Observations.
    pwrss : float
        Penalized residual sum of squares at theta.
    reml : bool

    Returns
    -------
    ndarray (k, k) or None
        None if ``R_X`` is singular.
    """
    k, r = SK.shape[0], LRR.shape[0]
    p = r - 1
    if p:
        beta, info = sla.lapack.dtrtrs(LRR[:p, :p], LRR[p, :p], lower=1, trans=1)
        if info != 0:
            return None
    else:
        beta = np.zeros(0)
    e = np.empty(r)
    e[:p] = -beta
    e[p] = 1.0
    # Both contractions of D in one: with e e' (the residual term) and, for REML, with
    # (R_X' R_X)^{-1} on the X columns.
    W = ((n - p if reml else n) / pwrss) * e[:, None] * e[None, :]
    if reml and p:
        H, info = sla.lapack.dpotri(LRR[:p, :p], lower=1)
        if info != 0:
            return None
        # potri leaves the upper triangle as it found it: zero (LRR is potrf's clean output).
        H += H.T
        H.flat[::p + 1] *= 0.5
        W[:p, :p] += H
    DW = D.reshape(k, r, k, r).transpose(0, 2, 1, 3).reshape(k * k, r * r) @ W.ravel()
    return 2.0 * SK - 2.0 * DW.reshape(k, k)


@dataclass
class DevianceComponents:
    """Named pieces of the objective at one theta (lme4 keeps the same ones).

    Attributes
    ----------
    ldL2 : float
        ``log det(Lambda' Z' Z Lambda + I)``.
    ldRX2 : float
        ``log det(R_X' R_X)`` (the REML correction).
    pwrss : float
        Penalized weighted residual sum of squares ``||y - X beta - Z b||^2 + ||u||^2``.
    deviance : float
        Profiled ML deviance ``-2 log L``.
    reml : float
        Profiled REML criterion.
    """

    ldL2: float
    ldRX2: float
    pwrss: float
    deviance: float
    reml: float


class LMMProblem:
    """The profiled objective of a linear mixed model as a function of theta.

    Parameters
    ----------
    model : ModelStructure
        From :func:`mixedmodels.formula.build_model`.
    reml : bool
        Minimize the REML criterion (True) or the ML deviance.

    Notes
    -----
    Call the instance with a theta vector to get the objective; :meth:`solve` returns the
    estimates at a theta. ``theta`` is stored term by term, each term's lower-triangular
    relative covariance factor column-wise (lme4's order).
    """

    #: Whether :meth:`value_and_gradient` has its formula (a subclass that evaluates the
    #: objective elsewhere sets False and gets finite differences).
    analytic_gradient = True

    def __init__(self, model: ModelStructure, reml: bool = True, sparse_threshold: int = 200_000):
        # Offsets and precision weights: an unweighted problem on rescaled rows (weights.py).
        model, self.ldW = working_model(model)
        self.model = model
        self.reml = bool(reml)
        self.terms = model.reterms
        self.n, self.p = model.X.shape
        X, y = model.X, np.asarray(model.y, dtype=float)
        t1 = self.terms[0]
        self.k1, self.l1 = t1.k, t1.nlevels
        rest = self.terms[1:]
        self.qrest = sum(t.q for t in rest)
        self.r = self.qrest + self.p + 1  # columns of the dense block: other terms, X, y
        # theta's positions, bounds and start: from its one owner, mixedmodels.covariance.
        self.layout = CovarianceLayout(self.terms)
        self.ntheta = self.layout.ntheta
        self.lower = self.layout.lower
        self.theta0 = self.layout.start()

        # First term's diagonal block: one k1 x k1 cross-product per level.
        Z1 = t1.Z
        A11 = np.empty((self.l1, self.k1, self.k1))
        for a in range(self.k1):
            for b in range(a + 1):
                A11[:, a, b] = A11[:, b, a] = np.bincount(t1.codes, Z1[:, a] * Z1[:, b], self.l1)
        self.A11 = A11

        # Cross-products of the first term with [Z_rest, X, y], and of the rest with itself.
        XY = np.column_stack([X, y])
        self.sparse = bool(rest) and self.l1 * self.k1 * self.r > sparse_threshold
        if rest and not self.sparse:
            A1R, self.ARR = _dense_cross_products(t1, rest, XY)
        elif rest:
            Z1s = _term_sparse(t1, self.n)
            Zrest = sp.hstack([_term_sparse(t, self.n) for t in rest], format="csc")
            R = sp.hstack([Zrest, sp.csc_matrix(XY)], format="csc")
            A1R = (Z1s.T @ R).tocsr()
            ZrZr = (Zrest.T @ Zrest).toarray()
            ZrXY = np.asarray(Zrest.T @ XY)
            self.ARR = np.block([[ZrZr, ZrXY], [ZrXY.T, XY.T @ XY]])
        else:
            # One term: its cross-products with [X, y] directly, level by level.
            A1R = np.empty((self.l1, self.k1, self.r))
            for j in range(self.k1):
                for c in range(self.r):
                    A1R[:, j, c] = np.bincount(t1.codes, Z1[:, j] * XY[:, c], self.l1)
            self.ARR = XY.T @ XY
        if self.sparse:
            A1R = A1R.tocsr()
            A1R.sort_indices()
            self.A1R = A1R
            self._A1R_rows = np.repeat(np.arange(A1R.shape[0]), np.diff(A1R.indptr))
            self._A1Z = A1R[:, :self.qrest].tocsr()
            self._A1Z.sort_indices()
            self._A1XY = np.asarray(A1R[:, self.qrest:].toarray())
            self._build_update_map(self._A1Z)
        else:
            self.A1R = A1R
        # Segments of the dense block that belong to each remaining term.
        self._segments = []
        start = 0
        for t in rest:
            self._segments.append((start, start + t.q, t.k))
            start += t.q
        self._all_scalar_rest = all(t.k == 1 for t in rest)
        # Crossed or nested random intercepts in the dense layout: the gradient by vectors.
        self._scalar_dense = self.k1 == 1 and self._all_scalar_rest and not self.sparse and bool(rest)
        self._seg_starts = np.array([s0 for s0, _, _ in self._segments], dtype=int)
        self._nlevels = np.array([t.nlevels for t in self.terms], dtype=float)
        # value_and_gradient's formula covers the dense layout, and the sparse one with scalar
        # terms (InstEval's shape); elsewhere finite differences or COBYQA.
        self.has_gradient = self.analytic_gradient and (
            not self.sparse or (self.k1 == 1 and self._all_scalar_rest))
        self._diag_rest = np.arange(self.qrest)
        # One grouping factor (one term, or several of one factor such as a || term): its
        # objective and gradient from one k x k block per level (one_factor_sums), whatever
        # the layout factor() uses for the estimates. Exact on the boundary, no T^{-1}.
        self._one_factor = all(t.group == t1.group and t.nlevels == t1.nlevels
                               and np.array_equal(t.codes, t1.codes) for t in rest)
        if self._one_factor:
            if rest:
                Zm = np.column_stack([t.Z for t in self.terms])
                K = Zm.shape[1]
                self._A11m = np.empty((self.l1, K, K))
                for a in range(K):
                    for b in range(a + 1):
                        self._A11m[:, a, b] = self._A11m[:, b, a] = np.bincount(
                            t1.codes, Zm[:, a] * Zm[:, b], self.l1)
                self._A1Rm = np.empty((self.l1, K, self.p + 1))
                for a in range(K):
                    for c in range(self.p + 1):
                        self._A1Rm[:, a, c] = np.bincount(t1.codes, Zm[:, a] * XY[:, c], self.l1)
                self._ARRm = XY.T @ XY
            else:
                self._A11m, self._A1Rm, self._ARRm = self.A11, self.A1R, self.ARR
            self._stack_rows, self._stack_cols = self.layout.stacked_index()
            self._K = int(sum(t.k for t in self.terms))
            self.has_gradient = self.analytic_gradient
        self.evaluations = 0
        self.history: list[tuple[np.ndarray, float]] = []
        self.record_history = False

    def _build_update_map(self, A: sp.csr_matrix) -> None:
        """Precompute the fixed sparsity of ``A1Z' B' B A1Z`` (B = blockdiag(L11^{-1} T1')).

        ``A1Z`` is the cross-product of the first term with the other terms' columns. ``B' B``
        is block diagonal with one ``k1 x k1`` block ``W_g`` per level, so the lower triangle
        of the product, flattened, is ``P @ vec(W)`` for a sparse ``P`` that does not depend
        on theta: each evaluation is one sparse matrix-vector product instead of a sparse
        matrix-matrix product. (The columns of X and y are handled densely.)
        """
        k1, l1, q = self.k1, self.l1, self.qrest
        indptr, indices, data = A.indptr.astype(np.int64), A.indices.astype(np.int64), A.data
        counts = np.diff(indptr)
        if k1 == 1 and A.has_sorted_indices:
            # One row per level with its columns sorted: the pairs of a row's entries (a, b)
            # with a >= b are exactly the lower triangle, enumerated without the upper half.
            row = np.repeat(np.arange(l1, dtype=np.int64), counts)
            cnt = np.arange(A.nnz, dtype=np.int64) - indptr[row] + 1
            e1 = np.repeat(np.arange(A.nnz, dtype=np.int64), cnt)
            e2 = indptr[row[e1]] + np.arange(len(e1), dtype=np.int64) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            # No duplicate (flat, level) pairs here, so the CSR needs no summing.
            self._upd_P = sp.csr_matrix((data[e1] * data[e2], (indices[e1] * self.r + indices[e2], row[e1])),
                                        shape=(self.r * self.r, l1))
            return
        parts_flat, parts_val, parts_w = [], [], []
        for i in range(k1):
            for j in range(k1):
                r1 = np.arange(l1) * k1 + i
                r2 = np.arange(l1) * k1 + j
                c1, c2 = counts[r1], counts[r2]
                m = c1 * c2
                gid = np.repeat(np.arange(l1, dtype=np.int64), m)
                pos = np.arange(int(m.sum()), dtype=np.int64) - np.repeat(np.cumsum(m) - m, m)
                a, b = np.divmod(pos, c2[gid])
                e1 = indptr[r1][gid] + a
                e2 = indptr[r2][gid] + b
                cc1, cc2 = indices[e1], indices[e2]
                keep = cc1 >= cc2  # lower triangle only: LAPACK's potrf('L') reads no more
                parts_flat.append(cc1[keep] * self.r + cc2[keep])
                parts_val.append(data[e1[keep]] * data[e2[keep]])
                parts_w.append(gid[keep] * (k1 * k1) + (i * k1 + j))
        flat = np.concatenate(parts_flat)
        P = sp.coo_matrix((np.concatenate(parts_val), (flat, np.concatenate(parts_w))),
                          shape=(self.r * self.r, l1 * k1 * k1)).tocsr()
        P.sum_duplicates()
        self._upd_P = P

    def _sparse_update(self, W: np.ndarray) -> np.ndarray:
        """``A1R' blockdiag(W) A1R`` (r x r); its Z-Z block holds only the lower triangle."""
        q, r = self.qrest, self.r
        # The map writes the Z-Z block straight into the r x r result (no copy).
        out = (self._upd_P @ W.ravel()).reshape(r, r)
        # X and y columns: blockdiag(W) applied to the dense cross-product with the first term.
        XYg = self._A1XY.reshape(self.l1, self.k1, -1)
        WXY = np.einsum("gij,gjc->gic", W, XYg).reshape(self.l1 * self.k1, -1)
        zx = np.asarray(self._A1Z.T @ WXY)
        out[q:, :q] = zx.T
        out[:q, q:] = zx
        out[q:, q:] = self._A1XY.T @ WXY
        return out

    # ---- theta <-> Lambda ------------------------------------------------------------

    def split_theta(self, theta: np.ndarray) -> list[np.ndarray]:
        """The lower-triangular relative covariance factor T of each term (the layout's)."""
        return self.layout.factors(theta)

    def _lambda_rest_dense(self, M: np.ndarray, Ts: list[np.ndarray], side: str) -> np.ndarray:
        """M @ Lambda_R (side='right', M has r columns) on the dense block."""
        M = M.copy()
        for (s, e, k), T in zip(self._segments, Ts[1:]):
            if k == 1:
                M[:, s:e] *= T[0, 0]
            else:
                blk = M[:, s:e].reshape(M.shape[0], -1, k)
                M[:, s:e] = (blk @ T).reshape(M.shape[0], -1)
        return M

    def _lambda_rest_sparse(self, Ts: list[np.ndarray]) -> sp.csr_matrix:
        """Lambda_R as a sparse block-diagonal r x r matrix (identity on X and y)."""
        blocks = []
        for (s, e, k), T in zip(self._segments, Ts[1:]):
            blocks.append(sp.kron(sp.identity((e - s) // k, format="csr"), sp.csr_matrix(T), format="csr"))
        blocks.append(sp.identity(self.p + 1, format="csr"))
        return sp.block_diag(blocks, format="csr")

    # ---- the blocked Cholesky factorization -------------------------------------------

    def _sparse_U(self, L11: np.ndarray, T1: np.ndarray, Ts: list[np.ndarray]) -> sp.csr_matrix:
        if self.k1 == 1:
            U = self.A1R.copy()
            U.data *= (T1[0, 0] / L11[:, 0, 0])[self._A1R_rows]
        else:
            B = np.linalg.solve(L11, np.broadcast_to(T1.T, L11.shape))
            Bs = sp.bsr_matrix((B, np.arange(self.l1), np.arange(self.l1 + 1)),
                               shape=(self.l1 * self.k1, self.l1 * self.k1))
            U = (Bs @ self.A1R).tocsr()
        return (U @ self._lambda_rest_sparse(Ts)).tocsr()

    def factor(self, theta: np.ndarray, need_U: bool = True):
        """Blocked Cholesky factor at theta.

        Returns
        -------
        L11 : ndarray (l1, k1, k1)
            Lower Cholesky factors of the first term's diagonal blocks.
        U : ndarray (l1, k1, r) or sparse (l1*k1, r)
            ``L11^{-1} T1' A_{1R} Lambda_R`` -- the transpose of the factor's off-diagonal block.
        LRR : ndarray (r, r)
            Lower Cholesky factor of the Schur complement of the dense block.

        Raises
        ------
        numpy.linalg.LinAlgError
            If the dense block is not positive definite.
        """
        return self._factor(self.split_theta(theta), need_U)[1:]

    def _factor(self, Ts: list[np.ndarray], need_U: bool = True):
        """:meth:`factor` from the terms' factors, with the first term's blocks ``M`` first."""
        T1 = Ts[0]
        M, L11 = first_term_cholesky(T1, self.A11)
        if not self.qrest and not self.sparse:
            # One term: the dense block is [X y] alone, untouched by Lambda.
            U = first_term_U(L11, T1, self.A1R)
            U2 = U.reshape(self.l1 * self.k1, self.r)
            return M, L11, U, self._dense_factor(U2.T @ U2)
        # Dense block: Lambda_R' A_RR Lambda_R + I on the random part.
        if self._all_scalar_rest:
            lam = np.ones(self.r)
            for (s, e, _), T in zip(self._segments, Ts[1:]):
                lam[s:e] = T[0, 0]
        if self.sparse and self._all_scalar_rest:
            # Lambda_R' (A_RR - A_1R' blockdiag(W) A_1R) Lambda_R + I, in place in one r x r
            # array: the wide dense block's passes over memory cost as much as its Cholesky.
            W = (T1[0, 0] ** 2 / M[:, 0, 0])[:, None, None] if self.k1 == 1 else \
                np.einsum("ij,gjk,lk->gil", T1, np.linalg.inv(M), T1)
            S = self._sparse_update(W)
            np.subtract(self.ARR, S, out=S)
            S *= lam[:, None]
            S *= lam
            S[self._diag_rest, self._diag_rest] += 1.0
            U = self._sparse_U(L11, T1, Ts) if need_U else None
            LRR, info = sla.lapack.dpotrf(S, lower=1, clean=1, overwrite_a=1)
            if info != 0:
                raise np.linalg.LinAlgError("the dense block is not positive definite")
            return M, L11, U, LRR
        if self._all_scalar_rest:
            S = self.ARR * lam[:, None] * lam[None, :]
        else:
            S = self._lambda_rest_dense(self._lambda_rest_dense(self.ARR, Ts, "right").T, Ts, "right").T
        S[self._diag_rest, self._diag_rest] += 1.0
        if self.sparse:
            # B' B with B = L11^{-1} T1' per level: W_g = T1 M_g^{-1} T1'.
            if self.k1 == 1:
                W = (T1[0, 0] ** 2 / M[:, 0, 0])[:, None, None]
            else:
                W = np.einsum("ij,gjk,lk->gil", T1, np.linalg.inv(M), T1)
            UtU = self._sparse_update(W)
            if self._all_scalar_rest:
                UtU *= lam[:, None]
                UtU *= lam[None, :]
            else:
                zz = np.tril(UtU[:self.qrest, :self.qrest])
                UtU[:self.qrest, :self.qrest] = zz + np.tril(zz, -1).T
                UtU = self._lambda_rest_dense(self._lambda_rest_dense(UtU, Ts, "right").T, Ts, "right").T
            S -= UtU
            U = self._sparse_U(L11, T1, Ts) if need_U else None
        else:
            U = first_term_U(L11, T1, self.A1R)
            U2 = U.reshape(self.l1 * self.k1, self.r)
            if self._all_scalar_rest:
                U2 = U2 * lam[None, :]
            else:
                U2 = self._lambda_rest_dense(U2, Ts, "right")
            U = U2.reshape(self.l1, self.k1, self.r)
            S -= U2.T @ U2
        LRR, info = sla.lapack.dpotrf(S, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            LRR = _cholesky_exact_fit(LRR, info, self.ARR[-1, -1])
        return M, L11, U, LRR

    def components(self, theta: np.ndarray) -> DevianceComponents:
        """The named pieces of the objective at theta."""
        if self._one_factor:
            ldL, UtU = one_factor_sums(self._stacked_T(theta), self._A11m, self._A1Rm)
            return self.components_from(ldL, self._dense_factor(UtU), q=0)
        L11, _, LRR = self.factor(theta, need_U=False)
        return self._components(L11, LRR)

    def _components(self, L11: np.ndarray, LRR: np.ndarray) -> DevianceComponents:
        d = L11.reshape(-1) if self.k1 == 1 else np.diagonal(L11, axis1=1, axis2=2)
        return self.components_from(2.0 * float(np.log(d).sum()), LRR)

    def components_from(self, ldL1: float, LRR: np.ndarray, q: int | None = None) -> DevianceComponents:
        """The named pieces from ``log det`` of the first term's diagonal blocks (``ldL1``, a
        sum over levels, so it can be added up over chunks of levels) and the factor ``LRR``
        of the dense block, whose first ``q`` columns (default: the other terms') are random
        effects."""
        q = self.qrest if q is None else q
        logs = np.log(LRR.diagonal()[:-1])
        ldL2 = ldL1 + 2.0 * float(logs[:q].sum()) if q else float(ldL1)
        ldRX2 = 2.0 * float(logs[q:q + self.p].sum())
        # An exactly fitting response: pwrss is floored (see _cholesky_exact_fit) so the
        # criterion stays finite and smooth in theta; no real fit comes near the floor.
        pwrss = max(float(LRR[-1, -1]) ** 2, EXACT_FIT_FLOOR * float(self.ARR[-1, -1]))
        n, p = self.n, self.p
        dev = ldL2 - self.ldW + n * (1.0 + _LOG2PI + math.log(pwrss / n))
        reml = ldL2 + ldRX2 - self.ldW + (n - p) * (1.0 + _LOG2PI + math.log(pwrss / (n - p)))
        return DevianceComponents(ldL2=float(ldL2), ldRX2=float(ldRX2), pwrss=float(pwrss),
                                  deviance=float(dev), reml=float(reml))

    def __call__(self, theta: np.ndarray) -> float:
        """The objective (REML criterion or ML deviance) at theta; +inf where undefined."""
        return self._evaluate(theta, lambda: (self.components(theta), None))[0]

    def _evaluate(self, theta: np.ndarray, compute: Callable[[], tuple]) -> tuple[float, object]:
        """One evaluation: ``compute() -> (DevianceComponents, extra)``, counted and recorded
        in the history; the criterion's value and ``extra``, or ``(+inf, None)`` where the
        criterion is undefined (a factorization failed or the value is not finite)."""
        self.evaluations += 1
        extra = None
        try:
            c, extra = compute()
            val = c.reml if self.reml else c.deviance
        except np.linalg.LinAlgError:
            val = np.inf
        if not np.isfinite(val):
            val, extra = np.inf, None
        if self.record_history:
            self.history.append((np.array(theta, dtype=float), val))
        return val, extra

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray | None]:
        """The objective and its analytic gradient at theta.

        With ``A = Lambda~' [Z X]' [Z X] Lambda~ + I~`` (``Lambda~ = Lambda + I_p``, ``I~`` the
        identity on the random effects only), ``Lambda~' [Z X]' [Z X] dLambda~ = (A - I~)
        Lambda~^{-1} dLambda~`` when every ``T`` is invertible, so the derivative of the log-
        determinant needs only the diagonal ``k x k`` blocks of ``A^{-1}`` (summed over levels,
        ``S_t``): ``d log det A / d theta = 2 tr((l_t I - S_t) T_t^{-1} dT_t)``. ``A`` is the
        random-effects block for ML and the random-effects-and-X block for REML (``log det
        L L' + log det R_X' R_X``). The penalized residual sum of squares is a minimum, so its
        derivative is that of its value at fixed ``u`` and ``beta``: ``-2 r' Z dLambda u =
        -2 tr(T_t^{-1} dT_t sum_g u_g u_g')`` (since ``u = Lambda' Z' r``). The inverse's
        blocks come from the blocked factor: ``G = (L_RR L_RR')^{-1}`` on the dense block (LAPACK's
        ``potri``), ``L11g^{-T} (I + U_g G U_g') L11g^{-1}`` on the first term's levels.

        Returns
        -------
        value : float
            As :meth:`__call__` (counted as one evaluation); +inf where undefined.
        gradient : ndarray (ntheta,) or None
            None where the formula does not apply: a diagonal element of a ``T`` within
            ``1e-4`` of 0 (the boundary, where ``T^{-1}`` does not exist), a sparse layout
            with a vector-valued term (``has_gradient`` False), an undefined objective; the
            caller uses finite differences.
        """
        theta = np.asarray(theta, dtype=float)
        if not getattr(self, "has_gradient", False):
            return self(theta), None
        if self._one_factor:
            return self._one_factor_value_and_gradient(theta)
        if np.any(self.layout.diagonal & (np.abs(theta) < _GRADIENT_MIN_DIAG)):
            # At (or next to) the boundary T^{-1} does not exist, and next to it the formula
            # loses every digit (1 - D_g is O(theta^2)): forward differences instead.
            return self(theta), None
        Ts = self.split_theta(theta)

        def compute():
            # The sparse layout's U is not needed: u comes from A1R directly (_gradient).
            _, L11, U, LRR = self._factor(Ts, need_U=not self.sparse)
            c = self._components(L11, LRR)
            return c, (c, L11, U, LRR)

        val, parts = self._evaluate(theta, compute)
        if parts is None:
            return val, None
        c, L11, U, LRR = parts
        if self._scalar_dense:
            return val, self._gradient_scalar(theta, L11, U, LRR, c.pwrss)
        grad = self._gradient(Ts, L11, U, LRR, c.pwrss)
        return val, grad

    def _stacked_T(self, theta: np.ndarray) -> np.ndarray:
        """The grouping factor's whole relative covariance factor (the terms' ``T`` on the
        diagonal; one term: its ``T``)."""
        theta = np.asarray(theta, dtype=float)
        if len(theta) != self.ntheta:
            self.layout.factors(theta)  # raises the layout's error
        T = np.zeros((self._K, self._K))
        T[self._stack_rows, self._stack_cols] = theta
        return T

    def _one_factor_value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray | None]:
        """One grouping factor: the objective and the inverse-free gradient of
        :func:`one_factor_gradient` (exact on the boundary too)."""
        T = self._stacked_T(theta)

        def sums():
            ldL, UtU, SK, D = one_factor_sums(T, self._A11m, self._A1Rm, gradient=True)
            return ldL, self._dense_factor(UtU), SK, D

        return self._one_factor_result(theta, sums)

    def _one_factor_result(self, theta: np.ndarray, sums: Callable[[], tuple]) -> tuple[float, np.ndarray | None]:
        """The objective and gradient of a model with one grouping factor from ``sums() ->
        (sum_g log det M_g, LRR, SK, D)`` (:func:`one_factor_sums` over all levels, the dense
        block factored): shared by the in-memory objective and the Dask one, which gathers
        the sums from its partitions."""

        def compute():
            ldL, LRR, SK, D = sums()
            c = self.components_from(ldL, LRR, q=0)
            return c, (c, SK, D, LRR)

        val, parts = self._evaluate(theta, compute)
        if parts is None:
            return val, None
        c, SK, D, LRR = parts
        gT = one_factor_gradient(SK, D, LRR, self.n, c.pwrss, self.reml)
        if gT is None:
            return val, None
        if getattr(self, "_stack_rows", None) is None:
            self._stack_rows, self._stack_cols = self.layout.stacked_index()
        return val, gT[self._stack_rows, self._stack_cols]

    def _dense_factor(self, UtU: np.ndarray) -> np.ndarray:
        """The lower Cholesky factor of ``[X y]' [X y] - UtU`` (one grouping factor)."""
        LRR, info = sla.lapack.dpotrf(self._ARRm - UtU, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            LRR = _cholesky_exact_fit(LRR, info, self.ARR[-1, -1])
        return LRR

    def _gradient_scalar(self, theta, L11, U, LRR, pwrss) -> np.ndarray | None:
        """:meth:`_gradient` for the dense layout with scalar terms only (crossed or nested
        random intercepts): every block is 1 x 1, so the per-term sums are segment sums of
        vectors."""
        q, p, l1 = self.qrest, self.p, self.l1
        m = q + (p if self.reml else 0)
        d1 = L11[:, 0, 0]
        S1 = float(np.sum(1.0 / (d1 * d1)))
        U2 = U[:, 0, :]
        G = None
        if m:
            G, info = sla.lapack.dpotri(LRR[:m, :m], lower=1)
            if info != 0:
                return None
            # potri leaves the upper triangle as LRR had it: zero (potrf's clean output).
            G += G.T
            G.flat[::m + 1] *= 0.5
            W = U2[:, :m] / d1[:, None]
            S1 += float(np.sum((W @ G) * W))
        v, info = sla.lapack.dtrtrs(LRR[:-1, :-1], LRR[-1, :-1], lower=1, trans=1) if self.r > 1 \
            else (np.zeros(0), 0)
        if info != 0:
            return None
        u1 = (U2[:, -1] - U2[:, :-1] @ v) / d1
        coef = (self.n - p if self.reml else self.n) / pwrss
        S = np.empty(len(self.terms))
        uu = np.empty(len(self.terms))
        S[0], uu[0] = S1, float(u1 @ u1)
        if q:
            S[1:] = np.add.reduceat(np.diag(G)[:q], self._seg_starts)
            uu[1:] = np.add.reduceat(v[:q] * v[:q], self._seg_starts)
        # Term order is theta's order (one entry per scalar term).
        return (2.0 * (self._nlevels - S) - 2.0 * coef * uu) / theta

    def _gradient(self, Ts, L11, U, LRR, pwrss) -> np.ndarray | None:
        q, p, k1, l1 = self.qrest, self.p, self.k1, self.l1
        m = q + (p if self.reml else 0)
        L11inv = 1.0 / L11 if k1 == 1 else _tri_inv_stack(L11)
        # The diagonal blocks of A^{-1}, summed over levels, per term.
        S1 = np.einsum("gji,gjk->ik", L11inv, L11inv)
        G = None
        if m:
            # potri fills the lower triangle; the upper stays as in LRR: zero (potrf's clean).
            G, info = sla.lapack.dpotri(LRR[:m, :m], lower=1)
            if info != 0:
                return None
            if self.sparse:
                # k1 == 1, scalar later terms: sum_g U_g G U_g' / L11g^2 = tr(G U' D U), U' D U by
                # the update map (its Z-Z block lower only, like G: the full sum is twice the
                # lower triangle's less the diagonal).
                T1 = Ts[0][0, 0]
                M11 = L11[:, 0, 0] ** 2
                UDU = self._sparse_update((T1 ** 2 / M11 ** 2)[:, None, None])[:m, :m]
                lam = self._lam(Ts)[:m]
                UDU *= lam[:, None]
                UDU *= lam[None, :]
                S1 = S1 + (2.0 * np.einsum("ij,ij->", G, UDU) - np.dot(np.diagonal(G), np.diagonal(UDU)))
            else:
                G = G + np.tril(G, -1).T
                W = np.einsum("gji,gjr->gir", L11inv, U[:, :, :m])
                WG = (W.reshape(l1 * k1, m) @ G).reshape(l1, k1, m)
                S1 = S1 + np.einsum("gir,gjr->ij", WG, W)
        # The spherical random effects u at theta.
        Lr = LRR[:-1, :-1]
        # No fixed effects and one term: nothing to solve (LAPACK rejects the empty system).
        v, info = sla.lapack.dtrtrs(Lr, LRR[-1, :-1], lower=1, trans=1) if len(Lr) else (np.zeros(0), 0)
        if info != 0:
            return None
        if self.sparse:  # U = diag(T1 / L11) A1R Lambda_R, Lambda_R diagonal (scalar later terms)
            lam = self._lam(Ts)
            w = np.append(-lam[:-1] * v, 1.0)
            rhs1 = (Ts[0][0, 0] / L11[:, 0, 0] * (self.A1R @ w)).reshape(l1, k1)
        else:
            U2 = U.reshape(l1 * k1, self.r)
            rhs1 = (U2[:, -1] - U2[:, :-1] @ v).reshape(l1, k1)
        if k1 == 1:
            u1 = rhs1 / L11[:, :, 0]
        else:
            u1 = np.einsum("gji,gj->gi", L11inv, rhs1)
        S = [S1]
        us = [u1]
        for (s, e, k) in self._segments:
            nl = (e - s) // k
            idx = s + np.arange(nl)[:, None] * k + np.arange(k)[None, :]
            blocks = G[idx[:, :, None], idx[:, None, :]]
            if k > 1:  # G may hold only its lower triangle (the sparse layout)
                blocks = np.tril(blocks) + np.swapaxes(np.tril(blocks, -1), 1, 2)
            S.append(blocks.sum(axis=0))
            us.append(v[s:e].reshape(nl, k))
        coef = (self.n - p if self.reml else self.n) / pwrss
        # d/dT_ab of tr(M T^{-1} dT) is (M T^{-1})_ba: the gradient in T's shape is its transpose.
        dT = []
        for t, T, St, ut in zip(self.terms, Ts, S, us):
            K = 1.0 / T if t.k == 1 else sla.lapack.dtrtri(T, lower=1)[0]
            Mt = 2.0 * ((t.nlevels * np.eye(t.k) - St) @ K) - 2.0 * coef * ((ut.T @ ut) @ K)
            dT.append(Mt.T)
        return self.layout.theta_from_factors(dT)

    def _lam(self, Ts: list[np.ndarray]) -> np.ndarray:
        """The diagonal of Lambda_R on the dense block (scalar later terms; 1 on X and y)."""
        lam = np.ones(self.r)
        for (s, e, _), T in zip(self._segments, Ts[1:]):
            lam[s:e] = T[0, 0]
        return lam

    # ---- estimates at theta -----------------------------------------------------------

    def solve(self, theta: np.ndarray) -> dict:
        """Fixed effects, spherical and scaled random effects and pieces of the factor at theta."""
        L11, U, LRR = self.factor(theta)
        q = self.qrest
        Lr = LRR[:-1, :-1]
        c = LRR[-1, :-1]
        # LAPACK directly: scipy's solve_triangular costs ~13 us of checks on these tiny systems.
        v, info = sla.lapack.dtrtrs(Lr, c, lower=1, trans=1) if len(c) else (np.zeros(0), 0)
        if info != 0:
            raise np.linalg.LinAlgError(f"triangular solve failed (LAPACK info {info})")
        beta = v[q:]
        u_rest = v[:q]
        if self.sparse:
            rhs1 = np.asarray(U[:, -1].toarray()).ravel() - U[:, :-1] @ v
            rhs1 = rhs1.reshape(self.l1, self.k1)
        else:
            U2 = U.reshape(self.l1 * self.k1, self.r)
            rhs1 = (U2[:, -1] - U2[:, :-1] @ v).reshape(self.l1, self.k1)
        # L11' u1 = rhs1, one small triangular system per level.
        u1 = np.linalg.solve(np.transpose(L11, (0, 2, 1)), rhs1[:, :, None])[:, :, 0]
        Ts = self.split_theta(theta)
        us = [u1]
        for (s, e, k) in self._segments:
            us.append(u_rest[s:e].reshape(-1, k))
        bs = [u @ T.T for u, T in zip(us, Ts)]
        comps = self._components(L11, LRR)
        return {"beta": beta, "u": us, "b": bs, "L11": L11, "U": U, "LRR": LRR, "T": Ts, "components": comps}

    def conditional_variances(self, sol: dict) -> list[np.ndarray]:
        """Diagonal blocks of ``Lambda (L L')^{-1} Lambda'`` per term and level (times sigma^2
        they are lme4's ``condVar``): a list of (nlevels, k, k) arrays."""
        L11, U, LRR, Ts = sol["L11"], sol["U"], sol["LRR"], sol["T"]
        q = self.qrest
        L11inv = np.linalg.inv(L11)
        V1 = np.einsum("gji,gjk->gik", L11inv, L11inv)  # L11^{-T} L11^{-1}
        out = []
        if q:
            L22 = LRR[:q, :q]
            if self.sparse:
                L21T = np.asarray(U[:, :q].toarray())
            else:
                L21T = U.reshape(self.l1 * self.k1, self.r)[:, :q]
            W = sla.solve_triangular(L22, L21T.T, lower=True)  # q x (l1*k1)
            W = W.reshape(q, self.l1, self.k1)
            WtW = np.einsum("qgi,qgj->gij", W, W)
            V1 = np.einsum("gji,gjk,gkl->gil", L11inv, np.eye(self.k1) + WtW, L11inv)
            L22inv = sla.solve_triangular(L22, np.eye(q), lower=True)
        T1 = Ts[0]
        out.append(np.einsum("ij,gjk,lk->gil", T1, V1, T1))
        for (s, e, k), T in zip(self._segments, Ts[1:]):
            cols = L22inv[:, s:e].reshape(q, -1, k)
            V = np.einsum("qgi,qgj->gij", cols, cols)
            out.append(np.einsum("ij,gjk,lk->gil", T, V, T))
        return out


def deviance_function(formula: str, data: pd.DataFrame, reml: bool = True) -> LMMProblem:
    """The objective of an LMM as a function of theta, without fitting (lme4's ``devFunOnly``).

    Parameters
    ----------
    formula : str
        lme4 formula, e.g. ``"Yield ~ 1 + (1 | Batch)"``.
    data : DataFrame
    reml : bool
        REML criterion (True) or ML deviance (False).

    Returns
    -------
    LMMProblem
        Callable: ``f(theta) -> float``. ``f.lower`` are the bounds, ``f.theta0`` lme4's
        starting values and ``f.components(theta)`` the named pieces.

    Examples
    --------
    >>> f = deviance_function("Yield ~ 1 + (1 | Batch)", dyestuff)   # doctest: +SKIP
    >>> f([0.8])                                                      # doctest: +SKIP
    """
    model = build_model(formula, data)
    _validate.check_lmm_structure(model)
    return LMMProblem(model, reml=reml)


def _forward_gradient(fun: Callable[[np.ndarray], float], h: float = 1e-7):
    """(f, grad) by forward differences: m + 1 evaluations, always inside the bounds since
    theta only has lower bounds, and much less overhead than scipy's generic numdiff."""

    def fg(x: np.ndarray, f0: float | None = None) -> tuple[float, np.ndarray]:
        f0 = fun(x) if f0 is None else f0
        g = np.empty(len(x))
        for i in range(len(x)):
            step = h * max(1.0, abs(x[i]))
            xi = x.copy()
            xi[i] += step
            g[i] = (fun(xi) - f0) / step
        return f0, g

    return fg


def _analytic_gradient(problem: LMMProblem):
    """(f, grad) from :meth:`LMMProblem.value_and_gradient`, by forward differences where the
    analytic gradient does not apply (a diagonal of a relative covariance factor at 0)."""
    fd = _forward_gradient(problem)

    def fg(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = problem.value_and_gradient(x)
        if g is not None:
            return f, g
        # The value is known; only the differences are new evaluations.
        return fd(x, f) if np.isfinite(f) else (f, np.zeros(len(x)))

    return fg


def _value_at(problem: LMMProblem, res: optimize.OptimizeResult) -> float:
    """The objective at the optimizer's answer: its own record of it when it has one."""
    fun = getattr(res, "fun", None)
    if fun is not None and np.isfinite(fun):
        return float(fun)
    return problem(np.asarray(res.x, dtype=float))


def _moment_start(problem: LMMProblem) -> np.ndarray | None:
    """A starting theta for a model with one grouping factor, by the method of moments.

    Each group's own least-squares coefficients ``b_g = (Z_g'Z_g)^{-1} Z_g' r_g`` on the
    residuals ``r`` of the fixed effects' least-squares fit scatter with covariance ``Sigma +
    sigma^2 (Z_g'Z_g)^{-1}``; their mean outer product less the mean sampling part
    estimates ``Sigma``, the pooled within-group residual variance ``sigma^2``, and theta is
    read off the Cholesky factor of ``Sigma / sigma^2`` (its eigenvalues kept within [0.01,
    1e4], so the start is never next to the boundary, where the criterion is flat). On
    sleepstudy this start is within 5% of the optimum and L-BFGS-B needs a third fewer
    evaluations than from lme4's start of 1s. All from the per-group cross-products the
    objective already holds.

    Returns
    -------
    ndarray or None
        None where it does not apply: fewer groups with an invertible ``Z_g'Z_g`` than
        ``k + 1``, no within-group degrees of freedom, or anything not finite (the caller
        then starts where lme4 does).
    """
    A11, A1R, ARR = problem._A11m, problem._A1Rm, problem._ARRm
    p, K, n = problem.p, problem._K, problem.n
    try:
        beta = np.linalg.solve(ARR[:p, :p], ARR[:p, p]) if p else np.zeros(0)
        e = np.append(-beta, 1.0)
        zr = A1R @ e                                        # (l, K): Z_g' r_g
        ok = np.linalg.cond(A11) < 1e8
        G = int(ok.sum())
        dof = n - p - G * K
        if G < K + 1 or dof < 1:
            return None
        Ainv = np.linalg.inv(A11[ok])
        b = (Ainv @ zr[ok][:, :, None])[:, :, 0]
        within = float(e @ ARR @ e) - float(np.sum(zr[ok] * b))
        s2 = within / dof
        if not s2 > 0:
            return None
        Sigma = (b.T @ b / G - s2 * Ainv.mean(axis=0)) / s2
        w, V = np.linalg.eigh(0.5 * (Sigma + Sigma.T))
        L = np.linalg.cholesky((V * np.clip(w, 1e-2, 1e4)) @ V.T)
    except np.linalg.LinAlgError:
        return None
    theta = L[problem._stack_rows, problem._stack_cols]
    return theta if np.all(np.isfinite(theta)) else None


def _backfit_start(problem: LMMProblem) -> np.ndarray | None:
    """A starting theta for crossed or nested random intercepts (scalar terms), by moments.

    Each term's level effects are fitted as fixed effects to the residuals of the fixed
    effects' least-squares fit, one term at a time on what the coarser ones leave (the
    classical decomposition: exact for balanced crossed or nested designs, where a nested
    factor's levels would otherwise absorb its parent's effects); the residual variance of
    that fit estimates ``sigma^2`` and each term's between-level variance, less the mean
    sampling variance ``sigma^2 / sum_i z_i^2`` of its level estimates, its variance. Theta
    is the ratio's square root, kept within [0.1, 100] so the start is never next to the
    boundary.

    Returns
    -------
    ndarray or None
        None without residual degrees of freedom or where anything is not finite.
    """
    m = problem.model
    X, y = m.X, np.asarray(m.y, dtype=float)
    n, p = X.shape
    try:
        XtX = X.T @ X
        beta = np.linalg.solve(XtX, X.T @ y) if p else np.zeros(0)
    except np.linalg.LinAlgError:
        return None
    r = y - X @ beta
    fits = [np.zeros(n) for _ in problem.terms]
    b = [np.zeros(t.nlevels) for t in problem.terms]
    a = [np.bincount(t.codes, t.Z[:, 0] ** 2, t.nlevels) for t in problem.terms]
    if any(np.any(ai <= 0) for ai in a):
        return None
    for i in sorted(range(len(problem.terms)), key=lambda j: problem.terms[j].nlevels):
        t = problem.terms[i]
        b[i] = np.bincount(t.codes, t.Z[:, 0] * r, t.nlevels) / a[i]
        fits[i] = t.Z[:, 0] * b[i][t.codes]
        r = r - fits[i]
    dof = n - p - sum(t.nlevels - 1 for t in problem.terms)
    if dof < 1:
        return None
    s2 = float(r @ r) / dof
    if not s2 > 0:
        return None
    var = np.array([np.mean(bi * bi) - s2 * np.mean(1.0 / ai) for bi, ai in zip(b, a)])
    theta = np.sqrt(np.clip(var / s2, 1e-2, 1e4))
    return theta if np.all(np.isfinite(theta)) else None


def _single_term_start(problem: LMMProblem) -> np.ndarray | None:
    """A starting theta for a model with several terms: each term's theta fitted with that term
    alone (and the same fixed effects).

    Such a fit has no dense block, so it costs a few milliseconds, while an evaluation of a
    wide crossed model costs tens: on InstEval's shape the one-term thetas are within ~20% of
    the joint optimum, and COBYQA needs half the evaluations it needs from lme4's start of 1s.
    None where a one-term fit fails (the caller keeps lme4's start).
    """
    parts = []
    try:
        for t in problem.terms:
            sub = LMMProblem(dataclasses.replace(problem.model, reterms=[t]), reml=problem.reml)
            parts.append(np.asarray(optimize_theta(sub).final, dtype=float))
    except (np.linalg.LinAlgError, ValueError, FloatingPointError):
        return None
    start = np.concatenate(parts)
    return start if np.all(np.isfinite(start)) and np.all(start >= problem.lower) else None


class _Derivatives(tuple):
    """``(gradient, Hessian)`` at an optimum, and whether Newton's steps settled there."""

    def __new__(cls, g: np.ndarray, H: np.ndarray, settled: bool):
        out = super().__new__(cls, (g, H))
        out.settled = settled
        return out


def _newton_steps(problem: LMMProblem, x: np.ndarray, fx: float, g: np.ndarray | None, *,
                  far: bool, steps: int = 20):
    """Newton steps on the profiled criterion with the Hessian by forward differences of the
    exact gradient (``m`` gradients, once), BFGS-updated from each step taken: each step then
    costs one evaluation and they contract superlinearly.

    Two uses. After L-BFGS-B (``far=False``): L-BFGS-B stops when the criterion's relative
    change falls below its ``ftol``; on a criterion this flat that leaves theta ~1e-6
    relative from the optimum, wherever its path happened to approach it from (a Dask fit
    and an in-memory one of the same data add their sums in different orders and stop at
    different points); two or three steps reach the optimum to ~1e-9. From a
    method-of-moments start (``far=True``), within ~30% of the optimum: about two thirds of
    L-BFGS-B's evaluations and none of its bookkeeping. There the steps give up -- and the
    caller runs L-BFGS-B from the best point reached -- at the first sign that the start is
    not in Newton's region: a step that would move a parameter by more than half its size or
    take a variance parameter more than 30% of the way to its bound (where the criterion is
    flat to first order and the model is poor; L-BFGS-B and the boundary rule handle it), or
    one that does not lower the criterion.

    Within ~1e-6 of the optimum the criterion changes by little more than its rounding
    (~1e-13 relative): a step whose predicted decrease is that small is judged by the
    gradient it reaches, the value only has to stay within rounding.

    Returns
    -------
    x, fx : the best point and its value
    derivatives : _Derivatives (gradient at x, the model Hessian, whether the steps settled)
        or None if no gradient or no positive definite Hessian was available.
    """
    from .results import _exact_gradient_and_hessian

    if g is None:
        fx, g = problem.value_and_gradient(x)
        if g is None or not np.isfinite(fx):
            return x, fx, None
    h = 1e-4 * np.maximum(1.0, np.abs(x))
    exact = _exact_gradient_and_hessian(lambda z: problem.value_and_gradient(z)[1], x, h, g0=g)
    if exact is None:
        return x, fx, None
    g, H = exact
    try:
        c = np.linalg.cholesky(H)
    except np.linalg.LinAlgError:
        return x, fx, _Derivatives(g, H, False)
    bounded = np.isfinite(problem.lower)
    rate, prev, settled = (1.0 if far else 1e-4), None, False
    for _ in range(steps):
        # LAPACK directly: scipy's cho_solve checks cost more than the solve at this size.
        d = -sla.lapack.dpotrs(c, g, lower=1)[0]
        size = float(np.max(np.abs(d) / np.maximum(1.0, np.abs(x))))
        if not size > 1e-9:
            settled = True
            break
        if prev is not None:
            rate = min(max(size / prev, 1e-6), 1.0)  # the observed contraction
        prev = size
        xn = x + d
        if np.any(xn < problem.lower):
            break
        if far and (size > 0.5 or np.any(bounded & (xn - problem.lower < 0.7 * (x - problem.lower)))):
            break
        fn, gn = problem.value_and_gradient(xn)
        if gn is None or not np.isfinite(fn):
            break
        slope = float(g @ d)
        descent = fn <= fx + 1e-4 * slope
        # The model's predicted decrease (-slope / 2) within 100 times the criterion's
        # rounding: judge the step by the gradient.
        rounding = (-slope < 2e-11 * (1.0 + abs(fx)) and fn <= fx + 1e-12 * (1.0 + abs(fx))
                    and np.max(np.abs(gn)) < np.max(np.abs(g)))
        if not (descent or rounding):
            break
        sd, yd = xn - x, gn - g
        sy = float(sd @ yd)
        x, fx, g = xn, float(fn), gn
        if size * rate < 1e-9:
            settled = True
            break  # the next step would be below 1e-9 (relative): theta is that close
        if sy > 0:
            Hs = H @ sd
            Hn = H - np.outer(Hs, Hs) / float(sd @ Hs) + np.outer(yd, yd) / sy
            try:
                c = np.linalg.cholesky(Hn)
                H = Hn
            except np.linalg.LinAlgError:
                pass
    return x, fx, _Derivatives(g, H, settled)


def optimize_theta(problem: LMMProblem, start: np.ndarray | None = None, method: str | None = None) -> OptSummary:
    """Minimize the profiled objective over theta within its bounds, then check convergence.

    Parameters
    ----------
    problem : LMMProblem
    start : array, optional
        Starting theta. Default: with one grouping factor, a method-of-moments estimate
        (``_moment_start``); with a wide dense block and several terms, each term's theta
        fitted alone (:func:`_single_term_start`); otherwise (or where those do not apply)
        lme4's 1 on diagonals, 0 elsewhere.
    method : {"L-BFGS-B", "COBYQA"}, optional
        Default: from a method-of-moments start (one grouping factor; or crossed or nested
        random intercepts, ``_backfit_start``), Newton steps with the Hessian by
        differences of the exact gradient (``_newton_steps``), which reach the optimum in
        6-13 evaluations on lme4's reference fits; where they give up (the optimum on a
        bound, the start outside Newton's region) or there is no such start, L-BFGS-B with
        the analytic gradient (:meth:`LMMProblem.value_and_gradient`; forward differences
        at a boundary), which needs a quarter to a third of the evaluations of
        derivative-free methods, then the same Newton steps to finish. Without the formula (a sparse layout with a
        vector-valued term, or a subclass that evaluates elsewhere): forward differences for
        a narrow dense block, COBYQA (Powell-style derivative-free trust region with
        quadratic models, the successor of lme4's BOBYQA) for a wide one. With a wide dense
        block (200 columns or more) and several terms, both start from each term's theta
        fitted alone (:func:`_single_term_start`): on InstEval's shape L-BFGS-B then needs 10
        evaluations with gradients (each about three times a plain one: ``potri`` on the
        dense block), COBYQA 44 plain ones. Both reach lme4's optimum to ~1e-10 relative in
        the criterion on the reference fits.
    """
    # A subclass with its own value_and_gradient (the Dask problem) says so by analytic_gradient.
    has_gradient = getattr(problem, "has_gradient", problem.analytic_gradient)
    if method is None:
        wide = problem.r >= 200 or problem.sparse
        method = "L-BFGS-B" if has_gradient or not wide else "COBYQA"
    radius = 1.0  # COBYQA's default
    if start is None and problem.r >= 200 and len(problem.terms) > 1 and type(problem) is LMMProblem:
        # A wide dense block: evaluations are expensive, one-term fits are not.
        start = _single_term_start(problem)
        if start is not None:
            radius = 0.1 * max(1.0, float(np.max(np.abs(start))))
    moment = False
    if start is None and type(problem) is LMMProblem and problem._one_factor:
        start = _moment_start(problem)
        moment = start is not None
    elif start is None and type(problem) is LMMProblem and problem._scalar_dense and problem.r < 200:
        start = _backfit_start(problem)
        moment = start is not None
    theta0 = problem.theta0 if start is None else np.asarray(start, dtype=float)
    if method not in ("L-BFGS-B", "COBYQA"):
        raise ValueError(f"method must be 'L-BFGS-B' or 'COBYQA', got {method!r}")
    problem.evaluations = 0
    problem.history = []
    problem.record_history = True
    t0 = time.perf_counter()
    bounded = np.isfinite(problem.lower)

    def run(start_at: np.ndarray, tight: bool = not has_gradient):
        if method == "L-BFGS-B":
            bounds = [(lo if np.isfinite(lo) else None, None) for lo in problem.lower]
            # With the exact gradient, Newton steps finish the job (_newton_steps): stop
            # L-BFGS-B once in the optimum's neighbourhood. Otherwise it has to get there alone.
            tol = {"ftol": 1e-12, "gtol": 1e-6} if tight else {"ftol": 1e-9, "gtol": 1e-2}
            return optimize.minimize(_analytic_gradient(problem), start_at, jac=True, method="L-BFGS-B",
                                     bounds=bounds, options={**tol, "maxiter": 2000})
        return optimize.minimize(problem, start_at, method="COBYQA", bounds=optimize.Bounds(problem.lower, np.inf),
                                 options={"final_tr_radius": 1e-6, "initial_tr_radius": radius, "maxfev": 2000})

    label = (f"L-BFGS-B (scipy), {'analytic' if has_gradient else 'forward-difference'} gradient" if method == "L-BFGS-B"
             else "COBYQA (scipy), derivative-free")
    derivatives = None
    x = theta0
    if moment and method == "L-BFGS-B" and has_gradient:
        # Started near the optimum: Newton's method, or L-BFGS-B from where it stopped.
        x, fx, derivatives = _newton_steps(problem, theta0, np.inf, None, far=True)
        if derivatives is not None and not derivatives.settled:
            derivatives = None
    if derivatives is not None:
        label = ("Newton, Hessian by differences of the exact gradient, from a method-of-moments "
                 "start")
        res = optimize.OptimizeResult(x=x, fun=fx, message="Newton steps converged")
    else:
        res = run(theta0 if not moment else x)
    # The optimizers start by evaluating theta0; its value is in the history.
    f0 = next((v for th, v in problem.history if np.array_equal(th, theta0)), None)
    if f0 is None:
        f0 = problem(theta0)
    x = np.asarray(res.x, dtype=float)
    fx = _value_at(problem, res)
    for restart in range(5 if derivatives is None else 0):
        # Snap tiny diagonal values onto the boundary: the objective is flat there to first order.
        near = bounded & (x < 1e-5) & (x != 0)
        if near.any():
            xb = x.copy()
            xb[near] = 0.0
            fb = problem(xb)
            if fb <= fx:
                x, fx = xb, fb
        # The boundary rule: stop on a bound only if the objective rises inside it. The
        # criterion is flat to first order at theta_i = 0, so a gradient method can stop there
        # with the optimum inside; restart from the better point if a step inside finds one.
        at_bound = np.flatnonzero(bounded & (x - problem.lower < 1e-4))
        better = probe_inside(problem, x, at_bound, fx)
        # A zero diagonal of a vector term: its mirror images (same covariance) too.
        for mirror in ([] if better is not None else problem.layout.flipped_at_zero(x, at_bound)):
            better = probe_inside(problem, mirror, at_bound, fx)
            if better is not None:
                break
        if better is None:
            break
        res = run(better[0])
        x = np.asarray(res.x, dtype=float)
        fx = _value_at(problem, res)
        if better[1] < fx:
            x, fx = better
        if not label.endswith("inside a bound"):
            label += "; restarted inside a bound"
    # The optimum's value is known; the exact gradient (where it applies) makes the check's
    # Hessian cost m gradients instead of m (m + 3) / 2 objective values, and the same
    # Hessian polishes the optimum by Newton steps first.
    gradient = (lambda z: problem.value_and_gradient(z)[1]) if has_gradient else None
    if derivatives is None and has_gradient and not np.any(bounded & (x - problem.lower < 1e-4)):
        # L-BFGS-B's gradient at its answer, unless the boundary rule moved it.
        g0 = getattr(res, "jac", None) if np.array_equal(x, res.x) and np.isfinite(fx) else None
        x, fx, derivatives = _newton_steps(problem, x, fx, g0, far=False, steps=6)
        if derivatives is not None:
            label += "; Newton-polished"
    if (derivatives is None or not derivatives.settled) and method == "L-BFGS-B" and has_gradient:
        # No polish, or one that did not settle (an optimum on the bound, a Hessian that is
        # not positive definite, a very flat criterion): finish with L-BFGS-B's tight
        # tolerances from where it stopped.
        res = run(x, tight=True)
        xt = np.asarray(res.x, dtype=float)
        ft = _value_at(problem, res)
        if ft <= fx and not np.array_equal(xt, x):
            x, fx, derivatives = xt, ft, None  # the check computes its own derivatives
    evals = problem.evaluations
    problem.record_history = False
    seconds = time.perf_counter() - t0
    ok, msg, mg = check_convergence(problem, x, problem.lower, f0=fx, gradient=gradient,
                                    derivatives=derivatives,
                                    equivalents=lambda z, idx: problem.layout.flipped_at_zero(z, idx))
    return OptSummary(optimizer=label, initial=theta0, final=x, lower=problem.lower, finitial=f0,
                      fval=fx, feval=evals, message=str(res.message), converged=ok,
                      convergence_message=msg, max_grad=mg, history=list(problem.history), seconds=seconds)


def _re_column_scales(model: ModelStructure) -> list[np.ndarray] | None:
    """Each random-effects term's column scales (root mean squares), if any column's lies
    outside ``scaling.WELL_SCALED``; None for a well-scaled design (the common case)."""
    from .scaling import WELL_SCALED

    scales = [np.sqrt(np.mean(t.Z * t.Z, axis=0)) for t in model.reterms]
    lo, hi = WELL_SCALED
    if all(np.all((s >= lo) & (s <= hi)) for s in scales) or any(np.any(s == 0) for s in scales):
        return None
    return scales


def _optimize_in_scaled_units(model: ModelStructure, problem: LMMProblem,
                              start: np.ndarray | None) -> OptSummary:
    """:func:`optimize_theta`, on random-effect columns of unit scale when they are far from it.

    A random slope on a covariate of ~1e6 (a price in cents, a count of seconds) has a
    relative SD of ~1e-7: the optimizer's steps, difference widths and tolerances, all
    relative to max(1, |theta|), then lose every digit and it stops at a wrong point that
    looks converged (lme4 fails the same way, with a warning to rescale). The answer must
    not depend on a covariate's units: the model is fitted with each column of ``Z`` divided
    by its root mean square ``s`` -- the same model, with ``T_s = diag(s) T`` (rows scaled,
    still lower triangular) -- and theta is mapped back, ``theta = theta_s / s[row]``; the
    result is computed on the original problem at that theta.
    """
    scales = _re_column_scales(model)
    if scales is None:
        return optimize_theta(problem, start)
    scaled = dataclasses.replace(model, reterms=[dataclasses.replace(t, Z=t.Z / s)
                                                 for t, s in zip(model.reterms, scales)])
    sproblem = LMMProblem(scaled, reml=problem.reml)
    # theta_s = theta * s[row of the entry in its term's factor]
    d = np.array([scales[e.term][e.row] for e in problem.layout.entries])
    opt = optimize_theta(sproblem, None if start is None else np.asarray(start, dtype=float) * d)
    opt.optimizer += "; random-effect columns rescaled to unit scale"
    opt.initial = np.asarray(opt.initial, dtype=float) / d
    opt.final = np.asarray(opt.final, dtype=float) / d
    opt.history = [(np.asarray(th, dtype=float) / d, v) for th, v in opt.history]
    opt.theta_scale = d  # singularity is judged in the unit-scale theta (LinearMixedModel)
    problem.evaluations = sproblem.evaluations
    return opt


class LinearMixedModel(MixedModel):
    """A fitted linear mixed model (the result of :func:`lmer`).

    Attributes
    ----------
    formula : str
    reml : bool
    model : ModelStructure
        Response, design matrices and random-effects terms.
    problem : LMMProblem
        The objective; ``problem(theta)`` evaluates it.
    optsum : OptSummary
        Optimizer metadata (initial/final theta, evaluations, convergence check).
    theta : ndarray
        Relative covariance parameters, lme4's order.
    fixef : Series
        Fixed-effects estimates, in design-matrix column order.
    se : Series
        Their standard errors.
    vcov : DataFrame
        Their covariance matrix.
    sigma : float
        Residual standard deviation.
    loglik, aic, bic, deviance : float
        ``deviance`` is ``-2 * loglik`` (for a REML fit, the REML criterion, as lme4 reports).
    reml_criterion : float or None
        None for ML fits.
    nobs, df_resid : int
    ngroups : dict
        Number of levels of each grouping factor.
    layout : CovarianceLayout
        Positions, bounds and lme4's names of the covariance parameters.
    singular : bool
        True at a boundary fit (a variance estimated as 0 or a correlation of +-1).
    converged : bool
    """

    def __init__(self, model: ModelStructure, problem: LMMProblem, optsum: OptSummary, data_name: str | None = None):
        self.model = model
        self.problem = problem
        self.optsum = optsum
        self.formula = model.formula
        self.reml = problem.reml
        self.data_name = data_name
        self.layout = CovarianceLayout(model.reterms)
        theta = np.asarray(optsum.final, dtype=float)
        self.theta = theta
        sol = problem.solve(theta)
        self._sol = sol
        comps: DevianceComponents = sol["components"]
        self.components = comps
        n, p = problem.n, problem.p
        self.nobs = n
        self.sigma = float(np.sqrt(comps.pwrss / (n - p if self.reml else n)))
        xn = model.xnames
        xn = pd.Index(xn)  # one Index for the three (building one from strings is slow)
        self.fixef = pd.Series(sol["beta"], index=xn, name="Estimate")
        LXX = sol["LRR"][problem.qrest:problem.qrest + p, problem.qrest:problem.qrest + p]
        Linv, info = sla.lapack.dtrtri(LXX, lower=1) if p else (np.zeros((0, 0)), 0)
        if info != 0:
            raise np.linalg.LinAlgError(f"the fixed effects' factor is singular (LAPACK info {info})")
        Linv = np.tril(Linv)
        V = self.sigma**2 * (Linv.T @ Linv)
        self.vcov = pd.DataFrame(V, index=xn, columns=xn)
        self.se = pd.Series(np.sqrt(np.diag(V)), index=xn, name="Std. Error")
        self.npar = p + problem.ntheta + 1
        crit = comps.reml if self.reml else comps.deviance
        self.reml_criterion = comps.reml if self.reml else None
        self.deviance = float(crit)
        self.loglik = -0.5 * float(crit)
        self.aic = float(crit + 2 * self.npar)
        self.bic = float(crit + self.npar * np.log(n))
        self.df_resid = n - self.npar
        self.converged = optsum.converged
        self.singular = self._is_singular()
        self._b = sol["b"]

    # ---- variance components ------------------------------------------------------------

    def _is_singular(self, tol: float = 1e-4) -> bool:
        """lme4's isSingular: a diagonal element of a relative covariance factor near 0 (on
        unit-scale random-effect columns where the fit rescaled them: a slope on a covariate
        of ~1e6 has a relative SD of ~1e-7 without being singular)."""
        d = getattr(self.optsum, "theta_scale", None)
        return self.layout.singular(self.theta if d is None else self.theta * d, tol)

    def _covariances(self) -> list[np.ndarray]:
        return self.layout.covariances(self.theta, self.sigma)

    # ---- the hooks of MixedModel --------------------------------------------------------

    def _scale(self) -> float:
        return self.sigma

    def _modes(self, condvar: bool = True) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """Conditional modes (BLUPs) per term and, with ``condvar``, their conditional SDs
        (lme4's ``condVar``: ``sigma^2 Lambda (L L')^{-1} Lambda'``, fixed effects held at
        their estimates)."""
        cv = self.problem.conditional_variances(self._sol) if condvar else None
        out = []
        for i, b in enumerate(self._b):
            sd = None
            if condvar:
                sd = self.sigma * np.sqrt(np.maximum(np.einsum("gjj->gj", cv[i]), 0.0))
            out.append((b, sd))
        return out

    def _eta(self) -> np.ndarray:
        m = self.model
        eta = m.X @ self.fixef.to_numpy() + self._random_part([(t.codes, t.Z) for t in m.reterms])
        return eta if m.offset is None else eta + m.offset

    def _mu(self) -> np.ndarray:
        return self._eta()

    def _response_parts(self):
        y = np.asarray(self.model.y, dtype=float)
        one = np.ones_like(y)
        w = getattr(self.model, "weights", None)
        return y, (one if w is None else np.asarray(w, dtype=float)), one, one

    def _random_part(self, terms_codes_Z: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        out = 0.0
        for (codes, Z), b in zip(terms_codes_Z, self._b):
            known = codes >= 0
            contrib = np.zeros(len(codes))
            contrib[known] = np.einsum("ij,ij->i", Z[known], b[codes[known]])
            out = out + contrib
        return out

    def predict(self, newdata: pd.DataFrame | None = None, include_random: bool = True,
                offset=None, allow_new_levels: bool = False) -> pd.Series:
        """Predictions for new data.

        Parameters
        ----------
        newdata : DataFrame, optional
            Defaults to the fitted data. Must have the columns the formula's right-hand side
            uses (grouping columns only when ``include_random``). Labels are matched by value
            (a group fitted as 101 is found as 101, 101.0 or "101"); a fixed-factor level not
            seen in the fit is always an error.
        include_random : bool
            Add the random effects (lme4's ``re.form = NULL``); False gives the population
            prediction ``X beta`` (``re.form = NA``) and needs no grouping column.
        allow_new_levels : bool
            lme4's ``allow.new.levels``: False (the default, as lme4) makes a group not seen in
            the fit, or a missing group, an error naming the grouping factor and the levels;
            True predicts such rows at the population value (random effect 0).
        offset : str or array-like, optional
            The new rows' ``offset=`` values when the fit's offset argument was an array (a
            column name is read from ``newdata``; the formula's ``offset(...)`` terms are
            evaluated on ``newdata``).

        Returns
        -------
        Series indexed like ``newdata``; NaN where a covariate is missing.

        Raises
        ------
        ValueError
            For a missing column, a new fixed-factor level, or (unless allowed) a new group.
        """
        if newdata is None:
            return self.fitted() if include_random else pd.Series(
                self.model.X @ self.fixef.to_numpy() + new_offset(self.model, None), index=self.model.rows)
        _validate.check_dataframe(newdata, "newdata")
        needed = _validate.predictor_columns(self.model, include_random)
        _validate.check_columns(newdata, needed, "newdata")
        X = self.model.fixed_matrix(newdata)
        pred = X @ self.fixef.to_numpy() + new_offset(self.model, newdata, offset)
        if include_random:
            pairs = [(t.new_codes(newdata, allow_new_levels), t.new_Z(newdata)) for t in self.model.reterms]
            pred = pred + self._random_part(pairs)
        return pd.Series(pred, index=newdata.index, name="predicted")

    # ---- intervals ---------------------------------------------------------------------

    def ml_problem(self) -> tuple[LMMProblem, np.ndarray]:
        """The ML objective and its optimum theta (a REML fit is refitted by ML), for profiling."""
        if not self.reml:
            return self.problem, np.asarray(self.theta, dtype=float)
        problem = LMMProblem(self.model, reml=False)
        opt = optimize_theta(problem, start=self.theta)
        return problem, np.asarray(opt.final, dtype=float)

    # ---- summary -------------------------------------------------------------------------

    def summary(self) -> ModelSummary:
        """lme4-like summary (text with ``print``, an HTML table in a notebook)."""
        title = [
            "Linear mixed model fit by " + ("REML" if self.reml else "maximum likelihood"),
            f"Formula: {self.formula}",
        ]
        if self.data_name:
            title.append(f"   Data: {self.data_name}")
        if self.reml:
            stats_ = {"REML criterion at convergence": self.reml_criterion}
        else:
            stats_ = {"AIC": self.aic, "BIC": self.bic, "logLik": self.loglik, "deviance": self.deviance,
                      "df.resid": float(self.df_resid)}
        rows = self.layout.summary_rows(self.theta, self.sigma)
        re_table = random_effects_table(rows, residual_sd=self.sigma)
        fe = pd.DataFrame({"Estimate": self.fixef, "Std. Error": self.se, "t value": self.fixef / self.se})
        C = self.vcov.to_numpy() / np.outer(self.se, self.se)
        notes = []
        if self.model.dropped_columns:
            notes.append("fixed-effect model matrix is rank deficient so dropping "
                         f"{len(self.model.dropped_columns)} column(s): {', '.join(self.model.dropped_columns)}")
        if self.singular:
            notes.append("boundary (singular) fit: a variance is estimated as zero (or a correlation as +-1)")
        if not self.converged:
            notes.append("convergence warning: " + self.optsum.convergence_message)
        return ModelSummary(
            title=title, fit_statistics=stats_, random_effects=re_table, ngroups=dict(self.ngroups),
            nobs=self.nobs, fixed_effects=fe, residuals=residual_quantiles(self.residuals().to_numpy() / self.sigma),
            correlation=pd.DataFrame(C, index=self.fixef.index, columns=self.fixef.index), notes=notes,
        )

    def __repr__(self) -> str:
        kind = "REML" if self.reml else "ML"
        crit = "REML criterion" if self.reml else "deviance"
        return (f"<LinearMixedModel {self.formula!r} fit by {kind}: {crit} {self.deviance:.4f}, "
                f"sigma {self.sigma:.4g}, {self.nobs} obs>")


def lmer(formula: str, data: pd.DataFrame, reml: bool = True, *, start: np.ndarray | None = None,
         weights: str | np.ndarray | None = None, offset: str | np.ndarray | None = None,
         client=None, verbose: bool = True) -> LinearMixedModel:
    """Fit a linear mixed model by REML (default) or maximum likelihood.

    Parameters
    ----------
    formula : str
        lme4 syntax: ``"Reaction ~ Days + (Days | Subject)"``, ``"y ~ x + (1 | a) + (1 | b)"``,
        ``"y ~ 1 + (1 | a/b)"``, ``"y ~ x + (x || g)"``...
    data : DataFrame or dask.dataframe.DataFrame
        Not modified. Rows with missing values in the used columns are dropped with a warning.
        A Dask frame is fitted out of core on a ``dask.distributed`` cluster
        (:func:`mixedmodels.distributed_lmm.lmer_dask`; one grouping factor, any number of
        random-effect columns; ``weights`` and ``offset`` as column names).
    reml : bool
        REML (True, lme4's default) or ML.
    start : array, optional
        Starting theta (default: with one grouping factor a method-of-moments estimate,
        otherwise 1 on diagonals and 0 elsewhere, as lme4; see
        :func:`~mixedmodels.lmm.optimize_theta`).
    weights : str or array-like, optional
        Precision weights (a column name or one value per row of ``data``, all positive):
        row ``i``'s residual variance is ``sigma^2 / w_i``, e.g. ``w_i`` observations averaged
        into the row (see :mod:`mixedmodels.weights`).
    offset : str or array-like, optional
        A known term added to the linear predictor (a column name or one value per row),
        besides any ``offset(...)`` in the formula (see :mod:`mixedmodels.offsets`).
    client : dask.distributed.Client or str, optional
        For a Dask frame: the cluster (default: the current client, else a local one; see
        :func:`mixedmodels.distributed.get_client`). Ignored for a pandas frame.
    verbose : bool
        For a Dask frame: a progress bar over objective evaluations.

    Returns
    -------
    LinearMixedModel
        For a Dask frame, a :class:`mixedmodels.distributed_lmm.DaskLinearMixedModel`.

    Raises
    ------
    ValueError
        For bad input: a missing column, an unreadable formula, a non-numeric response, a
        grouping factor with one level or as many levels as observations, more random effects
        than observations, a model without random effects.
    """
    if not isinstance(reml, (bool, np.bool_)):
        raise ValueError(f"reml must be True or False, got {reml!r}")
    if data.__class__.__module__.startswith("dask"):
        from .distributed_lmm import lmer_dask

        fit = lmer_dask(formula, data, bool(reml), start=start, weights=weights, offset=offset,
                        client=client, verbose=verbose)
        fit.call = {"fitter": "lmer", "args": {"formula": formula, "data": data, "reml": reml,
                                               "weights": weights, "offset": offset}}
        return fit
    _validate.check_dataframe(data, allow_empty=False)
    # Per-row arguments: a Series is matched by index; a row missing one is dropped (warned).
    w_rows, o_rows = row_argument(weights, data, "weights"), row_argument(offset, data, "offset")
    # Model building warns (rows dropped for missing values...): at the caller's line.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = build_model(formula, data, row_arguments={"weights": w_rows, "offset": o_rows})
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    model = attach_weights(attach_offset(model, offset if isinstance(offset, str) or o_rows is None
                                         else o_rows.to_numpy(), data),
                           weights if isinstance(weights, str) or w_rows is None else w_rows.to_numpy(), data)
    _validate.check_lmm_structure(model)
    with single_thread_blas():
        problem = LMMProblem(model, reml=bool(reml))
        if start is not None:
            start = _validate.check_theta(start, problem.ntheta, problem.lower, "start")
        optsum = _optimize_in_scaled_units(model, problem, start)
        fit = LinearMixedModel(model, problem, optsum)
    # The call, for update() and anova()'s ML refits (R keeps it as fit@call).
    fit.call = {"fitter": "lmer", "args": {"formula": formula, "data": data, "reml": reml,
                                           "weights": weights, "offset": offset}}
    if fit.components.pwrss <= 1.01 * EXACT_FIT_FLOOR * problem.ARR[-1, -1]:
        warnings.warn(f"the response {model.parsed.lhs!r} is fitted exactly: the residual standard deviation "
                      f"is ~0 ({fit.sigma:.2g}), so the standard errors and the likelihood are meaningless "
                      "(lme4 reports the same kind of fit)", UserWarning, stacklevel=2)
    if fit.singular:
        warnings.warn("boundary (singular) fit: a variance component is estimated as zero", UserWarning, stacklevel=2)
    if not fit.converged:
        warnings.warn("the model " + optsum.convergence_message, ConvergenceWarning, stacklevel=2)
    return fit
