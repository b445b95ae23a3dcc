"""The scalar-random-effect kernel: exact-constant adaptive Gauss-Hermite quadrature.

Model, for group ``i`` and its rows ``j``::

    eta_ij = x_ij' beta + offset_ij + sigma * z_ij * u_i,      u_i ~ N(0, 1),

with one scalar random-effect term (``z = 1`` for a random intercept). Given ``u`` the
groups are independent, so the marginal log-likelihood is a sum of one-dimensional
integrals, one per group::

    log L_i = log integral exp(g_i(u)) du,   g_i(u) = sum_j l_ij(eta_ij(u)) + log phi(u).

Adaptive quadrature centres the rule on each group's mode ``u_hat`` and scales it by
``s = (-g''(u_hat))^(-1/2)``; with one point it is the Laplace approximation.

Everything the optimizer needs is a **sum over groups**, so :func:`agq_chunk` is a pure
function of the parameters and a chunk of whole groups: the same call runs on one array in
memory, on slices of it (to bound memory), or on the partitions of a Dask frame, and the
results are added (:meth:`ChunkResult.__add__`). The gradient is analytic and exact for the
quadrature approximation *including* the motion of the nodes with the parameters (through
``u_hat`` and ``s``; this needs the third derivative of the row log-likelihood), which is what
lets the optimizer land on the same optimum as lme4 when the rule is coarse.

The scale ``s`` is lme4's: from the expected (Fisher) information of the rows at the mode,
``h = 1 - sigma^2 sum z^2 e2`` (:meth:`Family.info_derivs`), which for a canonical link is the
curvature ``-g''(u_hat)`` itself. For probit and cloglog the two differ, so the kernel keeps
both: the true curvature ``h_obs`` moves the mode (implicit differentiation of
``g'(u_hat) = 0``), the expected one ``h`` sets the nodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import scipy.sparse as sp

from .families import Family
from .quadrature import gauss_hermite

__all__ = ["GroupChunk", "ChunkResult", "make_chunks", "conditional_modes", "agq_chunk",
           "choose_rule", "GroupRules", "POINTS_LADDER", "POINTS_TOL"]

#: Numbers of trapezoid points :func:`choose_rule` tries, in order (each group gets the first
#: that has converged).
POINTS_LADDER = (17, 21, 25, 33, 41, 49, 65, 81, 97, 129, 161, 193, 257, 385, 513)
#: Half-widths :func:`choose_rule` tries for a group's range, in units of its Laplace scale.
SPANS = (3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 14.0, 16.0, 20.0, 24.0, 32.0,
         48.0, 64.0, 96.0, 128.0, 192.0, 256.0)
#: A group's range ends where its log-integrand has fallen this far below its mode (the tail
#: beyond is below exp(-24) times the span, ~1e-10 of the integral at most).
TAIL_CUT = 24.0
#: Each group's log-integral must be converged to this (absolute; relative for the integral).
POINTS_TOL = 1e-8

_LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)
#: The trapezoid rule's default half-width, in units of the Laplace scale ``s``.
DEFAULT_SPAN = 8.0


@lru_cache(maxsize=64)
def _trapezoid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (equally spaced on [-1, 1]) and log-weights of the ``n``-point trapezoid rule."""
    if n < 2:
        raise ValueError(f"the trapezoid rule needs at least 2 points, got {n}")
    x = np.linspace(-1.0, 1.0, n)
    w = np.full(n, 2.0 / (n - 1))
    w[[0, -1]] *= 0.5
    lw = np.log(w)
    for a in (x, lw):
        a.setflags(write=False)
    return x, lw


