"""How many quadrature points: one fit at a given rule, and the ``nagq="auto"`` ladder.

:func:`fit_nagq` fits at a given number of adaptive Gauss-Hermite points, or (``auto``) climbs
:data:`AUTO_LADDER` until two successive rules agree. Data sets with very many groups are
first fitted on a random subset of groups (:data:`WARMUP_GROUPS`).
"""

from __future__ import annotations

import numpy as np

from .agq_vector import auto_ladder
from .glmm_frame import GlmerFrame
from .glmm_objective import ScalarObjective, _default_start, make_objective
from .glmm_optimize import GlmerOptSummary, check_optimum, optimize_glmer

__all__ = ["fit_nagq", "QuadratureWarning", "AUTO_LADDER"]

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
            sobj = obj.subset(sub)
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


def fit_nagq(frame: GlmerFrame, nagq: int, start: np.ndarray | None, auto: bool, obj=None
             ) -> tuple[object, GlmerOptSummary, int, bool | None, list]:
    """Fit at ``nagq`` points, or (``auto``) climb :data:`AUTO_LADDER` until two rules agree.

    ``obj`` is an objective built elsewhere (the Dask fitter's); default
    :func:`~mixedmodels.glmm_objective.make_objective`.

    Returns
    -------
    obj, opt, nagq, quad_converged, history
        The objective, the optimizer's record, the rule used, whether the ladder converged
        (None when not ``auto``), and ``(points, loglik, estimates)`` per rung.
    """
    history = []
    if not auto:
        obj, opt = _fit_at(frame, nagq, start, obj)
        quad_converged = None
    else:
        prev, quad_converged = None, False
        st = start
        # A vector model (one grouping factor, 2-3 columns) climbs its own, shorter ladder.
        ladder = AUTO_LADDER if frame.scalar else auto_ladder(frame.ms.reterms)
        for k in ladder:
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
    return obj, opt, nagq, quad_converged, history
