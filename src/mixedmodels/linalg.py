"""The blocked sparse Cholesky factor of ``Lambda' Z' W Z Lambda + I``, reweighted.

The layout is the LMM's (:class:`mixedmodels.lmm.LMMProblem`; MixedModels.jl's blocked
``L``, lme4's ``merPredD``): the random-effect terms are ordered by decreasing number of
levels; the first term's diagonal block is block diagonal (one ``k1 x k1`` block per level),
its cross-product with the other terms is sparse, and the other terms form one dense block.
:class:`WeightedBlocks` holds the index arrays that do not change (the sparsity pattern) and
rebuilds the blocks' values for new working weights ``w`` and covariance factors ``T`` (lme4's
and MixedModels.jl's ``reweight!`` then ``updateL!``); :class:`BlockedFactor` is the factor
with solves, the log-determinant and the entries of the inverse that a Laplace gradient needs
(the inverse restricted to the pattern of ``Z' Z``, never the whole ``q x q`` inverse).

Memory is linear in the data (a few index arrays of length ``n``, one per pair of columns of
a row) plus the dense block of the non-first terms (``q_rest x q_rest``), as in the LMM.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from .formula import ReTerm

__all__ = ["WeightedBlocks", "BlockedFactor"]

#: Rows x columns of the dense scratch block used when computing entries of the inverse.
_CHUNK_ENTRIES = 2_000_000
#: Most pairs of same-row entries of the sparse block kept as index arrays (3 x 8 bytes each).
_MAX_PAIRS = 8_000_000


def _chol_stack(M: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of a stack of small positive definite matrices (l, k, k)."""
    k = M.shape[1]
    if k == 1:
        if np.any(~(M[:, 0, 0] > 0)):
            raise np.linalg.LinAlgError("1 x 1 block not positive")
        return np.sqrt(M)
    if k == 2:
        L = np.zeros_like(M)
        l11 = np.sqrt(M[:, 0, 0])
        l21 = M[:, 1, 0] / l11
        d = M[:, 1, 1] - l21 * l21
        if np.any(~(d > 0)) or np.any(~(M[:, 0, 0] > 0)):
            raise np.linalg.LinAlgError("2 x 2 block not positive definite")
        L[:, 0, 0] = l11
        L[:, 1, 0] = l21
        L[:, 1, 1] = np.sqrt(d)
        return L
    return np.linalg.cholesky(M)


def _tri_inv_stack(L: np.ndarray) -> np.ndarray:
    """Inverses of a stack of small lower-triangular matrices."""
    if L.shape[1] == 1:
        return 1.0 / L
    return np.linalg.inv(L)


