"""Adaptive Gauss-Hermite quadrature for a vector random effect per group.

Model, for group ``i`` and its rows ``j``, with ``k <= 3`` random-effect columns ``z_ij``::

    eta_ij = x_ij' beta + offset_ij + z_ij' T u_i,      u_i ~ N(0, I_k),

where ``T`` is the lower-triangular ``k x k`` factor of the random effects' covariance
``Sigma = T T'`` (lme4's ``Lambda`` block for one level; diagonal for a ``||`` term). Given
``u`` the groups are independent, so the marginal log-likelihood is a sum of ``k``-dimensional
integrals, one per group::

    log L_i = log integral exp(g_i(u)) du,
    g_i(u)  = sum_j l_ij(eta_ij(u)) - |u|^2 / 2 - (k / 2) log(2 pi).

Adaptive quadrature (Pinheiro and Bates 1995; Rizopoulos's GLMMadaptive) centres a
tensor-product Gauss-Hermite rule on each group's conditional mode ``u_hat`` and scales it by
the Cholesky factor ``R`` of the conditional curvature ``H = R R' = I + T' Z_i' W Z_i T``:
``u = u_hat + R^-T z`` with ``z`` the nodes of the standard rule, so that::

    log L_i ~= -log det R + log sum_K w_K exp(g_i(u_hat + R^-T z_K) + |z_K|^2 / 2) (2 pi)^(k/2).

With one point per dimension this is the Laplace approximation, ``sum l - |u_hat|^2/2 -
log det R``, exactly. As in the scalar kernel (:mod:`mixedmodels.agq`) the weights ``W`` in
``H`` are the expected information (lme4's choice) while the mode moves with the observed
one; for the canonical links the two agree.

The same pure-function shape as the scalar kernel: :func:`agq_vector_chunk` takes the
parameters and a chunk of whole groups and returns sums (:class:`VectorChunkResult`, added
with ``+``), so chunks can run in memory, in slices, or on Dask partitions. The gradient is
analytic and exact for the quadrature approximation *including* the motion of the nodes with
the parameters (through ``u_hat`` and ``R``), which lets a coarse rule's optimum be found to
the optimizer's precision. The kernel works with ``T`` itself; the map from lme4's ``theta``
to ``T`` (and of the gradient back) belongs to the objective (:class:`VectorObjective`).

Derivation of the gradient (per group; ``a_j = T' z_j``, ``d1, d2`` the row derivatives at
the mode, ``w`` the weight in ``H``, ``w'`` its derivative in ``eta``, ``pi_K`` the normalized
node contributions, ``g_u`` the gradient of ``g`` in ``u``)::

    d log L = -1/2 <dH, H^-1> + sum_K pi_K [dg(u_K)|_u + g_u(u_K)' (du_hat - R^-T Phi(M)' z_K)]

with ``M = R^-1 dH R^-T`` and ``Phi`` the lower triangle with half the diagonal (the
derivative of a Cholesky factor). Collecting terms gives ``<dH, P>`` with
``P = -H^-1/2 - R^-T D R^-1`` (``D`` from ``S = R^-1 sum_K pi_K g_u(u_K) z_K'``), a mode term
``(A + B)' du_hat`` solved once per group (``H_obs lam = A + B``), and the direct term.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

from .families import Family
from .quadrature import gauss_hermite

__all__ = ["VectorChunk", "VectorChunkResult", "make_vector_chunks", "product_rule",
           "vector_modes", "agq_vector_chunk", "VectorObjective", "MAX_COLUMNS",
           "vector_agq_applies", "auto_ladder", "check_points", "AUTO_LADDER_VECTOR"]

#: Largest number of random-effect columns per group the kernel accepts (its cost grows as
#: ``nagq ** k``).
MAX_COLUMNS = 3
_LOG_2PI = np.log(2.0 * np.pi)
#: Tensor-product nodes whose standard-normal weight is below ``exp(-PRUNE)`` times the largest
#: are dropped (the corners of the square hold far less mass than the double-precision error).
PRUNE = 40.0


# =========================================================================================
# The rule
# =========================================================================================


@lru_cache(maxsize=64)
def product_rule(nagq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Tensor-product Gauss-Hermite rule in ``k`` dimensions, for adaptive quadrature.

    Parameters
    ----------
    nagq : int
        Points per dimension (1 gives the single node 0: the Laplace approximation).
    k : int
        Dimension, 1 to :data:`MAX_COLUMNS`.

    Returns
    -------
    z : ndarray (K, k)
        Nodes of the standard rule (``K <= nagq ** k``).
    logw : ndarray (K,)
        Log-weights for a plain integral, ``integral f(z) dz ~= sum exp(logw_K) f(z_K)``
        (each is the sum of the one-dimensional ``logw_adapt``). Nodes whose standard-normal
        weight is below ``exp(-PRUNE)`` times the largest are left out. Read-only.
    """
    rule = gauss_hermite(int(nagq))
    keep = np.isfinite(rule.logw)
    z1, lw1, lwa1 = rule.z[keep], rule.logw[keep], rule.logw_adapt[keep]
    idx = np.array(list(itertools.product(range(len(z1)), repeat=k)), dtype=int).reshape(-1, k)
    z = z1[idx]
    lw = lw1[idx].sum(axis=1)
    logw = lwa1[idx].sum(axis=1)
    sel = lw >= lw.max() - PRUNE
    z, logw = np.ascontiguousarray(z[sel]), np.ascontiguousarray(logw[sel])
    z.setflags(write=False)
    logw.setflags(write=False)
    return z, logw


