"""A covariate's units never change a GLMM's answer (issue 11): glmer centres and scales the
fixed-effect columns for its optimizer and maps the optimum back exactly (scaling.py).

The check is an identity, not a stored number: age in years and the same age in seconds since
an epoch (values ~1e9) are one model, so the slope per second times the seconds in a year is
the slope per year, the log-likelihoods are equal, and the standard errors and predictions
agree. Without the rescaling the seconds fit stopped at a wrong point flagged as not converged.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.scaling import fixed_scaling

YEAR = 365.25 * 86400


def data(seed=4):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(60), 20)
    age = rng.normal(40, 12, 1200)
    y = rng.binomial(1, 1 / (1 + np.exp(-(-1 + 0.05 * (age - 40) + rng.normal(0, 0.8, 60)[g]))))
    df = pd.DataFrame({"y": y, "age": age, "zip": g})
    df["age_sec"] = df.age * YEAR + 1.0e9
    return df


def fit(formula, df, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        return mm.glmer(formula, df, **kw)


@pytest.mark.parametrize("nagq", [1, 10])
def test_seconds_and_years_give_the_same_fit(nagq):
    df = data()
    years = fit("y ~ age + (1 | zip)", df, nagq=nagq)
    secs = fit("y ~ age_sec + (1 | zip)", df, nagq=nagq)
    assert secs.converged
    assert secs.loglik == pytest.approx(years.loglik, abs=1e-6)
    assert secs.fixef["age_sec"] * YEAR == pytest.approx(years.fixef["age"], rel=1e-5)
    # the intercept absorbs the epoch: beta0' = beta0 - slope_per_second * 1e9
    assert secs.fixef["(Intercept)"] == pytest.approx(years.fixef["(Intercept)"] - secs.fixef["age_sec"] * 1e9,
                                                      rel=1e-5)
    se_y = np.sqrt(np.diag(years.vcov))
    se_s = np.sqrt(np.diag(secs.vcov))
    assert se_s[1] * YEAR == pytest.approx(se_y[1], rel=1e-3)
    assert secs.theta[0] == pytest.approx(years.theta[0], rel=1e-4)
    nd = df.head(5)
    np.testing.assert_allclose(secs.predict(nd, type="response"), years.predict(nd, type="response"), rtol=1e-5)
    np.testing.assert_allclose(secs.ranef()["value"], years.ranef()["value"], atol=1e-5)


def test_start_is_given_in_the_original_units():
    df = data()
    years = fit("y ~ age + (1 | zip)", df, nagq=1)
    start = [years.fixef["(Intercept)"] - years.fixef["age"] / YEAR * 1e9, years.fixef["age"] / YEAR, 0.5]
    secs = fit("y ~ age_sec + (1 | zip)", df, nagq=1, start=start)
    assert secs.loglik == pytest.approx(years.loglik, abs=1e-6)


def test_well_scaled_designs_are_left_alone():
    df = data()
    X = np.column_stack([np.ones(len(df)), df.age / 10])
    assert fixed_scaling(X, ["(Intercept)", "age"]) is None
    s = fixed_scaling(np.column_stack([np.ones(len(df)), df.age_sec]), ["(Intercept)", "age_sec"])
    beta_s = np.array([0.3, -0.7])
    Xs = (np.column_stack([np.ones(len(df)), df.age_sec]) - s.center) / s.scale
    # X beta = X_s beta_s with beta = A beta_s, exactly
    np.testing.assert_allclose(np.column_stack([np.ones(len(df)), df.age_sec]) @ (s.A @ beta_s), Xs @ beta_s,
                               rtol=1e-9, atol=1e-9)
