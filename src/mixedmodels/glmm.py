"""Generalized linear mixed models: ``glmer``.

A fit is a pipeline of named stages, as lme4's ``glmer``:

1. :func:`glmer_frame` -- parse the formula (``formula.build_model``), read the response the
   binomial or Poisson way, validate it;
2. :func:`make_objective` -- the log-likelihood as a function of ``(beta, theta)``: the
   scalar kernel (:mod:`mixedmodels.agq`, adaptive Gauss-Hermite, any number of points) when
   there is a single scalar random-effect term, Laplace by penalized iteratively reweighted
   least squares (PIRLS) for any other random-effects structure;
3. :func:`optimize_glmer` -- L-BFGS-B with analytic gradients, then Newton steps on a
   finite-difference Hessian of the analytic gradient;
4. :func:`check_optimum` -- is it a maximum? (gradient, Newton decrement, curvature);
5. :class:`GlmerResult` -- accessors like the LMM's, ``summary()``, ``predict()``,
   ``confint()``.

The log-likelihood is the marginal log-likelihood with every constant (the binomial
coefficient, ``-log y!``), on the same scale for every number of quadrature points (lme4
reports another constant when nAGQ > 1). Parameters: ``beta`` (fixed effects) and
``theta`` (lme4's: the lower-triangular factor of each term's covariance, column-wise; for a
scalar term, its standard deviation).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.optimize as sopt
from scipy.stats import norm

from .agq import agq_chunk, make_chunks
from .families import Family, get_family
from .formula import ModelStructure, build_model
from .laplace import MAX_DENSE_Q, LaplaceObjective  # noqa: F401  (re-exported)
from .quadrature import gauss_hermite
from .results import ConvergenceWarning
from .summary import ModelSummary, random_effects_table, residual_quantiles

# One BLAS thread while fitting: a busy 2-core machine makes threaded BLAS crawl.
from .lmm import single_thread_blas

__all__ = [
    "glmer", "glmer_frame", "make_objective", "optimize_glmer", "check_optimum",
    "GlmerFrame", "GlmerResult", "GlmerOptSummary", "QuadratureWarning", "ConvergenceWarning",
]

AUTO_LADDER = (10, 20, 40, 80, 160, 320)
#: nagq="auto" stops when two successive rules agree this well (log-likelihood, absolute;
#: parameters, relative to 1 + |value|).
AUTO_TOL_LOGLIK = 2e-4
AUTO_TOL_PARAM = 1e-4
#: A fit's quadrature is flagged as not converged when doubling the points moves the
#: log-likelihood at the estimates by more than this.
QUAD_CHECK_TOL = 1e-2
#: Data sets with more than 4x this many groups are first fitted on this many random groups.
WARMUP_GROUPS = 10_000


class QuadratureWarning(UserWarning):
    """The quadrature rule is too coarse for this fit's log-likelihood."""


# =========================================================================================
# Stage 1: the model frame
# =========================================================================================


@dataclass
class GlmerFrame:
    """The model structure plus the response read the GLM way.

    Attributes
    ----------
    ms : ModelStructure
        From :func:`mixedmodels.formula.build_model`.
    family : Family
    y : ndarray
        Response on the mean scale (a proportion for the binomial).
    m : ndarray
        Prior weights (binomial: numbers of trials).
    const : ndarray
        Each row's log-probability constant (binomial coefficient, ``-log y!``).
    weights_label : str or None
        How the weights were given (for the summary's ``Weights:`` line).
    """

    ms: ModelStructure
    family: Family
    y: np.ndarray
    m: np.ndarray
    const: np.ndarray
    weights_label: str | None = None

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def scalar(self) -> bool:
        """A single random-effect term with one column: the AGQ kernel applies."""
        r = self.ms.reterms
        return len(r) == 1 and r[0].k == 1


def _weights_array(weights, data: pd.DataFrame, rows: pd.Index) -> tuple[np.ndarray | None, str | None]:
    if weights is None:
        return None, None
    if isinstance(weights, str):
        if weights not in data.columns:
            raise ValueError(f"`weights`={weights!r} is not a column of data")
        w = data.loc[rows, weights].to_numpy(dtype=float)
        label = weights
    else:
        w_all = np.asarray(weights, dtype=float).ravel()
        if len(w_all) != len(data):
            raise ValueError(f"`weights` has {len(w_all)} values but data has {len(data)} rows")
        w = pd.Series(w_all, index=data.index).loc[rows].to_numpy()
        label = "weights"
    if not np.all(np.isfinite(w)):
        raise ValueError("`weights` must be finite numbers")
    if np.any(w < 0):
        raise ValueError(f"`weights` must not be negative ({int(np.sum(w < 0))} negative values)")
    return w, label


def _is_whole(a: np.ndarray, tol: float = 1e-7) -> np.ndarray:
    return np.abs(a - np.round(a)) <= tol * np.maximum(1.0, np.abs(a))