# =========================================================================================
# Chunks of whole groups
# =========================================================================================


@dataclass(frozen=True)
class VectorChunk:
    """Rows of whole groups, sorted by group.

    Attributes
    ----------
    X : ndarray (n, p)
        Fixed-effects design.
    Z : ndarray (n, k)
        Random-effect columns of each row.
    y, m, offset, const : ndarray (n,)
        Response (mean scale), prior weights / trials, offset, and the family's log-constant
        of each row.
    starts : ndarray (G,)
        Index of each group's first row.
    gidx : ndarray (n,)
        Group of each row, ``0..G-1`` within the chunk.
    indicator : scipy.sparse.csr_matrix (G, n)
        Group-membership matrix (group sums are products with it).
    """

    X: np.ndarray
    Z: np.ndarray
    y: np.ndarray
    m: np.ndarray
    offset: np.ndarray
    const: np.ndarray
    starts: np.ndarray
    gidx: np.ndarray
    indicator: sp.csr_matrix

    @property
    def ngroups(self) -> int:
        return len(self.starts)

    @property
    def k(self) -> int:
        return self.Z.shape[1]

    def group_sum(self, a: np.ndarray) -> np.ndarray:
        """Sum the rows of ``a`` (n, ...) within groups: (G, ...)."""
        shape = a.shape
        out = self.indicator @ a.reshape(shape[0], -1)
        return np.asarray(out).reshape((self.ngroups,) + shape[1:])


def make_vector_chunks(X, Z, y, m, offset, const, group_codes, ngroups: int,
                       max_rows: int = 200_000) -> tuple[list[VectorChunk], np.ndarray]:
    """Sort rows by group and cut them into chunks of whole groups.

    Parameters
    ----------
    X : ndarray (n, p)
    Z : ndarray (n, k)
    y, m, offset, const : ndarray (n,)
        Per-row inputs in the user's row order.
    group_codes : ndarray of int (n,)
        Group of each row, ``0..ngroups-1``; every group must have at least one row.
    ngroups : int
    max_rows : int
        Upper bound on rows per chunk (a single larger group is kept whole): the kernel holds
        a few ``rows x nodes`` arrays, so this bounds peak memory.

    Returns
    -------
    chunks : list of VectorChunk
    order : ndarray (n,)
        The row permutation used (``rows_sorted = rows[order]``).

    Raises
    ------
    ValueError
        A group without rows.
    """
    codes = np.asarray(group_codes)
    order = np.argsort(codes, kind="stable")
    counts = np.bincount(codes, minlength=ngroups)
    if np.any(counts == 0):
        raise ValueError("every group must have at least one row")
    gstarts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ends = gstarts + counts
    Xs, Zs, ys, ms, os_, cs = (np.ascontiguousarray(np.asarray(a, dtype=float)[order])
                               for a in (X, Z, y, m, offset, const))
    chunks: list[VectorChunk] = []
    first = 0
    while first < ngroups:
        limit = gstarts[first] + max_rows
        last = max(int(np.searchsorted(ends, limit, side="right")) - 1, first)
        r0, r1 = gstarts[first], ends[last]
        starts = gstarts[first:last + 1] - r0
        ng, nr = last + 1 - first, r1 - r0
        gidx = np.repeat(np.arange(ng), counts[first:last + 1])
        ind = sp.csr_matrix((np.ones(nr), np.arange(nr), np.r_[starts, nr]), shape=(ng, nr))
        chunks.append(VectorChunk(Xs[r0:r1], Zs[r0:r1], ys[r0:r1], ms[r0:r1], os_[r0:r1],
                                  cs[r0:r1], starts, gidx, ind))
        first = last + 1
    return chunks, order


