"""Bad input to glmer: clear messages naming the argument or column; the data never modified."""

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.glmm import QuadratureWarning

FIX = Path(__file__).parent / "fixtures"
F = "clicks/expos ~ display + (1 | id)"


@pytest.fixture
def small():
    d = mm.load_ctr()
    keep = d["id"].astype(int) <= 150
    return d[keep].reset_index(drop=True)


def quiet_fit(*a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", QuadratureWarning)
        return mm.glmer(*a, **k)


def test_data_not_modified(small):
    before = small.copy(deep=True)
    quiet_fit(F, small, weights="expos", nagq=5)
    quiet_fit("cbind(clicks, expos - clicks) ~ display + (1 | id)", small, nagq=1)
    pd.testing.assert_frame_equal(small, before)


def test_three_ways_to_say_binomial_agree(small):
    a = quiet_fit(F, small, weights="expos", nagq=5)
    b = quiet_fit(F, small, nagq=5)  # clicks/expos without weights: successes out of trials
    c = quiet_fit("cbind(clicks, expos - clicks) ~ display + (1 | id)", small, nagq=5)
    for other in (b, c):
        np.testing.assert_allclose(other.fixef, a.fixef, rtol=1e-7)
        assert other.loglik == pytest.approx(a.loglik, abs=1e-8)


def test_binary_response_equals_aggregated():
    # 0/1 rows expanded from counts give the same log-likelihood up to the binomial coefficients.
    d = pd.DataFrame({"s": [1, 3, 0, 2, 4, 1], "n": [4, 5, 3, 4, 6, 2], "x": [0, 1, 0, 1, 0, 1],
                      "g": list("aabbcc")})
    rows = []
    for r in d.itertuples():
        rows += [{"y": 1, "x": r.x, "g": r.g}] * r.s + [{"y": 0, "x": r.x, "g": r.g}] * (r.n - r.s)
    long = pd.DataFrame(rows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = mm.glmer("cbind(s, n - s) ~ x + (1 | g)", d, nagq=5)
        b = mm.glmer("y ~ x + (1 | g)", long, nagq=5)
    np.testing.assert_allclose(a.fixef, b.fixef, rtol=1e-6, atol=1e-7)
    from scipy.special import comb
    assert a.loglik - b.loglik == pytest.approx(np.log(comb(d["n"], d["s"])).sum(), abs=1e-6)


def test_proportion_outside_unit_interval(small):
    bad = small.assign(p=small["clicks"] / small["expos"] * 2)
    with pytest.raises(ValueError, match=r"proportion in \[0, 1\]"):
        mm.glmer("p ~ display + (1 | id)", bad, weights="expos")


def test_numerator_above_denominator(small):
    bad = small.assign(clicks=small["expos"] + 1)
    with pytest.raises(ValueError, match="proportions above 1"):
        mm.glmer(F, bad)


def test_non_integer_successes_warn_like_r(small):
    bad = small.assign(p=np.minimum(small["clicks"] + 0.5, small["expos"]) / small["expos"])
    with pytest.warns(UserWarning, match="non-integer #successes"):
        quiet_fit("p ~ display + (1 | id)", bad, weights="expos", nagq=3)


def test_negative_weights(small):
    w = small["expos"].to_numpy(float).copy()
    w[3] = -1
    with pytest.raises(ValueError, match="`weights` must not be negative"):
        mm.glmer("p ~ display + (1 | id)", small.assign(p=small["clicks"] / small["expos"]),
                 weights=w)


def test_weights_not_a_column(small):
    with pytest.raises(ValueError, match="`weights`='exposures' is not a column"):
        mm.glmer(F, small, weights="exposures")


def test_zero_trial_row_warns_and_fits(small):
    z = small.copy()
    z.loc[0, ["clicks", "expos"]] = 0
    with pytest.raises(ValueError, match=r"1 rows have zero trials \(expos == 0\).*cbind"):
        mm.glmer(F, z, nagq=3)
    with pytest.warns(UserWarning, match="1 rows have zero trials"):
        f = quiet_fit("cbind(clicks, expos - clicks) ~ display + (1 | id)", z, nagq=3)
    assert np.isfinite(f.loglik)


def test_poisson_counts():
    d = pd.read_csv(FIX / "grouseticks.csv", dtype={"BROOD": str, "YEAR": str, "LOCATION": str})
    with pytest.raises(ValueError, match="3 negative counts"):
        mm.glmer("T ~ YEAR + (1 | BROOD)", d.assign(T=np.r_[-1, -2, -3, d["TICKS"][3:]]),
                 family="poisson")
    with pytest.warns(UserWarning, match="non-integer counts"):
        quiet_fit("T ~ YEAR + (1 | BROOD)", d.assign(T=d["TICKS"] + 0.5), family="poisson", nagq=1)


def test_nagq_needs_a_single_grouping_factor():
    # (A vector term such as (cHEIGHT | LOCATION) has its own kernel: tests/test_glmm_vector.py.)
    d = pd.read_csv(FIX / "grouseticks.csv", dtype={"BROOD": str, "YEAR": str, "LOCATION": str})
    with pytest.raises(ValueError, match="single grouping factor.*nagq=1"):
        mm.glmer("TICKS ~ YEAR + (1 | BROOD) + (1 | LOCATION)", d, family="poisson", nagq=5)


@pytest.mark.parametrize("nagq", [-1, 2.5, "many", 5000])
def test_bad_nagq(small, nagq):
    with pytest.raises(ValueError, match="nagq|quadrature points"):
        mm.glmer(F, small, nagq=nagq)


def test_bad_dask_path_on_pandas_data(small):
    """dask_path has no effect on a pandas frame, but a misspelt one is still refused."""
    with pytest.raises(ValueError, match="dask_path must be"):
        mm.glmer(F, small, dask_path="pattern")


def test_unknown_family(small):
    with pytest.raises(ValueError, match="`family` must be one of"):
        mm.glmer(F, small, family="tweedie")


def test_no_random_effects(small):
    with pytest.raises(ValueError, match="no random-effects term"):
        mm.glmer("clicks/expos ~ display", small)


def test_complete_separation_is_flagged():
    rng = np.random.default_rng(4)
    g = np.repeat(np.arange(20), 10)
    x = np.tile(np.r_[np.zeros(5), np.ones(5)], 20)
    y = (x == 1).astype(float)  # x predicts y perfectly
    d = pd.DataFrame({"y": y, "x": x, "g": g.astype(str), "z": rng.normal(size=200)})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        f = mm.glmer("y ~ x + z + (1 | g)", d, nagq=1)
    msgs = " ".join(str(m.message) for m in w)
    assert "separation" in msgs or "did not converge" in msgs
    assert "separation" in str(f.summary()) or not f.converged


def test_singular_fit_is_flagged():
    rng = np.random.default_rng(5)
    d = pd.DataFrame({"g": np.repeat([f"g{i}" for i in range(30)], 20),
                      "y": rng.binomial(1, 0.3, 600)})
    with pytest.warns(UserWarning, match="singular"):
        f = quiet_fit("y ~ 1 + (1 | g)", d, nagq=5)
    assert f.singular and f.theta[0] < 1e-4
    assert "singular" in str(f.summary())
