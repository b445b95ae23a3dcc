"""The Laplace approximation of a GLMM's log-likelihood, by PIRLS.

:class:`LaplaceObjective` evaluates the Laplace log-likelihood (and its gradient) at
``(beta, theta)`` for any random-effects structure; :func:`mixedmodels.glmm.make_objective`
chooses it when the model is not a single scalar term.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

if TYPE_CHECKING:
    from .glmm import GlmerFrame

__all__ = ["LaplaceObjective", "MAX_DENSE_Q"]

MAX_DENSE_Q = 5000


class LaplaceObjective:
    """Laplace approximation by PIRLS, for any random-effects structure (dense in ``q``).

    ``b = Lambda(theta) u``, ``u ~ N(0, I)``; at the conditional mode ``u_hat`` the Laplace
    log-likelihood is ``sum l(eta) - |u|^2/2 - log det(A)/2`` with
    ``A = I + Lambda' Z' W Z Lambda``. The gradient in ``(beta, theta)`` is analytic: it
    accounts for ``u_hat`` and ``W`` moving with the parameters (third derivatives of ``l``).
    For a non-canonical link ``W`` in the determinant is the expected information, as lme4's
    (see :mod:`mixedmodels.families`), while the mode moves with the observed one.
    """

    def __init__(self, frame: GlmerFrame):
        ms = frame.ms
        self.frame, self.family, self.nagq = frame, frame.family, 1
        self.p = ms.p
        self.n = frame.n
        # Column offsets of each term's random effects (level-major, as lme4).
        self.terms = ms.reterms
        offs, q = [], 0
        th_index, th_lower = [], []
        for t in self.terms:
            offs.append(q)
            q += t.q
            k = t.k
            for b in range(k):          # column-wise lower triangle, lme4's order
                for a in range(b, k):
                    if not t.correlated and a != b:
                        continue
                    th_index.append((len(offs) - 1, a, b))
                    th_lower.append(0.0 if a == b else -np.inf)
        self.q = q
        if q > MAX_DENSE_Q:
            raise ValueError(
                f"Laplace with several or vector random-effect terms is implemented with dense "
                f"matrices of size q = number of random effects; q = {q} exceeds {MAX_DENSE_Q}")
        self.offs = offs
        self.th_index = th_index
        self.ntheta = len(th_index)
        self.nparams = self.p + self.ntheta
        self._th_lower = np.array(th_lower)
        rows = np.arange(self.n)
        # d(Z Lambda)/d theta_r: one entry per row, at column (level, b) with value Z[:, a].
        self.dZL = []
        for (ti, a, b) in th_index:
            t = self.terms[ti]
            cols = offs[ti] + t.codes * t.k + b
            self.dZL.append(sp.csr_matrix((t.Z[:, a], (rows, cols)), shape=(self.n, q)))
        self.u = np.zeros(q)
        self.nevals = 0
        self.last = None

    def lower(self) -> np.ndarray:
        return np.concatenate([np.full(self.p, -np.inf), self._th_lower])

    def reset(self) -> None:
        """Forget the warm start (after a failed evaluation)."""
        self.u = np.zeros(self.q)

    def ZLambda(self, theta: np.ndarray) -> sp.csr_matrix:
        out = None
        for r, D in enumerate(self.dZL):
            out = D * theta[r] if out is None else out + D * theta[r]
        return out.tocsr()

    def _pirls(self, eta0, ZL, u0):
        fam, y, m, c = self.family, self.frame.y, self.frame.m, self.frame.const
        u = u0.copy()

        def obj(u):
            return float(np.sum(fam.loglik_rows(eta0 + ZL @ u, y, m, c)) - 0.5 * u @ u)

        f = obj(u)
        for _ in range(200):
            eta = eta0 + ZL @ u
            d1, d2 = fam.derivs(eta, y, m, order=2)
            g = ZL.T @ d1 - u
            A = (ZL.T @ ZL.multiply(-d2[:, None])).toarray() + np.eye(self.q)
            step = sla.cho_solve(sla.cho_factor(A, lower=True), g)
            t = 1.0
            while True:
                f_new = obj(u + t * step)
                if f_new >= f - 1e-12 * abs(f) or t < 1e-10:
                    break
                t *= 0.5
            u, f = u + t * step, f_new
            if np.max(np.abs(t * step)) < 1e-11 * (1 + np.max(np.abs(u))):
                break
        return u

    def evaluate(self, params, gradient=True, nagq=None, keep=True):
        params = np.asarray(params, dtype=float)
        beta, theta = params[:self.p], params[self.p:]
        fam, y, m = self.family, self.frame.y, self.frame.m
        X = self.frame.ms.X
        eta0 = X @ beta
        ZL = self.ZLambda(theta)
        u = self._pirls(eta0, ZL, self.u)
        if keep:
            self.u = u
        eta = eta0 + ZL @ u
        d1, d2, d3 = fam.derivs(eta, y, m, order=3)
        W = -d2
        A = (ZL.T @ ZL.multiply(W[:, None])).toarray() + np.eye(self.q)
        L = np.linalg.cholesky(A)
        if fam.canonical:
            We, Le, e3 = W, L, d3
        else:
            # lme4's Laplace uses the expected information (its PIRLS weights) in the
            # determinant; the observed one (A, L) still governs how the mode moves.
            e2, e3 = fam.info_derivs(eta, y, m)
            We = -e2
            Ae = (ZL.T @ ZL.multiply(We[:, None])).toarray() + np.eye(self.q)
            Le = np.linalg.cholesky(Ae)
        ll = float(np.sum(fam.loglik_rows(eta, y, m, self.frame.const)) - 0.5 * u @ u
                   - np.sum(np.log(np.diag(Le))))
        self.nevals += 1
        self.last = (u, Le, ZL)
        if not gradient:
            return ll, None
        ZLt = ZL.T.toarray()
        M = sla.solve_triangular(Le, ZLt, lower=True)                  # Le^-1 ZL'  (q x n)
        lev = np.sum(M * M, axis=0)
        N = sla.solve_triangular(Le.T, M, lower=False)                  # Ae^-1 ZL'
        v = e3 * lev
        Mo = M if fam.canonical else sla.solve_triangular(L, ZLt, lower=True)
        g_beta = X.T @ (d1 + 0.5 * (v - W * (Mo.T @ (Mo @ v))))
        g_theta = np.empty(self.ntheta)
        for r, D in enumerate(self.dZL):
            Du = D @ u
            du = sla.cho_solve((L, True), D.T @ d1 - ZL.T @ (W * Du))
            deta = Du + ZL @ du
            DN = np.asarray(D.multiply(N.T).sum(axis=1)).ravel()
            g_theta[r] = d1 @ Du - We @ DN + 0.5 * v @ deta
        return ll, np.concatenate([g_beta, g_theta])

    def modes(self, params):
        self.evaluate(params, gradient=False)
        u, L, ZL = self.last
        theta = np.asarray(params[self.p:], dtype=float)
        out = []
        # b = Lambda u per term; conditional covariance of b = Lambda A^-1 Lambda'.
        Linv = sla.solve_triangular(L, np.eye(self.q), lower=True)
        for ti, t in enumerate(self.terms):
            T = self._T(theta, ti)
            ut = u[self.offs[ti]:self.offs[ti] + t.q].reshape(t.nlevels, t.k)
            b = ut @ T.T
            blk = Linv[:, self.offs[ti]:self.offs[ti] + t.q]
            # Diagonal of T Var(u) T' per level, Var(u) = A^-1 (cross terms when k > 1).
            sds = np.empty((t.nlevels, t.k))
            for lvl in range(t.nlevels):
                V = blk[:, lvl * t.k:(lvl + 1) * t.k]
                sds[lvl] = np.sqrt(np.diag(T @ (V.T @ V) @ T.T))
            out.append((b, sds))
        return out

    def _T(self, theta, ti):
        k = self.terms[ti].k
        T = np.zeros((k, k))
        for r, (tj, a, b) in enumerate(self.th_index):
            if tj == ti:
                T[a, b] = theta[r]
        return T