@dataclass(frozen=True)
class GroupChunk:
    """Rows of whole groups, sorted by group, with what the kernel needs precomputed.

    Attributes
    ----------
    X : ndarray (n, p)
        Fixed-effects design.
    y, m, z, offset, const : ndarray (n,)
        Response (mean scale), prior weights / trials, random-effect covariate (1 for an
        intercept), offset, and the family's log-constant of each row.
    starts : ndarray (G,)
        Index of each group's first row (for ``np.add.reduceat``).
    gidx : ndarray (n,)
        Group of each row, ``0..G-1`` within the chunk.
    indicator : scipy.sparse.csr_matrix (G, n), optional
        Group-membership matrix (sums rows within groups faster than ``np.add.reduceat``).
    weights : ndarray (G,), optional
        How many times each group counts in the sums (:mod:`mixedmodels.compress`: one
        group stands for all the groups with identical data); ``None`` means once each.
    """

    X: np.ndarray
    y: np.ndarray
    m: np.ndarray
    z: np.ndarray
    offset: np.ndarray
    const: np.ndarray
    starts: np.ndarray
    gidx: np.ndarray
    indicator: sp.csr_matrix | None = None
    weights: np.ndarray | None = None

    @property
    def ngroups(self) -> int:
        return len(self.starts)

    @property
    def nrows(self) -> np.ndarray:
        """Number of rows of each group (G,)."""
        return np.diff(np.r_[self.starts, len(self.y)])

    def subset(self, groups: np.ndarray) -> "GroupChunk":
        """The chunk of the given groups only (``groups``: ascending positions in this chunk).

        Used to evaluate groups with different quadrature rules separately.
        """
        groups = np.asarray(groups, dtype=np.int64)
        cnt = self.nrows[groups]
        first = np.repeat(self.starts[groups], cnt)
        new_starts = np.concatenate([[0], np.cumsum(cnt)[:-1]]).astype(np.int64)
        rows = first + np.arange(len(first)) - np.repeat(new_starts, cnt)
        ng, nr = len(groups), len(rows)
        ind = sp.csr_matrix((np.ones(nr), np.arange(nr), np.r_[new_starts, nr]), shape=(ng, nr))
        w = None if self.weights is None else self.weights[groups]
        return GroupChunk(self.X[rows], self.y[rows], self.m[rows], self.z[rows],
                          self.offset[rows], self.const[rows], new_starts,
                          np.repeat(np.arange(ng), cnt), ind, w)

    def group_sum(self, a: np.ndarray) -> np.ndarray:
        """Sum rows of ``a`` (n,) or (n, K) within groups."""
        if self.indicator is not None:
            # A sparse indicator product is ~9x faster than np.add.reduceat on 2-D arrays.
            return self.indicator @ a
        return np.add.reduceat(a, self.starts, axis=0)


def make_chunks(X, y, m, z, offset, const, group_codes, ngroups, max_rows=400_000,
                group_weights=None) -> tuple[list[GroupChunk], np.ndarray]:
    """Sort rows by group and cut them into chunks of whole groups.

    Parameters
    ----------
    X, y, m, z, offset, const : arrays
        Per-row inputs in the user's row order.
    group_codes : ndarray of int
        Group of each row, ``0..ngroups-1``; every group must have at least one row.
    ngroups : int
        Number of groups.
    max_rows : int
        Upper bound on rows per chunk (a single group larger than this is kept whole): the
        kernel holds a few ``rows x nodes`` arrays, so this bounds peak memory.
    group_weights : ndarray (ngroups,), optional
        Each group's weight in the sums (the number of identical groups it stands for, see
        :func:`mixedmodels.compress.group_patterns`); default 1.

    Returns
    -------
    chunks : list of GroupChunk
    order : ndarray
        The row permutation used (``rows_sorted = rows[order]``).
    """
    order = np.argsort(group_codes, kind="stable")
    g = np.asarray(group_codes)[order]
    counts = np.bincount(g, minlength=ngroups)
    if np.any(counts == 0):
        raise ValueError("every group must have at least one row")
    gstarts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    ends = gstarts + counts
    chunks: list[GroupChunk] = []
    first = 0
    Xs, ys, ms, zs, os_, cs = (np.ascontiguousarray(a[order]) for a in (X, y, m, z, offset, const))
    while first < ngroups:
        # Largest last group whose end stays within max_rows of this chunk's start.
        limit = gstarts[first] + max_rows
        last = int(np.searchsorted(ends, limit, side="right")) - 1
        last = max(last, first)
        r0, r1 = gstarts[first], ends[last]
        starts = gstarts[first:last + 1] - r0
        ng = last + 1 - first
        gidx = np.repeat(np.arange(ng), counts[first:last + 1])
        nr = r1 - r0
        ind = sp.csr_matrix((np.ones(nr), np.arange(nr), np.r_[starts, nr]), shape=(ng, nr))
        w = None if group_weights is None else \
            np.asarray(group_weights, dtype=float)[first:last + 1].copy()
        chunks.append(GroupChunk(Xs[r0:r1], ys[r0:r1], ms[r0:r1], zs[r0:r1], os_[r0:r1],
                                 cs[r0:r1], starts, gidx, ind, w))
        first = last + 1
    return chunks, order


