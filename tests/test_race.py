"""Tests of the prediction race (mixedmodels.race): the score, the sparse design, the
competitors, and the simulate-and-score loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from scipy.special import expit

from mixedmodels import race as R


def tiny_clicks(p: int, seed: int, mu: float = -2.0, tau: float = 1.0, sd: float = 1.5,
                effects: np.ndarray | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """A small CTR data set made like the post's: half the users see both displays."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.0, sd, p) if effects is None else effects
    treated = rng.random(p) < 0.5
    ids = np.arange(1, p + 1)
    e0, e1 = 1 + rng.poisson(10, p), 1 + rng.poisson(10, p)
    uid = np.concatenate([ids[~treated], ids[treated], ids[treated]])
    expos = np.concatenate([(e0 + e1)[~treated], e0[treated], e1[treated]])
    display = np.concatenate([np.zeros((~treated).sum()), np.zeros(treated.sum()), np.ones(treated.sum())])
    clicks = rng.binomial(expos, expit(mu + tau * display + a[uid - 1]))
    data = pd.DataFrame({"clicks": clicks, "expos": expos, "display": display.astype(int),
                         "id": pd.Categorical(uid, categories=ids)})
    return data, a


# ---------------------------------------------------------------------------- the score

def test_mspe_by_hand():
    # rows: 2 * (1/2 - 1/2)^2 = 0; 5 * (0 - 0.1)^2 = 0.05; 4 * (3/4 - 1/2)^2 = 0.25; / 11
    assert R.mspe([1, 0, 3], [2, 5, 4], [0.5, 0.1, 0.5]) == pytest.approx(0.30 / 11, abs=1e-15)


def test_mspe_weights_impressions_not_rows():
    # One row of 10 impressions weighs as much as ten rows of one impression with the same rate.
    one = R.mspe([3], [10], [0.5])
    ten = R.mspe([1, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1] * 10, [0.5] * 10)
    assert one == pytest.approx(0.04)  # (0.3 - 0.5)^2
    assert ten == pytest.approx(0.25)  # single impressions: every error is 1/2
    assert R.mspe([3, 0], [10, 90], [0.5, 0.0]) == pytest.approx(10 * 0.04 / 100)


def test_mspe_differs_from_brier_by_a_constant():
    rng = np.random.default_rng(3)
    n = rng.integers(1, 30, 50)
    c = rng.binomial(n, 0.3)
    offset = np.sum(c * (1 - c / n)) / n.sum()
    for p in (rng.random(50), np.full(50, 0.3)):
        brier = np.sum(c * (1 - p) ** 2 + (n - c) * p ** 2) / n.sum()
        assert brier - R.mspe(c, n, p) == pytest.approx(offset, abs=1e-12)


@pytest.mark.parametrize("args, word", [
    (([1], [0], [0.5]), "expos"),
    (([3], [2], [0.5]), "clicks"),
    (([-1], [2], [0.5]), "clicks"),
    (([1], [2], [1.5]), "p_hat"),
    (([1], [2], [np.nan]), "p_hat"),
    (([1, 1], [2, 2], [0.5]), "equal length"),
    (([], [], []), "empty"),
])
def test_mspe_bad_input(args, word):
    with pytest.raises(ValueError, match=word):
        R.mspe(*args)


# ---------------------------------------------------------------------------- the design

def test_user_design_one_nonzero_per_row_per_factor():
    data, _ = tiny_clicks(40, seed=1)
    d = R.user_design(data)
    assert sp.isspmatrix_csr(d.matrix) or isinstance(d.matrix, sp.csr_array)
    assert d.matrix.shape == (len(data), 1 + 40)
    users = d.matrix[:, 1:]
    assert np.all(users.getnnz(axis=1) == 1)  # exactly one user indicator per row
    assert np.all(users.data == 1)
    assert np.array_equal(d.matrix[:, 0].toarray().ravel(), data["display"].to_numpy())
    # the indicator sits in the row's own user's column
    cols = users.indices[users.indptr[:-1]]
    assert np.array_equal(d.users[cols].to_numpy(), data["id"].astype(int).to_numpy())
    assert d.columns[:2] == ["display", "id[1]"]


def test_user_design_is_sparse_at_scale():
    # 50,000 users: a dense rows x users matrix would need ~ 30 GB; the CSR holds 2 per row.
    data, _ = tiny_clicks(50_000, seed=2)
    d = R.user_design(data)
    assert d.matrix.nnz <= 2 * len(data)
    assert d.matrix.shape[1] == 50_001


