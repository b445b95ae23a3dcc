"""Formulas read as R reads them (issue 11 and issue 12's formula conveniences).

The cases come from ../shared/cases (b1_xor, b8_int_overflow, b2_center): each was a converged,
plausible, wrong answer or a confusing error. The checks are identities between fits that must
hold whatever the numbers are (a power written two ways, a reparametrized polynomial, a
rescaled response), plus R's own values for poly() and contr.poly (printed by R 4.x, the
snippet is next to each).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.formula import build_model, match_levels, parse_formula


def quad_data(seed=0):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({"x": np.tile(np.arange(10), 6), "g": np.repeat(np.arange(6), 10)})
    df["y"] = 0.5 * df.x**2 + rng.normal(0, 1, 6)[df.g] + rng.normal(size=60)
    return df


def test_caret_is_a_power_inside_I():
    # b1_xor.py: I(x^2) was Python's XOR (x ^ 2 = [2, 3, 0, 1, 6, ...]).
    df = quad_data()
    caret = mm.lmer("y ~ I(x^2) + (1 | g)", df)
    stars = mm.lmer("y ~ I(x**2) + (1 | g)", df)
    np.testing.assert_allclose(caret.fixef.to_numpy(), stars.fixef.to_numpy(), rtol=1e-10)
    assert caret.fixef.iloc[1] == pytest.approx(0.5, abs=0.02)
    # ... inside any call (R evaluates function arguments as R code), and in the random part
    m = build_model("y ~ log(1 + x^2) + (0 + I(x^2) | g)", df)
    np.testing.assert_allclose(m.X[:, 1], np.log1p(df.x.to_numpy(float) ** 2))
    np.testing.assert_allclose(m.reterms[0].Z[:, 0], df.x.to_numpy(float) ** 2)


def test_caret_at_formula_level_still_crosses_terms():
    df = quad_data().assign(z=lambda d: d.x % 3 + 0.5)
    m = build_model("y ~ (x + z)^2 + (1 | g)", df)
    assert m.xnames == ["(Intercept)", "x", "z", "x:z"]


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "uint8", "Int64"])
def test_integer_columns_never_wrap(dtype):
    # b8_int_overflow.py: x**3 on an int8 column wrapped around (7**3 = 343 -> 87).
    rng = np.random.default_rng(1)
    df = pd.DataFrame({"x": np.tile(np.arange(8), 12), "g": np.repeat(np.arange(12), 8)})
    df["y"] = 0.2 * df.x.astype(float) ** 3 + rng.normal(size=96)
    ref = mm.lmer("y ~ I(x**3) + (1 | g)", df.astype({"x": float}))
    small = df.astype({"x": dtype})
    fit = mm.lmer("y ~ I(x**3) + (1 | g)", small)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref.fixef.to_numpy(), rtol=1e-9)
    assert fit.fixef.iloc[1] == pytest.approx(0.2, abs=0.01)
    assert small["x"].dtype == dtype  # the user's frame is left as it was
    # and the same promotion applies to new data
    new = pd.DataFrame({"x": pd.array([7, 6], dtype=dtype)})
    np.testing.assert_allclose(fit.predict(new, include_random=False), ref.predict(new.astype(float), include_random=False))


def test_center_scale_poly_reparametrize_the_same_model():
    # b2_center.py: "name 'x' is not defined". Each is a reparametrization of the raw fit, so
    # fitted values, the ML deviance and predictions on new x must be identical (the REML
    # criterion moves by log det of the change of basis, so ML it is).
    df = quad_data()
    df["x"] = df.x.astype(float)
    raw1 = mm.lmer("y ~ x + (1 | g)", df, reml=False)
    raw2 = mm.lmer("y ~ x + I(x^2) + (1 | g)", df, reml=False)
    new = pd.DataFrame({"x": [-3.0, 0.0, 4.5, 20.0]})
    for formula, raw in [("y ~ center(x) + (1 | g)", raw1), ("y ~ scale(x) + (1 | g)", raw1),
                         ("y ~ poly(x, 2) + (1 | g)", raw2)]:
        fit = mm.lmer(formula, df, reml=False)
        assert fit.deviance == pytest.approx(raw.deviance, abs=1e-8), formula
        np.testing.assert_allclose(fit.fitted(), raw.fitted(), atol=1e-8)
        np.testing.assert_allclose(fit.predict(new, include_random=False), raw.predict(new, include_random=False),
                                   atol=1e-7)
    sd = df.x.std(ddof=1)  # R's scale() divides by the n - 1 SD
    assert mm.lmer("y ~ scale(x) + (1 | g)", df, reml=False).fixef.iloc[1] == pytest.approx(raw1.fixef.iloc[1] * sd, rel=1e-8)


def test_poly_is_Rs_orthogonal_polynomial():
    # R> x <- 0:5; poly(x, 2)
    r_poly = np.array([[-0.5976143, 0.5455447], [-0.3585686, -0.1091089], [-0.1195229, -0.4364358],
                       [0.1195229, -0.4364358], [0.3585686, -0.1091089], [0.5976143, 0.5455447]])
    # R> predict(poly(x, 2), c(0, 10))
    r_new = np.array([[-0.5976143, 0.5455447], [1.7928429, 8.7287156]])
    df = pd.DataFrame({"x": np.arange(6), "y": np.arange(6.0) ** 1.5, "g": list("aabbcc")})
    m = build_model("y ~ poly(x, 2) + (1 | g)", df)
    assert m.xnames == ["(Intercept)", "poly(x, 2)1", "poly(x, 2)2"]  # R's names
    np.testing.assert_allclose(m.X[:, 1:], r_poly, atol=1e-7)
    np.testing.assert_allclose(m.fixed_matrix(pd.DataFrame({"x": [0, 10]}))[:, 1:], r_new, atol=1e-6)


def ordered_data():
    rng = np.random.default_rng(4)
    lv = ["low", "mid", "high"]
    df = pd.DataFrame({"dose": pd.Categorical(np.tile(lv, 20), categories=lv, ordered=True),
                       "g": np.repeat(np.arange(10), 6)})
    df["y"] = df.dose.cat.codes * 1.5 + rng.normal(0, 1, 10)[df.g] + rng.normal(size=60)
    return df


def test_ordered_factor_gets_polynomial_contrasts_as_in_R():
    # R> contr.poly(3)
    r_contr = np.array([[-0.7071068, 0.4082483], [0.0, -0.8164966], [0.7071068, 0.4082483]])
    df = ordered_data()
    fit = mm.lmer("y ~ dose + (1 | g)", df, reml=False)
    assert list(fit.fixef.index) == ["(Intercept)", "dose.L", "dose.Q"]  # R's names
    np.testing.assert_allclose(fit.model.X[:3, 1:], r_contr, atol=1e-7)
    # the same model as treatment coding: same fit, same predictions
    plain = mm.lmer("y ~ dose + (1 | g)", df.assign(dose=df.dose.astype(str)), reml=False)
    assert fit.deviance == pytest.approx(plain.deviance, abs=1e-8)
    new = pd.DataFrame({"dose": ["high", "low"]})
    np.testing.assert_allclose(fit.predict(new, include_random=False), plain.predict(new, include_random=False))
    # contr.poly's columns are orthonormal and orthogonal to 1: the coefficients are the
    # contrasts of the three level means, and the intercept is their average
    mu = plain.predict(pd.DataFrame({"dose": ["low", "mid", "high"]}), include_random=False).to_numpy()
    np.testing.assert_allclose(fit.fixef[["dose.L", "dose.Q"]].to_numpy(), r_contr.T @ mu, atol=1e-6)
    assert fit.fixef["(Intercept)"] == pytest.approx(mu.mean(), abs=1e-6)


def test_factor_in_fixed_and_grouping_parts():
    df = quad_data()
    fit = mm.lmer("y ~ x + (1 | factor(g))", df)
    ref = mm.lmer("y ~ x + (1 | g)", df)
    assert fit.deviance == pytest.approx(ref.deviance, abs=1e-10)
    assert list(fit.ngroups) == ["factor(g)"]  # lme4 names the group by its expression
    df["k"] = df.x % 3
    m = build_model("y ~ factor(k) + (1 | as.factor(g))", df)
    assert m.xnames == ["(Intercept)", "factor(k)1", "factor(k)2"]  # R: factor(k)1, factor(k)2
    assert m.reterms[0].spec.group_vars == ("g",)


def test_backticked_names():
    df = quad_data().rename(columns={"x": "dose (mg)", "g": "clinic id", "y": "blood level"})
    fit = mm.lmer("`blood level` ~ `dose (mg)` + I(`dose (mg)`^2) + (1 | `clinic id`)", df)
    ref = mm.lmer("y ~ x + I(x^2) + (1 | g)", quad_data())
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref.fixef.to_numpy(), rtol=1e-9)
    assert fit.predict(pd.DataFrame({"dose (mg)": [2.0], "clinic id": [3]})).iloc[0] == pytest.approx(
        ref.predict(pd.DataFrame({"x": [2.0], "g": [3]})).iloc[0])


def test_transformed_response():
    df = quad_data()
    df["y"] = df.y + 40.0
    ref = mm.lmer("y ~ x + (1 | g)", df)
    scaled = mm.lmer("I(y / 1000) ~ x + (1 | g)", df)
    np.testing.assert_allclose(scaled.fixef.to_numpy(), ref.fixef.to_numpy() / 1000, rtol=1e-6)
    logged = mm.lmer("log(y) ~ x + (1 | g)", df)
    direct = mm.lmer("ly ~ x + (1 | g)", df.assign(ly=np.log(df.y)))
    np.testing.assert_allclose(logged.fixef.to_numpy(), direct.fixef.to_numpy(), rtol=1e-10)
    power = mm.lmer("y^2 ~ x + (1 | g)", df)  # a power on the left too, never XOR
    np.testing.assert_allclose(power.model.y, df.y.to_numpy() ** 2)
    with pytest.raises(ValueError, match="infinite or undefined"):
        mm.lmer("log(y - 100) ~ x + (1 | g)", df)


def test_dot_means_the_other_columns():
    df = quad_data().assign(z=lambda d: np.sin(d.x))
    fit = mm.lmer("y ~ . + (1 | g)", df)
    assert list(fit.fixef.index) == ["(Intercept)", "x", "z"]  # neither y nor the grouping factor g
    ref = mm.lmer("y ~ x + z + (1 | g)", df)
    assert fit.deviance == pytest.approx(ref.deviance, abs=1e-10)
    assert list(mm.lmer("y ~ . - z + (1 | g)", df).fixef.index) == ["(Intercept)", "x"]
    with pytest.raises(ValueError, match="fixed part only"):
        mm.lmer("y ~ x + (. | g)", df)


@pytest.mark.parametrize("formula, fn", [("y ~ s(x) + (1 | g)", "s"), ("y ~ ns(x, 3) + (1 | g)", "ns"),
                                         ("y ~ x + (splines(x) | g)", "splines")])
def test_unsupported_functions_are_named(formula, fn):
    with pytest.raises(ValueError, match=rf"calls {fn}\(\), which formulas here do not support.*supported: I\(\)"):
        mm.lmer(formula, quad_data())


def test_missing_column_inside_a_transform_is_named():
    with pytest.raises(ValueError, match=r"column\(s\) not found in data: 'w' \(used in the fixed effects\)"):
        mm.lmer("y ~ center(w) + (1 | g)", quad_data())


def test_na_inside_transform_rows_are_dropped_with_the_warning():
    df = quad_data().astype({"x": float})
    df.loc[3, "x"] = np.nan
    with pytest.warns(UserWarning, match=r"dropped 1 of 60 rows with missing values in x"):
        fit = mm.lmer("y ~ poly(x, 2) + (1 | g)", df)
    assert fit.nobs == 59


def test_parse_keeps_backticks_and_bars_apart():
    p = parse_formula("y ~ `a-b` + `c|d` + (1 | g)")
    assert p.fixed_rhs == "`a-b` + `c|d`" and [t.group for t in p.random] == ["g"]


def test_match_levels_by_value():
    known = [101, 102, 103]
    np.testing.assert_array_equal(match_levels(pd.Series([101, "101", 101.0, np.int64(102), "x", None, np.nan]),
                                               known), [0, 0, 0, 1, -1, -2, -2])
    np.testing.assert_array_equal(match_levels(pd.Series([7, 7.0, "7", "a"]), ["7", "a"]), [0, 0, 0, 1])
    # a string that only looks like a number matches a string label exactly
    np.testing.assert_array_equal(match_levels(pd.Series(["007", 7]), ["007"]), [0, -1])


def test_ordered_factor_inside_crossing_and_interactions():
    df = ordered_data().assign(x=lambda d: np.sin(np.arange(len(d))))
    m = build_model("y ~ (dose + x)^2 + (1 | g)", df)
    assert m.xnames == ["(Intercept)", "dose.L", "dose.Q", "x", "dose.L:x", "dose.Q:x"]
    # an explicit C() keeps the coding it asks for
    assert build_model("y ~ C(dose) + (1 | g)", df).xnames[1:] == ["C(dose)mid", "C(dose)high"]


def test_factor_of_an_ordered_factor_stays_ordered_as_in_R():
    # R> levels(factor(o)) keeps is.ordered: contr.poly, columns factor(dose).L, factor(dose).Q
    df = ordered_data()
    assert build_model("y ~ factor(dose) + (1 | g)", df).xnames[1:] == ["factor(dose).L", "factor(dose).Q"]