@dataclass
class ChunkResult:
    """Sums over a chunk's groups (add results of chunks with ``+``).

    Attributes
    ----------
    loglik : float
        Sum of the groups' log marginal likelihoods (quadrature approximation), each
        weighted by its chunk's ``weights`` when it has them.
    grad : ndarray (p + 1,)
        Its gradient in ``(beta, sigma)``; ``None`` when not asked for.
    u_hat, h : ndarray (G,)
        Conditional modes of ``u`` and the information that scales the nodes per group
        (``-g''(u_hat)`` for a canonical link, its expected version otherwise; concatenated
        in chunk order when results are added).
    loglik_groups : ndarray (G,)
        Per-group log-likelihoods (unweighted: one group's, for a weighted chunk).
    newton_iters : int
        Largest number of Newton iterations any group needed.
    opg : ndarray (p + 1, p + 1) or None
        Sum over groups of the outer products of the groups' score vectors (BHHH's
        approximation of the information), when asked for.
    neg_hessian : ndarray (p + 1, p + 1) or None
        Negative Hessian of the log-likelihood (:func:`_neg_hessian`), when asked for.
    """

    loglik: float
    grad: np.ndarray | None
    u_hat: np.ndarray
    h: np.ndarray
    loglik_groups: np.ndarray
    newton_iters: int = 0
    opg: np.ndarray | None = None
    neg_hessian: np.ndarray | None = None

    def __add__(self, other: "ChunkResult") -> "ChunkResult":
        grad = None if self.grad is None or other.grad is None else self.grad + other.grad
        opg = None if self.opg is None or other.opg is None else self.opg + other.opg
        nh = (None if self.neg_hessian is None or other.neg_hessian is None
              else self.neg_hessian + other.neg_hessian)
        return ChunkResult(self.loglik + other.loglik, grad,
                           np.concatenate([self.u_hat, other.u_hat]),
                           np.concatenate([self.h, other.h]),
                           np.concatenate([self.loglik_groups, other.loglik_groups]),
                           max(self.newton_iters, other.newton_iters), opg, nh)


