import numpy as np
import pytest

from mixedmodels.schools import SCHOOL_NAMES, simulate_schools


def test_shape_names_and_seed():
    data = simulate_schools(3, 5, seed=1)
    assert list(data.columns) == ["Score", "School"]
    assert len(data) == 15
    assert list(data["School"].cat.categories) == list(SCHOOL_NAMES[:3])
    assert data.equals(simulate_schools(3, 5, seed=1))
    many = simulate_schools(20, 1, seed=2)
    assert many["School"].cat.categories[-1] == "School 20"


def test_effects_recovered_without_noise():
    data, effects = simulate_schools(4, 3, mean_score=50, noise_sd=0, seed=3, return_effects=True)
    means = data.groupby("School", observed=True)["Score"].mean()
    np.testing.assert_allclose(means[effects.index].to_numpy(), 50 + effects.to_numpy())


@pytest.mark.parametrize("kwargs, name", [
    (dict(n_schools=0), "n_schools"), (dict(pupils_per_school=2.5), "pupils_per_school"),
    (dict(school_sd=-1.0), "school_sd"), (dict(mean_score=np.nan), "mean_score"),
])
def test_bad_input(kwargs, name):
    with pytest.raises(ValueError, match=name):
        simulate_schools(**kwargs)
