"""lmer on Dask equals lmer in memory, on local clusters of processes and threads.

The Dask objective adds the same per-group blocks in another order, so it equals the
in-memory objective to rounding (checked to 1e-12), and so does every estimate at a given
theta (checked to 1e-9), and the analytic gradient (checked against central differences).
Whole fits: both fitters minimize with the analytic gradient (the in-memory
``LMMProblem.value_and_gradient``; the Dask one from the partitions' sums) and land on the
optimum to L-BFGS-B's tolerance; they are compared to OPT_TOL = 1e-8 (5e-7 for the two 300-group two-term models, see
test_one_factor_several_terms) and the log-likelihood to 1e-8.

The whole file is skipped when dask.distributed is not installed.
"""

import os
import signal
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

import mixedmodels as mm  # noqa: E402
from mixedmodels.distributed import DistributedFitError  # noqa: E402
from mixedmodels.lmm import optimize_theta  # noqa: E402
from mixedmodels.distributed_lmm import (DaskLinearMixedModel, SUPPORTED,  # noqa: E402
                                         dask_lmm_problem)

TOL = 1e-8
OPT_TOL = 1e-8
SLEEP = "Reaction ~ Days + (Days | Subject)"
FIX = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def processes():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def threads():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def sleep():
    return pd.read_csv(FIX / "sleepstudy.csv")


@pytest.fixture(scope="module")
def sim():
    """~3,000 rows in 300 unbalanced groups: two slopes, a text covariate, precision weights
    and an offset column; rows in random order (a group's rows span partitions)."""
    rng = np.random.default_rng(2026)
    G = 300
    size = rng.integers(3, 18, G)
    g = np.repeat(np.arange(G), size)
    n = len(g)
    x = rng.normal(size=n)
    z = rng.uniform(0, 2, n)
    site = rng.choice(["north", "south", "west"], n)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.3], [0.3, 0.25]], G)
    off = rng.normal(0, 0.5, n)
    w = rng.uniform(0.5, 3.0, n)
    y = (1 + 0.5 * x - 0.3 * z + (site == "south") * 0.4 + b[g, 0] + b[g, 1] * x + off
         + rng.normal(0, 1, n) / np.sqrt(w))
    df = pd.DataFrame({"y": y, "x": x, "z": z, "site": site, "g": g + 1000, "w": w, "o": off})
    return df.iloc[rng.permutation(n)].reset_index(drop=True)


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


def _ddf(df, npartitions):
    # sort=False keeps the rows' order: a group's rows are spread over partitions, so the
    # fitter must shuffle them together.
    return dd.from_pandas(df, npartitions=npartitions, sort=False)


def _assert_same_at_theta(fit, ref, tol=1e-9):
    """Every estimate of two fits at the same theta."""
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=tol, atol=tol)
    np.testing.assert_allclose(fit.se, ref.se, rtol=tol)
    np.testing.assert_allclose(fit.vcov, ref.vcov, rtol=tol, atol=tol * float(np.abs(ref.vcov.to_numpy()).max()))
    assert fit.sigma == pytest.approx(ref.sigma, rel=tol)
    assert fit.loglik == pytest.approx(ref.loglik, rel=tol * 1e-2, abs=tol)
    assert fit.aic == pytest.approx(ref.aic, abs=tol * 10)
    a, b = fit.ranef(), ref.ranef()
    assert list(a.level) == list(b.level) and list(a.term) == list(b.term)
    np.testing.assert_allclose(a.value, b.value, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.condsd, b.condsd, rtol=tol, atol=tol)
    np.testing.assert_allclose(fit.varcorr()["sdcor"], ref.varcorr()["sdcor"], rtol=tol)
    assert fit.nobs == ref.nobs and fit.ngroups == ref.ngroups
    assert fit.parameter_names() == ref.parameter_names()


def _assert_same_fit(fit, ref, tol=OPT_TOL):
    assert isinstance(fit, DaskLinearMixedModel)
    assert abs(fit.loglik - ref.loglik) <= TOL * (1 + abs(ref.loglik))
    # An optimum at least as good as the in-memory one (same criterion, to rounding).
    assert fit.deviance <= ref.deviance + 1e-9 * abs(ref.deviance)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=tol, atol=tol)
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=tol, atol=tol)
    np.testing.assert_allclose(fit.se, ref.se, rtol=tol)
    assert fit.sigma == pytest.approx(ref.sigma, rel=tol)
    assert fit.nobs == ref.nobs and fit.ngroups == ref.ngroups
    assert fit.converged == ref.converged and fit.singular == ref.singular