def _binomial_response(ms: ModelStructure, w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    lhs = ms.parsed.lhs
    if ms.y.ndim == 2:  # cbind(successes, failures)
        if w is not None:
            raise ValueError("`weights` cannot be combined with a cbind(successes, failures) response")
        s, f = ms.y[:, 0], ms.y[:, 1]
        if np.any(s < 0) or np.any(f < 0):
            raise ValueError(f"the response {lhs!r}: successes and failures must not be negative")
        m = s + f
        if not np.all(_is_whole(s) & _is_whole(f)):
            warnings.warn(f"non-integer counts in the binomial response {lhs!r} (R: 'non-integer "
                          "counts in a binomial glm!')", UserWarning, stacklevel=5)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(m > 0, s / np.where(m > 0, m, 1.0), 0.0)
        return y, m
    if ms.lhs_ratio is not None and w is None:
        # `clicks/expos` without weights: successes out of trials, as the post means it.
        num, den = ms.lhs_ratio
        if np.any(den < 0) or np.any(num < 0):
            raise ValueError(f"the response {lhs!r}: counts must not be negative")
        if np.any(num > den):
            raise ValueError(f"the response {lhs!r} has proportions above 1 (numerator > denominator "
                             f"in {int(np.sum(num > den))} rows)")
        m = den.astype(float)
        with np.errstate(invalid="ignore", divide="ignore"):
            y = np.where(m > 0, num / np.where(m > 0, m, 1.0), 0.0)
    else:
        y = np.asarray(ms.y, dtype=float)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"the response {lhs!r} has missing or infinite values "
                             "(a zero denominator?)")
        if np.any(y < 0) or np.any(y > 1):
            raise ValueError(f"the binomial response {lhs!r} must be a proportion in [0, 1] "
                             f"(or 0/1); {int(np.sum((y < 0) | (y > 1)))} values are outside")
        m = np.ones_like(y) if w is None else w
    if not np.all(_is_whole(m * y)):
        warnings.warn(f"non-integer #successes in a binomial glm! (response {lhs!r}: "
                      "weights x proportion is not a whole number in "
                      f"{int(np.sum(~_is_whole(m * y)))} rows)", UserWarning, stacklevel=5)
    return y, m


def _check_zero_denominators(formula: str, data: pd.DataFrame) -> None:
    """``clicks/expos`` with ``expos == 0`` is 0/0: say so before the formula code sees a NaN."""
    from .formula import parse_formula

    if not isinstance(data, pd.DataFrame):
        return
    lhs = parse_formula(formula).lhs
    halves = [h.strip() for h in lhs.split("/")]
    if len(halves) == 2 and all(h in data.columns for h in halves):
        den = pd.to_numeric(data[halves[1]], errors="coerce")
        k = int((den == 0).sum())
        if k:
            raise ValueError(
                f"{k} rows have zero trials ({halves[1]} == 0), so the proportion {lhs} is 0/0 "
                f"there; drop those rows, or write cbind({halves[0]}, {halves[1]} - {halves[0]}), "
                "which keeps them (they carry no information)")


def glmer_frame(formula: str, data: pd.DataFrame, family: str | Family = "binomial",
                weights: str | np.ndarray | None = None, link: str | None = None) -> GlmerFrame:
    """Stage 1: evaluate the formula and read the response (see :func:`glmer`)."""
    fam = get_family(family, link)
    _check_zero_denominators(formula, data)
    ms = build_model(formula, data)
    if not ms.reterms:
        raise ValueError(f"formula {formula!r} has no random-effects term such as (1 | g); "
                         "use a GLM for a model without random effects")
    w, wlabel = _weights_array(weights, data, ms.rows)
    if fam.name == "binomial":
        y, m = _binomial_response(ms, w)
    else:
        if ms.y.ndim != 1:
            raise ValueError("a Poisson response must be a single column of counts")
        y = np.asarray(ms.y, dtype=float)
        if np.any(y < 0):
            raise ValueError(f"the Poisson response {ms.parsed.lhs!r} has "
                             f"{int(np.sum(y < 0))} negative counts")
        if not np.all(_is_whole(y)):
            warnings.warn(f"the Poisson response {ms.parsed.lhs!r} has non-integer counts in "
                          f"{int(np.sum(~_is_whole(y)))} rows; the log-likelihood uses "
                          "lgamma(y + 1) for log y!", UserWarning, stacklevel=4)
        m = np.ones_like(y) if w is None else w
    zero = m == 0
    if np.any(zero):
        warnings.warn(f"{int(zero.sum())} rows have zero trials/weight and carry no information",
                      UserWarning, stacklevel=4)
    const = fam.log_const(y, m)
    return GlmerFrame(ms, fam, y, m, const, wlabel)


# =========================================================================================
# Stage 2: the objective
# =========================================================================================


class ScalarObjective:
    """Log-likelihood of a model with one scalar random-effect term, by AGQ.

    Parameters are ``(beta, sigma)``. Data are kept as chunks of whole groups so that the
    kernel's peak memory stays bounded; the conditional modes of the last evaluation warm-start
    the next one.
    """

    def __init__(self, frame: GlmerFrame, nagq: int, max_rows: int = 200_000,
                 groups: np.ndarray | None = None):
        ms = frame.ms
        t = ms.reterms[0]
        self.frame, self.family, self.nagq = frame, frame.family, int(nagq)
        self.p = ms.p
        self.nparams = ms.p + 1
        X, y, m, z, c, codes = ms.X, frame.y, frame.m, t.Z[:, 0], frame.const, t.codes
        ngroups = t.nlevels
        if groups is not None:
            # A subset of whole groups (the warm-up fit on large data sets).
            keep = np.zeros(ngroups, dtype=bool)
            keep[groups] = True
            rows = keep[codes]
            newcode = np.cumsum(keep) - 1
            X, y, m, z, c, codes = X[rows], y[rows], m[rows], z[rows], c[rows], newcode[codes[rows]]
            ngroups = int(keep.sum())
        self.ngroups = ngroups
        self.chunks, self.order = make_chunks(X, y, m, z, np.zeros(len(y)), c, codes, ngroups,
                                              max_rows=max_rows)
        self._warm = [None] * len(self.chunks)
        self.nevals = 0
        self.last = None

    def lower(self) -> np.ndarray:
        return np.concatenate([np.full(self.p, -np.inf), [0.0]])

    def reset(self) -> None:
        """Forget the warm starts (after a failed evaluation)."""
        self._warm = [None] * len(self.chunks)

    def evaluate(self, params: np.ndarray, gradient: bool = True, nagq: int | None = None,
                 keep: bool = True, opg: bool = False):
        params = np.asarray(params, dtype=float)
        beta, sigma = params[:self.p], float(params[self.p])
        total = None
        for i, ch in enumerate(self.chunks):
            r = agq_chunk(beta, sigma, ch, self.family, nagq or self.nagq, u0=self._warm[i],
                          gradient=gradient or opg, opg=opg)
            if keep and np.all(np.isfinite(r.u_hat)):
                self._warm[i] = r.u_hat
            total = r if total is None else total + r
        self.nevals += 1
        if keep:
            self.last = total
        if opg:
            return total.loglik, total.grad, total.opg
        if gradient:
            return total.loglik, total.grad
        return total.loglik, None

    def modes(self, params):
        """Conditional modes ``b`` and their conditional SDs, per level."""
        _, _ = self.evaluate(params, gradient=False)
        sigma = float(params[self.p])
        r = self.last
        return sigma * r.u_hat, sigma / np.sqrt(r.h)


