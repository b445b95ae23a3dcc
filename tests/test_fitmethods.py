"""The methods every fit has (LMM and GLMM alike) are the module functions, and
confint(method="boot") is the parametric bootstrap's percentile interval."""

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.bootstrap import bootstrap_confint, simulate
from example_fits import cbpp_fit, sleep_fit


def fits():
    return (sleep_fit("Reaction ~ Days + (1 | Subject)", reml=False),
            sleep_fit("Reaction ~ Days + (Days | Subject)", reml=False), cbpp_fit())


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


def test_every_result_class_has_the_methods_from_the_base():
    from mixedmodels.fitmethods import FitMethods
    from mixedmodels.mixedmodel import MixedModel

    assert issubclass(MixedModel, FitMethods)
    for cls in (mm.LinearMixedModel, mm.GeneralizedLinearMixedModel):
        assert issubclass(cls, MixedModel)
        # written once, on the bases: no class re-defines them
        for name in ("confint", "anova", "bootstrap", "tidy"):
            assert name not in vars(cls), (cls.__name__, name)
    with pytest.raises(ValueError, match="method must be one of 'profile', 'wald', 'boot'"):
        fits()[0].confint(method="bootstrap")
