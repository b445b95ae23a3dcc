"""Generalized linear mixed models: ``glmer``.

A fit is a pipeline of named stages, as lme4's ``glmer``, one module each:

1. :func:`glmer_frame` (:mod:`mixedmodels.glmm_frame`) -- parse the formula
   (``formula.build_model``), read the response the binomial or Poisson way, validate it;
2. :func:`make_objective` (:mod:`mixedmodels.glmm_objective`) -- the log-likelihood as a
   function of ``(beta, theta)``: the scalar kernel (:mod:`mixedmodels.agq`, adaptive
   Gauss-Hermite, any number of points) when there is a single scalar random-effect term,
   Laplace by penalized iteratively reweighted least squares (PIRLS) for any other
   random-effects structure; the ``nagq="auto"`` ladder is :mod:`mixedmodels.glmm_nagq`;
   ``nagq=0`` (lme4's nAGQ = 0: the fixed effects inside PIRLS, only the covariance
   parameters optimized) is :mod:`mixedmodels.glmm_nagq0`;
3. :func:`optimize_glmer` (:mod:`mixedmodels.glmm_optimize`) -- BHHH or BFGS with analytic
   gradients, then Newton steps on a finite-difference Hessian of the analytic gradient;
4. :func:`check_optimum` (same module) -- is it a maximum? (gradient, Newton decrement,
   curvature);
5. :class:`GlmerResult` (:mod:`mixedmodels.glmm_result`) -- accessors like the LMM's,
   ``summary()``, ``predict()``, ``confint()``.

This module holds :func:`glmer` and re-exports the stages' names, so
``from mixedmodels.glmm import ...`` keeps working.

The log-likelihood is the marginal log-likelihood with every constant (the binomial
coefficient, ``-log y!``), on the same scale for every number of quadrature points (lme4
reports another constant when nAGQ > 1). Parameters: ``beta`` (fixed effects) and
``theta`` (lme4's: the lower-triangular factor of each term's covariance, column-wise; for a
scalar term, its standard deviation).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from . import _validate
from .allocator import keep_freed_memory
from .agq_vector import VectorObjective, check_points, vector_agq_applies
# One BLAS thread while fitting: a busy 2-core machine makes threaded BLAS crawl.
from .blas import single_thread_blas
from .covariance import CovarianceLayout
from .families import Family
from .dispersion import with_dispersion
from .glmm_frame import GlmerFrame, glmer_frame
from .glmm_nagq0 import fit_nagq0
from .glmm_nagq import (AUTO_LADDER, AUTO_TOL_LOGLIK, AUTO_TOL_PARAM, QUAD_CHECK_TOL,  # noqa: F401
                        WARMUP_GROUPS, QuadratureWarning, _fit_at, fit_nagq)
from .glmm_objective import ScalarObjective, _default_start, _glm_start, make_objective  # noqa: F401
from .glmm_optimize import (GlmerOptSummary, _bhhh, _hessian, _newton_polish,  # noqa: F401
                            _normalize, _safe_evaluate, _sd_indices, check_optimum,
                            optimize_glmer)
from .glmm_result import GeneralizedLinearMixedModel, GlmerResult
from .laplace import LaplaceObjective  # noqa: F401  (re-exported)
from .quadrature import gauss_hermite
from .results import ConvergenceWarning
from .scaling import fixed_scaling, original_objective, scaled_frame, to_original

__all__ = [
    "glmer", "glmer_frame", "make_objective", "optimize_glmer", "check_optimum",
    "glmer_nb", "GlmerFrame", "GeneralizedLinearMixedModel", "GlmerResult", "GlmerOptSummary",
    "QuadratureWarning", "ConvergenceWarning",
]


def glmer(formula: str, data: pd.DataFrame, family: str | Family = "binomial",
          weights: str | np.ndarray | None = None, nagq: int | str = "auto",
          start: np.ndarray | None = None, link: str | None = None,
          offset: str | np.ndarray | None = None, *, client=None,
          verbose: bool = True, dask_path: str = "auto") -> GeneralizedLinearMixedModel:
    """Fit a generalized linear mixed model by maximum likelihood.

    Parameters
    ----------
    formula : str
        lme4 syntax. Binomial responses: a 0/1 column; a proportion with ``weights`` = the
        numbers of trials (``"clicks/expos ~ display + (1 | id)"``, ``weights="expos"``, as in
        R); ``a/b`` without weights (successes ``a`` out of ``b`` trials); or
        ``cbind(successes, failures)`` (each argument an expression, e.g.
        ``cbind(incidence, size - incidence)``).
    data : pandas.DataFrame or dask.dataframe.DataFrame
        Not modified. A Dask frame is fitted out of core on a ``dask.distributed`` cluster
        (:func:`mixedmodels.distributed.glmer_dask`; one scalar random-effect term).
    family : {"binomial", "poisson", "Gamma", "inverse_gaussian", "negative_binomial"} or Family
        The family, or a family object with its link, as R's ``binomial(link = "probit")``:
        ``mixedmodels.families.binomial(link="probit")``, ``families.Gamma(link="inverse")``.
        Gamma, inverse Gaussian and negative binomial (NB2) have a dispersion parameter (the
        Gamma shape, phi, theta) estimated jointly by maximum likelihood, as glmmTMB
        (``result.dispersion``); their Laplace approximation uses the observed information,
        as glmmTMB's, and adaptive quadrature works for them as for the others.
    weights : str or array, optional
        Prior weights (binomial: numbers of trials), a column name or an array.
    nagq : int or "auto"
        Points of adaptive Gauss-Hermite quadrature (per dimension). 0 is lme4's fast first
        stage (``nAGQ = 0``, any random-effects structure and family,
        :mod:`mixedmodels.glmm_nagq0`): the fixed effects are estimated inside PIRLS jointly
        with the random effects and only the covariance parameters (and a dispersion) are
        optimized; a quick fit, close to but not at the Laplace maximum (its log-likelihood
        is at most the ``nagq=1`` one), with lme4's standard errors for it (the inverse joint
        information given the covariance parameters); not for Dask data, and it cannot be
        profiled (``confint(method="wald")`` works). 1 is the Laplace
        approximation (any random-effects structure); more points need a single grouping
        factor with at most 3 random effects per level (``(1 | g)``, ``(x | g)``,
        ``(x || g)``; a tensor-product rule of ``nagq ** k`` nodes for ``k`` of them).
        ``"auto"`` (the default) is the exact maximum-likelihood fit. For a scalar term each
        group gets its own rule, as many points as its integral needs to be exact to 1e-8
        (a trapezoid rule on the mode-centred, scaled random effect; identical groups are
        integrated once), and ``result.points_range`` reports the fewest and most points,
        ``result.nagq`` the most. For a vector term it adds points (5, 9, 17, ...) until the
        log-likelihood and the estimates stop moving; for other structures it means Laplace.
    start : array, optional
        Starting ``(beta, theta)``.
    link : {"logit", "probit", "cloglog"} or {"log"} or {"log", "inverse"}, optional
        The link, default the canonical one (logit for the binomial, log for the Poisson),
        log for the Gamma and the negative binomial, ``1/mu^2`` for the inverse Gaussian.
        For probit and cloglog the Laplace approximation and the quadrature nodes are scaled
        by the expected information, as lme4 does, so ``nagq=1`` gives lme4's Laplace fit.
    offset : str or array-like, optional
        A known term of the linear predictor (a column name or one value per row of
        ``data``), added to any ``offset(...)`` in the formula, e.g. ``log`` exposure for a
        Poisson rate (see :mod:`mixedmodels.offsets`). With a Dask frame, a column name only.
    client : dask.distributed.Client or str, optional
        Dask data only: the cluster to fit on (default: the current client, else a local one).
    verbose : bool
        Dask data only: progress bars over the partitions and the objective's evaluations.
    dask_path : {"auto", "patterns", "partitions"}
        Dask data only (checked, and without effect, for a pandas frame): fit the merged table of distinct groups in memory (``"patterns"``),
        map the kernel over the partitions (``"partitions"``), or choose by the data
        (``"auto"``: the patterns when their table is small and compression pays; see
        :func:`mixedmodels.distributed.glmer_dask`). ``fit.distributed_path`` says which ran.

    Returns
    -------
    GeneralizedLinearMixedModel

    Notes
    -----
    A covariate's units do not change the answer: when a fixed-effect column's scale is far
    from 1 (a time in seconds, ~1e9), the optimizer works on centred and scaled columns and
    the estimates, their covariance and the log-likelihood are mapped back exactly
    (:mod:`mixedmodels.scaling`); ``start`` and every result are in the data's own units.

    Warns
    -----
    QuadratureWarning
        When a finer rule at the estimates (double the points, at least 20; for ``"auto"``
        every rule about doubled) moves the log-likelihood by more than 0.01 and, for a
        fixed ``nagq``, the difference matters: it would move an estimate by more than 0.1
        standard errors (one Newton step on the finer rule's log-likelihood) or the
        log-likelihood by more than 1 (the estimates are those of an inaccurate
        approximation). A smaller difference is noted in ``summary()``
        (``result.quadrature_converged``, ``result.loglik_check``,
        ``result.quadrature_shift``).
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
    # The fit warns from deep inside (quadrature, convergence, singular fits): re-issue each
    # warning at the caller's line, as lmer's are, so a user sees where it came from.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = _glmer_any(formula, data, family, weights, nagq, start, link, offset, client,
                         verbose, dask_path)
    for w in caught:
        warnings.warn(w.message, w.category, stacklevel=2)
    return res