def make_objective(frame: GlmerFrame, nagq: int):
    """Stage 2: the log-likelihood (and gradient) as a function of ``(beta, theta)``.

    Raises
    ------
    ValueError
        ``nagq > 1`` with several or vector random-effect terms: adaptive quadrature's cost
        grows as ``nagq ** (number of random effects per group)`` and, with crossed terms, the
        integral no longer splits into one small integral per group, so (like lme4) we offer
        it only for a single scalar term.
    """
    if frame.scalar:
        return ScalarObjective(frame, nagq)
    if nagq != 1:
        terms = ", ".join(str(t.spec) for t in frame.ms.reterms)
        raise ValueError(
            f"nagq={nagq} (adaptive Gauss-Hermite quadrature) needs a single scalar random-effect "
            f"term such as (1 | g); this model has {terms}. With several terms, or a vector "
            "term, the integral over the random effects does not split into one-dimensional "
            "integrals per group, and a product rule would cost nagq ** dimension points. "
            "Use nagq=1 (Laplace).")
    return LaplaceObjective(frame)


# =========================================================================================
# Stage 3-4: optimization and the check of the optimum
# =========================================================================================


@dataclass
class GlmerOptSummary:
    """What the optimizer did (like MixedModels.jl's ``OptSummary``).

    Attributes
    ----------
    initial, final : ndarray
        Parameters ``(beta, theta)`` at start and end.
    loglik : float
        Final log-likelihood.
    optimizer : str
    nevals : int
        Objective evaluations.
    newton_steps : int
        Newton polishing steps taken after the quasi-Newton phase.
    message : str
        The optimizer's return message.
    gradient : ndarray
        Gradient of the log-likelihood at the end.
    hessian : ndarray
        Negative Hessian of the log-likelihood (finite differences of the analytic gradient).
    newton_decrement : float
        ``g' H^-1 g / 2``: the log-likelihood a further Newton step would gain.
    converged : bool
    convergence_message : str
    """

    initial: np.ndarray
    final: np.ndarray
    loglik: float
    optimizer: str
    nevals: int
    newton_steps: int
    message: str
    gradient: np.ndarray | None = None
    hessian: np.ndarray | None = None
    newton_decrement: float = np.nan
    converged: bool = False
    convergence_message: str = ""


def _glm_start(frame: GlmerFrame) -> np.ndarray:
    """Fixed effects of the GLM without random effects (IRLS), the optimizer's start."""
    X, y, m, fam = frame.ms.X, frame.y, frame.m, frame.family
    mu0 = (m * y + 0.5) / (m + 1.0) if fam.name == "binomial" else y + 0.1
    eta = fam.linkfun(mu0)
    beta = np.linalg.lstsq(X, eta, rcond=None)[0]
    for _ in range(50):
        eta = X @ beta
        d1, d2 = fam.derivs(eta, y, m)
        w = -d2 + 1e-10
        step = np.linalg.lstsq(X * np.sqrt(w)[:, None], d1 / np.sqrt(w), rcond=None)[0]
        beta = beta + step
        if np.max(np.abs(step)) < 1e-8:
            break
    # A separated GLM drifts to huge values; keep the start sane.
    return np.clip(beta, -30, 30)


def _default_start(frame: GlmerFrame, obj) -> np.ndarray:
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
            fixed = np.bincount(t.codes, (frame.ms.X @ beta) * frame.m, t.nlevels)
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
    theta = np.array([1.0 if a == b else 0.0 for (_, a, b) in obj.th_index])
    return np.concatenate([beta, theta])


def _hessian(obj, x: np.ndarray, free: np.ndarray | None = None) -> np.ndarray:
    """Negative Hessian of the log-likelihood (central differences of the analytic gradient),
    over the ``free`` parameters."""
    free = np.arange(len(x)) if free is None else free
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
    try:
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            ll, g = obj.evaluate(x)
    except (np.linalg.LinAlgError, FloatingPointError, ValueError):
        obj.reset()
        return -np.inf, None
    if not np.isfinite(ll) or g is None or not np.all(np.isfinite(g)):
        obj.reset()
        return -np.inf, None
    return ll, g


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
        step = np.linalg.solve(Bf, gf)
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
            except (np.linalg.LinAlgError, FloatingPointError, ValueError):
                lln = -np.inf
            if np.isfinite(lln) and lln >= ll:
                break
            obj.reset()
            t *= 0.5
        else:
            return x, "BHHH line search failed"
        x, ll, g, B = xn, lln, gn, Bn
    return x, "BHHH iteration limit"


def _newton_polish(obj, x, ll, g, free, H=None, maxsteps=10):
    """Newton steps on the free parameters, reusing one Hessian while steps keep gaining."""
    steps, fresh = 0, False
    x_H = None
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
        t, improved = 1.0, False
        while t > 1e-3:
            xn = x.copy()
            xn[free] = x[free] + t * step
            lln, gn = _safe_evaluate(obj, xn)
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
        if np.max(np.abs(t * step) / (1.0 + np.abs(x[free]))) < 1e-10:
            break
    return x, ll, g, steps, H, x_H


