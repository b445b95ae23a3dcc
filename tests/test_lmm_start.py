"""The LMM optimizer's default path: a method-of-moments start (one grouping factor:
per-group least squares; crossed or nested random intercepts: a backfitted decomposition),
Newton steps from there, and L-BFGS-B with the boundary rule wherever the start is not in
Newton's region. On every design below the default fit reaches at least the optimum that
L-BFGS-B finds from lme4's start (1s), including singular fits on the boundary."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import mixedmodels.lmm as lmm
from test_lmm_reference import load_reference


def _design(kind: str, seed: int) -> tuple[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    if kind in ("slopes", "uncorrelated"):
        g = np.repeat(np.arange(15), rng.integers(3, 9, 15))
        x = rng.normal(size=len(g))
        sd_a, sd_b = (1.0, 0.5) if seed % 3 else (1.0, 0.0)  # every third: no slope variance
        y = 2 + x + rng.normal(0, sd_a, 15)[g] + rng.normal(0, sd_b, 15)[g] * x + rng.normal(size=len(g))
        bar = "|" if kind == "slopes" else "||"
        return f"y ~ x + (x {bar} g)", pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    if kind == "crossed":
        a = rng.integers(0, 12, 150)
        b = rng.integers(0, 5, 150)
        sd_b = 0.8 if seed % 3 else 0.0
        y = 1 + rng.normal(0, 1.0, 12)[a] + rng.normal(0, sd_b, 5)[b] + rng.normal(size=150)
        return "y ~ 1 + (1 | a) + (1 | b)", pd.DataFrame({"y": y, "a": a.astype(str), "b": b.astype(str)})
    # nested, unbalanced
    batch = rng.integers(0, 8, 120)
    sample = batch * 4 + rng.integers(0, 4, 120)
    sd_batch = 1.0 if seed % 3 else 0.0
    y = 3 + rng.normal(0, sd_batch, 8)[batch] + rng.normal(0, 0.7, 32)[sample] + rng.normal(size=120)
    return "y ~ 1 + (1 | batch/sample)", pd.DataFrame({"y": y, "batch": batch.astype(str),
                                                       "sample": sample.astype(str)})


@pytest.mark.parametrize("kind", ["slopes", "uncorrelated", "crossed", "nested"])
@pytest.mark.parametrize("seed", range(6))
def test_default_path_reaches_lme4_starts_optimum(kind, seed):
    formula, df = _design(kind, seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = lmm.lmer(formula, df)
        ref = lmm.lmer(formula, df, start=fit.problem.theta0)  # lme4's start: L-BFGS-B
    assert fit.reml_criterion <= ref.reml_criterion + 1e-8 * (1 + abs(ref.reml_criterion))
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-4, atol=1e-4)
    assert fit.converged


@pytest.mark.parametrize("name", ["penicillin_crossed", "pastes_nested"])
def test_backfit_start_is_near_the_optimum(name):
    ref, df = load_reference(name)
    fit = lmm.lmer(ref["formula"], df, reml=ref["reml"])
    start = lmm._backfit_start(fit.problem)
    np.testing.assert_allclose(fit.optsum.initial, start)
    np.testing.assert_allclose(start, fit.theta, rtol=0.4)
    assert fit.optsum.optimizer.startswith("Newton")
    assert fit.optsum.converged


def test_newton_hands_over_to_lbfgsb_at_a_boundary_optimum():
    """A crossed design whose second variance is 0: Newton's steps head for the bound, so
    L-BFGS-B and the boundary rule finish, on the bound."""
    formula, df = _design("crossed", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = lmm.lmer(formula, df)
    if fit.singular:
        assert "L-BFGS-B" in fit.optsum.optimizer
        assert np.min(fit.theta) == 0.0
