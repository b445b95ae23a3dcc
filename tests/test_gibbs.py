"""Tests of the Gibbs sampler for the Bayesian random-intercept model (mixedmodels.gibbs).

The reference values are computed independently of the package's LMM fitter: the REML
estimate of a balanced design in closed form (the ANOVA estimator, which is the REML estimate
when it is positive; Searle, Casella and McCulloch 1992, ch. 3 and 6), cross-checked against
statsmodels' MixedLM.
"""

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm
from mixedmodels.gibbs import (
    HalfT, InverseGamma, effective_sample_size, gibbs_random_intercept, rhat,
)


def design(shots: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "(Intercept)": 1.0,
        "BowSouthwood": (shots["Bow"] == "Southwood").astype(float),
    })


def balanced_reml(shots: pd.DataFrame) -> tuple[float, float]:
    """REML (= ANOVA) estimates of (sigma, sigma_a) for the balanced archers x bows design."""
    n_per_archer = shots.groupby("Name", observed=True).size().iloc[0]
    archer_means = shots.groupby("Name", observed=True)["Distance"].mean()
    bow_means = shots.groupby("Bow", observed=True)["Distance"].transform("mean")
    archer_of_row = shots.groupby("Name", observed=True)["Distance"].transform("mean")
    # Residuals of Distance ~ Bow + Name (additive, balanced): y - archer mean - bow mean + grand mean.
    resid = shots["Distance"] - archer_of_row - bow_means + shots["Distance"].mean()
    n_archers = archer_means.size
    df_error = len(shots) - n_archers - 1
    mse = float(np.sum(resid**2) / df_error)
    msa = float(n_per_archer * archer_means.var(ddof=1))
    return np.sqrt(mse), np.sqrt(max((msa - mse) / n_per_archer, 0.0))


@pytest.fixture(scope="module")
def army_run():
    shots, skills = mm.simulate_archers(n_archers=40, shots_per_bow=5, seed=101, return_skills=True)
    result = gibbs_random_intercept(shots["Distance"], design(shots), shots["Name"],
                                    n_iter=1500, n_warmup=300, n_chains=4, seed=7)
    return shots, skills, result


def test_balanced_reml_matches_statsmodels():
    smf = pytest.importorskip("statsmodels.formula.api")
    shots = mm.simulate_archers(n_archers=20, shots_per_bow=5, seed=3)
    sigma, sigma_a = balanced_reml(shots)
    fit = smf.mixedlm("Distance ~ Bow", shots, groups=shots["Name"]).fit(reml=True)
    assert sigma == pytest.approx(np.sqrt(fit.scale), rel=1e-4)
    assert sigma_a == pytest.approx(np.sqrt(fit.cov_re.iloc[0, 0]), rel=1e-3)


def test_posterior_covers_the_truth(army_run):
    shots, skills, result = army_run
    table = result.summary()
    truth = {"(Intercept)": 165.0, "BowSouthwood": -10.0, "sigma": 5.0, "sigma_a": 20.0}
    for name, value in truth.items():
        assert table.loc[name, "2.5%"] < value < table.loc[name, "97.5%"], name
    # The random effects: the true skills of the archers, shifted by the realised intercept.
    effects = result.ranef()
    centred_truth = skills[effects.index] - (table.loc["(Intercept)", "mean"] - 165.0)
    covered = (effects["2.5%"] < centred_truth) & (centred_truth < effects["97.5%"])
    assert covered.mean() >= 0.85


def test_vague_prior_many_archers_near_reml():
    shots = mm.simulate_archers(n_archers=200, shots_per_bow=5, seed=11)
    sigma_reml, sigma_a_reml = balanced_reml(shots)
    result = gibbs_random_intercept(shots["Distance"], design(shots), shots["Name"],
                                    n_iter=1000, n_warmup=200, n_chains=2, seed=5,
                                    prior_sigma=HalfT(scale=1e4), prior_sigma_a=HalfT(scale=1e4))
    table = result.summary()
    # With 200 archers the posterior SD of sigma_a is about 5% of it; the posterior mean and the
    # REML estimate differ by a fraction of that (O(1/J) terms and Monte Carlo error).
    assert table.loc["sigma_a", "mean"] == pytest.approx(sigma_a_reml, rel=0.03)
    assert abs(table.loc["sigma_a", "mean"] - sigma_a_reml) < 0.5 * table.loc["sigma_a", "sd"]
    assert table.loc["sigma", "mean"] == pytest.approx(sigma_reml, rel=0.02)


def test_inverse_gamma_prior_runs_and_agrees(army_run):
    shots, _, half_t = army_run
    inv_gamma = gibbs_random_intercept(shots["Distance"], design(shots), shots["Name"],
                                       n_iter=1000, n_warmup=200, n_chains=2, seed=8,
                                       prior_sigma=InverseGamma(0.001, 0.001),
                                       prior_sigma_a=InverseGamma(0.001, 0.001))
    a, b = inv_gamma.summary(), half_t.summary()
    assert a.loc["sigma_a", "mean"] == pytest.approx(b.loc["sigma_a", "mean"], rel=0.1)
    assert "inverse-gamma" in inv_gamma.priors["sigma_a"]
    assert "half-Cauchy" in half_t.priors["sigma_a"]


