"""glmer on Dask equals glmer in memory (to 1e-8), by both paths (the merged table of distinct
groups fitted in memory; the kernel mapped over partitions), on local clusters of processes and
threads.

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
from mixedmodels.compress import group_patterns  # noqa: E402
from mixedmodels.distributed import (DaskGlmerResult, DistributedFitError,  # noqa: E402
                                     dask_objective, glmer_dask)
from mixedmodels.distributed_patterns import (PatternTable, merge_tables,  # noqa: E402
                                              table_from_groups)
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


@pytest.fixture(scope="module")
def ctr():
    """The post's data: 1,000 users, 508 distinct (display, clicks, exposures) patterns."""
    data = mm.load_ctr()
    return data, _quiet(mm.glmer, FORMULA, data, nagq="auto")


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
    # Both Hessians are the kernel's (analytic with nagq="auto", summed over partitions on
    # the partition path; finite differences of the gradient with a fixed rule).
    tol_se = TOL if tol_params == TOL else 100 * tol_params
    np.testing.assert_allclose(fit.se, ref.se, rtol=tol_se, atol=tol_se)
    assert abs(fit.loglik - ref.loglik) <= TOL * (1 + abs(ref.loglik))
    a, b = fit.ranef(), ref.ranef()
    assert list(a.level) == list(b.level)
    tol_b = max(1e-7, tol_params)
    np.testing.assert_allclose(a.value, b.value, rtol=tol_b, atol=tol_b)
    np.testing.assert_allclose(a.condsd, b.condsd, rtol=tol_b, atol=tol_b)
    assert fit.nobs == ref.nobs and fit.ngroups == ref.ngroups


@pytest.mark.parametrize("path", ["patterns", "partitions"])
@pytest.mark.parametrize("npartitions", [1, 2, 4])
def test_paths_equal_in_memory(processes, ctr, npartitions, path):
    """The post's data, nagq='auto': both paths give the in-memory estimates, SEs, random
    effects and log-likelihood to 1e-8, with 1, 2 and 4 partitions."""
    _, client = processes
    data, ref = ctr
    # sort=False keeps the rows' layout: with several partitions some users' rows are in two
    # partitions, so the fitter must shuffle them together.
    ddf = dd.from_pandas(data, npartitions=npartitions, sort=False)
    fit = _quiet(mm.glmer, FORMULA, ddf, nagq="auto", client=client, verbose=False,
                 dask_path=path)
    _assert_same(fit, ref)
    assert fit.points_range == ref.points_range
    assert fit.distributed_path == path
    assert fit.distributed["npartitions"] == npartitions
    assert fit.distributed["shuffled"] == (npartitions > 1)
    # Both count the distinct groups as the in-memory fit does.
    assert fit.distributed["patterns"] == ref.distinct_groups == 508
    s = str(fit.summary())
    assert f"fitted out of core on Dask by the {path[:-1]} path" in s
    # Accessors that need the rows: on the workers, or from the table of patterns.
    np.testing.assert_allclose(np.sort(fit.pearson_residuals()),
                               np.sort(ref.pearson_residuals()), rtol=1e-7, atol=1e-7)
    new = data.iloc[:50]
    np.testing.assert_allclose(fit.predict(new, type="response"),
                               ref.predict(new, type="response"), rtol=1e-7)
    log = fit.partition_log()
    assert len(log) == npartitions and log.rows.sum() == ref.nobs


def test_auto_chooses_patterns_for_the_post(threads, ctr):
    data, ref = ctr
    fit = _quiet(mm.glmer, FORMULA, dd.from_pandas(data, npartitions=2), client=threads,
                 verbose=False)
    assert fit.distributed_path == "patterns"
    assert "508 distinct groups of 1,000" in fit.distributed["path_reason"]
    _assert_same(fit, ref)
    with pytest.raises(ValueError, match="pattern path"):
        fit.evaluation_log()


@pytest.mark.parametrize("path", ["patterns", "partitions"])
def test_fixed_nagq(threads, clicks, path):
    """A fixed Gauss-Hermite rule (finite-difference Hessians on both sides)."""
    ref = _quiet(mm.glmer, FORMULA, clicks, nagq=10)
    fit = _quiet(mm.glmer, FORMULA, dd.from_pandas(clicks, npartitions=2, sort=False),
                 nagq=10, client=threads, verbose=False, dask_path=path)
    _assert_same(fit, ref)
    assert fit.distributed_path == path