def _glmer_any(formula, data, family, weights, nagq, start, link, offset, client, verbose,
               dask_path="auto"):
    if dask_path not in ("auto", "patterns", "partitions"):
        # Checked for pandas data too (where it has no effect), so a typo is not silent.
        raise ValueError(f"dask_path must be 'auto', 'patterns' or 'partitions', got {dask_path!r}")
    if data.__class__.__module__.startswith("dask"):
        if not isinstance(nagq, str) and check_nagq(nagq) == 0:
            raise ValueError("nagq=0 (fixed effects inside PIRLS) is for in-memory data; fit a "
                             "Dask frame with nagq=1 or more")

        from .distributed import glmer_dask
        res = glmer_dask(formula, data, family, weights, nagq, start, link, client=client,
                         verbose=verbose, path=dask_path, offset=offset)
    else:
        keep_freed_memory()  # the kernel's temporaries would page-fault afresh (allocator.py)
        with single_thread_blas():
            res = _glmer(formula, data, family, weights, nagq, start, link, offset)
    # The call, for update() (R keeps it as fit@call).
    res.call = {"fitter": "glmer", "args": {"formula": formula, "data": data, "family": family,
                                            "weights": weights, "nagq": nagq, "link": link,
                                            "offset": offset}}
    return res


def glmer_nb(formula: str, data: pd.DataFrame, **kwargs) -> "GlmerResult":
    """Negative binomial (NB2) GLMM, lme4's ``glmer.nb``: ``glmer(..., family="negative_binomial")``.

    ``theta`` (variance ``mu + mu^2 / theta``) is estimated jointly with the other parameters
    by maximum likelihood, as glmmTMB's ``nbinom2`` (lme4 alternates between theta and the
    rest and can stop short of the optimum). It is ``fit.dispersion``.

    Parameters
    ----------
    formula, data
        As :func:`glmer`; the response must be counts.
    **kwargs
        Any other argument of :func:`glmer` (``nagq``, ``offset``, ``weights``, ``start``).

    Returns
    -------
    GlmerResult
    """
    if "family" in kwargs:
        raise ValueError("glmer_nb() fits the negative binomial family; do not pass `family`")
    return glmer(formula, data, family="negative_binomial", **kwargs)


