"""The formula fast path (plain numeric columns and an intercept, no formulaic) builds the
same matrices, names and prediction specs as formulaic does, and leaves everything else to
formulaic."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixedmodels import formula as fm
from mixedmodels.formula import build_model


@pytest.fixture
def df():
    rng = np.random.default_rng(3)
    n = 40
    return pd.DataFrame({"y": rng.normal(size=n), "x": rng.normal(size=n), "k": rng.integers(0, 5, n),
                         "z": rng.normal(size=n).astype(np.float32), "f": rng.choice(list("abc"), n),
                         "g": np.repeat(np.arange(8), 5)})


@pytest.mark.parametrize("rhs", ["1", "x", "1 + x", "x + k", "0 + x", "x + k - 1", "k + x + z", "0 + k"])
def test_fast_path_matches_formulaic(df, rhs):
    fast = fm._simple_model_matrix(rhs, df, "fixed-effects matrix")
    assert fast is not None
    X, names, spec = fast
    Xf, namesf, specf = fm._model_matrix(rhs, df, "fixed-effects matrix")
    assert names == namesf
    np.testing.assert_array_equal(X, Xf)
    # The deferred spec rebuilds the same matrix on new data, through formulaic.
    new = df.iloc[:7]
    np.testing.assert_array_equal(fm.new_model_matrix(spec, new, ["x", "k", "z"], (), "m"),
                                  fm.new_model_matrix(specf, new, ["x", "k", "z"], (), "m"))


@pytest.mark.parametrize("rhs", ["f", "x + f", "x:k", "x * k", "log(x)", "I(x^2)", "x + x", "1 + 0 + x",
                                 "poly(x, 2)", "missing_column"])
def test_anything_else_goes_to_formulaic(df, rhs):
    assert fm._simple_model_matrix(rhs, df, "fixed-effects matrix") is None


def test_fitted_model_predicts_through_the_deferred_spec(df):
    m = build_model("y ~ x + k + (x | g)", df)
    assert m.xnames == ["(Intercept)", "x", "k"]
    assert m.reterms[0].cnames == ["(Intercept)", "x"]
    new = pd.DataFrame({"x": [0.5, -1.0], "k": [2, 3], "g": [1, 2]})
    np.testing.assert_allclose(m.fixed_matrix(new), [[1, 0.5, 2], [1, -1.0, 3]])
    np.testing.assert_allclose(m.reterms[0].new_Z(new), [[1, 0.5], [1, -1.0]])
    # A column numeric in the fit must stay numeric in new data (the formulaic path's rule).
    with pytest.raises(ValueError, match="'x' must be numeric"):
        m.fixed_matrix(new.assign(x=["a", "b"]))
