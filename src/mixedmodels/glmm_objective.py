"""Stage 2 of ``glmer``: the log-likelihood as a function of ``(beta, theta)``.

:class:`ScalarObjective` is the scalar kernel (:mod:`mixedmodels.agq`, adaptive Gauss-Hermite,
any number of points) for a single scalar random-effect term; :func:`make_objective` picks it,
the vector kernel (:class:`mixedmodels.agq_vector.VectorObjective`, one grouping factor with 2-3
columns, ``nagq > 1``) or the Laplace objective (PIRLS) for any other structure. The starting values live here too, as
they depend on the objective. The ``nagq="auto"`` ladder that drives the scalar kernel over
more and more points is :mod:`mixedmodels.glmm_nagq`.
"""

from __future__ import annotations

import numpy as np

from .agq import (DEFAULT_SPAN, POINTS_TOL, TAIL_CUT, ChunkResult, GroupRules, _log_integrand, agq_chunk,
                  choose_rule, make_chunks)
from .agq_vector import MAX_COLUMNS, VectorObjective, vector_agq_applies
from .compress import group_patterns
from .dispersion import with_dispersion
from .glmm_frame import GlmerFrame
from .laplace import LaplaceObjective

__all__ = ["ScalarObjective", "make_objective"]

#: Groups of one rule whose rows x points are fewer than this are evaluated with the next
#: larger rule instead (one kernel call fewer; its fixed cost is worth ~this much arithmetic).
MERGE_ROW_NODES = 20_000


def fold_points(points: np.ndarray, nrows: np.ndarray) -> np.ndarray:
    """Each kernel call costs a fixed overhead: fold a rule's units into the next larger
    rule's (more points, only more accurate) while they are few (their rows x points below
    :data:`MERGE_ROW_NODES`). ``points`` and ``nrows`` per unit; returns the points used."""
    pts = np.array(points, copy=True)
    ks = np.unique(pts)
    for a, b in zip(ks[:-1], ks[1:]):
        sel = pts == a
        if np.sum(nrows[sel]) * a < MERGE_ROW_NODES:
            pts[sel] = b
    return pts