#: A fixed rule's fit warns (QuadratureWarning) when a finer rule at its estimates would move
#: an estimate by more than this many standard errors (one Newton step on the finer rule's
#: log-likelihood, with the fit's Hessian) ...
QUAD_WARN_SE = 0.1
#: ... or changes the log-likelihood by more than this (an LRT statistic moves by twice it).
QUAD_WARN_LOGLIK = 1.0


def _quadrature_shift(chk, opt, kcheck: int, g=None) -> float:
    """How far a finer rule would move the estimates, in standard errors: the largest
    ``|H^-1 (g_fine - g)|_j / SE_j`` (one Newton step on the finer rule's log-likelihood from
    the fit's optimum, ``H`` the fit's negative Hessian); NaN when it cannot be computed.
    ``g``: the finer rule's gradient at the estimates, when already computed."""
    try:
        with np.errstate(all="ignore"):
            if g is None:
                _, g = chk.evaluate(opt.final, gradient=True, nagq=kcheck, keep=False)
            H = np.asarray(opt.hessian, dtype=float)
            g0 = np.zeros(len(g)) if opt.gradient is None else np.asarray(opt.gradient)
            Hi = np.linalg.inv(H)
            se = np.sqrt(np.diag(Hi))
            z = np.abs(Hi @ (np.asarray(g) - g0)) / se
    except (np.linalg.LinAlgError, FloatingPointError, ValueError, TypeError):
        return float("nan")
    return float(np.max(z)) if np.all(np.isfinite(z)) else float("nan")