def test_user_design_new_data_and_unseen_users():
    data, _ = tiny_clicks(10, seed=3)
    train = R.user_design(data)
    new = pd.DataFrame({"display": [1, 0, 1], "id": [3, 99, 10]})
    d = R.user_design(new, users=train.users)
    assert d.matrix.shape[1] == train.matrix.shape[1]
    assert d.unseen.tolist() == [False, True, False]
    assert d.matrix[1, 1:].nnz == 0  # an unseen user gets the baseline: no indicator
    assert d.matrix[0, 1 + train.users.get_loc(3)] == 1


def test_user_design_does_not_modify_data_and_names_columns():
    data, _ = tiny_clicks(10, seed=4)
    before = data.copy()
    R.user_design(data)
    pd.testing.assert_frame_equal(data, before)
    with pytest.raises(ValueError, match="user"):
        R.user_design(data.rename(columns={"id": "user"}))
    with pytest.raises(ValueError, match="colour"):
        R.user_design(data, covariates=["colour"])
    with pytest.raises(ValueError, match="numeric"):
        R.user_design(data.assign(display=["a"] * len(data)))


# ---------------------------------------------------------------------------- the competitors

@pytest.fixture(scope="module")
def small_fits():
    data, effects = tiny_clicks(150, seed=5)
    models = [R.GlumPenalized("lasso", folds=5, seed=1), R.GlumPenalized("ridge", folds=5, seed=1),
              R.GlumGLM()]
    return data, effects, {m.name: m.fit(data) for m in models}


def test_glum_competitors_fit_and_predict(small_fits):
    data, _, fits = small_fits
    new, _ = tiny_clicks(150, seed=6)
    for name, fit in fits.items():
        p = fit.predict(new)
        assert p.shape == (len(new),), name
        assert np.all((p >= 0) & (p <= 1)), name
        assert np.isfinite(fit.display_effect) and fit.fit_seconds > 0, name
    # Each model is better than the pooled rate on its own training data.
    pooled = data["clicks"].sum() / data["expos"].sum()
    for name, fit in fits.items():
        assert R.mspe(data["clicks"], data["expos"], fit.predict(data)) < \
            R.mspe(data["clicks"], data["expos"], np.full(len(data), pooled)), name


def test_lasso_shrinks_the_display_effect(small_fits):
    _, _, fits = small_fits
    assert 0 <= fits["LASSO"].display_effect < fits["GLM"].display_effect
    assert 0 <= fits["ridge"].display_effect < fits["GLM"].display_effect


def test_unpenalized_glm_matches_statsmodels(small_fits):
    data, _, fits = small_fits
    sm_fit = R.StatsmodelsGLM().fit(data)
    # Never-clicking users have no finite estimate; the display effect is still identified.
    assert sm_fit.display_effect == pytest.approx(fits["GLM"].display_effect, abs=1e-3)
    assert sm_fit.info["display_se"] > 0


def test_glm_refuses_unseen_users_penalized_give_baseline(small_fits):
    _, _, fits = small_fits
    new = pd.DataFrame({"clicks": [0, 0], "expos": [5, 5], "display": [0, 1], "id": [1000, 1001]})
    with pytest.raises(ValueError, match="users not in the fit"):
        fits["GLM"].predict(new)
    p = fits["LASSO"].predict(new)
    est = fits["LASSO"].model
    assert p == pytest.approx(expit(est.intercept_ + est.coef_[0] * np.array([0, 1])))


def test_competitor_argument_errors():
    with pytest.raises(ValueError, match="penalty"):
        R.GlumPenalized("elastic")
    with pytest.raises(ValueError, match="folds"):
        R.GlumPenalized("lasso", folds=1)
    data, _ = tiny_clicks(10, seed=7)
    with pytest.raises(ValueError, match="expos"):
        R.GlumGLM().fit(data.drop(columns="expos"))
    with pytest.raises(ValueError, match="clicks"):
        R.GlumGLM().fit(data.assign(clicks=data["expos"] + 1))


def test_glmm_competitor_population_average_for_new_users():
    data, _ = tiny_clicks(300, seed=8, mu=-3.0, sd=2.5)
    fit = R.GLMM().fit(data)
    assert fit.info["user_sd"] > 1
    new = pd.DataFrame({"clicks": [0], "expos": [10], "display": [0], "id": [10_000]})
    p_new = fit.predict(new)[0]
    at_zero = expit(fit.info["intercept"])
    # With a large user SD the mean rate of a random user is far above the rate at effect 0.
    assert p_new > 2 * at_zero
    known = fit.predict(data)
    assert np.all((known > 0) & (known < 1))


