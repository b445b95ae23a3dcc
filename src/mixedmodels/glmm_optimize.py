"""Stages 3-4 of ``glmer``: maximize the log-likelihood (BHHH or BFGS, then Newton steps on a
finite-difference Hessian of the analytic gradient) and check the optimum (gradient, Newton
decrement, curvature), recorded in an :class:`~mixedmodels.results.OptSummary`.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize as sopt

from .boundary import probe_inside
from .glmm_objective import ScalarObjective
from .results import OptSummary

__all__ = ["GlmerOptSummary", "optimize_glmer", "check_optimum"]

#: Newton steps stop when the next one would raise the log-likelihood by less than this
#: (about its rounding error for a few thousand observations).
NEWTON_DONE = 1e-12


#: The GLMM's record is the one :class:`~mixedmodels.results.OptSummary` of both fitters; the
#: old name stays for code that imports it.
GlmerOptSummary = OptSummary


def _hessian(obj, x: np.ndarray, free: np.ndarray | None = None) -> np.ndarray:
    """Negative Hessian of the log-likelihood (central differences of the analytic gradient),
    over the ``free`` parameters; the kernel's analytic Hessian (one pass) where the
    objective offers one."""
    free = np.arange(len(x)) if free is None else free
    if getattr(obj, "analytic_hessian", False):
        ll, g, H = obj.evaluate(x, hessian=True)
        if np.isfinite(ll) and np.all(np.isfinite(H)):
            obj._at_x = (x.copy(), ll, g)
            H = H[np.ix_(free, free)]
            return 0.5 * (H + H.T)
    k = len(free)
    H = np.empty((k, k))
    for c, j in enumerate(free):
        h = 1e-4 * max(1.0, abs(x[j]))
        xp, xm = x.copy(), x.copy()
        xp[j] += h
        xm[j] -= h
        gp = obj.evaluate(xp)[1]
        gm = obj.evaluate(xm)[1]
        H[:, c] = -(gp - gm)[free] / (2 * h)
    obj._at_x = (x.copy(), *obj.evaluate(x))  # leaves the warm starts at x, saves a pass
    return 0.5 * (H + H.T)


def _safe_evaluate(obj, x):
    """Evaluate, turning overflow and failed factorizations (wild trial points of a line
    search) into a log-likelihood of -inf that the optimizer backs away from."""
    ll, g, _ = _safe_evaluate_h(obj, x, False)
    return ll, g


def _safe_evaluate_h(obj, x, hessian: bool):
    """:func:`_safe_evaluate`, with ``hessian`` (an objective with the kernel's analytic
    Hessian) also the symmetrized negative Hessian, ``None`` where not finite or not asked
    for: ``(loglik, gradient, H)``."""
    H = None
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            if hessian:
                ll, g, H = obj.evaluate(x, hessian=True)
            else:
                ll, g = obj.evaluate(x)
    except (np.linalg.LinAlgError, FloatingPointError, ValueError, OverflowError):
        obj.reset()
        ll, g = -np.inf, None
    if not np.isfinite(ll) or g is None or not np.all(np.isfinite(g)):
        obj.reset()
        ll, g, H = -np.inf, None, None
    if H is not None:
        H = 0.5 * (H + H.T) if np.all(np.isfinite(H)) else None
    return ll, g, H


def _bhhh(obj, x0, free, maxiter=100, tol=1e-6):
    """BHHH ascent: Newton-like steps with the summed outer products of the groups' scores as
    the information. With many independent groups this is close to the Fisher information,
    so a handful of steps (one kernel pass each, no finite differences) nears the optimum;
    Newton steps on the true Hessian finish the job."""
    x = x0.copy()
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        ll, g, B = obj.evaluate(x, opg=True)
    if not np.isfinite(ll):
        raise FloatingPointError("the log-likelihood could not be evaluated at the start")
    for it in range(maxiter):
        gf, Bf = g[free], B[np.ix_(free, free)]
        Bf = Bf + 1e-8 * np.trace(Bf) / len(free) * np.eye(len(free))
        try:
            step = np.linalg.solve(Bf, gf)
        except np.linalg.LinAlgError:
            step = np.full(len(free), np.nan)
        if not np.all(np.isfinite(step)):
            # The scores vanish (e.g. complete separation: every fitted probability is 0 or
            # 1), so their outer products carry no information; the check of the optimum and
            # the separation diagnosis take it from here.
            return x, f"BHHH stopped: the information matrix is singular ({it} steps)"
        dec = float(gf @ step)
        if dec < tol:
            return x, f"BHHH converged ({it} steps)"
        t = 1.0
        while t > 1e-6:
            xn = x.copy()
            xn[free] = x[free] + t * step
            try:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    lln, gn, Bn = obj.evaluate(xn, opg=True)
            except (np.linalg.LinAlgError, FloatingPointError, ValueError, OverflowError):
                lln = -np.inf
            if np.isfinite(lln) and lln >= ll:
                break
            obj.reset()
            t *= 0.5
        else:
            return x, "BHHH line search failed"
        x, ll, g, B = xn, lln, gn, Bn
    return x, "BHHH iteration limit"


def _newton_polish(obj, x, ll, g, free, H=None, maxsteps=10, fresh=False):
    """Newton steps on the free parameters, reusing one Hessian while steps keep gaining.

    ``fresh``: ``H`` was computed at ``x`` itself (not at a nearby point)."""
    steps = 0
    x_H = x.copy() if fresh and H is not None else None
    analytic = bool(getattr(obj, "analytic_hessian", False))
    for _ in range(maxsteps):
        if H is None:
            H = _hessian(obj, x, free)
            fresh = True
            x_H = x.copy()
        gf = g[free]
        try:
            step = np.linalg.solve(H, gf)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(step)):
            break
        if 0.0 <= 0.5 * float(gf @ step) < NEWTON_DONE:
            break  # a step would gain less than rounding error in the log-likelihood
        t, improved = 1.0, False
        while t > 1e-3:
            xn = x.copy()
            xn[free] = x[free] + t * step
            lln, gn, Hn = _safe_evaluate_h(obj, xn, analytic)
            if np.isfinite(lln) and lln >= ll - 1e-10 * (1.0 + abs(ll)):
                improved = True
                break
            t *= 0.5
        if not improved:
            obj.evaluate(x)
            if fresh:
                break
            H = None  # a stale Hessian: refresh once and retry
            continue
        x, ll, g = xn, lln, gn
        steps += 1
        fresh = False
        if Hn is not None:
            # The kernel's Hessian came with the step's evaluation (about 1.7 passes instead
            # of a pass now and another for the Hessian at the end): the next step, and the
            # check of the optimum, use the Hessian at the point itself.
            H, fresh, x_H = Hn[np.ix_(free, free)], True, x.copy()
            obj._at_x = (x.copy(), ll, g)
        if np.max(np.abs(t * step) / (1.0 + np.abs(x[free]))) < 1e-10:
            break
    return x, ll, g, steps, H, x_H


def optimize_glmer(obj, start: np.ndarray, fixed: dict[int, float] | None = None,
                   hessian: np.ndarray | None = None, hessian_at: np.ndarray | None = None
                   ) -> OptSummary:
    """Stage 3: maximize the log-likelihood from ``start``.

    A quasi-Newton phase on the analytic gradient (BHHH for the scalar kernel, whose per-group
    scores give an information matrix for free; BFGS for the Laplace path), then Newton steps
    on a finite-difference Hessian of that gradient until a step gains nothing. No bounds are needed: the likelihood depends on each
    column of a covariance factor only up to its sign (``b`` and ``-b`` have the same
    distribution), so a standard deviation may wander below zero and is reported as its
    absolute value (:func:`_normalize`). ``fixed`` holds parameters at given values
    (profiling). With ``hessian`` (the negative Hessian at a nearby optimum, e.g. the previous
    rule's in ``nagq="auto"``) the quasi-Newton phase is skipped; ``hessian_at`` says it was
    computed at ``start`` itself (then it is not recomputed if the first step fails).
    """
    fixed = fixed or {}
    free = np.array([j for j in range(obj.nparams) if j not in fixed], dtype=int)
    x0 = np.asarray(start, dtype=float).copy()
    for j, v in fixed.items():
        x0[j] = v
    n0 = obj.nevals

    def full(xf):
        x = x0.copy()
        x[free] = xf
        return x

    def f(xf):
        ll, g = _safe_evaluate(obj, full(xf))
        if not np.isfinite(ll) or not np.all(np.isfinite(g)):
            return 1e300, np.zeros(len(xf))
        return -ll, -g[free]

    def quasi_newton(xs):
        if isinstance(obj, ScalarObjective):
            xq, msg = _bhhh(obj, xs, free)
            return xq, msg
        res = sopt.minimize(f, xs[free], jac=True, method="BFGS", options={"maxiter": 1000, "gtol": 1e-4})
        return full(res.x), str(res.message)

    if hessian is not None:
        x, message = x0, "Newton from a nearby optimum"
        H0 = hessian[np.ix_(free, free)]
    else:
        x, message = quasi_newton(x0)
        H0 = None
    fresh = (H0 is not None and hessian_at is not None and len(free) == obj.nparams
             and np.array_equal(hessian_at, x))
    at = getattr(obj, "_at_x", None)
    if fresh and at is not None and np.array_equal(at[0], x):
        ll, g = at[1], at[2]  # the caller's Hessian pass evaluated them there just now
    else:
        ll, g = _safe_evaluate(obj, x)
    if g is None:  # the start itself failed to evaluate
        raise FloatingPointError("the log-likelihood could not be evaluated at the start")
    x, ll, g, steps, H, x_H = _newton_polish(obj, x, ll, g, free, H=H0, fresh=fresh)
    # The boundary rule (mixedmodels.boundary): an SD that ends at 0 is an optimum only if the
    # log-likelihood falls as it moves away from 0. It is flat to first order there (b and -b
    # have the same distribution), so a zero gradient proves nothing; restart from a better
    # point if a step finds one.
    for _ in range(3):
        better = _probe_zero_sds(obj, x, ll, free)
        if better is None:
            break
        x, message = quasi_newton(better)
        ll, g = _safe_evaluate(obj, x)
        if g is None:
            x = better
            ll, g = _safe_evaluate(obj, x)
        x, ll, g, more, H, x_H = _newton_polish(obj, x, ll, g, free)
        steps += more
        message += "; restarted off a zero standard deviation"
    opt = OptSummary(initial=np.asarray(start, dtype=float), final=x, loglik=ll,
                     optimizer="BHHH + Newton" if message.startswith("BHHH") else "BFGS + Newton",
                     feval=obj.nevals - n0, newton_steps=steps,
                     message=message, gradient=g)
    if x_H is not None and len(free) == obj.nparams:
        opt._hessian_at = (x_H, H)
    return opt


def _probe_zero_sds(obj, x: np.ndarray, ll: float, free=None) -> np.ndarray | None:
    """A better point with a zero SD moved off 0, or None (see :mod:`mixedmodels.boundary`)."""
    free_set = set(range(len(x)) if free is None else np.asarray(free).tolist())
    zero = [j for j in _sd_indices(obj) if j in free_set and abs(x[j]) < 1e-4]
    if not zero or not np.isfinite(ll):
        return None

    def deviance(z):
        value, _ = _safe_evaluate(obj, z)
        return -2.0 * value

    better = probe_inside(deviance, x, zero, -2.0 * ll)
    if better is None:
        # A zero diagonal of a vector term: its mirror images (same covariance) too.
        lay, p = obj.frame.layout, obj.p
        th = slice(p, p + lay.ntheta)
        for mirror in lay.flipped_at_zero(x[th], [j - p for j in zero]):
            xm = np.array(x, dtype=float)
            xm[th] = mirror
            better = probe_inside(deviance, xm, zero, -2.0 * ll)
            if better is not None:
                break
    obj.reset()
    _safe_evaluate(obj, x)  # leave the objective's state (modes, warm starts) at x
    return None if better is None else better[0]


def check_optimum(obj, opt: OptSummary, tol_decrement: float = 1e-5) -> OptSummary:
    """Stage 4: is ``opt.final`` a maximum? Fills the Hessian, decrement and verdict.

    The Newton decrement ``g' H^-1 g / 2`` (the log-likelihood a Newton step would still
    gain) must be below ``tol_decrement`` and ``H`` (the negative Hessian) positive definite,
    except along a standard deviation at zero (a singular fit), where the curvature may
    vanish.
    """
    x = _normalize(obj, opt.final)
    cached = getattr(opt, "_hessian_at", None)
    if (cached is not None and np.array_equal(cached[0], opt.final)
            or cached is not None and np.all(x == opt.final)
            and np.max(np.abs(cached[0] - x) / (1.0 + np.abs(x))) < 1e-4):
        # The Newton phase's Hessian, computed within 1e-4 of here: good for SEs to ~1e-4.
        H = cached[1]
    else:
        H = _hessian(obj, x)
    at = getattr(obj, "_at_x", None)
    if at is not None and np.array_equal(at[0], x):
        ll, g = at[1], at[2]
    else:
        ll, g = obj.evaluate(x)
    msgs = []
    ok = True
    sd_idx = _sd_indices(obj)
    zero_sd = [j for j in sd_idx if abs(x[j]) < 1e-4]
    act = np.array([j for j in range(len(x)) if j not in zero_sd], dtype=int)
    Ha = H[np.ix_(act, act)]
    try:
        np.linalg.cholesky(Ha)
        dec = float(0.5 * g[act] @ np.linalg.solve(Ha, g[act]))
    except np.linalg.LinAlgError:
        ok = False
        dec = np.nan
        msgs.append("the Hessian is not positive definite at the final point (not a maximum, "
                    "or a flat direction: check for complete separation)")
    if ok and zero_sd and _probe_zero_sds(obj, x, ll) is not None:
        ok = False
        msgs.append("a standard deviation is 0 but the log-likelihood rises when it moves away from 0 "
                    "(negative curvature at the boundary): not at the optimum")
    if ok and not dec <= tol_decrement:
        ok = False
        msgs.append(f"a Newton step would still raise the log-likelihood by {dec:.3g} "
                    f"(largest gradient {np.max(np.abs(g[act])):.3g}): not at the optimum")
    opt.final = x
    opt.hessian, opt.gradient, opt.newton_decrement, opt.loglik = H, g, dec, ll
    opt.converged = ok
    opt.convergence_message = ("; ".join(msgs) if msgs
                               else "gradient ~ 0 and Hessian positive definite")
    return opt


def _sd_indices(obj) -> list[int]:
    """Positions of the covariance factors' diagonal entries in ``(beta, theta)``."""
    return [obj.p + int(r) for r in np.flatnonzero(obj.frame.layout.diagonal)]


def _normalize(obj, x: np.ndarray) -> np.ndarray:
    """Flip signs so every covariance factor has a non-negative diagonal (same likelihood)."""
    x = np.array(x, dtype=float)
    lay = obj.frame.layout
    th = slice(obj.p, obj.p + lay.ntheta)   # a dispersion parameter may follow theta
    x[th] = lay.normalize(x[th])
    return x