def test_strong_normal_prior_pins_beta(army_run):
    shots, _, _ = army_run
    result = gibbs_random_intercept(shots["Distance"], design(shots), shots["Name"],
                                    n_iter=300, n_warmup=100, n_chains=2, seed=9,
                                    beta_prior_mean=[100.0, 0.0], beta_prior_sd=1e-3)
    table = result.summary()
    assert table.loc["(Intercept)", "mean"] == pytest.approx(100.0, abs=0.01)
    assert table.loc["BowSouthwood", "mean"] == pytest.approx(0.0, abs=0.01)


def test_well_mixed_run_diagnostics(army_run):
    _, _, result = army_run
    assert (result.rhat() < 1.01).all()
    # The blocked sampler is close to independent sampling: at least half the nominal draws.
    assert (result.ess() > 0.5 * result.n_chains * result.n_draws).all()


def test_chains_started_apart_and_not_run_have_large_rhat(army_run):
    shots, _, _ = army_run
    result = gibbs_random_intercept(shots["Distance"], design(shots), shots["Name"],
                                    n_iter=20, n_warmup=0, n_chains=2, seed=1,
                                    init={"sigma": [5.0, 5.0], "sigma_a": [1e-3, 20.0]})
    assert result.rhat()["sigma_a"] > 1.5


def test_diagnostics_on_known_sequences():
    rng = np.random.default_rng(0)
    iid = rng.standard_normal((4, 2000))
    assert effective_sample_size(iid) == pytest.approx(8000, rel=0.1)
    assert rhat(iid) == pytest.approx(1.0, abs=0.01)
    # AR(1) with phi = 0.9: ESS is about n (1 - phi) / (1 + phi).
    phi, ar = 0.9, np.zeros((4, 5000))
    for t in range(1, ar.shape[1]):
        ar[:, t] = phi * ar[:, t - 1] + rng.standard_normal(4)
    assert effective_sample_size(ar) == pytest.approx(ar.size * (1 - phi) / (1 + phi), rel=0.25)
    # Chains centred on different values.
    shifted = iid + np.array([0.0, 0.0, 0.0, 3.0])[:, None]
    assert rhat(shifted) > 1.2


def test_seeded_and_shaped(army_run):
    shots, _, result = army_run
    again = gibbs_random_intercept(shots["Distance"], design(shots), shots["Name"],
                                   n_iter=1500, n_warmup=300, n_chains=4, seed=7)
    np.testing.assert_array_equal(again.draws["sigma_a"], result.draws["sigma_a"])
    assert result.draws["sigma"].shape == (4, 1500)
    assert result.warmup["sigma"].shape == (4, 300)
    assert result.effects.shape == (4, 1500, 40)
    assert list(result.groups) == list(shots["Name"].cat.categories)
    frame = result.to_frame(effects=True)
    assert len(frame) == 4 * 1500
    assert {"chain", "draw", "(Intercept)", "BowSouthwood", "sigma", "sigma_a"} <= set(frame.columns)
    assert frame.shape[1] == 6 + 40
    text = repr(result)
    assert "4 chains x 1500 draws" in text and "half-Cauchy" in text and len(text) < 600


@pytest.mark.parametrize("change, argument", [
    (dict(y=[1.0, np.nan, 2.0, 3.0]), "`y`"),
    (dict(X=np.ones((3, 1))), "`X`"),
    (dict(X=np.column_stack([np.ones(4), np.ones(4)])), "`X`"),
    (dict(groups=["a", "b", "a"]), "`groups`"),
    (dict(groups=["a", "a", "a", "a"]), "`groups`"),
    (dict(n_iter=0), "`n_iter`"),
    (dict(n_chains=1.5), "`n_chains`"),
    (dict(prior_sigma_a="flat"), "`prior_sigma_a`"),
    (dict(beta_prior_sd=-1.0), "`beta_prior_sd`"),
    (dict(init={"sigma_a": -1.0}), "`init['sigma_a']`"),
])
def test_bad_input_names_the_argument(change, argument):
    args = dict(y=[1.0, 2.0, 3.0, 4.0], X=np.ones((4, 1)), groups=["a", "a", "b", "b"])
    args.update(change)
    with pytest.raises(ValueError, match=argument.replace("[", r"\[").replace("]", r"\]")):
        gibbs_random_intercept(args.pop("y"), args.pop("X"), args.pop("groups"), **args)


def test_bad_prior_parameters():
    with pytest.raises(ValueError, match="HalfT.scale"):
        HalfT(scale=0.0)
    with pytest.raises(ValueError, match="InverseGamma.shape"):
        InverseGamma(shape=-1.0)


def test_intervals_are_calibrated_over_repeated_experiments():
    # 40 experiments from the same population: the 95% intervals of the bow effect and of
    # sigma_a should cover the truth in about 38 of them (at least 34: P < 0.01 under 95%).
    covered = {"BowSouthwood": 0, "sigma_a": 0}
    truth = {"BowSouthwood": -10.0, "sigma_a": 20.0}
    for k in range(40):
        shots = mm.simulate_archers(n_archers=20, shots_per_bow=3, seed=1000 + k)
        result = gibbs_random_intercept(shots["Distance"], design(shots), shots["Name"],
                                        n_iter=400, n_warmup=100, n_chains=2, seed=k)
        for name, value in truth.items():
            lo, hi = np.quantile(result.draws[name], [0.025, 0.975])
            covered[name] += bool(lo < value < hi)
    assert covered["BowSouthwood"] >= 34, covered
    assert covered["sigma_a"] >= 34, covered
