"""Small real and realistic data sets for trying the fitters (the appendix "Using mixedmodels
on your own data" uses them).

=================  =====================================================================
``sleepstudy``     lme4's sleep-deprivation study: reaction time (ms) of 18 subjects over
                   10 days (180 rows; Reaction, Days, Subject).
``grouseticks``    lme4's ticks counted on red grouse chicks (403 rows; TICKS, YEAR,
                   HEIGHT, cHEIGHT (centred altitude), BROOD, LOCATION, INDEX).
``site_counts``    event counts at 25 sites, each row observed for ``t`` time units, with a
                   covariate ``x`` (200 rows; simulated; the lme4 reference ``pois_offset``).
``group_means``    each row the mean of ``w`` measurements of ``y`` at covariate ``x`` in
                   group ``g`` (40 rows, 8 groups; simulated; the lme4 reference
                   ``lmer_weights``).
=================  =====================================================================
"""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["load_example", "EXAMPLES"]

#: name -> (file, columns read as text: the grouping factors and coded categories)
EXAMPLES = {
    "sleepstudy": ("sleepstudy.csv", ["Subject"]),
    "grouseticks": ("grouseticks.csv", ["BROOD", "YEAR", "LOCATION", "INDEX"]),
    "site_counts": ("site_counts.csv", ["site"]),
    "group_means": ("group_means.csv", ["g"]),
}


def load_example(name: str) -> pd.DataFrame:
    """One of the example data sets (see the module docstring), as a new DataFrame.

    Parameters
    ----------
    name : {"sleepstudy", "grouseticks", "site_counts", "group_means"}

    Returns
    -------
    DataFrame
        Grouping factors and coded categories as strings (R's factors).

    Raises
    ------
    ValueError
        For an unknown name (listing the available ones).
    """
    if name not in EXAMPLES:
        raise ValueError(f"unknown example {name!r}; available: {sorted(EXAMPLES)}")
    file, text_cols = EXAMPLES[name]
    with resources.files("mixedmodels").joinpath(f"data/{file}").open("r") as fh:
        return pd.read_csv(fh, dtype={c: str for c in text_cols})
