"""The Laplace approximation of a GLMM's log-likelihood, by PIRLS on the LMM's blocked factor.

:class:`LaplaceObjective` evaluates the Laplace log-likelihood (and its gradient) at
``(beta, theta)`` for any random-effects structure; :func:`mixedmodels.glmm.make_objective`
chooses it when the model is not a single scalar term. Each PIRLS step reweights the
cross-product blocks of ``Z Lambda`` with the working weights and refactors them in the LMM's
blocked layout (:mod:`mixedmodels.linalg`; MixedModels.jl's ``reweight!`` then ``updateL!``,
lme4's ``merPredD`` shared by ``lmer`` and ``glmer``): no dense ``q x q`` or ``n x q``
matrix, no cap on the number of random effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .linalg import WeightedBlocks

if TYPE_CHECKING:
    from .glmm_frame import GlmerFrame

__all__ = ["LaplaceObjective"]

#: PIRLS stops when the Newton step in ``u`` is below this, relative to ``1 + max|u|``
#: (much tighter than lme4's ``tolPwrss``; the Laplace value is then exact to ~1e-12).
PIRLS_TOL = 1e-10
PIRLS_MAXIT = 200
#: Most chord steps (with the previous evaluation's factor) before Newton steps.
CHORD_MAXIT = 30


class LaplaceObjective:
    """Laplace approximation by PIRLS, for any random-effects structure.

    ``b = Lambda(theta) u``, ``u ~ N(0, I)``; at the conditional mode ``u_hat`` the Laplace
    log-likelihood is ``sum l(eta) - |u|^2/2 - log det(A)/2`` with
    ``A = I + Lambda' Z' W Z Lambda``. The gradient in ``(beta, theta)`` is analytic: it
    accounts for ``u_hat`` and ``W`` moving with the parameters (third derivatives of ``l``),
    through the entries of ``A^{-1}`` on the pattern of ``Z' Z`` (the blocked factor's
    selected inverse). For a non-canonical link ``W`` in the determinant is the expected
    information, as lme4's (see :mod:`mixedmodels.families`), while the mode moves with the
    observed one.

    Parameters
    ----------
    frame : GlmerFrame
        The model frame from :func:`mixedmodels.glmm.glmer_frame`.

    Notes
    -----
    Parameters are ``(beta, theta)`` with ``theta`` in lme4's order (term by term, each
    term's lower-triangular factor column-wise, from :class:`~mixedmodels.covariance.CovarianceLayout`).
    Time and memory per evaluation are linear in the number of rows plus the LMM's dense block
    of the terms after the first (``q_rest x q_rest``).
    """

    def __init__(self, frame: "GlmerFrame"):
        ms = frame.ms
        self.frame, self.family, self.nagq = frame, frame.family, 1
        self.p = ms.p
        self.n = frame.n
        # Column offsets of each term's random effects (level-major, as lme4).
        self.terms = ms.reterms
        offs, q = [], 0
        for t in self.terms:
            offs.append(q)
            q += t.q
        # theta's layout (lme4's order) from its one owner, mixedmodels.covariance.
        self.layout = frame.layout
        self.q = q
        self.offs = offs
        self.ntheta = self.layout.ntheta
        self.nparams = self.p + self.ntheta
        self.blocks = WeightedBlocks(self.terms)
        self.u = np.zeros(q)
        self._F = None  # the factor at the kept modes: the next PIRLS's first steps reuse it
        self.nevals = 0
        self.last = None

    def lower(self) -> np.ndarray:
        """Lower bounds of ``(beta, theta)`` (0 for the factors' diagonals)."""
        return np.concatenate([np.full(self.p, -np.inf), self.layout.lower])

    def reset(self) -> None:
        """Forget the warm start (after a failed evaluation)."""
        self.u = np.zeros(self.q)
        self._F = None

    def _pirls(self, eta0, z1, zr, u0, F0=None):
        """Conditional mode of ``u`` by Newton steps with step halving; returns ``u``, the
        linear predictor and the factor of ``A`` (observed information) at ``u``.

        With ``F0`` (the factor at the previous evaluation's mode) the first steps are chord
        steps, ``u += F0^{-1} g(u)``: each costs two triangular solves instead of a
        factorization, and from a nearby evaluation they reach the mode to nearly the
        tolerance, so that usually one factorization -- the one the log-determinant needs
        anyway -- confirms convergence with a Newton step below the tolerance.
        """
        fam, y, m, c = self.family, self.frame.y, self.frame.m, self.frame.const
        B = self.blocks
        u = u0.copy()
        eta = eta0 + B.mult(z1, zr, u)
        f = float(np.sum(fam.loglik_rows(eta, y, m, c)) - 0.5 * u @ u)
        if F0 is not None:
            prev = np.inf
            for _ in range(CHORD_MAXIT):
                d1 = fam.derivs(eta, y, m, order=2)[0]
                step = F0.solve(B.tmult(z1, zr, d1) - u)
                size = np.max(np.abs(step))
                if size < PIRLS_TOL * (1.0 + np.max(np.abs(u))):
                    break
                un = u + step
                etan = eta + B.mult(z1, zr, step)
                f_new = float(np.sum(fam.loglik_rows(etan, y, m, c)) - 0.5 * un @ un)
                if not f_new >= f - 1e-12 * abs(f):
                    break
                u, eta, f = un, etan, f_new
                if size > 0.3 * prev:  # slow contraction: Newton does better from here
                    break
                prev = size
        for _ in range(PIRLS_MAXIT):
            d1, d2 = fam.derivs(eta, y, m, order=2)
            F = B.factor(z1, zr, -d2)
            step = F.solve(B.tmult(z1, zr, d1) - u)
            if np.max(np.abs(step)) < PIRLS_TOL * (1.0 + np.max(np.abs(u))):
                return u, eta, F
            dz = B.mult(z1, zr, step)
            t = 1.0
            while True:
                un, etan = u + t * step, eta + t * dz
                f_new = float(np.sum(fam.loglik_rows(etan, y, m, c)) - 0.5 * un @ un)
                if f_new >= f - 1e-12 * abs(f) or t < 1e-10:
                    break
                t *= 0.5
            u, eta, f = un, etan, f_new
        d1, d2 = fam.derivs(eta, y, m, order=2)
        return u, eta, B.factor(z1, zr, -d2)

    def evaluate(self, params, gradient=True, nagq=None, keep=True):
        """Laplace log-likelihood (and its gradient) at ``params = (beta, theta)``.

        Parameters
        ----------
        params : array (p + ntheta,)
        gradient : bool
            Also return the gradient.
        nagq : ignored
            Laplace only (kept for the common objective interface).
        keep : bool
            Keep the conditional modes as the next evaluation's start.

        Returns
        -------
        loglik : float
        grad : ndarray (p + ntheta,) or None

        Raises
        ------
        numpy.linalg.LinAlgError
            If a weighted cross-product is not positive definite.
        """
        params = np.asarray(params, dtype=float)
        beta, theta = params[:self.p], params[self.p:]
        fam, y, m = self.family, self.frame.y, self.frame.m
        B = self.blocks
        X = self.frame.ms.X
        eta0 = X @ beta if self.frame.ms.offset is None else X @ beta + self.frame.ms.offset
        Ts = self.layout.factors(theta)
        z1, zr = B.ztilde(Ts)
        u, eta, F = self._pirls(eta0, z1, zr, self.u, self._F)
        if keep:
            self.u, self._F = u, F
        d1, d2, d3 = fam.derivs(eta, y, m, order=3)
        W = -d2
        if fam.canonical:
            We, e3, Fe = W, d3, F
        else:
            # lme4's Laplace uses the expected information (its PIRLS weights) in the
            # determinant; the observed one (F) still governs how the mode moves.
            e2, e3 = fam.info_derivs(eta, y, m)
            We = -e2
            Fe = B.factor(z1, zr, We)
        ll = float(np.sum(fam.loglik_rows(eta, y, m, self.frame.const)) - 0.5 * u @ u
                   - 0.5 * Fe.logdet())
        self.nevals += 1
        self.last = (u, Fe, Ts)
        if not gradient:
            return ll, None
        # Leverages z_i' Ae^{-1} z_i and the selected inverse at each row's columns.
        P1, PR, _ = Fe.row_products(z1, zr)
        lev = np.sum(z1 * P1, axis=1) + np.sum(zr * PR, axis=1)
        v = e3 * lev
        s = F.solve(B.tmult(z1, zr, v))                        # A^{-1} Lambda' Z' v
        Zs = B.mult(z1, zr, s)
        g_beta = X.T @ (d1 + 0.5 * (v - W * Zs))
        g_theta = np.empty(self.ntheta)
        slot_of = {ts: i for i, ts in enumerate(B.slots)}
        for r, e in enumerate(self.layout.entries):
            ti, a, b = e.term, e.row, e.col
            t = self.terms[ti]
            za = t.Z[:, a]
            col = self.offs[ti] + t.codes * t.k + b
            Du = za * u[col]
            Ds = za * s[col]
            Pb = P1[:, b] if ti == 0 else PR[:, slot_of[(ti, b)]]
            DN = za * Pb
            g_theta[r] = (d1 @ Du - We @ DN + 0.5 * v @ Du
                          + 0.5 * (d1 @ Ds - (W * Zs) @ Du))
        return ll, np.concatenate([g_beta, g_theta])

    def modes(self, params):
        """Conditional modes ``b`` and their conditional SDs, per term.

        Returns
        -------
        list of (b, sd)
            Per term, arrays of shape ``(nlevels, k)``: ``b = Lambda u_hat`` and the square
            roots of the diagonal of ``Lambda A^{-1} Lambda'``.
        """
        self.evaluate(params, gradient=False)
        u, F, Ts = self.last
        D11, _, G = F.inverse_parts()
        B = self.blocks
        out = []
        for ti, t in enumerate(self.terms):
            T = Ts[ti]
            ut = u[self.offs[ti]:self.offs[ti] + t.q].reshape(t.nlevels, t.k)
            b = ut @ T.T
            if ti == 0:
                V = D11
            else:
                o = B.roff[ti - 1]
                idx = o + np.arange(t.nlevels)[:, None] * t.k + np.arange(t.k)[None, :]
                V = G[idx[:, :, None], idx[:, None, :]]
            sds = np.sqrt(np.einsum("ij,gjk,ik->gi", T, V, T))
            out.append((b, sds))
        return out
