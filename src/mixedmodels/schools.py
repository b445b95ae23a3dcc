"""Simulated school data for the chapter "When not to use a mixed model".

A few schools, many pupils each: the setting in which the units (schools) are all we care
about and are too few to estimate a variance well.
"""

from __future__ import annotations


import numpy as np
import pandas as pd

from ._validate import check_count as _check_count
from ._validate import check_real as _check_real

__all__ = ["simulate_schools", "SCHOOL_NAMES"]

#: Names of the schools, in order; towns and castles of the Westerlands.
SCHOOL_NAMES = (
    "Lannisport", "Kayce", "Crakehall", "Ashemark", "Faircastle", "Sarsfield", "Cornfield",
    "Deep Den", "Silverhill", "Feastfires", "Hornvale", "Banefort", "Oxcross", "Tarbeck Hall",
    "Golden Tooth", "Clegane's Keep", "Goldenhill", "Castamere",
)




def simulate_schools(
    n_schools: int = 3,
    pupils_per_school: int = 400,
    *,
    mean_score: float = 60.0,
    school_sd: float = 8.0,
    noise_sd: float = 12.0,
    seed: int | None = None,
    return_effects: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.Series]:
    """Simulate exam scores of pupils in a few schools::

        Score = mean_score + effect[school] + noise,   effect ~ N(0, school_sd^2),
                                                        noise ~ N(0, noise_sd^2)

    Parameters
    ----------
    n_schools : int
        Number of schools, at least 1. The first 18 are named after places of the
        Westerlands (``mixedmodels.schools.SCHOOL_NAMES``), later ones ``"School 19"`` and so on.
    pupils_per_school : int
        Pupils tested in every school, at least 1.
    mean_score : float
        Mean score of the population of schools.
    school_sd : float
        SD of the school effects (>= 0).
    noise_sd : float
        SD of a pupil's score around the school's mean (>= 0).
    seed : int, optional
        Seed of the random generator.
    return_effects : bool
        Also return the true school effects.

    Returns
    -------
    pandas.DataFrame
        Columns ``Score`` (float) and ``School`` (categorical, in order); one row per pupil.
    pandas.Series
        Only with ``return_effects=True``: the true school effects, indexed by school.

    Raises
    ------
    ValueError
        Naming the argument, if a count is not a whole number >= 1, the mean is not a finite
        number, or an SD is negative.

    Examples
    --------
    >>> pupils = simulate_schools(3, 30, seed=1)
    >>> pupils.shape, list(pupils.columns)
    ((90, 2), ['Score', 'School'])
    """
    n_schools = _check_count(n_schools, "n_schools", 1)
    pupils_per_school = _check_count(pupils_per_school, "pupils_per_school", 1)
    mean_score = _check_real(mean_score, "mean_score")
    school_sd = _check_real(school_sd, "school_sd", nonnegative=True)
    noise_sd = _check_real(noise_sd, "noise_sd", nonnegative=True)

    names = [SCHOOL_NAMES[k] if k < len(SCHOOL_NAMES) else f"School {k + 1}" for k in range(n_schools)]
    rng = np.random.default_rng(seed)
    effects = rng.normal(0.0, school_sd, size=n_schools)
    school = np.repeat(np.arange(n_schools), pupils_per_school)
    score = mean_score + effects[school] + rng.normal(0.0, noise_sd, size=school.size)
    frame = pd.DataFrame({"Score": score, "School": pd.Categorical.from_codes(school, names)})
    if return_effects:
        return frame, pd.Series(effects, index=pd.Index(names, name="School"), name="effect")
    return frame