def start_names(ms, family=None) -> list[str]:
    """The order of ``glmer(start=...)``: the fixed effects, then theta term by term (each
    term's lower-triangular factor column by column, named as lme4's ``getME(fit, "theta")``),
    then ``log(dispersion)`` for a family that has one."""
    names = list(ms.xnames) + CovarianceLayout(ms.reterms).theta_names
    if family is not None and getattr(family, "has_dispersion", False):
        names.append("log(dispersion)")
    return names


def _glmer(formula, data, family, weights, nagq, start, link=None, offset=None):
    frame = glmer_frame(formula, data, family, weights, link, offset)
    return fit_frame(frame, nagq, start)


def check_nagq(nagq) -> int | str:
    """Validate ``glmer``'s ``nagq``: ``"auto"`` or a whole number from 0 (lme4's nAGQ = 0)
    to the largest Gauss-Hermite rule (a whole float such as ``5.0`` is accepted).

    Raises
    ------
    ValueError
        Naming ``nagq`` and the value given.
    """
    if isinstance(nagq, str):
        if nagq != "auto":
            raise ValueError(f"`nagq` must be a whole number >= 0 or 'auto', got {nagq!r}")
        return nagq
    if isinstance(nagq, (float, np.floating)) and np.isfinite(nagq) and float(nagq).is_integer():
        nagq = int(nagq)  # nagq=2.0: a whole number written as a float
    if isinstance(nagq, bool) or not isinstance(nagq, (int, np.integer)):
        raise ValueError(f"`nagq` must be a whole number >= 0 or 'auto', got {nagq!r}")
    if nagq < 0:
        raise ValueError(f"`nagq` must be a whole number >= 0 or 'auto', got {nagq!r} (0 is "
                         "lme4's nAGQ=0, 1 the Laplace approximation, more adaptive quadrature)")
    nagq = int(nagq)
    if nagq > 0:
        gauss_hermite(nagq)  # validates the upper limit
    return nagq