def conditional_modes(eta_fixed: np.ndarray, sigma: float, chunk: GroupChunk, family: Family,
                      u0: np.ndarray | None = None, tol: float = 1e-10, maxiter: int = 200
                      ) -> tuple[np.ndarray, int]:
    """Maximize each group's ``g_i(u)`` by a safeguarded Newton iteration, all groups at once.

    ``g_i`` is strictly concave (every implemented family and link has a row log-likelihood
    concave in ``eta``), so ``g_i'`` is decreasing and the sign of ``g_i'`` at every iterate
    brackets the mode; a Newton step that leaves the bracket, or lands nowhere (NaN after an
    overflow, possible with cloglog's ``exp(eta)`` far from the mode), is replaced by
    bisection. Lopsided groups (no clicks, large ``sigma``) are the ones that need it. Only
    first and second derivatives are evaluated (one ``expit`` pass per iteration for the
    logit).

    Returns
    -------
    u_hat : ndarray (G,)
    iterations : int
    """
    G = chunk.ngroups
    if sigma == 0.0:
        return np.zeros(G), 0
    u = np.zeros(G) if u0 is None else np.array(u0, dtype=float, copy=True)
    y, m, z, gi = chunk.y, chunk.m, chunk.z, chunk.gidx
    lo = np.full(G, -np.inf)
    hi = np.full(G, np.inf)
    sz = sigma * z
    for it in range(1, maxiter + 1):
        eta = eta_fixed + sz * u[gi]
        d1, d2 = family.derivs(eta, y, m, order=2)
        grad = chunk.group_sum(sz * d1) - u
        hess = chunk.group_sum(sz * sz * d2) - 1.0
        pos = grad > 0
        lo = np.where(pos, np.maximum(lo, u), lo)
        hi = np.where(pos, hi, np.minimum(hi, u))
        u_new = u - grad / hess
        # Bisect only where Newton jumps out of the bracket by more than rounding (at the
        # mode itself the bracket collapses onto u, and a 1e-16 overshoot is no reason).
        slack = tol * (1.0 + np.abs(u))
        # (Written as ~(<=) so that a NaN step also counts as outside.)
        outside = ~((u_new > lo) & (u_new < hi)) & ~(np.abs(u_new - u) <= slack)
        if np.any(outside):
            both = np.isfinite(lo) & np.isfinite(hi)
            u_new = np.where(outside & both, 0.5 * (lo + hi), u_new)
        step = u_new - u
        u = u_new
        if np.all(np.abs(step) <= tol * (1.0 + np.abs(u))):
            return u, it
    return u, maxiter


