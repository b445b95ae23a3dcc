"""mixedmodels: linear and generalized linear mixed models, from scratch.

The helper package of the book "Mixed models with the Lannisters".
"""

from .gibbs import HalfT, InverseGamma, gibbs_random_intercept
from .datasets import ClickData, load_ctr, make_click_data
from .glmm import ConvergenceWarning, GlmerResult, QuadratureWarning, glmer
from .simulate import simulate_archers, westeros_names
from .lmm import LinearMixedModel, deviance_function, lmer
from . import race  # the prediction race of Chapter 8: mm.race.mspe, mm.race.race, ...
from .race import mspe

__version__ = "0.1.0"

__all__ = [
    "ClickData",
    "ConvergenceWarning",
    "GlmerResult",
    "QuadratureWarning",
    "glmer",
    "load_ctr",
    "make_click_data",
    "gibbs_random_intercept",
    "HalfT",
    "InverseGamma",
    "simulate_archers",
    "westeros_names",
    "lmer",
    "LinearMixedModel",
    "deviance_function",
    "race",
    "mspe",
]