def fit_frame(frame, nagq: int | str, start: np.ndarray | None = None, obj=None,
              result_class: type | None = None) -> GlmerResult:
    """Stages 2-5 on a model frame: the objective, the optimizer (the ``nagq="auto"``
    ladder), the check of the optimum, the result with its warnings.

    Parameters
    ----------
    frame : GlmerFrame
    nagq : int or "auto"
    start : array, optional
    obj : objective, optional
        One built elsewhere with the in-memory objective's interface (the Dask fitter's);
        default :func:`make_objective`.
    result_class : type, optional
        Default :class:`GlmerResult`.
    """
    nagq = check_nagq(nagq)
    auto = nagq == "auto"
    if nagq == 0 and obj is not None:
        raise ValueError("nagq=0 (fixed effects inside PIRLS) is for in-memory data; fit a "
                         "Dask frame with nagq=1 or more")
    if start is not None:
        start = _validate.check_start(start, start_names(frame.ms, frame.family))
    vector = not frame.scalar and vector_agq_applies(frame.ms.reterms)
    if auto and not (frame.scalar or vector):
        nagq, auto = 1, False
    # The optimizer sees the fixed-effect columns centred and scaled when their units are far
    # from 1 (a covariate in seconds, ~1e9); the optimum is mapped back exactly (scaling.py).
    scaling = fixed_scaling(frame.ms.X, frame.ms.xnames) if obj is None else None
    frame_s, start_s = frame, start
    if scaling is not None:
        frame_s = scaled_frame(frame, scaling)
        start_s = None if start is None else scaling.T_inv(len(start)) @ start
    if nagq == 0:
        # lme4's nAGQ = 0: theta optimized, the fixed effects inside PIRLS (glmm_nagq0.py).
        obj, opt = fit_nagq0(frame_s, start_s)
        quad_converged, history = None, []
    else:
        obj, opt, nagq, quad_converged, history = fit_nagq(frame_s, nagq, start_s, auto, obj)
    if scaling is not None:
        obj = original_objective(obj, scaling)
        opt = to_original(opt, scaling, history)
    res = (result_class or GeneralizedLinearMixedModel)(frame, obj, opt, nagq, auto=auto, history=history)
    # How good is the rule at the estimates? One evaluation with more points tells.
    if (frame.scalar or vector) and nagq != 0:
        chk = g_check = None
        if getattr(obj, "rules", None) is not None:
            # nagq="auto" with per-group rules: every group's rule about doubled.
            kcheck = 2 * nagq - 1
            done = getattr(obj, "refined_at", None)
            if done is not None and np.array_equal(done[0], opt.final):
                llc = done[1]  # computed when the rules were verified at the estimates
            else:
                llc, _ = obj.evaluate(opt.final, gradient=False, refine=True, keep=False)
            quad_converged = abs(llc - opt.loglik) <= QUAD_CHECK_TOL
        else:
            if frame.scalar:
                kcheck, chk = min(max(2 * nagq, 20), 1000), obj
            else:
                # A vector model's Laplace fit has no quadrature objective of its own.
                kcheck = check_points(nagq, frame.ms.reterms)
                chk = obj if isinstance(obj, VectorObjective) else \
                    with_dispersion(VectorObjective(frame, kcheck), frame)
            # The scalar kernel's gradient comes in the same pass (for the shift below).
            llc, g_check = chk.evaluate(opt.final, gradient=frame.scalar, nagq=kcheck,
                                        keep=False)
        res.loglik_check = (kcheck, float(llc))
        if quad_converged is None:
            quad_converged = abs(llc - opt.loglik) <= QUAD_CHECK_TOL
        elif vector and not quad_converged and abs(llc - opt.loglik) <= QUAD_CHECK_TOL:
            # The vector ladder is short (a rule costs nagq ** k nodes): when it ends without
            # two rungs agreeing, the doubled rule at the estimates has the last word, as for
            # a fit at a fixed number of points.
            quad_converged = True
        res.quadrature_converged = bool(quad_converged)
        if not quad_converged:
            what = "the Laplace approximation (nagq=1)" if nagq == 1 else f"nagq={nagq} points"
            warn = True
            if not auto and chk is not None:
                # A fixed rule that is not exact is the user's choice (Laplace is lme4's
                # default): say so only when it matters, when the finer rule would move an
                # estimate by a tenth of its standard error or the log-likelihood by a unit.
                res.quadrature_shift = _quadrature_shift(chk, opt, kcheck, g_check)
                warn = (not res.quadrature_shift <= QUAD_WARN_SE
                        or abs(llc - opt.loglik) > QUAD_WARN_LOGLIK)
            shift = ("" if res.quadrature_shift is None else
                     f"; moving the estimates to it would shift one by "
                     f"{res.quadrature_shift:.2g} standard errors")
            msg = (f"quadrature not converged: with {what} the log-likelihood at the estimates is "
                   f"{opt.loglik:.3f}, with {kcheck} points {llc:.3f}{shift}")
            if warn:
                msg += "; the estimates are those of an inaccurate approximation (use more " \
                       "points or nagq='auto')"
            if auto:
                msg = (f"quadrature not converged by nagq={nagq} (nagq='auto' stopped at its "
                       "largest rule); " + msg)
            res.notes.append(msg)
            if warn:
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
               "with huge standard errors (a covariate that separates the 0s from the 1s, or a "
               "category with all 0s or all 1s?)")
        res.notes.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
        if res.converged:
            # No finite maximum: the log-likelihood only approaches its supremum as these
            # estimates grow, and the optimizer stopped where the gradient fell below
            # rounding; the check of the optimum cannot see that.
            res.converged = opt.converged = False
            opt.convergence_message = (f"no finite maximum (possible complete separation in "
                                       f"{', '.join(sep)}): the gradient vanishes only as the "
                                       "estimates grow without bound")
    return res
