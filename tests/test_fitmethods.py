"""The methods every fit has (LMM and GLMM alike) are the module functions, and
confint(method="boot") is the parametric bootstrap's percentile interval."""

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.bootstrap import bootstrap_confint, simulate

FIX = Path(__file__).parent / "fixtures"


@lru_cache(maxsize=None)
def fits():
    ss = pd.read_csv(FIX / "sleepstudy.csv", dtype={"Subject": str})
    cb = pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = mm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cb, nagq=1)
    return mm.lmer("Reaction ~ Days + (1 | Subject)", ss, reml=False), \
        mm.lmer("Reaction ~ Days + (Days | Subject)", ss, reml=False), g


def test_methods_are_the_module_functions():
    a, b, g = fits()
    pd.testing.assert_frame_equal(a.anova(b), mm.anova(a, b))
    pd.testing.assert_frame_equal(a.simulate(2, seed=3), simulate(a, 2, seed=3))
    pd.testing.assert_frame_equal(g.coef_table(), mm.coef_table(g))
    pd.testing.assert_frame_equal(b.tidy("ran_pars"), mm.tidy(b, "ran_pars"))
    assert a.to_dict() == mm.to_dict(a) and g.to_json() == mm.to_json(g)
    y = a.simulate(1, seed=4).iloc[:, 0].to_numpy()
    np.testing.assert_allclose(a.refit(y).fixef, mm.refit(a, y).fixef)
    assert list(a.update(". ~ . - Days").fixef.index) == ["(Intercept)"]
    assert a.bootstrap(nsim=3, seed=1, progress=False).shape == (3, 4)


def test_confint_boot():
    a, _, g = fits()
    ci = a.confint(method="boot", nsim=60, seed=9)
    ref = bootstrap_confint(a, nsim=60, seed=9, progress=False)
    np.testing.assert_allclose(ci.to_numpy(), ref.loc[ci.index].to_numpy())
    assert list(ci.index) == list(a.confint(method="wald").index)
    cig = g.confint(method="boot", nsim=20, seed=1, parm=["period2"])
    assert list(cig.index) == ["period2"] and cig.iloc[0, 0] < g.fixef["period2"] < cig.iloc[0, 1]