@pytest.mark.parametrize("npartitions, reml", [(1, True), (2, False), (4, True)])
def test_sleepstudy_processes(processes, sleep, npartitions, reml):
    ref = mm.lmer(SLEEP, sleep, reml=reml)
    # Rows in random order: with several partitions each subject's rows are spread out.
    rows = sleep.iloc[np.random.default_rng(7).permutation(len(sleep))]
    fit = _quiet(mm.lmer, SLEEP, _ddf(rows, npartitions), reml=reml, client=processes,
                 verbose=False)
    _assert_same_fit(fit, ref)
    assert fit.distributed["npartitions"] == npartitions
    assert fit.distributed["shuffled"] == (npartitions > 1)
    # The objective itself, at the optimum and away from it.
    for th in (ref.theta, ref.theta * 1.3, np.array([1.0, 0.0, 1.0]), np.array([0.5, -0.2, 0.0])):
        assert fit.problem(th) == pytest.approx(ref.problem(th), rel=1e-12)
    # Every estimate at the same theta: the result built at the in-memory optimum.
    at = DaskLinearMixedModel(fit.model, fit.problem, replace(fit.optsum, final=ref.theta))
    _assert_same_at_theta(at, ref)
    # Rows come back from the workers (partition order, the user's index labels).
    r = at.residuals().sort_index()
    np.testing.assert_allclose(r, ref.residuals().sort_index(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(at.fitted().sort_index(), ref.fitted().sort_index(), rtol=1e-12)
    s, t = at.summary(), ref.summary()
    np.testing.assert_allclose(s.residuals.to_numpy(dtype=float),
                               t.residuals.to_numpy(dtype=float), rtol=1e-9, atol=1e-9)
    pd.testing.assert_frame_equal(at.confint("wald"), ref.confint("wald"), rtol=1e-9)


def test_killed_worker_never_gives_a_wrong_optimum(processes, sleep):
    """Kill a worker process between evaluations: the lost partitions are rebuilt from their
    lineage and the fit goes on to the in-memory optimum, or it fails with
    DistributedFitError; an evaluation that failed is never read as a poor criterion."""
    ref = mm.lmer(SLEEP, sleep)
    rows = sleep.iloc[np.random.default_rng(3).permutation(len(sleep))]
    pr = _quiet(dask_lmm_problem, SLEEP, _ddf(rows, 4), client=processes)
    before = pr(ref.theta)
    pids = processes.run(os.getpid)
    os.kill(pids[sorted(pids)[0]], signal.SIGKILL)
    try:
        after = pr(ref.theta)
        opt = optimize_theta(pr)
    except DistributedFitError as exc:
        assert "no estimate is returned" in str(exc)
    else:
        assert after == pytest.approx(before, rel=1e-12)
        fit = DaskLinearMixedModel(pr.model, pr, opt)
        _assert_same_fit(fit, ref)


@pytest.mark.parametrize("npartitions", [1, 2, 4])
def test_simulated_weights_offset_text_covariate(threads, sim, npartitions):
    f = "y ~ x + z + site + (x | g)"
    ref = mm.lmer(f, sim, weights="w", offset="o")
    ddf = _ddf(sim, npartitions)
    fit = _quiet(mm.lmer, f, ddf, weights="w", offset="o", client=threads, verbose=False)
    _assert_same_fit(fit, ref)
    assert list(fit.fixef.index) == list(ref.fixef.index)
    for th in (ref.theta, np.array([1.0, 0.0, 1.0]), ref.theta * 0.7):
        assert fit.problem(th) == pytest.approx(ref.problem(th), rel=1e-12)
    at = DaskLinearMixedModel(fit.model, fit.problem, replace(fit.optsum, final=ref.theta))
    _assert_same_at_theta(at, ref)
    new = sim.iloc[:40]
    np.testing.assert_allclose(at.predict(new, offset=new["o"].to_numpy()),
                               ref.predict(new, offset=new["o"].to_numpy()), rtol=1e-9)
    got = at.predict(_ddf(new, 2), offset="o").compute()
    np.testing.assert_allclose(got.sort_index(), ref.predict(new).sort_index(), rtol=1e-9)


@pytest.mark.parametrize("formula, reml", [("y ~ x + (x || g)", True),
                                           ("y ~ x + (1 | g) + (0 + z | g)", False),
                                           ("y ~ x + offset(o) + (1 | g)", True)])
def test_one_factor_several_terms(threads, sim, formula, reml):
    ref = mm.lmer(formula, sim, reml=reml)
    fit = _quiet(mm.lmer, formula, _ddf(sim, 2), reml=reml, client=threads, verbose=False)
    # Both fits run L-BFGS-B with the analytic gradient; on a criterion of ~1e4 its relative
    # stopping rule (ftol 1e-12) leaves a gradient of ~1e-5, so with the curvature of this
    # 300-group models (~1e3) the two stop up to ~3e-7 apart. Both are at the optimum to that
    # accuracy (central differences at each give |gradient| < 6e-5), so 5e-7 here, 1e-8 elsewhere.
    _assert_same_fit(fit, ref, tol=OPT_TOL if ref.problem.r < 200 else 5e-7)
    for th in (ref.theta, np.ones_like(ref.theta)):
        assert fit.problem(th) == pytest.approx(ref.problem(th), rel=1e-12)
    at = DaskLinearMixedModel(fit.model, fit.problem, replace(fit.optsum, final=ref.theta))
    _assert_same_at_theta(at, ref)


def test_profile_intervals(threads, sleep):
    """Profile intervals run on the workers' blocks (every profile point is a round trip to
    the cluster, so one parameter of an ML fit here; a REML fit would first be refitted by ML
    on the same blocks, ``DaskLMMProblem.with_reml``)."""
    f = "Reaction ~ Days + (1 | Subject)"
    ref = mm.lmer(f, sleep, reml=False)
    fit = _quiet(mm.lmer, f, _ddf(sleep, 2), reml=False, client=threads, verbose=False)
    np.testing.assert_allclose(fit.confint(parm="sigma"), ref.confint(parm="sigma"), rtol=1e-6)


@pytest.mark.parametrize("formula, match", [
    ("y ~ x + (1 | g) + (1 | site)", "2 grouping factors"),
    ("y ~ x + (1 | site/g)", "grouping factors"),
    ("y ~ x + (1 | site:g)", "interaction"),
])
def test_unsupported_structures_say_what_is_supported(threads, sim, formula, match):
    with pytest.raises(ValueError, match=match) as err:
        mm.lmer(formula, _ddf(sim, 2), client=threads, verbose=False)
    assert SUPPORTED in str(err.value)


def test_bad_arguments(threads, sim):
    ddf = _ddf(sim, 2)
    with pytest.raises(ValueError, match="`weights` must be the name of a column"):
        mm.lmer("y ~ x + (1 | g)", ddf, weights=sim["w"].to_numpy(), client=threads)
    with pytest.raises(ValueError, match="weights column 'nope' not found"):
        mm.lmer("y ~ x + (1 | g)", ddf, weights="nope", client=threads)
    with pytest.raises(ValueError, match="no random-effects term"):
        mm.lmer("y ~ x", ddf, client=threads)
    with pytest.raises(ValueError, match="not found in data"):
        mm.lmer("y ~ nope + (1 | g)", ddf, client=threads)


def test_dask_problem_alone(threads, sim):
    """The objective without a fit (lme4's devFunOnly) equals the in-memory one."""
    pr = dask_lmm_problem("y ~ x + (x | g)", _ddf(sim, 3), reml=False, client=threads)
    mem = mm.deviance_function("y ~ x + (x | g)", sim, reml=False)
    for th in (mem.theta0, np.array([0.8, 0.1, 0.3])):
        c, d = pr.components(th), mem.components(th)
        for k in ("ldL2", "ldRX2", "pwrss", "deviance"):
            assert getattr(c, k) == pytest.approx(getattr(d, k), rel=1e-12)


@pytest.mark.parametrize("formula, thetas", [
    ("y ~ x + (x | g)", [[0.9, 0.1, 0.3], [1.3, -0.4, 0.5]]),
    ("y ~ x + (x || g)", [[0.9, 0.3]]), ("y ~ x + offset(o) + (1 | g)", [[0.7]])])
def test_gradient_against_central_differences(threads, sim, formula, thetas):
    """The analytic gradient from the partitions' sums (one round trip per evaluation)."""
    reml_problem = dask_lmm_problem(formula, _ddf(sim, 2), client=threads)
    for pr in (reml_problem, reml_problem.with_reml(False)):
        for theta in thetas:
            th = np.asarray(theta, dtype=float)
            val, grad = pr.value_and_gradient(th)
            assert val == pytest.approx(pr(th), rel=1e-14)
            h = 1e-5
            fd = np.array([(pr(th + e) - pr(th - e)) / (2 * h) for e in np.eye(len(th)) * h])
            np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)
        # On the boundary the formula (no T^{-1}) still holds: one-sided differences.
        th[0] = 0.0
        val, grad = pr.value_and_gradient(th)
        h = 1e-5
        fd = np.array([(-3 * val + 4 * pr(th + e) - pr(th + 2 * e)) / (2 * h) for e in np.eye(len(th)) * h])
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-4)
        # ... and it equals the in-memory gradient there.
        mem = mm.deviance_function(formula, sim, reml=pr.reml)
        np.testing.assert_allclose(grad, mem.value_and_gradient(th)[1], rtol=1e-10, atol=1e-10)
