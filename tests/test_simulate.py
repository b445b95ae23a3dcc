import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm


def test_archers_shape_and_columns():
    data = mm.simulate_archers(n_archers=4, shots_per_bow=3, seed=1)
    assert list(data.columns) == ["Distance", "Bow", "Name"]
    assert len(data) == 4 * 2 * 3
    assert list(data["Bow"].cat.categories) == ["Northwood", "Southwood"]
    counts = data.groupby(["Name", "Bow"], observed=True).size()
    assert (counts == 3).all() and counts.size == 8


def test_archers_deterministic_by_seed():
    a = mm.simulate_archers(5, 2, seed=7)
    b = mm.simulate_archers(5, 2, seed=7)
    c = mm.simulate_archers(5, 2, seed=8)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a["Distance"], c["Distance"])


def test_archers_follow_the_model():
    # With no noise and no skill spread, every shot is the baseline plus the bow effect.
    data = mm.simulate_archers(3, 2, baseline=160, bow_effect=-10, skill_sd=0, noise_sd=0, seed=3)
    expected = np.where(data["Bow"] == "Southwood", 150.0, 160.0)
    np.testing.assert_allclose(data["Distance"], expected)


def test_archers_skills_recover_archer_means():
    data, skills = mm.simulate_archers(6, 50, noise_sd=0, bow_effect=0, seed=4, return_skills=True)
    means = data.groupby("Name", observed=True)["Distance"].mean()
    np.testing.assert_allclose(means[skills.index].to_numpy(), 165 + skills.to_numpy())


def test_names_unique_and_westerosi():
    names = mm.westeros_names(300, seed=2)
    assert len(set(names)) == 300
    assert all(len(n.split()) == 2 for n in names)
    assert names == mm.westeros_names(300, seed=2)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"n_archers": 0}, "n_archers"),
        ({"n_archers": 2.5}, "n_archers"),
        ({"shots_per_bow": -1}, "shots_per_bow"),
        ({"skill_sd": -1.0}, "skill_sd"),
        ({"noise_sd": float("nan")}, "noise_sd"),
    ],
)
def test_archers_bad_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        mm.simulate_archers(**kwargs)


def test_names_too_many():
    with pytest.raises(ValueError, match="at most"):
        mm.westeros_names(10_000)
