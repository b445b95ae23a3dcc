"""coef_table(), tidy() and to_dict()/to_json(): the fit's own numbers, reshaped."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import mixedmodels as mm
from mixedmodels.tidy import coef_table, tidy, to_dict, to_json
from example_fits import cbpp_fit, sleep_fit


def fits():
    return sleep_fit("Reaction ~ Days + (Days | Subject)"), cbpp_fit()


def test_coef_table_is_the_wald_table():
    lm, g = fits()
    for fit, stat in ((lm, "t value"), (g, "z value")):
        ct = coef_table(fit, level=0.9)
        assert list(ct.columns) == ["Estimate", "Std. Error", stat, "Pr(>|z|)", "5 %", "95 %"]
        np.testing.assert_allclose(ct["Estimate"], fit.fixef)
        np.testing.assert_allclose(ct["Std. Error"], fit.se)
        z = fit.fixef / fit.se
        np.testing.assert_allclose(ct["Pr(>|z|)"], 2 * stats.norm.sf(np.abs(z)))
        np.testing.assert_allclose(ct["95 %"], fit.fixef + stats.norm.ppf(0.95) * fit.se)
    with pytest.raises(ValueError, match="level"):
        coef_table(lm, level=95)


def test_tidy_frames():
    lm, g = fits()
    fx = tidy(lm)
    assert list(fx["term"]) == ["(Intercept)", "Days"]
    np.testing.assert_allclose(fx["estimate"], lm.fixef)
    rp = tidy(lm, "ran_pars")
    assert list(rp["term"]) == ["sd__(Intercept)", "sd__Days", "cor__(Intercept).Days", "sd__Observation"]
    vc = lm.varcorr()
    np.testing.assert_allclose(rp["estimate"], vc["sdcor"])
    rv = tidy(g, "ran_vals")
    re = g.ranef()
    assert len(rv) == 15 and set(rv["group"]) == {"herd"}
    np.testing.assert_allclose(rv["estimate"], re["value"])
    np.testing.assert_allclose(rv["std_error"], re["condsd"])
    assert len(tidy(g, "all")) == 4 + 1
    with pytest.raises(ValueError, match="effects"):
        tidy(lm, "random")


def test_to_dict_and_json_round_trip(tmp_path):
    lm, g = fits()
    for fit in (lm, g):
        d = to_dict(fit)
        text = to_json(fit, tmp_path / "fit.json")
        back = json.loads((tmp_path / "fit.json").read_text())
        assert back == json.loads(text) == d
        assert d["fixef"] == {k: float(v) for k, v in fit.fixef.items()}
        assert d["loglik"] == fit.loglik and d["nobs"] == fit.nobs
        np.testing.assert_allclose(np.array(d["vcov"]), fit.vcov.to_numpy())
    d = to_dict(lm)
    assert d["model"] == "lmer" and d["reml"] is True and d["sigma"] == lm.sigma
    assert d["varcorr"][-1]["group"] == "Residual" and d["varcorr"][0]["var2"] is None
    assert to_dict(g)["family"] == "binomial" and to_dict(g)["nagq"] == 1