def test_pattern_budget(threads, ctr):
    """A merged table over the budget: auto falls back to the partitions, a forced pattern
    path says what to change."""
    data, ref = ctr
    ddf = dd.from_pandas(data, npartitions=4)
    fit = _quiet(glmer_dask, FORMULA, ddf, client=threads, verbose=False, pattern_budget=2000)
    assert fit.distributed_path == "partitions"
    assert "outgrew the budget" in fit.distributed["path_reason"]
    _assert_same(fit, ref)
    with pytest.raises(ValueError, match="raise pattern_budget"):
        _quiet(glmer_dask, FORMULA, ddf, client=threads, verbose=False, path="patterns",
               pattern_budget=2000)
    with pytest.raises(ValueError, match="dask_path"):
        mm.glmer(FORMULA, ddf, client=threads, verbose=False, dask_path="tables")


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
    # Counts of ~5 rows per group hardly repeat: auto maps the kernel over the partitions.
    assert fit.distributed_path == "partitions"
    assert "too few repeated groups" in fit.distributed["path_reason"]
    _assert_same(fit, ref)
    assert fit.points_range == ref.points_range
    assert fit.loglik_check == pytest.approx(ref.loglik_check, abs=1e-8)
    assert fit.xnames == ref.xnames


@pytest.mark.parametrize("nagq, path", [(5, "partitions"), ("auto", "partitions"),
                                        ("auto", "patterns")])
def test_warmup_subset_path(threads, clicks, monkeypatch, nagq, path):
    """Many groups: the warm-up fit on a random subset of groups, gathered to the driver or
    taken from the table of patterns (the count of distinct groups that triggers it is the
    in-memory one)."""
    monkeypatch.setattr(glmm_nagq, "WARMUP_GROUPS", 50)
    ref = _quiet(mm.glmer, FORMULA, clicks, nagq=nagq)
    fit = _quiet(mm.glmer, FORMULA, dd.from_pandas(clicks, npartitions=2, sort=False),
                 nagq=nagq, client=threads, verbose=False, dask_path=path)
    assert fit._obj.nunits == ref._obj.nunits
    # nagq="auto" from the warm-up's Hessian: in memory each Newton step brings the kernel's
    # Hessian at its point, on Dask the warm-up's (scaled) one is kept.
    _assert_same(fit, ref)


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


def _poisson_exposures():
    """Poisson counts over exposures t (integers, as logs count days): E[y] = t exp(...)."""
    rng = np.random.default_rng(21)
    g = rng.integers(0, 150, 900)
    x = rng.integers(0, 2, 900)
    t = rng.choice([1, 2, 5, 10], 900)
    u = rng.normal(0, 0.6, 150)
    y = rng.poisson(t * np.exp(-1.0 + 0.5 * x + u[g]))
    return pd.DataFrame({"y": y, "x": x, "t": t, "g": g, "lt": np.log(t) + 0.25})


@pytest.mark.parametrize("path", ["patterns", "partitions"])
@pytest.mark.parametrize("npartitions", [1, 2])
def test_offsets(threads, npartitions, path):
    """offset(log(t)) in the formula, and offset= a column added to it, as in memory: the
    estimates and log-likelihood to 1e-8 by both paths; predict reads the new rows' offsets."""
    data = _poisson_exposures()
    ddf = dd.from_pandas(data, npartitions=npartitions, sort=False)
    for formula, offset in (("y ~ x + offset(log(t)) + (1 | g)", None),
                            ("y ~ x + (1 | g)", "lt"),
                            ("y ~ x + offset(log(t)) + (1 | g)", "lt")):
        ref = _quiet(mm.glmer, formula, data, family="poisson", nagq="auto", offset=offset)
        fit = _quiet(mm.glmer, formula, ddf, family="poisson", nagq="auto", offset=offset,
                     client=threads, verbose=False, dask_path=path)
        _assert_same(fit, ref)
        assert fit.distributed_path == path
        # The offset matters: without it the fit is another one.
        assert abs(fit.fixef.iloc[0] - _quiet(mm.glmer, "y ~ x + (1 | g)", data,
                                              family="poisson").fixef.iloc[0]) > 0.1
        new = data.iloc[:40].assign(t=data["t"].iloc[:40] * 3, lt=data["lt"].iloc[:40] - 1)
        np.testing.assert_allclose(fit.predict(new, type="response"),
                                   ref.predict(new, type="response"), rtol=1e-7)
        got = fit.predict(dd.from_pandas(new, npartitions=2), type="link").compute()
        np.testing.assert_allclose(got, ref.predict(new), rtol=1e-7)