class ScalarObjective:
    """Log-likelihood of a model with one scalar random-effect term, by AGQ.

    Parameters are ``(beta, sigma)``. Data are kept as chunks of whole groups so that the
    kernel's peak memory stays bounded; the conditional modes of the last evaluation warm-start
    the next one. Groups with identical data are evaluated once and weighted by their number
    (:mod:`mixedmodels.compress`, exact) when that saves enough; the kernel's "groups" are
    then these distinct *units*.

    Two kinds of rule: ``nagq`` adaptive Gauss-Hermite points for every group (lme4's), or,
    after :meth:`set_rules`, a trapezoid rule per unit chosen to integrate it to 1e-8
    (:func:`mixedmodels.agq.choose_rule`; ``nagq="auto"``).
    """

    def __init__(self, frame: GlmerFrame, nagq: int, max_rows: int = 200_000,
                 groups: np.ndarray | None = None, compress: bool = True,
                 group_weights: np.ndarray | None = None):
        # group_weights: each group stands for this many identical groups (a table of
        # distinct groups made elsewhere: the Dask fitter's merged patterns); no compression.
        ms = frame.ms
        t = ms.reterms[0]
        self.frame, self.family, self.nagq = frame, frame.family, int(nagq)
        self.p = ms.p
        self.nparams = ms.p + 1
        X, y, m, z, c, codes = ms.X, frame.y, frame.m, t.Z[:, 0], frame.const, t.codes
        off = np.zeros(len(y)) if ms.offset is None else np.asarray(ms.offset, dtype=float)
        ngroups = t.nlevels
        if groups is not None:
            # A subset of whole groups (the warm-up fit on large data sets).
            keep = np.zeros(ngroups, dtype=bool)
            keep[groups] = True
            rows = keep[codes]
            newcode = np.cumsum(keep) - 1
            X, y, m, z, c, codes = X[rows], y[rows], m[rows], z[rows], c[rows], newcode[codes[rows]]
            off = off[rows]
            ngroups = int(keep.sum())
        self.ngroups = ngroups
        offset = off
        self.pattern = None
        weights = None if group_weights is None else np.asarray(group_weights, dtype=float)
        if compress and weights is None:
            gp = group_patterns([y, m, z, offset, X], codes, ngroups)
            if gp.worthwhile:
                is_rep = np.zeros(ngroups, dtype=bool)
                is_rep[gp.rep] = True
                rows = is_rep[codes]
                unit = np.full(ngroups, -1)
                unit[gp.rep] = np.arange(gp.npatterns)
                X, y, m, z, offset, c = X[rows], y[rows], m[rows], z[rows], offset[rows], c[rows]
                codes = unit[codes[rows]]
                self.pattern, weights = gp.pattern, gp.count
        self.nunits = ngroups if self.pattern is None else len(weights)
        self.chunks, self.order = make_chunks(X, y, m, z, offset, c, codes, self.nunits,
                                              max_rows=max_rows, group_weights=weights)
        self._first = np.cumsum([0] + [ch.ngroups for ch in self.chunks])
        self.rules: GroupRules | None = None
        self._parts: list = []
        self._u: np.ndarray | None = None
        self.nevals = 0
        self.last: ChunkResult | None = None
        self._last_params: np.ndarray | None = None
        #: ``(params, loglik)`` with every unit's rule about doubled (:meth:`verify_rules`).
        self.refined_at: tuple[np.ndarray, float] | None = None

    def subset(self, groups: np.ndarray) -> "ScalarObjective":
        """The same objective on a subset of whole groups (indices into the levels)."""
        return ScalarObjective(self.frame, self.nagq, groups=groups)

    # ---- rules ------------------------------------------------------------------------
    def choose_rules(self, params: np.ndarray) -> GroupRules:
        """Per unit, the trapezoid rule that integrates it to 1e-8 at ``params``, never
        smaller than the rules in use (so that repeated choices converge); installs them."""
        params = np.asarray(params, dtype=float)
        beta, sigma = params[:self.p], abs(float(params[self.p]))
        pieces = []
        for i, ch in enumerate(self.chunks):
            sl = slice(self._first[i], self._first[i + 1])
            u0 = None if self._u is None else self._u[sl]
            old = None if self.rules is None else self.rules.take(np.arange(sl.start, sl.stop))
            pieces.append(choose_rule(beta, sigma, ch, self.family, u0=u0, minimum=old))
        rules = GroupRules(*(np.concatenate([getattr(r, f) for r in pieces])
                             for f in ("points", "span", "shift")))
        self.set_rules(rules)
        return rules

    def uniform_rules(self, points: int, span: float = DEFAULT_SPAN) -> None:
        """Install the same trapezoid rule for every unit: ``points`` points over ``span``
        Laplace scales either side of its mode (the first steps of ``nagq="auto"``)."""
        G = self.nunits
        self.set_rules(GroupRules(np.full(G, int(points), dtype=np.int64),
                                  np.full(G, float(span)), np.zeros(G)))

    def verify_rules(self, params: np.ndarray, tol: float = POINTS_TOL) -> bool | None:
        """Whether the rules in use still integrate every unit to ``tol`` at ``params``.

        Each unit's log-integral with its rule about doubled (``2k - 1`` points, the same
        range: the trapezoid rule's error then falls to about its square, so the difference
        is the rule's error) must agree with its rule's to ``tol / 2``, the test
        :func:`~mixedmodels.agq.choose_rule` applies between rungs, and the log-integrand
        must have fallen :data:`~mixedmodels.agq.TAIL_CUT` below its mode at both ends of
        the unit's range. The doubled rules' log-likelihood is kept as :attr:`refined_at`
        (it is also the fit's quadrature check). ``None`` when this objective cannot tell
        (no per-unit rules, or another objective's evaluate).
        """
        if self.rules is None:
            return None
        params = np.asarray(params, dtype=float)
        if self._last_params is None or not np.array_equal(self._last_params, params):
            self.evaluate(params, gradient=False)
        last = self.last
        beta, sigma = params[:self.p], float(params[self.p])
        ok = True
        total = 0.0
        for k, ch, idx, span, shift in self._parts:
            r = agq_chunk(beta, sigma, ch, self.family, 2 * k - 1, u0=last.u_hat[idx],
                          gradient=False, rule="trapezoid", span=span, shift=shift)
            total += r.loglik
            ok = ok and bool(np.all(np.abs(r.loglik_groups - last.loglik_groups[idx])
                                    <= 0.5 * tol))
            if ok:
                # Both ends of the range, in units of the Laplace scale from the mode.
                s = 1.0 / np.sqrt(r.h)
                u = r.u_hat[:, None] + s[:, None] * np.column_stack(
                    [np.zeros(len(s)), shift - span, shift + span])
                g = _log_integrand(beta, sigma, ch, self.family, u)
                ok = bool(np.all(g[:, 1:] - g[:, :1] < -TAIL_CUT))
        self.refined_at = (params.copy(), float(total))
        return ok

    def set_rules(self, rules: GroupRules | None) -> None:
        """Use per-unit trapezoid rules (``None``: back to ``nagq`` Gauss-Hermite points)."""
        self.rules = rules
        self._parts = []
        self.refined_at = None
        self._at_x = None  # a cached evaluation (glmm_optimize) is stale under new rules
        if rules is None:
            return
        for i, ch in enumerate(self.chunks):
            idx = np.arange(self._first[i], self._first[i + 1])
            pts = self._fold_points(rules.points[idx], ch.nrows)
            for k in np.unique(pts):
                sel = np.flatnonzero(pts == k)
                sub = ch if len(sel) == ch.ngroups else ch.subset(sel)
                self._parts.append((int(k), sub, idx[sel], rules.span[idx[sel]],
                                    rules.shift[idx[sel]]))

    def _fold_points(self, points: np.ndarray, nrows: np.ndarray) -> np.ndarray:
        """The points each unit of a chunk is evaluated with (:func:`fold_points`; the Dask
        fitter's partitions fold by a decision taken over all partitions)."""
        return fold_points(points, nrows)

    @property
    def analytic_hessian(self) -> bool:
        """Whether :func:`mixedmodels.glmm_optimize._hessian` uses the kernel's Hessian:
        with per-unit rules converged to 1e-8 (``nagq="auto"``), where differentiating under
        the integral is exact to that accuracy; a fixed Gauss-Hermite rule keeps finite
        differences of its own gradient."""
        # Only the in-memory kernel's evaluate computes it (the Dask objective says so itself).
        return (self.rules is not None and not getattr(self, "has_dispersion", False)
                and type(self).evaluate is ScalarObjective.evaluate)

    @property
    def points_range(self) -> tuple[int, int]:
        """Fewest and most points any group is integrated with."""
        if self.rules is None:
            return self.nagq, self.nagq
        return int(self.rules.points.min()), int(self.rules.points.max())

    # ---- evaluation -------------------------------------------------------------------
    def lower(self) -> np.ndarray:
        """Lower bounds of ``(beta, theta)`` (theta's from the frame's covariance layout)."""
        return np.concatenate([np.full(self.p, -np.inf), self.frame.layout.lower])

    def reset(self) -> None:
        """Forget the warm starts (after a failed evaluation)."""
        self._u = None

    def evaluate(self, params: np.ndarray, gradient: bool = True, nagq: int | None = None,
                 keep: bool = True, opg: bool = False, refine: bool = False,
                 hessian: bool = False):
        """Log-likelihood (and gradient, and outer products of scores) at ``params``.

        ``nagq`` evaluates with that many Gauss-Hermite points instead of the rules in use;
        ``refine`` with every unit's trapezoid rule about doubled (the quadrature check).
        ``hessian`` returns ``(loglik, gradient, negative Hessian)``, the Hessian by
        differentiating under the integral (:func:`mixedmodels.agq._neg_hessian`).
        """
        params = np.asarray(params, dtype=float)
        beta, sigma = params[:self.p], float(params[self.p])
        G = self.nunits
        u_all, h_all, llg = np.empty(G), np.empty(G), np.empty(G)
        loglik, grad, outer, iters, nhess = 0.0, None, None, 0, None
        want_grad = gradient or opg or hessian
        if self.rules is None or nagq is not None:
            jobs = [(nagq or self.nagq, ch, np.arange(self._first[i], self._first[i + 1]),
                     None, None) for i, ch in enumerate(self.chunks)]
            rule = "gh"
        else:
            jobs = [((2 * k - 1) if refine else k, sub, idx, span, shift)
                    for (k, sub, idx, span, shift) in self._parts]
            rule = "trapezoid"
        for k, ch, idx, span, shift in jobs:
            u0 = None if self._u is None else self._u[idx]
            r = agq_chunk(beta, sigma, ch, self.family, k, u0=u0, gradient=want_grad,
                          opg=opg, rule=rule, span=span, shift=shift, hessian=hessian)
            loglik += r.loglik
            if want_grad:
                grad = r.grad if grad is None else grad + r.grad
            if opg:
                outer = r.opg if outer is None else outer + r.opg
            if hessian:
                nhess = r.neg_hessian if nhess is None else nhess + r.neg_hessian
            u_all[idx], h_all[idx], llg[idx] = r.u_hat, r.h, r.loglik_groups
            iters = max(iters, r.newton_iters)
        self.nevals += 1
        if keep:
            if np.all(np.isfinite(u_all)):
                self._u = u_all
            self.last = ChunkResult(loglik, grad, u_all, h_all, llg, iters, outer)
            # (Per-unit results of the rules in use, for verify_rules.)
            self._last_params = params.copy() if self.rules is not None and nagq is None \
                and not refine else None
        if opg:
            return loglik, grad, outer
        if hessian:
            return loglik, grad, nhess
        if gradient:
            return loglik, grad
        return loglik, None

    def modes(self, params):
        """Conditional modes ``b`` and their conditional SDs, per level."""
        _, _ = self.evaluate(params, gradient=False)
        sigma = float(params[self.p])
        r = self.last
        b, sd = sigma * r.u_hat, sigma / np.sqrt(r.h)
        if self.pattern is not None:
            b, sd = b[self.pattern], sd[self.pattern]
        return b, sd