# =========================================================================================
# The kernel
# =========================================================================================


@dataclass
class VectorChunkResult:
    """Sums over a chunk's groups (add the results of chunks with ``+``).

    Attributes
    ----------
    loglik : float
        Sum of the groups' log marginal likelihoods (quadrature approximation).
    grad_beta : ndarray (p,) or None
        Gradient in ``beta``.
    grad_T : ndarray (k, k) or None
        Gradient in the entries of ``T`` (only the lower triangle is meaningful).
    u_hat : ndarray (G, k)
        Conditional modes of the spherical random effects ``u``.
    Hinv : ndarray (G, k, k)
        Inverse conditional curvature ``H^-1`` at the modes (the conditional covariance of
        ``u`` in the Laplace approximation).
    loglik_groups : ndarray (G,)
    newton_iters : int
        Largest number of Newton iterations of any group.
    scores_beta, scores_T : ndarray (G, p) and (G, k, k) or None
        Per-group gradients (for BHHH), when asked for.
    """

    loglik: float
    grad_beta: np.ndarray | None
    grad_T: np.ndarray | None
    u_hat: np.ndarray
    Hinv: np.ndarray
    loglik_groups: np.ndarray
    newton_iters: int = 0
    scores_beta: np.ndarray | None = None
    scores_T: np.ndarray | None = None

    def __add__(self, other: "VectorChunkResult") -> "VectorChunkResult":
        def add(a, b):
            return None if a is None or b is None else a + b

        def cat(a, b):
            return None if a is None or b is None else np.concatenate([a, b])

        return VectorChunkResult(
            self.loglik + other.loglik, add(self.grad_beta, other.grad_beta),
            add(self.grad_T, other.grad_T), np.concatenate([self.u_hat, other.u_hat]),
            np.concatenate([self.Hinv, other.Hinv]),
            np.concatenate([self.loglik_groups, other.loglik_groups]),
            max(self.newton_iters, other.newton_iters),
            cat(self.scores_beta, other.scores_beta), cat(self.scores_T, other.scores_T))