# ---------------------------------------------------------------------------- the loop

class CountingCompetitor:
    """A stand-in model: predicts the pooled rate, counts its fits and predictions, and fails
    if it is fitted twice."""

    def __init__(self, name: str = "counting"):
        self.name = name
        self.fits = 0
        self.predictions = 0

    def fit(self, data):
        self.fits += 1
        if self.fits > 1:
            raise AssertionError("refitted")
        rate = data["clicks"].sum() / data["expos"].sum()

        def predictor(newdata):
            self.predictions += 1
            return np.full(len(newdata), rate)

        return R.FittedModel(self.name, 0.0, 0.0, predictor)


def test_race_fits_once_and_scores_every_future_set():
    from mixedmodels.datasets import make_click_data

    data, effects, _ = make_click_data(60, -2.0, 0.5, 1.0, 10, seed=9)
    a, b = CountingCompetitor("a"), CountingCompetitor("b")
    result = R.race(data, effects, competitors=[a, b], n_future=7, seed=1)
    assert (a.fits, b.fits) == (1, 1)
    assert (a.predictions, b.predictions) == (7, 7)
    assert len(result.scores) == 14
    assert result.summary.loc["a", "n_sets"] == 7
    assert result.summary.loc["a", "mspe_se"] > 0


def test_future_data_keeps_users_and_redraws_the_rest():
    effects = np.array([-8.0, 8.0, 0.0, 0.0])
    sets = list(R.future_data(effects, 3, seed=2, mu=0.0, tau=0.0, sig_a=1.0, pois_mean=20))
    for d in sets:
        rate = d.groupby("id", observed=True)[["clicks", "expos"]].sum()
        assert rate.loc[1, "clicks"] == 0 or rate.loc[1, "clicks"] / rate.loc[1, "expos"] < 0.05
        assert rate.loc[2, "clicks"] / rate.loc[2, "expos"] > 0.95
    assert not all(np.array_equal(sets[0]["expos"], s["expos"]) for s in sets[1:])
    again = list(R.future_data(effects, 3, seed=2, mu=0.0, tau=0.0, sig_a=1.0, pois_mean=20))
    pd.testing.assert_frame_equal(sets[2], again[2])


def test_sweep_uses_fresh_models_per_count():
    made = []

    def competitors(seed):
        made.append(CountingCompetitor())
        return [made[-1]]

    out = R.sweep([20, 40], competitors=competitors, n_future=3, progress=False,
                  settings={"mu": -2.0, "sig_a": 1.0})
    assert out["users"].tolist() == [20, 40]
    assert all(c.fits <= 1 for c in made)
    with pytest.raises(ValueError, match="user_counts"):
        R.sweep([], competitors=competitors)


# ---------------------------------------------------------------------------- the post's users

def test_post_user_effects_reproduce_r():
    effects = R.post_user_effects()
    # R 4.x: set.seed(1); rnorm(3, 0, 5)
    assert effects[:3] == pytest.approx([-3.132269, 0.9182166, -4.178143], abs=1e-6)
    assert effects.shape == (1000,)


def test_post_user_effects_match_the_post_data():
    from scipy.stats import spearmanr

    from mixedmodels.datasets import load_ctr

    d = load_ctr()
    per_user = d.groupby("id", observed=True)[["clicks", "expos"]].sum()
    rate = per_user["clicks"] / per_user["expos"]
    a = R.post_user_effects()[per_user.index.astype(int) - 1]
    assert spearmanr(a, rate).statistic > 0.85
    # users with a large effect click a lot, those with a very negative one never do
    assert rate[a > 8].min() > 0.5
    assert rate[a < -5].max() < 0.01


def test_race_end_to_end_with_the_default_competitors():
    from mixedmodels.datasets import make_click_data

    data, effects, _ = make_click_data(200, -4.5, 0.5, 5, 20, seed=11)
    result = R.race(data, effects, n_future=4, seed=3)
    s = result.summary
    assert list(s.index) == ["LASSO", "ridge", "GLM", "GLMM"]
    assert list(s.columns) == ["display_effect", "fit_seconds", "mspe_mean", "mspe_se", "n_sets"]
    assert (s["n_sets"] == 4).all() and (s["fit_seconds"] > 0).all()
    # The post's finding in miniature: the mixed model predicts the same users better than LASSO.
    assert s.loc["GLMM", "mspe_mean"] < s.loc["LASSO", "mspe_mean"]