def agq_chunk(beta: np.ndarray, sigma: float, chunk: GroupChunk, family: Family, nagq: int,
              u0: np.ndarray | None = None, gradient: bool = True, opg: bool = False,
              rule: str = "gh", span: np.ndarray | None = None, shift: np.ndarray | None = None,
              hessian: bool = False) -> ChunkResult:
    """Log marginal likelihood (and gradient) of a chunk of whole groups.

    A pure function of ``(beta, sigma)`` and the chunk (``u0`` only warm-starts the
    Newton iteration and does not change the answer beyond its tolerance).

    Parameters
    ----------
    beta : ndarray (p,)
        Fixed effects.
    sigma : float
        Standard deviation of the random effect (>= 0).
    chunk : GroupChunk
        Whole groups, sorted.
    family : Family
        Family and link.
    nagq : int
        Number of adaptive Gauss-Hermite points (1 = Laplace).
    u0 : ndarray (G,), optional
        Starting values of the conditional modes.
    gradient : bool
        Also return the gradient in ``(beta, sigma)``.
    opg : bool
        Also return the sum of outer products of the per-group scores (needs ``gradient``).
    rule : {"gh", "trapezoid"}
        ``"gh"``: adaptive Gauss-Hermite, nodes ``u_hat + s z_k``. ``"trapezoid"``: the
        trapezoid rule with ``nagq`` equally spaced nodes ``u_hat + s (shift + span x_k)``,
        ``x_k`` in [-1, 1] (see :func:`choose_rule`): it converges geometrically for every
        group, also the lopsided ones (no successes, large ``sigma``) where Gauss-Hermite needs
        hundreds of points, because its error depends only on how far the integrand is from a
        singularity in the complex plane, not on how Gaussian it looks.
    span, shift : ndarray (G,), optional
        Per-group half-width and centre of the trapezoid's range in units of ``s`` (default
        8 and 0); held fixed, like the rule, while the parameters move.
    hessian : bool
        Also return the negative Hessian in ``(beta, sigma)`` (needs ``gradient``), by
        differentiating under the integral (:func:`_neg_hessian`): exact up to the rule's
        quadrature error, so meant for rules that have converged (``nagq="auto"``).

    Returns
    -------
    ChunkResult
    """
    beta = np.asarray(beta, dtype=float)
    sigma = float(sigma)
    X, y, m, z, gi = chunk.X, chunk.y, chunk.m, chunk.z, chunk.gidx
    eta0 = X @ beta + chunk.offset
    u_hat, iters = conditional_modes(eta0, sigma, chunk, family, u0)
    eta_hat = eta0 + sigma * z * u_hat[gi]
    d1, d2, d3 = family.derivs(eta_hat, y, m, order=3)
    T2 = chunk.group_sum(z * z * d2)
    h_obs = 1.0 - sigma * sigma * T2                # -g''(u_hat): moves the mode
    if family.canonical:
        e3, T2e, h = d3, T2, h_obs
    else:
        # lme4 scales the nodes by the expected information (module docstring).
        e2, e3 = family.info_derivs(eta_hat, y, m)
        T2e = chunk.group_sum(z * z * e2)
        h = 1.0 - sigma * sigma * T2e
    s = 1.0 / np.sqrt(h)

    if rule == "gh":
        gh = gauss_hermite(int(nagq))
        keep = np.isfinite(gh.logw_adapt)
        zk, lwk = gh.z[keep], gh.logw_adapt[keep]
        T, c = 1.0, 0.0
        scale, centre = s, u_hat
    elif rule == "trapezoid":
        zk, lwk = _trapezoid(int(nagq))
        T = np.full(len(s), DEFAULT_SPAN) if span is None else np.asarray(span, dtype=float)
        c = np.zeros(len(s)) if shift is None else np.asarray(shift, dtype=float)
        scale, centre = s * T, u_hat + s * c
    else:
        raise ValueError(f"`rule` must be 'gh' or 'trapezoid', got {rule!r}")
    uk = centre[:, None] + scale[:, None] * zk[None, :]                # (G, K)
    # eta at node k = eta_hat + sigma z (centre_i - u_hat_i + scale_i z_k): one outer
    # product, no (n, K) gather.
    eta_k = np.multiply.outer(sigma * z * scale[gi], zk)              # (n, K)
    eta_k += (eta_hat if rule == "gh" else eta_hat + sigma * z * (s * c)[gi])[:, None]
    if gradient:
        ll_k, d1_k = family.loglik_d1(eta_k, y[:, None], m[:, None], chunk.const[:, None])
    else:
        ll_k = family.loglik_rows(eta_k, y[:, None], m[:, None], chunk.const[:, None])
    gk = chunk.group_sum(ll_k) - 0.5 * uk * uk - _LOG_SQRT_2PI       # g_i(u_k)
    a = lwk[None, :] + gk
    amax = np.max(a, axis=1)
    lse = amax + np.log(np.sum(np.exp(a - amax[:, None]), axis=1))
    ll_groups = np.log(scale) + lse
    wg = chunk.weights
    loglik = float(ll_groups.sum() if wg is None else ll_groups @ wg)
    if not gradient:
        return ChunkResult(loglik, None, u_hat, h, ll_groups, iters)

    p = X.shape[1]
    pi = np.exp(a - lse[:, None])                                        # (G, K) node weights
    del eta_k, ll_k
    zd1_k = chunk.group_sum(z[:, None] * d1_k)                          # (G, K)
    Gk = sigma * zd1_k - uk                                              # g'(u_k)
    A = np.sum(pi * Gk, axis=1)
    B = np.sum(pi * Gk * zk[None, :], axis=1)
    # Nodes sit at u_hat + s (c + T z_k): d/ds of the log-integral is (1 + s (c A + T B)) / s.
    C = 0.5 * (1.0 + s * (c * A + T * B)) / h
    T1 = chunk.group_sum(z * d1)
    T3 = chunk.group_sum(z ** 3 * e3)
    pi_rows = pi[gi]
    c_rows = np.einsum("ij,ij->i", pi_rows, d1_k)                        # E_beta per row
    neg_hess = (_neg_hessian(chunk, family, eta_hat, s, c, T, zk, sigma, uk, pi, pi_rows,
                             d1_k, zd1_k) if hessian else None)
    del pi_rows
    del d1_k
    # d log L / d beta = X' r (derivation in the module notes: E + A du/db + C dh/db), where
    # du/db = sigma sum z d2 x / h_obs and h's derivative is that of sigma^2 sum z^2 e2.
    r = (c_rows
         + (sigma * A / h_obs)[gi] * z * d2
         + C[gi] * (sigma ** 2 * z * z * e3 + (sigma ** 4 * T3 / h_obs)[gi] * z * d2))
    g_beta = (X.T @ (r if wg is None else r * wg[gi])) if p else np.zeros(0)
    # sigma: the same three pieces, per group.
    E_sigma = np.sum(pi * zd1_k * uk, axis=1)
    du_dsigma = (T1 + sigma * u_hat * T2) / h_obs
    D_sigma = 2.0 * sigma * T2e + sigma ** 2 * u_hat * T3 + sigma ** 3 * T3 * du_dsigma
    s_sigma = E_sigma + A * du_dsigma + C * D_sigma
    g_sigma = float(np.sum(s_sigma) if wg is None else s_sigma @ wg)
    grad = np.concatenate([g_beta, [g_sigma]])
    outer = None
    if opg:
        S = np.column_stack([chunk.group_sum(X * r[:, None]), s_sigma])
        outer = S.T @ (S if wg is None else S * wg[:, None])
    return ChunkResult(loglik, grad, u_hat, h, ll_groups, iters, outer, neg_hess)


