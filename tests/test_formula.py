"""Formula parsing and model structure (lme4's lFormula stage)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mixedmodels.formula import build_model, grouping_codes, parse_formula


def specs(formula):
    return [(t.lhs, t.group, t.group_vars, t.correlated) for t in parse_formula(formula).random]


def test_simple_terms():
    p = parse_formula("Reaction ~ Days + (Days | Subject)")
    assert p.lhs == "Reaction" and p.fixed_rhs == "Days"
    assert specs("y ~ x + (x | g)") == [("x", "g", ("g",), True)]
    assert specs("y ~ (0 + x | g)") == [("0 + x", "g", ("g",), True)]
    assert parse_formula("y ~ (1 | g)").fixed_rhs == "1"


def test_double_bar_expands_into_uncorrelated_terms():
    assert specs("y ~ x + (x || g)") == [("1", "g", ("g",), False), ("0 + x", "g", ("g",), False)]
    assert specs("y ~ (0 + x + z || g)") == [("0 + x", "g", ("g",), False), ("0 + z", "g", ("g",), False)]


def test_nested_and_interaction_groups():
    # lme4: batch/cask -> cask:batch and batch
    assert specs("y ~ 1 + (1 | batch/cask)") == [("1", "cask:batch", ("cask", "batch"), True),
                                                 ("1", "batch", ("batch",), True)]
    assert specs("y ~ (1 | a:b)") == [("1", "a:b", ("a", "b"), True)]
    assert [s[1] for s in specs("y ~ (1 | a/b/c)")] == ["c:b:a", "b:a", "a"]


def test_crossed_and_minus_terms():
    p = parse_formula("y ~ x - 1 + (1 | a) + (1 | b)")
    assert [t.group for t in p.random] == ["a", "b"]
    assert p.fixed_rhs.replace(" ", "") == "x-1"
    assert parse_formula("cbind(s, n - s) ~ p + (1 | h)").lhs == "cbind(s, n - s)"


@pytest.mark.parametrize("bad", ["y ~ x + (1 | g", "y ~ x + (1 | )", "y x", 5, "y ~ ", "y ~ x | g"])
def test_parse_errors(bad):
    with pytest.raises(ValueError):
        parse_formula(bad)


def test_build_model_structure_and_order():
    df = pd.read_csv(__import__("pathlib").Path(__file__).parent / "fixtures" / "pastes.csv")
    m = build_model("strength ~ 1 + (1 | batch/cask)", df)
    assert [t.group for t in m.reterms] == ["cask:batch", "batch"]  # more levels first
    t = m.reterms[0]
    assert t.nlevels == 30 and t.levels[:3] == ["a:A", "a:B", "a:C"]  # R's a:b level order
    assert m.X.shape == (60, 1) and m.xnames == ["(Intercept)"]
    # codes point to the right labels
    lab = np.array(t.levels)[t.codes]
    assert list(lab[:4]) == [f"{c}:{b}" for c, b in zip(df["cask"][:4], df["batch"][:4])]


def test_sorting_of_levels_by_dtype():
    df = pd.DataFrame({"g": [10, 9, 100, 9], "h": ["b", "a", "c", "a"]})
    codes, labels, keys = grouping_codes(df, ("g",))
    assert labels == ["9", "10", "100"]  # numeric order for numbers, as R's factor()
    df["c"] = pd.Categorical(["z", "y", "z", "y"], categories=["z", "y", "unused"])
    _, labels, _ = grouping_codes(df, ("c",))
    assert labels == ["z", "y"]  # categorical order kept, unused levels dropped


def test_random_term_columns_and_names():
    df = pd.DataFrame({"y": np.arange(8.0), "x": np.tile([0.0, 1.0], 4), "f": list("abcddcba"),
                       "g": list("ppqqrrss")})
    m = build_model("y ~ x + f + (x | g)", df)
    assert m.xnames == ["(Intercept)", "x", "fb", "fc", "fd"]
    t = m.reterms[0]
    assert t.cnames == ["(Intercept)", "x"] and t.Z.shape == (8, 2) and t.correlated
    np.testing.assert_array_equal(t.Z[:, 1], df["x"])


def test_response_forms_for_the_glmm():
    df = pd.DataFrame({"s": [1.0, 2, 3, 4], "n": [5.0, 5, 6, 6], "h": list("aabb")})
    m = build_model("cbind(s, n - s) ~ 1 + (1 | h)", df)
    np.testing.assert_array_equal(m.y, np.column_stack([df["s"], df["n"] - df["s"]]))
    m = build_model("s/n ~ 1 + (1 | h)", df)
    np.testing.assert_allclose(m.y, df["s"] / df["n"])
    np.testing.assert_array_equal(m.lhs_ratio[1], df["n"])
