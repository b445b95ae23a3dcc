"""Simulated data sets for the book's stories.

Every generator takes a ``seed`` and draws from its own
:class:`numpy.random.Generator`, so a chapter that names its seed gets the same
data on every run and every machine.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._validate import check_count as _check_count
from ._validate import check_real as _check_real

__all__ = ["westeros_names", "simulate_archers"]

# Small pools are enough: 48 x 24 = 1,152 distinct "First House" names.
_FIRST_NAMES = (
    "Addam", "Alyn", "Alysanne", "Arya", "Asha", "Barristan", "Benjen", "Brienne",
    "Brynden", "Catelyn", "Cley", "Cressen", "Dacey", "Davos", "Denys", "Donal",
    "Edmure", "Elia", "Gendry", "Gerold", "Harwin", "Hoster", "Hullen", "Jeyne",
    "Jory", "Jonos", "Kevan", "Lyanna", "Lyonel", "Maege", "Meera", "Myranda",
    "Osha", "Podrick", "Quentyn", "Rickard", "Rodrik", "Roslin", "Sandor", "Shae",
    "Sybell", "Talla", "Theon", "Tytos", "Walder", "Wylla", "Wynafryd", "Ygritte",
)
_HOUSES = (
    "Arryn", "Blackwood", "Bolton", "Bracken", "Cassel", "Dayne", "Florent", "Frey",
    "Glover", "Greyjoy", "Karstark", "Mallister", "Manderly", "Marbrand", "Mormont", "Payne",
    "Redwyne", "Reed", "Royce", "Tarly", "Tarth", "Tully", "Tyrell", "Westerling",
)




def westeros_names(n: int, seed: int | None = None) -> list[str]:
    """Draw ``n`` distinct Westeros-style names, "First House".

    Parameters
    ----------
    n : int
        How many names; at most the number of distinct combinations (1,152).
    seed : int, optional
        Seed of the random generator; the same seed gives the same names.

    Returns
    -------
    list of str
        ``n`` unique names such as ``"Brienne Tarth"``.

    Raises
    ------
    ValueError
        If ``n`` is not a whole number >= 0, or exceeds the number of distinct names.

    Examples
    --------
    >>> westeros_names(3, seed=1)
    ['Jory Marbrand', 'Hullen Redwyne', 'Rodrik Dayne']
    """
    n = _check_count(n, "n", 0)
    total = len(_FIRST_NAMES) * len(_HOUSES)
    if n > total:
        raise ValueError(f"`n` can be at most {total} (distinct names), got {n}")
    rng = np.random.default_rng(seed)
    picks = rng.choice(total, size=n, replace=False)
    return [f"{_FIRST_NAMES[k // len(_HOUSES)]} {_HOUSES[k % len(_HOUSES)]}" for k in picks]


def simulate_archers(
    n_archers: int = 3,
    shots_per_bow: int = 10,
    *,
    baseline: float = 165.0,
    bow_effect: float = -10.0,
    skill_sd: float = 20.0,
    noise_sd: float = 5.0,
    seed: int | None = None,
    return_skills: bool = False,
) -> pd.DataFrame | tuple[pd.DataFrame, pd.Series]:
    """Simulate Jaime's bow experiment.

    ``n_archers`` archers are drawn at random from a population whose skill
    (extra distance, in metres) is normal with SD ``skill_sd``. Each archer
    shoots each bow, Northwood then Southwood, ``shots_per_bow`` times::

        Distance = baseline + bow_effect * [Bow == Southwood] + skill[archer] + noise

    Parameters
    ----------
    n_archers : int
        Number of archers, at least 1.
    shots_per_bow : int
        Shots per archer and bow, at least 1.
    baseline : float
        Mean distance of a Northwood shot by an average archer (m).
    bow_effect : float
        How much further (negative: shorter) a Southwood shot flies (m).
    skill_sd : float
        SD of the archers' skills in the population (m), >= 0.
    noise_sd : float
        SD of the shot-to-shot noise (m), >= 0.
    seed : int, optional
        Seed of the random generator (names, skills and noise all derive from it).
    return_skills : bool
        Also return the true skill of every archer.

    Returns
    -------
    pandas.DataFrame
        Columns ``Distance`` (float), ``Bow`` (categorical, Northwood first) and
        ``Name`` (categorical, in order of appearance); one row per shot.
    pandas.Series
        Only with ``return_skills=True``: the archers' true skills, indexed by name.

    Raises
    ------
    ValueError
        Naming the argument, if a count is not a whole number >= 1, a mean is not a finite
        number, or an SD is negative.

    Examples
    --------
    Experiment 1 of the book, three archers:

    >>> shots = simulate_archers(n_archers=3, shots_per_bow=10, seed=23)
    >>> shots.shape, list(shots.columns)
    ((60, 3), ['Distance', 'Bow', 'Name'])
    >>> list(shots["Bow"].cat.categories)
    ['Northwood', 'Southwood']
    """
    n_archers = _check_count(n_archers, "n_archers", 1)
    shots_per_bow = _check_count(shots_per_bow, "shots_per_bow", 1)
    baseline = _check_real(baseline, "baseline")
    bow_effect = _check_real(bow_effect, "bow_effect")
    skill_sd = _check_real(skill_sd, "skill_sd", nonnegative=True)
    noise_sd = _check_real(noise_sd, "noise_sd", nonnegative=True)

    rng = np.random.default_rng(seed)
    # Names get their own stream so that changing n_archers keeps skills reproducible per seed.
    names = westeros_names(n_archers, seed=int(rng.integers(2**31)))
    skills = rng.normal(0.0, skill_sd, size=n_archers)

    archer = np.repeat(np.arange(n_archers), 2 * shots_per_bow)
    southwood = np.tile(np.repeat([0.0, 1.0], shots_per_bow), n_archers)
    noise = rng.normal(0.0, noise_sd, size=archer.size)
    distance = baseline + bow_effect * southwood + skills[archer] + noise

    frame = pd.DataFrame(
        {
            "Distance": distance,
            "Bow": pd.Categorical.from_codes(southwood.astype(int), ["Northwood", "Southwood"]),
            "Name": pd.Categorical.from_codes(archer, names),
        }
    )
    if return_skills:
        return frame, pd.Series(skills, index=pd.Index(names, name="Name"), name="skill")
    return frame