def test_offset_must_be_a_column(threads):
    data = _poisson_exposures()
    ddf = dd.from_pandas(data, npartitions=2)
    with pytest.raises(ValueError, match="`offset` must be the name of a column"):
        mm.glmer("y ~ x + (1 | g)", ddf, family="poisson", offset=np.log(data["t"].to_numpy()),
                 client=threads, verbose=False)
    with pytest.raises(ValueError, match="'nope'.*offset"):
        mm.glmer("y ~ x + (1 | g)", ddf, family="poisson", offset="nope", client=threads,
                 verbose=False)
    with pytest.raises(ValueError, match="offset"):
        mm.glmer("y ~ x + offset(log(s)) + (1 | g)", ddf, family="poisson", client=threads,
                 verbose=False)


# ---- the pattern tables and their merge ----------------------------------------------------


def _discrete_rows(rng, groups):
    """Rows y, m, z, offset, const, X (intercept, display) of groups of 1-3 discrete rows."""
    sizes = rng.integers(1, 4, groups)
    codes = np.repeat(np.arange(groups), sizes)
    n = len(codes)
    m = rng.integers(1, 4, n).astype(float)
    y = rng.integers(0, 4, n) % (m + 1) / m
    x = rng.integers(0, 2, n).astype(float)
    V = np.column_stack([y, m, np.ones(n), np.zeros(n), np.log1p(m), np.ones(n), x])
    perm = rng.permutation(n)            # rows of a group in any order
    return V[perm], codes[perm]


def test_merged_tables_equal_the_in_memory_patterns():
    """Tables made per block of groups and merged (in any grouping) find exactly the patterns
    and counts that group_patterns finds on all groups at once."""
    rng = np.random.default_rng(3)
    G = 3000
    V, codes = _discrete_rows(rng, G)
    gp = group_patterns([V[:, 0], V[:, 1], V[:, 2], V[:, 3], V[:, 5:]], codes, G)
    blocks = np.array_split(np.arange(G), 5)
    tables = []
    for b in blocks:
        rows = np.isin(codes, b)
        local = np.searchsorted(b, codes[rows])
        t, gpat = table_from_groups(V[rows], local, len(b))
        # Each group's pattern in the table has the group's rows.
        g = 7
        blk = t.rows[t.starts[gpat[g]]:t.starts[gpat[g]] + t.nrows[gpat[g]]]
        np.testing.assert_array_equal(np.sort(blk, axis=0), np.sort(V[rows][local == g], axis=0))
        tables.append(t)
    merged = merge_tables([merge_tables(tables[:2]), merge_tables(tables[2:])])
    assert not merged.collision and not merged.over_budget
    assert merged.npatterns == gp.npatterns and merged.ngroups == G
    np.testing.assert_array_equal(np.sort(merged.count), np.sort(gp.count.astype(int)))
    np.testing.assert_array_equal(np.sort(merged.key), np.sort(gp.key))
    assert merge_tables(tables, budget=merged.nbytes - 1).over_budget
    assert merge_tables(tables[:1], budget=tables[0].nbytes - 1).over_budget


def test_a_hash_collision_is_never_merged():
    """Two different groups given the same key (a forced collision) are flagged, not added."""
    V = np.array([[0.5, 2, 1, 0, 0, 1, 0], [0.0, 2, 1, 0, 0, 1, 0]])
    key = np.array([42], dtype=np.uint64)
    one = np.array([1], dtype=np.int64)
    a = PatternTable(key, one, one, V[:1])
    b = PatternTable(key, one, one, V[1:])
    assert merge_tables([a, b]).collision
    same = merge_tables([a, PatternTable(key, one, one, V[:1].copy())])
    assert not same.collision and same.count.tolist() == [2]