def _outer_rows(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Row-wise outer products: (n, k), (n, l) -> (n, k, l)."""
    return A[:, :, None] * B[:, None, :]


def _group_objective(eta0, ZT, u, chunk: VectorChunk, family: Family) -> np.ndarray:
    """``g_i(u_i)`` up to its constant, per group."""
    eta = eta0 + np.einsum("nk,nk->n", ZT, u[chunk.gidx])
    ll = family.loglik_rows(eta, chunk.y, chunk.m, chunk.const)
    return chunk.group_sum(ll) - 0.5 * np.einsum("gk,gk->g", u, u)


def vector_modes(eta0: np.ndarray, T: np.ndarray, chunk: VectorChunk, family: Family,
                 u0: np.ndarray | None = None, tol: float = 1e-10, maxiter: int = 100
                 ) -> tuple[np.ndarray, int]:
    """Conditional modes of ``u`` for every group of a chunk, by damped Newton steps.

    ``g_i`` is strictly concave (every implemented family and link has a row log-likelihood
    concave in ``eta``, and the prior adds ``-|u|^2/2``), so Newton steps halved until ``g_i``
    does not fall converge from any start; groups are iterated together, each with its own
    step length.

    Parameters
    ----------
    eta0 : ndarray (n,)
        Fixed part of the linear predictor (``X beta + offset``).
    T : ndarray (k, k)
        Lower-triangular covariance factor.
    chunk : VectorChunk
    family : Family
    u0 : ndarray (G, k), optional
        Warm start.
    tol : float
        Convergence tolerance on the step, relative to ``1 + |u|``.
    maxiter : int

    Returns
    -------
    u_hat : ndarray (G, k)
    iterations : int
    """
    G, k = chunk.ngroups, chunk.k
    u = np.zeros((G, k)) if u0 is None else np.array(u0, dtype=float, copy=True)
    ZT = chunk.Z @ T
    eye = np.eye(k)
    f = _group_objective(eta0, ZT, u, chunk, family)
    for it in range(1, maxiter + 1):
        eta = eta0 + np.einsum("nk,nk->n", ZT, u[chunk.gidx])
        d1, d2 = family.derivs(eta, chunk.y, chunk.m, order=2)
        grad = chunk.group_sum(ZT * d1[:, None]) - u
        H = chunk.group_sum(_outer_rows(ZT, ZT * (-d2)[:, None])) + eye
        step = np.linalg.solve(H, grad[:, :, None])[:, :, 0]
        t = np.ones(G)
        for _ in range(60):
            un = u + t[:, None] * step
            fn = _group_objective(eta0, ZT, un, chunk, family)
            bad = ~(fn >= f - 1e-12 * (1.0 + np.abs(f)))
            if not np.any(bad):
                break
            t = np.where(bad, 0.5 * t, t)
        u, f = un, fn
        if np.all(np.abs(t[:, None] * step) <= tol * (1.0 + np.abs(u))):
            return u, it
    return u, maxiter


def agq_vector_chunk(beta: np.ndarray, T: np.ndarray, chunk: VectorChunk, family: Family,
                     nagq: int, u0: np.ndarray | None = None, gradient: bool = True,
                     scores: bool = False) -> VectorChunkResult:
    """Log marginal likelihood (and its gradient) of a chunk of whole groups.

    A pure function of ``(beta, T)`` and the chunk (``u0`` only warm-starts the Newton
    iteration for the modes and changes nothing beyond its tolerance).

    Parameters
    ----------
    beta : ndarray (p,)
        Fixed effects.
    T : ndarray (k, k)
        Lower-triangular factor of the random effects' covariance (``Sigma = T T'``); zeros
        above the diagonal, and wherever two columns are uncorrelated (``||``).
    chunk : VectorChunk
    family : Family
    nagq : int
        Gauss-Hermite points per dimension (1 = Laplace); ``nagq ** k`` nodes per group before
        pruning.
    u0 : ndarray (G, k), optional
        Starting values of the modes.
    gradient : bool
        Also return the gradient in ``beta`` and in ``T``.
    scores : bool
        Also return the per-group gradients (needs ``gradient``).

    Returns
    -------
    VectorChunkResult
    """
    beta = np.asarray(beta, dtype=float)
    T = np.asarray(T, dtype=float)
    k = chunk.k
    X, Z, y, m, gi = chunk.X, chunk.Z, chunk.y, chunk.m, chunk.gidx
    G = chunk.ngroups
    eye = np.eye(k)
    eta0 = X @ beta + chunk.offset
    u_hat, iters = vector_modes(eta0, T, chunk, family, u0)
    ZT = Z @ T                                              # rows a_j' = z_j' T
    eta_hat = eta0 + np.einsum("nk,nk->n", ZT, u_hat[gi])
    d1, d2, d3 = family.derivs(eta_hat, y, m, order=3)
    if family.canonical:
        e2, e3 = d2, d3
    else:
        e2, e3 = family.info_derivs(eta_hat, y, m)
    w, wp = -e2, -e3                                        # weight in H and d w / d eta
    H = chunk.group_sum(_outer_rows(ZT, ZT * w[:, None])) + eye
    R = np.linalg.cholesky(H)                               # (G, k, k), lower
    Rinv = np.linalg.inv(R)
    RtInv = np.swapaxes(Rinv, 1, 2)                         # R^-T
    Hinv = RtInv @ Rinv

    znodes, logw = product_rule(int(nagq), k)               # (K, k), (K,)
    # u_K = u_hat + R^-T z_K, so eta_jK = eta_hat_j + (R^-1 a_j)' z_K.
    b = np.einsum("nab,nb->na", Rinv[gi], ZT)               # (n, k)
    eta_k = b @ znodes.T
    eta_k += eta_hat[:, None]                               # (n, K)
    if gradient:
        ll_k, d1_k = family.loglik_d1(eta_k, y[:, None], m[:, None], chunk.const[:, None])
    else:
        ll_k = family.loglik_rows(eta_k, y[:, None], m[:, None], chunk.const[:, None])
    del eta_k
    # |u_K|^2 = |u_hat|^2 + 2 (R^-1 u_hat)' z_K + z_K' R^-1 R^-T z_K, as (G, K) matrix
    # products (no (G, K, k) array of nodes).
    zz = (znodes[:, :, None] * znodes[:, None, :]).reshape(len(logw), -1)  # (K, k*k)
    usq = (np.einsum("gk,gk->g", u_hat, u_hat)[:, None]
           + 2.0 * np.einsum("gab,gb->ga", Rinv, u_hat) @ znodes.T
           + (Rinv @ RtInv).reshape(G, -1) @ zz.T)
    gk = chunk.group_sum(ll_k) - 0.5 * usq - 0.5 * k * _LOG_2PI
    del ll_k
    a = logw[None, :] + gk
    amax = np.max(a, axis=1)
    lse = amax + np.log(np.sum(np.exp(a - amax[:, None]), axis=1))
    logdetR = np.sum(np.log(np.diagonal(R, axis1=1, axis2=2)), axis=1)
    ll_groups = lse - logdetR
    loglik = float(ll_groups.sum())
    if not gradient:
        return VectorChunkResult(loglik, None, None, u_hat, Hinv, ll_groups, iters)

    pi = np.exp(a - lse[:, None])                           # (G, K), rows sum to 1
    d1_k *= pi[gi]                                          # pi_K d1_jK
    c = d1_k.sum(axis=1)                                    # (n,)
    e = d1_k @ znodes                                       # (n, k): sum_K pi d1 z_K
    del d1_k
    zbar = pi @ znodes                                      # (G, k)
    ZZ = (pi @ zz).reshape(G, k, k)
    sz_c = chunk.group_sum(Z * c[:, None])                  # sum_j z_j c_j
    ZE = chunk.group_sum(_outer_rows(Z, e))                 # sum_j z_j e_j'
    # A = sum_K pi_K g_u(u_K);  Gm = sum_K pi_K g_u(u_K) z_K'.
    A = sz_c @ T - u_hat - np.einsum("gab,gb->ga", RtInv, zbar)
    Gm = np.einsum("ba,gbc->gac", T, ZE) - u_hat[:, :, None] * zbar[:, None, :] - RtInv @ ZZ
    S = Rinv @ Gm
    Bm = np.swapaxes(S, 1, 2)
    low = np.tril(Bm, -1)
    D = 0.5 * (low + np.swapaxes(low, 1, 2)
               + np.einsum("gaa->ga", Bm)[:, :, None] * eye[None, :, :])
    P = -0.5 * Hinv - RtInv @ D @ Rinv                      # d log L = <dH, P> + ...
    Pg = P[gi]
    q = wp * np.einsum("na,nab,nb->n", ZT, Pg, ZT)          # w'_j a_j' P a_j
    Bv = chunk.group_sum(ZT * q[:, None])
    Hobs = chunk.group_sum(_outer_rows(ZT, ZT * (-d2)[:, None])) + eye
    lam = np.linalg.solve(Hobs, (A + Bv)[:, :, None])[:, :, 0]
    lam_a = np.einsum("na,na->n", ZT, lam[gi])
    r = c + d2 * lam_a + q                                  # d log L / d eta0, per row
    g_beta = X.T @ r
    # T entries: direct term, mode term and the terms of H (see the module docstring).
    s1 = chunk.group_sum(Z * d1[:, None])
    hv = chunk.group_sum(Z * (d2 * lam_a + q)[:, None])
    N = chunk.group_sum(_outer_rows(ZT * w[:, None], Z))    # sum_j w_j a_j z_j'
    gT = (ZE @ Rinv + sz_c[:, :, None] * u_hat[:, None, :]
          + s1[:, :, None] * lam[:, None, :]
          + hv[:, :, None] * u_hat[:, None, :]
          + 2.0 * np.swapaxes(P @ N, 1, 2))
    grad_T = gT.sum(axis=0)
    sb = sT = None
    if scores:
        sb = chunk.group_sum(X * r[:, None])
        sT = gT
    return VectorChunkResult(loglik, g_beta, grad_T, u_hat, Hinv, ll_groups, iters, sb, sT)


# =========================================================================================
# The objective
# =========================================================================================


def vector_agq_applies(reterms) -> bool:
    """Whether adaptive quadrature with :func:`agq_vector_chunk` fits these random effects.

    True for terms that all share one grouping factor with at most :data:`MAX_COLUMNS`
    columns in total and more than one column (``(x | g)``, ``(x || g)``,
    ``(1 | g) + (0 + x | g)``); a single scalar term is the scalar kernel's.
    """
    if not reterms:
        return False
    same = all(t.group == reterms[0].group and np.array_equal(t.codes, reterms[0].codes)
               for t in reterms)
    k = sum(t.k for t in reterms)
    return same and 1 < k <= MAX_COLUMNS


#: Rows x nodes held at once by one kernel call (bounds peak memory at a few hundred MB).
_CELLS = 3_000_000


class VectorObjective:
    """Log-likelihood of a model with one grouping factor and 2-3 random effects, by AGQ.

    Parameters are ``(beta, theta)``, ``theta`` in lme4's layout
    (:class:`~mixedmodels.covariance.CovarianceLayout`): each term's lower-triangular
    factor, column-wise (a ``||`` term's pieces are separate terms; a factor's block is one
    correlated term, as lme4's). The terms are
    stacked into one ``k x k`` block ``T`` per group. Same interface as the scalar objective:
    :meth:`evaluate`, :meth:`modes`, :meth:`lower`, :meth:`reset`.

    Parameters
    ----------
    frame : GlmerFrame
        The model frame (``ms.reterms`` must pass :func:`vector_agq_applies`).
    nagq : int
        Gauss-Hermite points per dimension.
    """

    def __init__(self, frame, nagq: int):
        ms = frame.ms
        terms = list(ms.reterms)
        if not vector_agq_applies(terms):
            raise ValueError("VectorObjective needs one grouping factor with 2 to "
                             f"{MAX_COLUMNS} random-effect columns")
        self.frame, self.family, self.nagq = frame, frame.family, int(nagq)
        self.terms = terms
        self.p = ms.p
        self.k = sum(t.k for t in terms)
        col0 = np.cumsum([0] + [t.k for t in terms])[:-1]
        # theta's layout (lme4's order) from its one owner, mixedmodels.covariance; each theta
        # entry's place in the stacked k x k factor of the one grouping factor.
        self.layout = frame.layout
        self._rows, self._cols = self.layout.stacked_index()
        self._col0 = col0
        self.ntheta = self.layout.ntheta
        self.nparams = self.p + self.ntheta
        self.ngroups = terms[0].nlevels
        n = frame.n
        offset = getattr(frame, "offset", None)
        if offset is None:
            offset = getattr(ms, "offset", None)
        self._data = (ms.X, np.column_stack([t.Z for t in terms]), frame.y, frame.m,
                      np.zeros(n) if offset is None else np.asarray(offset, dtype=float),
                      frame.const, terms[0].codes)
        self._chunks: dict[int, tuple[list[VectorChunk], np.ndarray]] = {}
        self._warm: np.ndarray | None = None
        self.nevals = 0
        self.last: VectorChunkResult | None = None

    # ---- layout ---------------------------------------------------------------------------
    def T(self, theta: np.ndarray) -> np.ndarray:
        """The stacked ``k x k`` factor from ``theta``."""
        T = np.zeros((self.k, self.k))
        T[self._rows, self._cols] = theta
        return T

    def lower(self) -> np.ndarray:
        """Lower bounds of ``(beta, theta)`` (0 for the factors' diagonals)."""
        return np.concatenate([np.full(self.p, -np.inf), self.layout.lower])

    def reset(self) -> None:
        """Forget the warm starts (after a failed evaluation)."""
        self._warm = None

    def _chunking(self, nagq: int) -> tuple[list[VectorChunk], np.ndarray]:
        K = len(product_rule(nagq, self.k)[1])
        # Round the chunk size to a power of two so that nearby rules share one chunking.
        max_rows = int(2 ** np.floor(np.log2(max(_CELLS // K, 256))))
        if max_rows not in self._chunks:
            X, Z, y, m, off, c, codes = self._data
            chunks, _ = make_vector_chunks(X, Z, y, m, off, c, codes, self.ngroups, max_rows)
            bounds = np.cumsum([0] + [ch.ngroups for ch in chunks])
            self._chunks[max_rows] = (chunks, bounds)
        return self._chunks[max_rows]

    # ---- evaluation -----------------------------------------------------------------------
    def evaluate(self, params: np.ndarray, gradient: bool = True, nagq: int | None = None,
                 keep: bool = True, opg: bool = False):
        """Log-likelihood (and gradient in ``(beta, theta)``) at ``params``.

        Returns ``(loglik, grad)`` (``grad`` None without ``gradient``), or
        ``(loglik, grad, opg)`` with ``opg`` the summed outer products of the groups' scores.
        """
        params = np.asarray(params, dtype=float)
        beta, theta = params[:self.p], params[self.p:]
        T = self.T(theta)
        nq = int(nagq or self.nagq)
        chunks, bounds = self._chunking(nq)
        total = None
        for i, ch in enumerate(chunks):
            u0 = None if self._warm is None else self._warm[bounds[i]:bounds[i + 1]]
            r = agq_vector_chunk(beta, T, ch, self.family, nq, u0=u0,
                                 gradient=gradient or opg, scores=opg)
            total = r if total is None else total + r
        self.nevals += 1
        if keep:
            if np.all(np.isfinite(total.u_hat)):
                self._warm = total.u_hat
            self.last = total
        if not (gradient or opg):
            return total.loglik, None
        grad = np.concatenate([total.grad_beta, total.grad_T[self._rows, self._cols]])
        if opg:
            S = np.column_stack([total.scores_beta, total.scores_T[:, self._rows, self._cols]])
            return total.loglik, grad, S.T @ S
        return total.loglik, grad

    def modes(self, params: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per term: conditional modes ``b = T u_hat`` (levels x k) and their conditional SDs
        (from ``T H^-1 T'``, the Laplace approximation's conditional covariance)."""
        self.evaluate(params, gradient=False)
        r = self.last
        T = self.T(np.asarray(params, dtype=float)[self.p:])
        B = r.u_hat @ T.T
        V = np.einsum("ab,gbc,dc->gad", T, r.Hinv, T)
        sd = np.sqrt(np.maximum(np.einsum("gaa->ga", V), 0.0))
        out = []
        for ti, t in enumerate(self.terms):
            c0 = self._col0[ti]
            out.append((B[:, c0:c0 + t.k], sd[:, c0:c0 + t.k]))
        return out


#: ``nagq="auto"`` for vector models climbs these rules (points per dimension), as the scalar
#: ladder does, stopping when two successive rules agree; fewer rungs in 3 dimensions, where a
#: rule costs ``nagq ** 3`` nodes.
AUTO_LADDER_VECTOR = {2: (5, 9, 17, 33, 65, 129), 3: (5, 9, 17)}
#: Largest rule used to check a fit's quadrature (doubling its points), per dimension.
CHECK_MAX = {2: 258, 3: 24}


def auto_ladder(reterms) -> tuple[int, ...]:
    """The rules ``nagq="auto"`` climbs for a vector model (see :data:`AUTO_LADDER_VECTOR`)."""
    return AUTO_LADDER_VECTOR[sum(t.k for t in reterms)]


def check_points(nagq: int, reterms) -> int:
    """Points per dimension for the check of a vector fit's rule: twice its own (at least 10
    in 2-D, 8 in 3-D, so that a Laplace fit is checked against a real rule), at most
    :data:`CHECK_MAX`."""
    k = sum(t.k for t in reterms)
    return int(min(max(2 * int(nagq), 10 if k == 2 else 8), CHECK_MAX[k]))