def _neg_hessian(chunk: GroupChunk, family: Family, eta_hat, s, c, T, zk, sigma, uk, pi,
                 pi_rows, d1_k, zd1_k) -> np.ndarray:
    """Negative Hessian of the chunk's log-likelihood in ``(beta, sigma)``, ``(p+1, p+1)``.

    Each group's log-integral ``log integral exp(g(u; theta)) du`` is differentiated under
    the integral at fixed ``u`` (the prior of ``u`` does not involve ``theta``)::

        d2/dtheta2 log L_i = E[g_theta,theta] + Var[g_theta],

    expectations under the group's posterior of ``u``, computed with the same nodes and
    weights ``pi`` (``pi_rows``: gathered to rows) as the log-likelihood. Per node,
    ``g_beta = sum_j d1_j x_j``, ``g_sigma = u sum_j d1_j z_j``; the second derivatives carry
    ``d2_j`` and the matching products, so their expectations are row sums. The error is the
    rule's quadrature error on these moments (``tests/test_agq_hessian.py`` compares with
    finite differences of the analytic gradient).
    """
    X, y, m, z, gi = chunk.X, chunk.y, chunk.m, chunk.z, chunk.gidx
    p = X.shape[1]
    q = p + 1
    eta_k = np.multiply.outer(sigma * z * (s * T)[gi], zk)
    eta_k += (eta_hat + sigma * z * (s * c)[gi])[:, None]
    if family.name == "binomial" and family.link == "logit":
        # d2 = -m mu (1 - mu) = -m e / (1 + e)^2 with e = exp(-|eta|), in place.
        d2_k = np.abs(eta_k, out=eta_k)
        np.negative(d2_k, out=d2_k)
        np.exp(d2_k, out=d2_k)
        t = d2_k + 1.0
        t *= t
        d2_k /= t
        d2_k *= -m[:, None]
        del t
    else:
        d2_k = family.derivs(eta_k, y[:, None], m[:, None], order=2)[1]
    del eta_k
    wg = chunk.weights
    wrow = 1.0 if wg is None else wg[gi]
    # E[g_theta,theta], summed over groups: row sums of d2 x x' with posterior weights.
    w2 = np.einsum("jk,jk->j", pi_rows, d2_k) * wrow
    w2u = np.einsum("jk,jk->j", (pi * uk)[gi], d2_k) * wrow
    w2uu = np.einsum("jk,jk->j", (pi * uk * uk)[gi], d2_k) * wrow
    del d2_k
    E = np.empty((q, q))
    E[:p, :p] = X.T @ (X * w2[:, None])
    E[:p, p] = E[p, :p] = X.T @ (z * w2u)
    E[p, p] = float(np.sum(z * z * w2uu))
    # Var[g_theta]: the scores per group and node (G, K, q).
    G, K = uk.shape
    S = np.empty((G, K, q))
    for a in range(p):
        S[:, :, a] = chunk.group_sum(X[:, a, None] * d1_k)
    S[:, :, p] = uk * zd1_k
    pw = pi if wg is None else pi * wg[:, None]
    mean = np.einsum("gk,gka->ga", pi, S)
    S2 = S.reshape(G * K, q)
    V = (S2 * pw.reshape(-1, 1)).T @ S2 - (mean if wg is None else mean * wg[:, None]).T @ mean
    H = E + V
    return -H


