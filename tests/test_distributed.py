"""glmer on Dask equals glmer in memory (to 1e-8), on local clusters of processes and threads.

The whole file is skipped when dask.distributed is not installed: the package does not need it.
"""

import os
import signal
import warnings

import numpy as np
import pandas as pd
import pytest

distributed = pytest.importorskip("distributed")
dd = pytest.importorskip("dask.dataframe")

import mixedmodels as mm  # noqa: E402
from mixedmodels import glmm_nagq  # noqa: E402
from mixedmodels.distributed import (DaskGlmerResult, DistributedFitError,  # noqa: E402
                                     dask_objective)
from mixedmodels.glmm import fit_frame  # noqa: E402

FORMULA = "clicks/expos ~ display + (1 | id)"
TOL = 1e-8


@pytest.fixture(scope="module")
def processes():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        yield cluster, client


@pytest.fixture(scope="module")
def threads():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, set_as_default=False) as client:
        yield client


@pytest.fixture(scope="module")
def clicks():
    data, _, _ = mm.make_click_data(800, -4.5, 0.5, 2.0, 20, seed=13)
    return data


def _quiet(fn, *a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **k)


def _assert_same(fit, ref, tol_params=TOL):
    """Every estimate, SE and the log-likelihood to 1e-8; the random effects too.

    ``tol_params``: for the estimates, where the two fits' Newton steps use different
    Hessians (both stop where a step would gain < 1e-12 in the log-likelihood, which fixes
    the estimates to ~1e-7 relative, not 1e-8; the SEs, from Hessians at these points, then
    to 100 times that)."""
    assert isinstance(fit, DaskGlmerResult)
    assert fit.nagq == ref.nagq
    np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=tol_params, atol=tol_params)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=tol_params, atol=tol_params)
    # The in-memory nagq="auto" fit's Hessian is the kernel's analytic one, the Dask
    # objective's finite differences of its gradient: they agree to ~1e-6.
    np.testing.assert_allclose(fit.se, ref.se, rtol=max(1e-5, 100 * tol_params), atol=1e-7)
    assert abs(fit.loglik - ref.loglik) <= TOL * (1 + abs(ref.loglik))
    a, b = fit.ranef(), ref.ranef()
    assert list(a.level) == list(b.level)
    tol_b = max(1e-7, tol_params)
    np.testing.assert_allclose(a.value, b.value, rtol=tol_b, atol=tol_b)
    np.testing.assert_allclose(a.condsd, b.condsd, rtol=tol_b, atol=tol_b)
    assert fit.nobs == ref.nobs and fit.ngroups == ref.ngroups


@pytest.mark.parametrize("npartitions", [1, 2, 4])
def test_processes_equal_in_memory(processes, clicks, npartitions):
    _, client = processes
    ref = _quiet(mm.glmer, FORMULA, clicks, nagq=10)
    # sort=False keeps the post's row layout: a treated user's two rows are far apart, so
    # with several partitions the fitter must shuffle them together.
    ddf = dd.from_pandas(clicks, npartitions=npartitions, sort=False)
    fit = _quiet(mm.glmer, FORMULA, ddf, nagq=10, client=client, verbose=False)
    _assert_same(fit, ref)
    assert fit.distributed["npartitions"] == npartitions
    assert fit.distributed["path"] == "kernel"
    assert fit.distributed["shuffled"] == (npartitions > 1)
    # Accessors that need the rows run on the workers.
    s = str(fit.summary())
    assert "fitted out of core on Dask" in s
    np.testing.assert_allclose(np.sort(fit.pearson_residuals()),
                               np.sort(ref.pearson_residuals()), rtol=1e-7, atol=1e-7)
    new = clicks.iloc[:50]
    np.testing.assert_allclose(fit.predict(new, type="response"),
                               ref.predict(new, type="response"), rtol=1e-7)