def optimize_glmer(obj, start: np.ndarray, fixed: dict[int, float] | None = None,
                   hessian: np.ndarray | None = None) -> GlmerOptSummary:
    """Stage 3: maximize the log-likelihood from ``start``.

    A quasi-Newton phase on the analytic gradient (BHHH for the scalar kernel, whose per-group
    scores give an information matrix for free; BFGS for the Laplace path), then Newton steps
    on a finite-difference Hessian of that gradient until a step gains nothing. No bounds are needed: the likelihood depends on each
    column of a covariance factor only up to its sign (``b`` and ``-b`` have the same
    distribution), so a standard deviation may wander below zero and is reported as its
    absolute value (:func:`_normalize`). ``fixed`` holds parameters at given values
    (profiling). With ``hessian`` (the negative Hessian at a nearby optimum, e.g. the previous
    rule's in ``nagq="auto"``) the quasi-Newton phase is skipped.
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

    if hessian is not None:
        x, message = x0, "Newton from a nearby optimum"
        ll, g = _safe_evaluate(obj, x)
        H0 = hessian[np.ix_(free, free)]
    elif isinstance(obj, ScalarObjective):
        x, message = _bhhh(obj, x0, free)
        ll, g = _safe_evaluate(obj, x)
        H0 = None
    else:
        opts = {"maxiter": 1000, "gtol": 1e-4}
        res = sopt.minimize(f, x0[free], jac=True, method="BFGS", options=opts)
        x, message, H0 = full(res.x), str(res.message), None
        ll, g = _safe_evaluate(obj, x)
    if g is None:  # the start itself failed to evaluate
        raise FloatingPointError("the log-likelihood could not be evaluated at the start")
    x, ll, g, steps, H, x_H = _newton_polish(obj, x, ll, g, free, H=H0)
    opt = GlmerOptSummary(initial=np.asarray(start, dtype=float), final=x, loglik=ll,
                     optimizer="BHHH + Newton" if message.startswith("BHHH") else "BFGS + Newton",
                     nevals=obj.nevals - n0, newton_steps=steps,
                     message=message, gradient=g)
    if x_H is not None and len(free) == obj.nparams:
        opt._hessian_at = (x_H, H)
    return opt


def check_optimum(obj, opt: GlmerOptSummary, tol_decrement: float = 1e-5) -> GlmerOptSummary:
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
    if isinstance(obj, ScalarObjective):
        return [obj.p]
    return [obj.p + r for r, (_, a, b) in enumerate(obj.th_index) if a == b]


def _normalize(obj, x: np.ndarray) -> np.ndarray:
    """Flip signs so every covariance factor has a non-negative diagonal (same likelihood)."""
    x = np.array(x, dtype=float)
    if isinstance(obj, ScalarObjective):
        x[obj.p] = abs(x[obj.p])
        return x
    for r, (ti, a, b) in enumerate(obj.th_index):
        if a == b and x[obj.p + r] < 0:
            for r2, (tj, a2, b2) in enumerate(obj.th_index):
                if tj == ti and b2 == b:
                    x[obj.p + r2] = -x[obj.p + r2]
    return x


# =========================================================================================
# The driver
# =========================================================================================


def _fit_at(frame, nagq, start=None, obj=None, hessian=None):
    if obj is None:
        obj = make_objective(frame, nagq)
    else:
        obj.nagq = nagq
    if start is None:
        start = _default_start(frame, obj)
        if isinstance(obj, ScalarObjective) and obj.ngroups > 4 * WARMUP_GROUPS and hessian is None:
            # Many groups: fit a random subset of them first. Its optimum is within sampling
            # error of the full one and its Hessian, scaled by the ratio of group counts, is
            # a good Hessian for the full data, so the full data need only Newton steps.
            rng = np.random.default_rng(20160915)
            sub = np.sort(rng.choice(obj.ngroups, WARMUP_GROUPS, replace=False))
            sobj = ScalarObjective(frame, nagq, groups=sub)
            sopt_ = check_optimum(sobj, optimize_glmer(sobj, start))
            if sopt_.converged:
                start = sopt_.final
                hessian = sopt_.hessian * (obj.ngroups / WARMUP_GROUPS)
    try:
        opt = optimize_glmer(obj, start, hessian=hessian)
    except FloatingPointError:
        if hessian is None:
            raise
        opt = optimize_glmer(obj, start)
    # A second start guards against a false optimum: restart from the GLM when the first
    # answer fails its check.
    opt = check_optimum(obj, opt)
    if not opt.converged:
        alt = optimize_glmer(obj, opt.final)
        alt = check_optimum(obj, alt)
        if alt.loglik >= opt.loglik - 1e-9:
            opt = alt
    return obj, opt


def glmer(formula: str, data: pd.DataFrame, family: str | Family = "binomial",
          weights: str | np.ndarray | None = None, nagq: int | str = "auto",
          start: np.ndarray | None = None, link: str | None = None) -> "GlmerResult":
    """Fit a generalized linear mixed model by maximum likelihood.

    Parameters
    ----------
    formula : str
        lme4 syntax. Binomial responses: a 0/1 column; a proportion with ``weights`` = the
        numbers of trials (``"clicks/expos ~ display + (1 | id)"``, ``weights="expos"``, as in
        R); ``a/b`` without weights (successes ``a`` out of ``b`` trials); or
        ``cbind(successes, failures)`` (each argument an expression, e.g.
        ``cbind(incidence, size - incidence)``).
    data : pandas.DataFrame
        Not modified.
    family : {"binomial", "poisson"} or Family
        The family, or a family object with its link, as R's ``binomial(link = "probit")``:
        ``mixedmodels.families.binomial(link="probit")``.
    weights : str or array, optional
        Prior weights (binomial: numbers of trials), a column name or an array.
    nagq : int or "auto"
        Points of adaptive Gauss-Hermite quadrature. 1 is the Laplace approximation (any
        random-effects structure); more points need a single scalar term. ``"auto"`` (the
        default) adds points (10, 20, 40, ...) until the log-likelihood and the estimates stop
        moving, and reports how many it used (``result.nagq``); for other structures it means
        Laplace.
    start : array, optional
        Starting ``(beta, theta)``.
    link : {"logit", "probit", "cloglog"} or {"log"}, optional
        The link, default the canonical one (logit for the binomial, log for the Poisson).
        For probit and cloglog the Laplace approximation and the quadrature nodes are scaled
        by the expected information, as lme4 does, so ``nagq=1`` gives lme4's Laplace fit.

    Returns
    -------
    GlmerResult

    Warns
    -----
    QuadratureWarning
        When doubling the points at the estimates moves the log-likelihood by more than 0.01
        (the rule is too coarse: the estimates are those of an inaccurate approximation).
    ConvergenceWarning
        When the final point fails the check of the optimum.

    Examples
    --------
    >>> import mixedmodels as mm
    >>> fit = mm.glmer("clicks/expos ~ display + (1 | id)", mm.load_ctr(), weights="expos",
    ...                nagq=10)                                      # doctest: +SKIP
    >>> fit = mm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp,
    ...                family=mm.families.binomial(link="probit"))      # doctest: +SKIP
    """
    with single_thread_blas():
        return _glmer(formula, data, family, weights, nagq, start, link)


def _glmer(formula, data, family, weights, nagq, start, link=None):
    frame = glmer_frame(formula, data, family, weights, link)
    auto = isinstance(nagq, str)
    if auto and nagq != "auto":
        raise ValueError(f"`nagq` must be a whole number >= 1 or 'auto', got {nagq!r}")
    if not auto:
        if isinstance(nagq, bool) or not isinstance(nagq, (int, np.integer)) or nagq < 1:
            raise ValueError(f"`nagq` must be a whole number >= 1 or 'auto', got {nagq!r}")
        nagq = int(nagq)
        gauss_hermite(nagq)  # validates the upper limit
    history = []
    if auto and not frame.scalar:
        nagq, auto = 1, False
    if not auto:
        obj, opt = _fit_at(frame, nagq, start)
        quad_converged = None
    else:
        obj, prev, quad_converged = None, None, False
        st = start
        for k in AUTO_LADDER:
            obj, opt = _fit_at(frame, k, st, obj, None if prev is None else prev.hessian)
            history.append((k, opt.loglik, opt.final.copy()))
            if prev is not None:
                dll = abs(opt.loglik - prev.loglik)
                dpar = np.max(np.abs(opt.final - prev.final) / (1.0 + np.abs(opt.final)))
                if dll <= AUTO_TOL_LOGLIK and dpar <= AUTO_TOL_PARAM:
                    quad_converged = True
                    break
            prev, st = opt, opt.final
        nagq = obj.nagq
    res = GlmerResult(frame, obj, opt, nagq, auto=auto, history=history)
    # How good is the rule at the estimates? One evaluation with more points tells.
    if frame.scalar:
        kcheck = min(max(2 * nagq, 20), 1000)
        llc, _ = obj.evaluate(opt.final, gradient=False, nagq=kcheck, keep=False)
        res.loglik_check = (kcheck, float(llc))
        if quad_converged is None:
            quad_converged = abs(llc - opt.loglik) <= QUAD_CHECK_TOL
        res.quadrature_converged = bool(quad_converged)
        if not quad_converged:
            what = "the Laplace approximation (nagq=1)" if nagq == 1 else f"nagq={nagq} points"
            msg = (f"quadrature not converged: with {what} the log-likelihood at the estimates is "
                   f"{opt.loglik:.3f}, with {kcheck} points {llc:.3f}; the estimates are those of "
                   "an inaccurate approximation (use more points or nagq='auto')")
            if auto:
                msg = (f"quadrature not converged by nagq={nagq} (nagq='auto' stopped at its "
                       "largest rule); " + msg)
            res.notes.append(msg)
            warnings.warn(msg, QuadratureWarning, stacklevel=3)
    if not opt.converged:
        msg = f"the fit did not converge: {opt.convergence_message}"
        res.notes.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    if res.singular:
        msg = "boundary (singular) fit: a random-effect variance is (near) zero; see help('isSingular')"
        res.notes.append(msg)
        warnings.warn(msg, UserWarning, stacklevel=3)
    sep = res._separation_columns()
    if sep:
        msg = (f"possible complete separation: the estimates of {', '.join(sep)} are very large "
               "with huge standard errors (a category with all 0s or all 1s?)")
        res.notes.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    return res


# =========================================================================================
# Stage 5: the result
# =========================================================================================


class GlmerResult:
    """A fitted GLMM. Accessors match the LMM's result.

    Attributes
    ----------
    fixef : Series
    se : Series
    vcov : DataFrame
    theta : ndarray
    loglik, aic, bic, deviance : float
    nagq : int
        Quadrature points of the final fit (1 = Laplace).
    quadrature_converged : bool or None
        Whether more points leave the log-likelihood unchanged (scalar models).
    converged : bool
    singular : bool
    opt : GlmerOptSummary
    notes : list of str
        Warnings about this fit (also printed by ``summary()``).
    """

    def __init__(self, frame: GlmerFrame, obj, opt: GlmerOptSummary, nagq: int, auto=False,
                 history=None):
        self.frame, self._obj, self.opt = frame, obj, opt
        self.model = frame.ms
        self.nagq, self.auto = int(nagq), auto
        self.history = history or []
        self.family = frame.family
        ms = frame.ms
        self.formula = ms.formula
        self.xnames = list(ms.xnames)
        p = ms.p
        x = opt.final
        self._params = x.copy()
        self.theta = x[p:].copy()
        self.fixef = pd.Series(x[:p], index=self.xnames, name="Estimate")
        self.loglik = float(opt.loglik)
        self.loglik_check: tuple[int, float] | None = None
        self.quadrature_converged: bool | None = None
        self.notes: list[str] = []
        H = opt.hessian
        try:
            cov = np.linalg.inv(H)
        except (np.linalg.LinAlgError, TypeError):
            cov = np.full((len(x), len(x)), np.nan)
        self._cov_all = cov
        V = cov[:p, :p]
        self.vcov = pd.DataFrame(V, index=self.xnames, columns=self.xnames)
        with np.errstate(invalid="ignore"):
            self.se = pd.Series(np.sqrt(np.diag(V)), index=self.xnames, name="Std. Error")
        self.converged = bool(opt.converged)

    # ---- counts and criteria ---------------------------------------------------------
    @property
    def nobs(self) -> int:
        return self.frame.n

    @property
    def ngroups(self) -> dict[str, int]:
        out = {}
        for t in self.frame.ms.reterms:
            out.setdefault(t.group, t.nlevels)
        return out

    @property
    def npar(self) -> int:
        return len(self._params)

    @property
    def deviance(self) -> float:
        """``-2 loglik`` (as lme4's ``deviance`` column of the summary)."""
        return -2.0 * self.loglik

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2 * self.npar

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + self.npar * np.log(self.nobs)

    @property
    def df_resid(self) -> int:
        return self.nobs - self.npar

    @property
    def singular(self) -> bool:
        """A variance factor at (or within 1e-4 of) zero, as lme4's ``isSingular``."""
        obj = self._obj
        if isinstance(obj, ScalarObjective):
            return bool(self.theta[0] < 1e-4)
        diag = [r for r, (_, a, b) in enumerate(obj.th_index) if a == b]
        return bool(np.any(self.theta[diag] < 1e-4))

    # ---- random effects ---------------------------------------------------------------
    def _sd_rows(self):
        """(group, var1, var2, vcov, sdcor) rows of the random-effects covariance."""
        rows = []
        obj = self._obj
        if isinstance(obj, ScalarObjective):
            t = self.frame.ms.reterms[0]
            s = float(self.theta[0])
            rows.append((t.group, t.cnames[0], None, s * s, s))
            return rows
        for ti, t in enumerate(obj.terms):
            T = obj._T(self.theta, ti)
            S = T @ T.T
            sd = np.sqrt(np.diag(S))
            for a in range(t.k):
                rows.append((t.group, t.cnames[a], None, S[a, a], sd[a]))
            for b in range(t.k):
                for a in range(b + 1, t.k):
                    c = S[a, b] / (sd[a] * sd[b]) if sd[a] * sd[b] > 0 else np.nan
                    rows.append((t.group, t.cnames[b], t.cnames[a], S[a, b], c))
        return rows

    def varcorr(self) -> pd.DataFrame:
        """Variance components shaped like R's ``as.data.frame(VarCorr(fit))`` (as the LMM's).

        Columns group, var1, var2, vcov, sdcor: one row per variance (sdcor the SD), then one
        per covariance (sdcor the correlation). No residual row: binomial and Poisson have
        no scale parameter.
        """
        return pd.DataFrame(self._sd_rows(), columns=["group", "var1", "var2", "vcov", "sdcor"])

    def _re_matrices(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per term: conditional modes ``b`` (levels x k) and their conditional SDs."""
        obj = self._obj
        if isinstance(obj, ScalarObjective):
            b, sd = obj.modes(self._params)
            return [(b[:, None], sd[:, None])]
        return obj.modes(self._params)

    def ranef(self, condvar: bool = True) -> pd.DataFrame:
        """Conditional modes of the random effects, long format (as the LMM's ``ranef``).

        Parameters
        ----------
        condvar : bool
            Add ``condsd``: the conditional SD of each effect at the estimates (lme4's
            ``condVar``; for a scalar term ``sigma / sqrt(-g''(u_hat))``).

        Returns
        -------
        DataFrame
            Columns group, term, level, value (and condsd), as R's
            ``as.data.frame(ranef(fit))``; select a factor with ``df[df.group == "id"]``.
        """
        frames: dict[str, list[pd.DataFrame]] = {}
        for t, (b, sd) in zip(self.frame.ms.reterms, self._re_matrices()):
            for j, cname in enumerate(t.cnames):
                d = {"group": t.group, "term": cname, "level": t.levels, "value": b[:, j]}
                if condvar:
                    d["condsd"] = sd[:, j]
                frames.setdefault(t.group, []).append(pd.DataFrame(d))
        return pd.concat([f for fs in frames.values() for f in fs], ignore_index=True)

    def parameter_names(self) -> list[str]:
        """lme4's names of the variance parameters (``sd_(Intercept)|id``, ``cor_x.y|g``)."""
        return [f"sd_{v1}|{g}" if v2 is None else f"cor_{v2}.{v1}|{g}"
                for g, v1, v2, _, _ in self._sd_rows()]

    @property
    def optsum(self) -> GlmerOptSummary:
        """The optimizer's record (the LMM's name for it)."""
        return self.opt

    # ---- prediction ---------------------------------------------------------------------
    def _re_sd_rows(self, terms, Zs):
        """Per-row variance of the random part ``sum_t z_t' b_t`` under the model."""
        obj = self._obj
        var = np.zeros(len(Zs[0]))
        for ti, (t, Z) in enumerate(zip(terms, Zs)):
            if isinstance(obj, ScalarObjective):
                S = np.array([[self.theta[0] ** 2]])
            else:
                T = obj._T(self.theta, ti)
                S = T @ T.T
            var += np.einsum("ij,jk,ik->i", Z, S, Z)
        return var

    def predict(self, newdata: pd.DataFrame | None = None, type: str = "link",
                population_average: bool = False, include_random: bool = True) -> pd.Series:
        """Predictions on the link or the response scale.

        Parameters
        ----------
        newdata : DataFrame, optional
            Defaults to the fitted data. Levels not seen in the fit get random effect 0.
        type : {"link", "response"}
        population_average : bool
            With ``type="response"``: the mean response of a *random* member of the
            population at these covariates, ``E[g^-1(x'beta + z'b)]`` integrated over the
            random effects' distribution (lme4 issue #281). ``g^-1(x'beta)``, the response at
            ``b = 0``, is far below it when the random-effect SD is large.
        include_random : bool
            False sets every random effect to 0 (lme4's ``re.form = NA``), as the LMM's
            ``predict``.

        Returns
        -------
        Series
            Indexed like ``newdata`` (or the rows used in the fit).
        """
        if type not in ("link", "response"):
            raise ValueError(f"`type` must be 'link' or 'response', got {type!r}")
        if population_average and type != "response":
            raise ValueError("`population_average=True` needs type='response' (on the link scale "
                             "the population average is x'beta: use include_random=False)")
        ms = self.frame.ms
        terms = ms.reterms
        if newdata is None:
            X = ms.X
            codes = [t.codes for t in terms]
            Zs = [t.Z for t in terms]
            index = ms.rows
        else:
            if not isinstance(newdata, pd.DataFrame):
                raise ValueError("`newdata` must be a pandas DataFrame")
            X = ms.fixed_matrix(newdata)
            codes = [t.new_codes(newdata) for t in terms]
            Zs = [t.new_Z(newdata) for t in terms]
            index = newdata.index
        eta = X @ self.fixef.to_numpy()
        if population_average:
            sd = np.sqrt(self._re_sd_rows(terms, Zs))
            # Trapezoid on a fine fixed grid, not Gauss-Hermite: expit(eta + sd u) has poles
            # pi/sd from the real axis, which slows Gauss-Hermite badly when sd is large,
            # while the trapezoid rule's error stays ~exp(-2 pi^2 / (sd h)). (The probit's and
            # cloglog's inverse links are entire functions; the same grid serves them.)
            grid = np.linspace(-12.0, 12.0, 4001)
            w = norm.pdf(grid) * (grid[1] - grid[0])
            w[[0, -1]] *= 0.5
            out = np.empty(len(eta))
            for a in range(0, len(eta), 2000):
                sl = slice(a, a + 2000)
                out[sl] = self.family.linkinv(eta[sl, None] + sd[sl, None] * grid[None, :]) @ w
            return pd.Series(out, index=index, name="population_average")
        if include_random:
            for t, c, Z, (B, _) in zip(terms, codes, Zs, self._re_matrices()):
                Bx = np.vstack([B, np.zeros((1, B.shape[1]))])  # row -1 -> new level -> 0
                eta = eta + np.sum(Z * Bx[c], axis=1)
        out = eta if type == "link" else self.family.linkinv(eta)
        return pd.Series(out, index=index, name=type)

    def fitted(self) -> pd.Series:
        """Fitted means (response scale, at the conditional modes)."""
        return self.predict(type="response")

    def pearson_residuals(self) -> np.ndarray:
        f = self.frame
        return f.family.pearson_residuals(f.y, self.fitted().to_numpy(), f.m)

    # ---- inference --------------------------------------------------------------------
    def _param_names(self) -> list[str]:
        return self.parameter_names() + self.xnames

    def confint(self, method: str = "profile", level: float = 0.95,
                parm: list[str] | None = None) -> pd.DataFrame:
        """Confidence intervals, lme4-style row names (``sd_(Intercept)|id``, ``display``).

        Parameters
        ----------
        method : {"profile", "wald"}
            ``"profile"`` inverts the likelihood-ratio test for each parameter (maximizing
            over the others at each value); ``"wald"`` is estimate +- z * SE for the fixed
            effects (NaN for the variance parameters, as lme4).
        level : float
        parm : list of str, optional
            Rows to compute (default all).
        """
        if method not in ("profile", "wald"):
            raise ValueError(f"`method` must be 'profile' or 'wald', got {method!r}")
        if not 0 < level < 1:
            raise ValueError(f"`level` must be in (0, 1), got {level!r}")
        a = (1 - level) / 2
        cols = [f"{100 * a:.1f} %", f"{100 * (1 - a):.1f} %"]
        cols = [c.replace(".0 %", " %") for c in cols]
        p = len(self.xnames)
        # lme4 order: variance parameters first, then fixed effects.
        names = self._param_names()
        ntheta = len(self.theta)
        index = list(range(p, p + ntheta)) + list(range(p))
        if parm is not None:
            bad = [n for n in parm if n not in names]
            if bad:
                raise ValueError(f"unknown parameter(s) {bad}; available: {names}")
        rows = {}
        zq = norm.ppf(1 - a)
        with single_thread_blas():
            self._confint_rows(rows, names, index, parm, method, zq, p)
        return pd.DataFrame.from_dict(rows, orient="index", columns=cols)

    def _confint_rows(self, rows, names, index, parm, method, zq, p):
        for nm, j in zip(names, index):
            if parm is not None and nm not in parm:
                continue
            if method == "wald":
                if j < p:
                    rows[nm] = (self._params[j] - zq * self.se.iloc[j],
                                self._params[j] + zq * self.se.iloc[j])
                else:
                    rows[nm] = (np.nan, np.nan)
            else:
                if j >= p and not isinstance(self._obj, ScalarObjective):
                    _, a_, b_ = self._obj.th_index[j - p]
                    if a_ != b_:
                        # The profiled parameter would be an off-diagonal theta, which is not
                        # the correlation; rather than a wrong interval, none.
                        rows[nm] = (np.nan, np.nan)
                        warnings.warn(f"no profile interval for the correlation {nm!r} of a GLMM "
                                      "(left as NaN); the standard deviations are profiled",
                                      stacklevel=4)
                        continue
                rows[nm] = self._profile_interval(j, zq)

    def _profile_interval(self, j: int, zq: float) -> tuple[float, float]:
        obj, x_hat, ll_hat = self._obj, self._params, self.loglik
        lower = obj.lower()
        se = np.sqrt(self._cov_all[j, j]) if np.isfinite(self._cov_all[j, j]) else 0.1
        se = se if se > 0 else 0.1 * (1 + abs(x_hat[j]))
        cache: dict[float, np.ndarray] = {}

        def zeta(v):
            # Warm-start from the nearest profile point already computed.
            start = x_hat
            if cache:
                near = min(cache, key=lambda w: abs(w - v))
                start = cache[near]
            # Newton from the nearest profile point, with the optimum's Hessian (the
            # conditional optimum moves smoothly along the profile); BFGS only as a fallback.
            try:
                opt = optimize_glmer(obj, start, fixed={j: v}, hessian=self.opt.hessian)
            except FloatingPointError:
                opt = optimize_glmer(obj, start, fixed={j: v})
            cache[v] = opt.final
            d = max(2.0 * (ll_hat - opt.loglik), 0.0)
            return np.sign(v - x_hat[j]) * np.sqrt(d)

        out = []
        for side in (-1, 1):
            target = side * zq
            step = se
            a_, b_ = x_hat[j], None
            for _ in range(30):
                v = a_ + side * step
                if v < lower[j]:
                    v = lower[j]
                zv = zeta(v)
                if side * zv >= zq:
                    b_ = v
                    break
                if v == lower[j]:
                    break
                a_ = v
                step *= 1.6
            if b_ is None:
                out.append(lower[j] if side < 0 and np.isfinite(lower[j]) else np.nan)
                continue
            root = sopt.brentq(lambda v: zeta(v) - target, min(a_, b_), max(a_, b_), xtol=1e-6)
            out.append(root)
        obj.evaluate(x_hat)
        return out[0], out[1]

    # ---- checks -----------------------------------------------------------------------
    def _separation_columns(self) -> list[str]:
        X = self.frame.ms.X
        out = []
        for j, nm in enumerate(self.xnames):
            scale = np.max(np.abs(X[:, j])) if len(X) else 1.0
            big = abs(self.fixef.iloc[j]) * scale > 12
            if big and (not np.isfinite(self.se.iloc[j]) or self.se.iloc[j] * scale > 5):
                out.append(nm)
        return out

    # ---- summary ----------------------------------------------------------------------
    def summary(self) -> ModelSummary:
        """lme4-style summary (``print`` it, or let a notebook render its HTML)."""
        if self.nagq == 1:
            method = "Laplace Approximation"
        else:
            auto = ", chosen by nagq='auto'" if self.auto else ""
            method = f"Adaptive Gauss-Hermite Quadrature, nAGQ = {self.nagq}{auto}"
        title = [f"Generalized linear mixed model fit by maximum likelihood ({method})",
                 f" Family: {self.family.name}  ( {self.family.link} )",
                 f"Formula: {self.formula}"]
        if self.frame.weights_label:
            title.append(f"Weights: {self.frame.weights_label}")
        stats = {"AIC": self.aic, "BIC": self.bic, "logLik": self.loglik,
                 "deviance": self.deviance, "df.resid": float(self.df_resid)}
        rows = []
        block: dict[str, list] = {}
        for g, v1, v2, vc, sc in self._sd_rows():
            if v2 is None:
                rows.append([g, v1, sc, []])
                block.setdefault(g, []).append(len(rows) - 1)
        for g, v1, v2, vc, sc in self._sd_rows():
            if v2 is not None:
                for r in block.get(g, []):
                    if rows[r][1] == v2:
                        rows[r][3].append(sc)
        re_tab = random_effects_table([tuple(r) for r in rows])
        z = self.fixef / self.se
        fe = pd.DataFrame({"Estimate": self.fixef, "Std. Error": self.se, "z value": z,
                           "Pr(>|z|)": 2 * norm.sf(np.abs(z))})
        V = self.vcov.to_numpy()
        d = np.sqrt(np.diag(V))
        with np.errstate(invalid="ignore", divide="ignore"):
            C = pd.DataFrame(V / np.outer(d, d), index=self.xnames, columns=self.xnames)
        notes = list(self.notes)
        if self.loglik_check is not None:
            k, llc = self.loglik_check
            rule = "the Laplace approximation" if self.nagq == 1 else f"{self.nagq}-point quadrature"
            notes.append(f"logLik: the marginal log-likelihood with all constants, by {rule}; "
                         f"with {k} points at the same estimates it is {llc:.3f}")
        return ModelSummary(title=title, fit_statistics=stats, random_effects=re_tab,
                            ngroups=self.ngroups, nobs=self.nobs, fixed_effects=fe,
                            residuals=residual_quantiles(self.pearson_residuals()),
                            correlation=C, notes=notes)

    def __repr__(self) -> str:
        fam = self.family.name if self.family.canonical else \
            f"{self.family.name}({self.family.link})"
        return (f"<GlmerResult {self.formula!r} {fam}, nagq={self.nagq}, "
                f"logLik={self.loglik:.3f}>")