def make_objective(frame: GlmerFrame, nagq: int):
    """Stage 2: the log-likelihood (and gradient) as a function of ``(beta, theta)``.

    Raises
    ------
    ValueError
        ``nagq > 1`` with several grouping factors or more than 3 random effects per group:
        with crossed or nested factors the integral no longer splits into one small integral
        per group, and a product rule costs ``nagq ** (random effects per group)`` points.
        One grouping factor with 2 or 3 columns (``(x | g)``, ``(x || g)``) gets the vector
        kernel (:mod:`mixedmodels.agq_vector`).
    """
    if frame.scalar:
        return with_dispersion(ScalarObjective(frame, nagq), frame)
    if nagq != 1 and vector_agq_applies(frame.ms.reterms):
        return with_dispersion(VectorObjective(frame, nagq), frame)
    if nagq != 1:
        terms = ", ".join(str(t.spec) for t in frame.ms.reterms)
        raise ValueError(
            f"nagq={nagq} (adaptive Gauss-Hermite quadrature) needs a single grouping factor "
            f"with at most {MAX_COLUMNS} random effects per level, such as (1 | g) or (x | g); "
            f"this model has {terms}. With several grouping factors the integral over the "
            "random effects does not split into small integrals per group, and a product rule "
            "would cost nagq ** dimension points. Use nagq=1 (Laplace).")
    return with_dispersion(LaplaceObjective(frame), frame)


