"""How many quadrature points: one fit at a given rule, and ``nagq="auto"``.

:func:`fit_nagq` fits at a given number of adaptive Gauss-Hermite points, or (``auto``) finds the
exact maximum-likelihood estimate. For the in-memory scalar kernel that is :func:`_fit_auto`:
per-group trapezoid rules, each group's integral converged to 1e-8
(:func:`mixedmodels.agq.choose_rule`), chosen at the start and checked again at the estimates.
Other objectives (the Dask one, dispersion families, vector models) climb :data:`AUTO_LADDER`
until two successive rules agree. Data sets with very many (distinct) groups are first fitted on
a random subset of groups (:data:`WARMUP_GROUPS`).
"""

from __future__ import annotations

import numpy as np

from .agq_vector import auto_ladder
from .glmm_frame import GlmerFrame
from .glmm_objective import ScalarObjective, _default_start, make_objective
from .glmm_optimize import (GlmerOptSummary, _bhhh, _hessian, _normalize, check_optimum,
                            optimize_glmer)

__all__ = ["fit_nagq", "QuadratureWarning", "AUTO_LADDER"]

AUTO_LADDER = (10, 20, 40, 80, 160, 320)
#: nagq="auto" stops when two successive rules agree this well (log-likelihood, absolute;
#: parameters, relative to 1 + |value|).
AUTO_TOL_LOGLIK = 2e-4
AUTO_TOL_PARAM = 1e-4
#: A fit's quadrature is flagged as not converged when doubling the points moves the
#: log-likelihood at the estimates by more than this.
QUAD_CHECK_TOL = 1e-2
#: nagq="auto": at most this many rounds of choosing every group's rule and re-optimizing.
MAX_RULE_ROUNDS = 2
#: nagq="auto": the trapezoid rule of every unit during the first BHHH steps, before the
#: per-unit rules are chosen near the optimum.
START_POINTS = 49
#: Data sets with more than 4x this many groups are first fitted on this many random groups.
WARMUP_GROUPS = 10_000


class QuadratureWarning(UserWarning):
    """The quadrature rule is too coarse for this fit's log-likelihood."""



def _warm_start(frame, obj, nagq):
    """The default start, and for very many distinct groups a fit on a random subset of them.

    The subset's optimum is within sampling error of the full one and its Hessian, scaled by
    the ratio of group counts, is a good Hessian for the full data, so the full data need only
    Newton steps. Returns ``(start, hessian or None)``.
    """
    start = _default_start(frame, obj)
    # Counted in distinct groups where the objective knows them (identical groups cost one).
    if isinstance(obj, ScalarObjective) and getattr(obj, "nunits", obj.ngroups) > 4 * WARMUP_GROUPS:
        rng = np.random.default_rng(20160915)
        sub = np.sort(rng.choice(obj.ngroups, WARMUP_GROUPS, replace=False))
        sobj = obj.subset(sub)
        sopt_ = check_optimum(sobj, optimize_glmer(sobj, start))
        if sopt_.converged:
            return sopt_.final, sopt_.hessian * (obj.ngroups / WARMUP_GROUPS)
    return start, None


def _fit_at(frame, nagq, start=None, obj=None, hessian=None):
    if obj is None:
        obj = make_objective(frame, nagq)
    else:
        obj.nagq = nagq
    if start is None:
        start, h = _warm_start(frame, obj, nagq)
        hessian = h if hessian is None else hessian
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