@dataclass(frozen=True)
class GroupRules:
    """Per-group trapezoid rules (:func:`choose_rule`): points, half-width and centre.

    Attributes
    ----------
    points : ndarray of int (G,)
    span, shift : ndarray (G,)
        Half-width and centre of each group's range, in units of its Laplace scale ``s``.
    """

    points: np.ndarray
    span: np.ndarray
    shift: np.ndarray

    def take(self, groups: np.ndarray) -> "GroupRules":
        """The rules of some groups."""
        return GroupRules(self.points[groups], self.span[groups], self.shift[groups])


class _Indicator:
    """Group sums by a ready-made indicator matrix (the rows of some groups)."""

    def __init__(self, indicator: sp.csr_matrix):
        self.indicator = indicator

    def group_sum(self, a: np.ndarray) -> np.ndarray:
        return self.indicator @ a


def _log_integrand(beta, sigma, chunk: GroupChunk, family: Family, u: np.ndarray) -> np.ndarray:
    """``g_i(u)`` at points ``u`` (G, K): the sum of the group's row log-likelihoods plus
    ``log phi(u)``."""
    eta = (chunk.X @ beta + chunk.offset)[:, None] + sigma * chunk.z[:, None] * u[chunk.gidx]
    ll = family.loglik_rows(eta, chunk.y[:, None], chunk.m[:, None], chunk.const[:, None])
    return chunk.group_sum(ll) - 0.5 * u * u - _LOG_SQRT_2PI