def _glm_start(frame: GlmerFrame) -> np.ndarray:
    """Fixed effects of the GLM without random effects (IRLS), the optimizer's start."""
    X, y, m, fam = frame.ms.X, frame.y, frame.m, frame.family
    off = 0.0 if frame.ms.offset is None else frame.ms.offset
    mu0 = (m * y + 0.5) / (m + 1.0) if fam.name == "binomial" else y + 0.1
    eta = fam.linkfun(mu0)
    beta = np.linalg.lstsq(X, eta - off, rcond=None)[0]
    for _ in range(50):
        eta = X @ beta + off
        d1, d2 = fam.derivs(eta, y, m)
        w = -d2 + 1e-10
        step = np.linalg.lstsq(X * np.sqrt(w)[:, None], d1 / np.sqrt(w), rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    # A separated GLM drifts to huge values; keep the start sane.
    return np.clip(beta, -30, 30)


def _default_start(frame: GlmerFrame, obj) -> np.ndarray:
    if getattr(obj, "has_dispersion", False) and not getattr(obj, "_in_start", False):
        obj._in_start = True   # the (beta, theta) start first, then the dispersion's
        try:
            return obj.dispersion_start_params(frame, _default_start(frame, obj))
        finally:
            obj._in_start = False
    if hasattr(obj, "default_start"):
        # An objective whose rows live elsewhere (the Dask one) computes the same start
        # from sums over its partitions.
        return obj.default_start()
    beta = _glm_start(frame)
    if isinstance(obj, ScalarObjective):
        t = frame.ms.reterms[0]
        if np.all(t.Z[:, 0] == 1.0):
            # Random intercept: start from the groups' empirical link values (0.5 added
            # against log(0)), their mean shifting the intercept and their SD as sigma. A
            # GLM start (sigma = 1) is far off when groups differ a lot, and costs the
            # optimizer several steps to walk sigma up.
            S = np.bincount(t.codes, frame.y * frame.m, t.nlevels)
            N = np.bincount(t.codes, frame.m, t.nlevels)
            off = 0.0 if frame.ms.offset is None else frame.ms.offset
            fixed = np.bincount(t.codes, (frame.ms.X @ beta + off) * frame.m, t.nlevels)
            ok = N > 0
            if frame.family.name == "binomial" and frame.family.link == "logit":
                e = np.log((S[ok] + 0.5) / (N[ok] - S[ok] + 0.5))
            elif frame.family.name == "binomial":
                e = frame.family.linkfun((S[ok] + 0.5) / (N[ok] + 1.0))
            else:
                e = np.log((S[ok] + 0.5) / N[ok])
            e = e - fixed[ok] / N[ok]
            sd = float(np.std(e))
            icpt = [j for j, nm in enumerate(frame.ms.xnames) if nm == "(Intercept)"]
            if np.isfinite(sd) and sd > 0.1 and icpt:
                beta = beta.copy()
                beta[icpt[0]] += float(np.mean(e))
                return np.concatenate([beta, [sd]])
        return np.concatenate([beta, [1.0]])
    return np.concatenate([beta, frame.layout.start()])
