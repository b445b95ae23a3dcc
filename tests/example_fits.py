"""Small fits many tests read (sleepstudy and cbpp from tests/fixtures), made once per run.

The returned objects are shared between tests: read them, never change them.
"""

import warnings
from functools import lru_cache
from pathlib import Path

import pandas as pd

import mixedmodels as mm

FIX = Path(__file__).parent / "fixtures"


@lru_cache(maxsize=None)
def sleepstudy() -> pd.DataFrame:
    """lme4's sleepstudy (Subject as text)."""
    return pd.read_csv(FIX / "sleepstudy.csv", dtype={"Subject": str})


@lru_cache(maxsize=None)
def cbpp() -> pd.DataFrame:
    """lme4's cbpp (herd and period as text)."""
    return pd.read_csv(FIX / "cbpp.csv", dtype={"herd": str, "period": str})


@lru_cache(maxsize=None)
def sleep_fit(formula: str = "Reaction ~ Days + (Days | Subject)", reml: bool = True):
    """``lmer(formula, sleepstudy, REML = reml)``."""
    return mm.lmer(formula, sleepstudy(), reml=reml)


@lru_cache(maxsize=None)
def cbpp_fit():
    """``glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)``
    (Laplace; its quadrature warning silenced)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return mm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp(),
                        nagq=1)