def test_threads_auto_poisson_text_covariate(threads):
    """nagq='auto' (per-group rules chosen and kept on the workers), a Poisson family, a text
    covariate, a string grouping column: the in-memory fit, to 1e-8."""
    rng = np.random.default_rng(5)
    g = rng.integers(0, 300, 1500)
    arm = rng.choice(["a", "b", "c"], 1500)
    u = rng.normal(0, 0.8, 300)
    y = rng.poisson(np.exp(0.3 + 0.4 * (arm == "b") + u[g]))
    data = pd.DataFrame({"y": y, "arm": arm, "g": [f"s{k:03d}" for k in g]})
    ref = _quiet(mm.glmer, "y ~ arm + (1 | g)", data, family="poisson", nagq="auto")
    ddf = dd.from_pandas(data, npartitions=3)
    fit = _quiet(mm.glmer, "y ~ arm + (1 | g)", ddf, family="poisson", nagq="auto",
                 client=threads, verbose=False)
    _assert_same(fit, ref)
    assert fit.points_range == ref.points_range
    assert fit.loglik_check == pytest.approx(ref.loglik_check, abs=1e-8)
    assert fit.xnames == ref.xnames


@pytest.mark.parametrize("nagq", [5, "auto"])
def test_warmup_subset_path(threads, clicks, monkeypatch, nagq):
    """Many groups: the warm-up fit on a random subset of groups, gathered to the driver (the
    count of distinct groups that triggers it is the in-memory one)."""
    monkeypatch.setattr(glmm_nagq, "WARMUP_GROUPS", 50)
    ref = _quiet(mm.glmer, FORMULA, clicks, nagq=nagq)
    fit = _quiet(mm.glmer, FORMULA, dd.from_pandas(clicks, npartitions=2, sort=False),
                 nagq=nagq, client=threads, verbose=False)
    assert fit._obj.nunits == ref._obj.nunits
    # nagq="auto" from the warm-up's Hessian: in memory each Newton step brings the kernel's
    # Hessian at its point, on Dask the warm-up's (scaled) one is kept.
    _assert_same(fit, ref, tol_params=TOL if nagq != "auto" else 1e-6)


def test_killed_worker_never_gives_a_wrong_optimum(processes, clicks):
    """Kill a worker process between evaluations: the fit recomputes the lost partitions
    (Dask's lineage) and lands on the in-memory optimum, or fails with DistributedFitError."""
    _, client = processes
    ref = _quiet(mm.glmer, FORMULA, clicks, nagq=10)
    ddf = dd.from_pandas(clicks, npartitions=4, sort=False)
    frame, obj = _quiet(dask_objective, FORMULA, ddf, nagq=10, client=client)
    obj.evaluate(obj.default_start())
    pids = client.run(os.getpid)
    victim = sorted(pids)[0]
    os.kill(pids[victim], signal.SIGKILL)
    try:
        fit = _quiet(fit_frame, frame, 10, obj=obj, result_class=DaskGlmerResult)
    except DistributedFitError as exc:
        assert "no estimate is returned" in str(exc)
    else:
        np.testing.assert_allclose(fit.fixef, ref.fixef, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(fit.theta, ref.theta, rtol=TOL, atol=TOL)
        assert abs(fit.loglik - ref.loglik) <= TOL * (1 + abs(ref.loglik))


@pytest.mark.parametrize("formula, match", [
    ("clicks/expos ~ display + (1 | id) + (1 | display)", "one grouping factor"),
    ("clicks/expos ~ display + (display | id)", "scalar random effect"),
    ("clicks/expos ~ display + (1 | id:display)", "interaction"),
    ("clicks/expos ~ nothere + (1 | id)", "nothere"),
])
def test_unsupported_models_say_what_is_supported(threads, clicks, formula, match):
    ddf = dd.from_pandas(clicks, npartitions=2)
    with pytest.raises(ValueError, match=match):
        mm.glmer(formula, ddf, nagq=1, client=threads, verbose=False)


def test_dispersion_families_are_refused(threads, clicks):
    ddf = dd.from_pandas(clicks.assign(t=clicks.expos + 0.5), npartitions=2)
    with pytest.raises(ValueError, match="dispersion"):
        mm.glmer("t ~ display + (1 | id)", ddf, family="gamma", client=threads, verbose=False)


def test_weights_must_be_a_column(threads, clicks):
    ddf = dd.from_pandas(clicks, npartitions=2)
    with pytest.raises(ValueError, match="name of a column"):
        mm.glmer("clicks/expos ~ display + (1 | id)", ddf, weights=np.ones(len(clicks)),
                 client=threads, verbose=False)