def choose_rule(beta: np.ndarray, sigma: float, chunk: GroupChunk, family: Family,
                tol: float = POINTS_TOL, ladder: tuple[int, ...] = POINTS_LADDER,
                u0: np.ndarray | None = None, cut: float = TAIL_CUT,
                minimum: GroupRules | None = None) -> GroupRules:
    """Per group, a trapezoid rule that integrates it to ``tol`` at these parameters.

    The range: in units of the group's Laplace scale ``s`` from its mode, on each side the
    first of :data:`SPANS` where the log-integrand has fallen ``cut`` below its mode (it is
    concave, so it only falls further out, and the neglected tail is below ``exp(-cut)``
    times the span). The number of points: the first rule of ``ladder`` whose log-integral
    differs from the next rule's by at most ``tol / 2``; the trapezoid rule converges
    geometrically (the error of the next rule is about the square of this one's), so the
    difference is the error (``tests/test_agq.py`` checks the result against a brute-force
    integral). Groups leave the comparison as they converge.

    Parameters
    ----------
    beta, sigma, chunk, family
        As :func:`agq_chunk`.
    tol : float
        Absolute error allowed in each group's log-integral (the integral's relative error).
    ladder : tuple of int
        Increasing numbers of points to try.
    u0 : ndarray (G,), optional
        Warm start of the conditional modes.
    cut : float
        Where the range ends: the log-integrand this far below its value at the mode.
    minimum : GroupRules, optional
        Never fewer points, nor a narrower range on either side, than these (so that rules
        only grow from one call to the next).

    Returns
    -------
    GroupRules
        Groups still moving at the ladder's top get its top rule.
    """
    beta = np.asarray(beta, dtype=float)
    G = chunk.ngroups
    lap = agq_chunk(beta, sigma, chunk, family, 1, u0=u0, gradient=False)
    u_hat, s = lap.u_hat, 1.0 / np.sqrt(lap.h)
    spans = np.asarray(SPANS)
    tt = np.concatenate([-spans[::-1], spans])
    g = _log_integrand(beta, sigma, chunk, family, u_hat[:, None] + s[:, None] * tt[None, :])
    g0 = _log_integrand(beta, sigma, chunk, family, u_hat[:, None])
    below = (g - g0) < -cut
    ns = len(spans)
    left_ok, right_ok = below[:, :ns][:, ::-1], below[:, ns:]
    # First span (from the inside out) already below the cut; the largest if none is.
    left = spans[np.where(left_ok.any(1), left_ok.argmax(1), ns - 1)]
    right = spans[np.where(right_ok.any(1), right_ok.argmax(1), ns - 1)]
    if minimum is not None:
        left = np.maximum(left, minimum.span - minimum.shift)
        right = np.maximum(right, minimum.span + minimum.shift)
    span, shift = 0.5 * (left + right), 0.5 * (right - left)
    points = np.full(G, ladder[-1], dtype=np.int64)
    # The modes and scales are those of these parameters whatever the rule: each rung only
    # evaluates the log-integrand at its nodes (no mode search, no derivatives), on the rows
    # of the groups still climbing.
    gi = chunk.gidx
    eta_c = chunk.X @ beta + chunk.offset + sigma * chunk.z * (u_hat + s * shift)[gi]
    a_rows = sigma * chunk.z * (s * span)[gi]
    nrows = chunk.nrows

    def climb(groups, i0, twice):
        """Walk the ladder from rung ``i0`` for these groups; set their points."""
        pending = groups

        # g at the nodes of the last rule of each nested family (the n-point trapezoid
        # nodes are every other node of the (2n - 1)-point rule's): a rung whose half is
        # here evaluates only its new nodes.
        cache: dict[int, np.ndarray] = {}

        def run(k):
            if len(pending) == G:
                rows, ind = slice(None), chunk
            else:
                cnt = nrows[pending]
                st = np.concatenate([[0], np.cumsum(cnt)[:-1]])
                rows = np.repeat(chunk.starts[pending] - st, cnt) + np.arange(cnt.sum())
                nr = len(rows)
                ind = _Indicator(sp.csr_matrix((np.ones(nr), np.arange(nr), np.r_[st, nr]),
                                               shape=(len(pending), nr)))
            xk, lwk = _trapezoid(int(k))
            half = cache.pop((k + 1) // 2, None) if k % 2 else None
            xn = xk if half is None else xk[1::2]
            eta = np.multiply.outer(a_rows[rows], xn)
            eta += eta_c[rows, None]
            ll = family.loglik_rows(eta, chunk.y[rows, None], chunk.m[rows, None],
                                    chunk.const[rows, None])
            sc = s[pending] * span[pending]
            un = (u_hat + s * shift)[pending, None] + sc[:, None] * xn[None, :]
            gn = ind.group_sum(ll) - 0.5 * un * un
            if half is None:
                g = gn
            else:
                g = np.empty((len(pending), len(xk)))
                g[:, ::2], g[:, 1::2] = half, gn
            cache[k] = g
            a = g + lwk[None, :]
            amax = np.max(a, axis=1)
            return np.log(sc) + amax + np.log(np.sum(np.exp(a - amax[:, None]), axis=1))

        prev = run(ladder[i0])
        # Two agreements in a row, the first time: one alone can be luck (the error
        # alternates in sign along the ladder and may cross zero between two rules). A
        # rule chosen before at nearby parameters needs only one. (The constant
        # -log sqrt(2 pi) cancels in the differences.)
        agreed = np.full(len(groups), not twice)
        for i in range(i0 + 1, len(ladder)):
            cur = run(ladder[i])
            ok = np.abs(cur - prev) <= 0.5 * tol
            done = ok & agreed
            points[pending[done]] = ladder[i - 1]
            if np.all(done):
                return
            keep = np.flatnonzero(~done)
            pending, prev, agreed = pending[keep], cur[keep], ok[keep]
            for kk in list(cache):
                cache[kk] = cache[kk][keep]

    lad = np.asarray(ladder)
    if minimum is None:
        climb(np.arange(G), 0, True)
    else:
        first = np.minimum(np.searchsorted(lad, minimum.points), len(lad) - 2)
        for i0 in np.unique(first):
            climb(np.flatnonzero(first == i0), int(i0), False)
    if minimum is not None:
        points = np.maximum(points, minimum.points)
    return GroupRules(points, span, shift)