class WeightedBlocks:
    """The fixed structure of ``Z Lambda`` split into the LMM's blocks.

    Parameters
    ----------
    terms : list of ReTerm
        The random-effect terms in the model's order (decreasing number of levels); the first
        is the block-diagonal one.

    Notes
    -----
    Random effects are indexed level-major within a term and term by term (lme4's order):
    ``u = [u_1 (l1 * k1), u_rest (q_rest)]``. Every row of ``Z Lambda`` has ``k1`` nonzeros in
    the first term's columns and one per *slot* -- a column ``j`` of a later term -- in the
    rest; ``slot_col[s]`` holds each row's column of slot ``s`` (in ``u_rest``'s indexing).
    """

    def __init__(self, terms: list[ReTerm]):
        self.terms = list(terms)
        t1 = self.terms[0]
        self.n = len(t1.codes)
        self.k1, self.l1 = t1.k, t1.nlevels
        self.q1 = self.k1 * self.l1
        self.codes1 = np.asarray(t1.codes, dtype=np.int64)
        rest = self.terms[1:]
        self.roff, q = [], 0
        for t in rest:
            self.roff.append(q)
            q += t.q
        self.qrest = q
        self.q = self.q1 + q
        # Slots of the later terms: (term index, column j).
        self.slots = [(ti + 1, j) for ti, t in enumerate(rest) for j in range(t.k)]
        self.slot_col = [np.asarray(self.roff[ti - 1] + self.terms[ti].codes * self.terms[ti].k + j,
                                    dtype=np.int64) for (ti, j) in self.slots]
        ns = len(self.slots)
        k1, n = self.k1, self.n
        if ns:
            # Pattern of the first term's cross-product with the rest: one CSR row per first-
            # term column, every row of a level holding the same columns (the union over j).
            lvl_key = np.concatenate([self.codes1 * q + c for c in self.slot_col])
            ukeys, inv = np.unique(lvl_key, return_inverse=True)
            lvl = ukeys // q
            cols = ukeys % q
            m = np.bincount(lvl, minlength=self.l1)            # entries per row, per level
            start = np.concatenate([[0], np.cumsum(m * k1)])[:-1]  # each level's first entry
            within = np.arange(len(ukeys)) - np.repeat(np.cumsum(m) - m, m)
            nnz = int(m.sum()) * k1
            self.nnz = nnz
            e_lvl = np.repeat(np.arange(self.l1), m * k1)
            e_j = (np.arange(nnz, dtype=np.int64) - start[e_lvl]) // np.maximum(m[e_lvl], 1)
            e_m = m[e_lvl]
            self.e_lvl, self.e_j, self.e_m = e_lvl, e_j, e_m
            # Entry of the same column in row j' of the same level: e + (j' - j) m_g.
            e_idx = np.arange(nnz, dtype=np.int64)
            self.e_shift = [e_idx + (jp - e_j) * e_m for jp in range(k1)]
            # Column of every entry, row by row.
            indices = np.empty(nnz, dtype=np.int64)
            pos_of_key = np.empty(len(ukeys), dtype=np.int64)   # entry of row j = 0
            pos_of_key[:] = np.repeat(start, m) + within
            for j in range(k1):
                indices[pos_of_key + j * np.repeat(m, m)] = cols
            self.indices = indices
            indptr = np.zeros(self.q1 + 1, dtype=np.int64)
            indptr[1:] = np.cumsum(np.repeat(m, k1))
            self.indptr = indptr
            # For each data row, slot s and first-term column j: its entry in the pattern.
            inv = inv.reshape(ns, n)
            self.pos = [[pos_of_key[inv[s]] + j * m[self.codes1] for s in range(ns)] for j in range(k1)]
            # Dense block of the rest: flat index of each (slot, slot) pair of each row.
            self.flat = [[self.slot_col[s] * q + self.slot_col[s2] for s2 in range(ns)]
                         for s in range(ns)]
            # Pairs of entries in the same row of the pattern: U' U and (U G) on U's pattern
            # cost one pass over them (sum over rows of m^2), far less than a sparse product
            # or U times the dense G (nnz x q_rest), unless the rows are long.
            row_len = np.repeat(m, k1).astype(np.int64)
            npairs = row_len * row_len
            total = int(npairs.sum())
            self.pairs = None
            if total <= min(_MAX_PAIRS, nnz * q):
                rid = np.repeat(np.arange(self.q1), npairs)
                off = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(npairs) - npairs, npairs)
                rl = row_len[rid]
                pe = indptr[:-1][rid] + off // rl
                pe2 = indptr[:-1][rid] + off % rl
                del rid, off, rl
                self.pairs = (pe, pe2, indices[pe] * q + indices[pe2])
        self.nevals = 0

    # ---- Z Lambda and its transpose --------------------------------------------------------

    def ztilde(self, Ts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Rows of ``Z Lambda``: the first term's ``(n, k1)`` and the slots' ``(n, nslots)``."""
        z1 = self.terms[0].Z @ Ts[0]
        zr = np.empty((self.n, len(self.slots)))
        for s, (ti, j) in enumerate(self.slots):
            zr[:, s] = self.terms[ti].Z @ Ts[ti][:, j]
        return z1, zr

    def mult(self, z1: np.ndarray, zr: np.ndarray, x: np.ndarray) -> np.ndarray:
        """``Z Lambda x`` for ``x`` of length q."""
        k1 = self.k1
        out = np.zeros(self.n)
        for j in range(k1):
            out += z1[:, j] * x[self.codes1 * k1 + j]
        xr = x[self.q1:]
        for s, c in enumerate(self.slot_col):
            out += zr[:, s] * xr[c]
        return out

    def tmult(self, z1: np.ndarray, zr: np.ndarray, v: np.ndarray) -> np.ndarray:
        """``Lambda' Z' v`` for ``v`` of length n."""
        k1 = self.k1
        out = np.empty(self.q)
        for j in range(k1):
            out[j:self.q1:k1] = np.bincount(self.codes1, v * z1[:, j], self.l1)
        rest = np.zeros(self.qrest)
        for s, c in enumerate(self.slot_col):
            rest += np.bincount(c, v * zr[:, s], self.qrest)
        out[self.q1:] = rest
        return out

    # ---- the factor ------------------------------------------------------------------------

    def factor(self, z1: np.ndarray, zr: np.ndarray, w: np.ndarray) -> "BlockedFactor":
        """Reweight the blocks with ``w`` (length n) and factor ``Lambda' Z' W Z Lambda + I``.

        Raises
        ------
        numpy.linalg.LinAlgError
            If the matrix is not positive definite (negative weights).
        """
        self.nevals += 1
        k1, l1 = self.k1, self.l1
        M = np.empty((l1, k1, k1))
        for a in range(k1):
            for b in range(a + 1):
                M[:, a, b] = np.bincount(self.codes1, w * z1[:, a] * z1[:, b], l1)
                M[:, b, a] = M[:, a, b]
        M[:, np.arange(k1), np.arange(k1)] += 1.0
        L11 = _chol_stack(M)
        L11inv = _tri_inv_stack(L11)
        if not self.slots:
            return BlockedFactor(self, L11, L11inv, None, None)
        q = self.qrest
        ns = len(self.slots)
        A = np.zeros(self.nnz)
        for j in range(k1):
            wz = w * z1[:, j]
            for s in range(ns):
                A += np.bincount(self.pos[j][s], wz * zr[:, s], self.nnz)
        # U = L11^{-1} A1R, level by level (rows of a level share their columns).
        if k1 == 1:
            Ud = A / L11[self.e_lvl, 0, 0]
        else:
            Ud = np.zeros(self.nnz)
            for jp in range(k1):
                Ud += L11inv[self.e_lvl, self.e_j, jp] * A[self.e_shift[jp]]
        U = sp.csr_matrix((Ud, self.indices, self.indptr), shape=(self.q1, q))
        idx = [self.flat[s][s2] for s in range(ns) for s2 in range(ns)]
        val = [w * zr[:, s] * zr[:, s2] for s in range(ns) for s2 in range(ns)]
        if self.pairs is not None:
            pe, pe2, pflat = self.pairs
            idx.append(pflat)
            val.append(-(Ud[pe] * Ud[pe2]))
        S = np.bincount(np.concatenate(idx), np.concatenate(val), q * q).reshape(q, q)
        if self.pairs is None:
            S -= (U.T @ U).toarray()
        S[np.arange(q), np.arange(q)] += 1.0
        LRR = sla.cholesky(S, lower=True, check_finite=False, overwrite_a=True)
        return BlockedFactor(self, L11, L11inv, U, LRR)


class BlockedFactor:
    """``L`` with ``L L' = Lambda' Z' W Z Lambda + I`` in the blocked layout.

    ``L = [[L11, 0], [U', LRR]]`` with ``L11`` block diagonal (``(l1, k1, k1)``), ``U``
    sparse ``(l1 k1, q_rest)`` and ``LRR`` dense lower triangular ``(q_rest, q_rest)``.
    """

    def __init__(self, blocks: WeightedBlocks, L11, L11inv, U, LRR):
        self.blocks, self.L11, self.L11inv, self.U, self.LRR = blocks, L11, L11inv, U, LRR

    def logdet(self) -> float:
        """``log det(L L')``."""
        out = 2.0 * np.sum(np.log(np.diagonal(self.L11, axis1=1, axis2=2)))
        if self.LRR is not None:
            out += 2.0 * np.sum(np.log(np.diagonal(self.LRR)))
        return float(out)

    def solve(self, b: np.ndarray) -> np.ndarray:
        """``(L L')^{-1} b`` for ``b`` of length q."""
        B = self.blocks
        k1, q1 = B.k1, B.q1
        b1 = b[:q1].reshape(B.l1, k1)
        y1 = np.einsum("gij,gj->gi", self.L11inv, b1).ravel()
        if self.LRR is None:
            x1 = y1
            return np.einsum("gji,gj->gi", self.L11inv, x1.reshape(B.l1, k1)).ravel()
        y2 = sla.solve_triangular(self.LRR, b[q1:] - self.U.T @ y1, lower=True, check_finite=False)
        x2 = sla.solve_triangular(self.LRR, y2, lower=True, trans="T", check_finite=False)
        r1 = (y1 - self.U @ x2).reshape(B.l1, k1)
        x1 = np.einsum("gji,gj->gi", self.L11inv, r1).ravel()
        return np.concatenate([x1, x2])

    def inverse_parts(self):
        """Entries of ``(L L')^{-1}`` on the pattern of the blocks.

        Returns
        -------
        D11 : ndarray (l1, k1, k1)
            The first term's diagonal blocks of the inverse.
        B : ndarray (nnz,) or None
            The inverse's first-term x rest block on the pattern of ``U``.
        G : ndarray (q_rest, q_rest) or None
            The inverse's dense rest x rest block.
        """
        Bk = self.blocks
        Li = self.L11inv
        if self.LRR is None:
            return np.einsum("gji,gjk->gik", Li, Li), None, None
        k1, q = Bk.k1, Bk.qrest
        # LAPACK's potri: the inverse from the factor in 2 q^3 / 3 flops (lower triangle).
        G, info = sla.lapack.dpotri(self.LRR, lower=1)
        if info != 0:
            raise np.linalg.LinAlgError("singular dense block")
        # potri leaves the strict upper triangle as it was in LRR: zero.
        G += G.T
        G[np.arange(q), np.arange(q)] *= 0.5
        U = self.U
        UGp = np.empty(Bk.nnz)
        rows = max(1, _CHUNK_ENTRIES // max(q, 1))
        if Bk.pairs is not None:
            pe, pe2, pflat = Bk.pairs
            UGp = np.bincount(pe, U.data[pe2] * G.ravel()[pflat], Bk.nnz)
        # Else (U G) on U's pattern, a chunk of rows at a time (U G is l1 k1 x q_rest).
        for r0 in range(0, Bk.q1 if Bk.pairs is None else 0, rows):
            r1 = min(Bk.q1, r0 + rows)
            a, b = Bk.indptr[r0], Bk.indptr[r1]
            if a == b:
                continue
            blk = np.asarray(U[r0:r1] @ G)
            rr = np.repeat(np.arange(r1 - r0), np.diff(Bk.indptr[r0:r1 + 1]))
            UGp[a:b] = blk[rr, Bk.indices[a:b]]
        Ud = U.data
        # D11_g = L11g^{-T} (I + U_g G U_g') L11g^{-1}.
        C = np.zeros((Bk.l1, k1, k1))
        for j in range(k1):
            sel = Bk.e_j == j
            for jp in range(k1):
                C[:, j, jp] = np.bincount(Bk.e_lvl[sel], UGp[sel] * Ud[Bk.e_shift[jp][sel]], Bk.l1)
        C[:, np.arange(k1), np.arange(k1)] += 1.0
        D11 = np.einsum("gji,gjk,gkl->gil", Li, C, Li)
        # B = -L11^{-T} U G on the pattern.
        Bd = np.zeros(Bk.nnz)
        for jp in range(k1):
            Bd -= Li[Bk.e_lvl, jp, Bk.e_j] * UGp[Bk.e_shift[jp]]
        return D11, Bd, G

    def row_products(self, z1: np.ndarray, zr: np.ndarray):
        """``(L L')^{-1} z_i`` at each row's own nonzero columns, for each row ``z_i`` of
        ``Z Lambda``, and the blocks of the inverse.

        Returns
        -------
        P1 : ndarray (n, k1)
            At the first term's columns of the row.
        PR : ndarray (n, nslots)
            At the row's column of each slot of the other terms.
        parts : tuple
            :meth:`inverse_parts`.
        """
        Bk = self.blocks
        D11, Bd, G = parts = self.inverse_parts()
        g = Bk.codes1
        P1 = np.einsum("nij,nj->ni", D11[g], z1)
        ns = len(Bk.slots)
        PR = np.zeros((Bk.n, ns))
        if ns:
            Gf = G.ravel()
            for j in range(Bk.k1):
                for s in range(ns):
                    bv = Bd[Bk.pos[j][s]]
                    P1[:, j] += bv * zr[:, s]
                    PR[:, s] += bv * z1[:, j]
            for s in range(ns):
                for s2 in range(ns):
                    PR[:, s] += Gf[Bk.flat[s][s2]] * zr[:, s2]
        return P1, PR, parts