def _fit_auto(frame: GlmerFrame, start: np.ndarray | None, obj=None):
    """``nagq="auto"``: the exact maximum-likelihood estimate, every group's integral to 1e-8.

    1. BHHH steps from the start with one trapezoid rule for every group
       (:data:`START_POINTS`); near the optimum, choose each group's rule
       (:func:`mixedmodels.agq.choose_rule`: a trapezoid rule converged to 1e-8 in the
       group's log-integral) and take Newton steps with the kernel's Hessian.
    2. Verify the rules at the estimates
       (:meth:`~mixedmodels.glmm_objective.ScalarObjective.verify_rules`: every rule about
       doubled, one pass, which is also the quadrature check ``glmer`` reports). Where one
       no longer converges, choose the rules again there (they only grow) and take Newton
       steps with the Hessian at hand. At most :data:`MAX_RULE_ROUNDS` rounds of choosing.
    3. The check of the optimum, with the final rules.
    """
    obj = make_objective(frame, AUTO_LADDER[0]) if obj is None else obj
    h0 = None
    if start is None:
        start = _default_start(frame, obj)
        if obj.nunits > 4 * WARMUP_GROUPS:
            # Very many distinct groups: the exact fit of a random subset of them first (its
            # optimum is within sampling error of the full one, its Hessian scaled by the
            # ratio of group counts a good one for the full data).
            rng = np.random.default_rng(20160915)
            sub = obj.subset(np.sort(rng.choice(obj.ngroups, WARMUP_GROUPS, replace=False)))
            _, sopt_, _ = _fit_auto(frame, start, sub)
            if sopt_.converged:
                start, h0 = sopt_.final, sopt_.hessian * (obj.ngroups / WARMUP_GROUPS)
    start = np.asarray(start, dtype=float)
    history = []
    x = start
    uniform = h0 is None and hasattr(obj, "uniform_rules")
    if uniform:
        # Far from the optimum the rules need not be exact: one trapezoid rule for every
        # unit (:data:`START_POINTS` points) for the BHHH steps, cheaper than choosing
        # rules at a start that is left behind.
        obj.uniform_rules(START_POINTS)
    else:
        obj.choose_rules(start)
    if h0 is None:
        # BHHH steps (one kernel pass each) bring the estimates near the optimum, where the
        # rules are chosen before the Newton steps that need a Hessian.
        try:
            x, _ = _bhhh(obj, start, np.arange(obj.nparams), tol=1e-3)
            history.append((obj.points_range[1], obj.last.loglik, x.copy()))
        except FloatingPointError:
            obj.reset()
            x = start
        if uniform:
            obj.set_rules(None)  # chosen afresh where the estimates are, not grown from these
        obj.choose_rules(x)
    h0_at = None
    if h0 is None and x is not start and getattr(obj, "analytic_hessian", False):
        # Near the optimum the kernel's Hessian (one pass, no finite differences) makes
        # Newton steps converge at once: no second BHHH phase.
        H = _hessian(obj, x)
        try:
            np.linalg.cholesky(H)
            h0, h0_at = H, x
        except np.linalg.LinAlgError:
            pass
    opt = optimize_glmer(obj, x, hessian=h0, hessian_at=h0_at)
    history.append((obj.points_range[1], opt.loglik, opt.final.copy()))
    for _ in range(MAX_RULE_ROUNDS - 1):
        # Are the rules still good at the estimates? The doubled rules tell (one pass, which
        # is also the quadrature check glmer reports); only where some unit's rule no longer
        # converges is it chosen again, and the estimates moved with Newton steps.
        verify = getattr(obj, "verify_rules", None)
        if verify is not None and verify(_normalize(obj, opt.final)):
            break
        before = obj.rules
        rules = obj.choose_rules(opt.final)
        if all(np.array_equal(getattr(before, f), getattr(rules, f))
               for f in ("points", "span", "shift")):
            break
        H = opt._hessian_at[1] if getattr(opt, "_hessian_at", None) is not None else None
        if H is not None:
            # The new rules change each group's integral by under 1e-8: when a Newton step
            # with the Hessian at hand would gain nothing, the estimates stand.
            ll, g = obj.evaluate(opt.final)
            try:
                dec = 0.5 * float(g @ np.linalg.solve(H, g))
            except np.linalg.LinAlgError:
                dec = np.inf
            if 0 <= dec < 1e-9:
                opt.loglik, opt.gradient = ll, g
                obj._at_x = (opt.final.copy(), ll, g)
                break
        try:
            opt = optimize_glmer(obj, opt.final, hessian=H)
        except FloatingPointError:
            opt = optimize_glmer(obj, opt.final)
        history.append((obj.points_range[1], opt.loglik, opt.final.copy()))
    opt = _checked(obj, opt)
    if history[-1][1] != opt.loglik:
        history.append((obj.points_range[1], opt.loglik, opt.final.copy()))
    return obj, opt, history


def _checked(obj, opt):
    """The check of the optimum, and a second start from its point when it fails."""
    opt = check_optimum(obj, opt)
    if not opt.converged:
        alt = check_optimum(obj, optimize_glmer(obj, opt.final))
        if alt.loglik >= opt.loglik - 1e-9:
            opt = alt
    return opt


def _per_group_rules(obj) -> bool:
    """Whether ``nagq="auto"`` uses per-group rules on this objective: the in-memory scalar
    kernel of a family without a dispersion parameter, in memory or on Dask (whose partitions
    choose and keep their groups' rules on the workers). The others (dispersion families;
    vector models) climb :data:`AUTO_LADDER`."""
    return (isinstance(obj, ScalarObjective) and hasattr(obj, "choose_rules")
            and not getattr(obj, "has_dispersion", False))


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
    elif frame.scalar and _per_group_rules(obj := obj or make_objective(frame, AUTO_LADDER[0])):
        obj, opt, history = _fit_auto(frame, start, obj)
        nagq = obj.points_range[1]
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
