"""The post's CTR data and the numpy port of its simulator."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mixedmodels.datasets import load_ctr, make_click_data


def test_load_ctr_matches_the_project_copy():
    d = load_ctr()
    assert d.shape == (1481, 4)
    assert list(d.columns) == ["clicks", "expos", "display", "id"]
    assert d["id"].nunique() == 1000
    raw = pd.read_csv(Path(__file__).parent / "fixtures" / "ctr_seed1.csv")
    np.testing.assert_array_equal(d["clicks"].to_numpy(), raw["clicks"].to_numpy())
    np.testing.assert_array_equal(d["expos"].to_numpy(), raw["expos"].to_numpy())


def test_layout_like_the_post():
    data, effects, treated = make_click_data(1000, -4.5, 0.5, 5, 20, seed=1)
    assert list(data.columns) == ["clicks", "expos", "display", "id"]
    n_t = int(treated.sum())
    assert len(data) == 1000 + n_t
    # untreated block, then treated users' control rows, then their display rows
    assert (data["display"].to_numpy()[: 1000] == 0).all()
    assert (data["display"].to_numpy()[1000:] == 1).all()
    assert np.all(data["clicks"] <= data["expos"]) and np.all(data["expos"] >= 1)
    # every treated user has exactly two rows, every other user one
    counts = data.groupby("id", observed=True).size()
    assert set(counts.unique()) <= {1, 2} and int((counts == 2).sum()) == n_t
    assert effects.shape == (1000,)


def test_exposure_scheme_matches_the_posts_data():
    # The post's data: total exposures per user have mean 22.2 (Poisson(20) + 2).
    d = load_ctr()
    tot = d.groupby("id", observed=True)["expos"].sum()
    sim = make_click_data(20000, -4.5, 0.5, 5, 20, seed=3).data
    tot_sim = sim.groupby("id", observed=True)["expos"].sum()
    assert abs(tot.mean() - tot_sim.mean()) < 4 * np.sqrt(20 / 1000)
    assert tot_sim.var() == pytest.approx(20, rel=0.1)


def test_seeded_and_effects_held_fixed():
    a = make_click_data(200, -4.5, 0.5, 5, 20, seed=7)
    b = make_click_data(200, -4.5, 0.5, 5, 20, seed=7)
    pd.testing.assert_frame_equal(a.data, b.data)
    c = make_click_data(200, -4.5, 0.5, 5, 20, effects=a.effects, seed=8)
    np.testing.assert_array_equal(c.effects, a.effects)
    assert not c.data.equals(a.data)


@pytest.mark.parametrize("kw, match", [({"p": 0}, "`p`"), ({"sig_a": -1}, "`sig_a`"),
                                       ({"effects": np.zeros(3)}, "`effects`")])
def test_bad_arguments(kw, match):
    args = dict(p=10, mu=-4.5, tau=0.5, sig_a=5, pois_mean=20)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        make_click_data(**args)
