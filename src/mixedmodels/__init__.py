"""mixedmodels: linear and generalized linear mixed models, from scratch.

The helper package of the book "Mixed models with the Lannisters".

Fitting
    :func:`lmer` (linear mixed models, REML or ML) and :func:`glmer` (binomial and Poisson
    GLMMs by the Laplace approximation or adaptive Gauss-Hermite quadrature; links in
    :mod:`mixedmodels.families`, e.g. ``families.binomial(link="probit")``), with lme4's
    formula syntax and lme4-like results (``fixef``, ``ranef()``, ``varcorr()``,
    ``confint()``, ``predict()``, ``summary()``). :func:`deviance_function` hands back the
    profiled objective of an LMM as a function of theta.
Comparing, refitting, reporting
    :func:`anova` (alias :func:`compare`: likelihood-ratio tests of nested fits),
    :func:`refit` (a new response), :func:`update` (a changed call),
    :func:`bootstrap` / :func:`bootstrap_confint` (parametric bootstrap, built on
    :func:`mixedmodels.bootstrap.simulate`), :func:`coef_table`, :func:`tidy`,
    :func:`to_dict` / :func:`to_json`.
Data
    :func:`simulate_archers` (the bow experiment), :func:`simulate_schools`,
    :func:`load_ctr` (the post's click data) and :func:`make_click_data` (more like it).
Bayes
    :func:`gibbs_random_intercept`, a Gibbs sampler for the random-intercept model.
The race
    :mod:`mixedmodels.race` (Chapter 8) and its :func:`mspe`.
"""

from . import families  # mm.families.binomial(link="probit"), as R's binomial(link = ...)
from . import race  # the prediction race of Chapter 8: mm.race.mspe, mm.race.race, ...
from .bootstrap import bootstrap, bootstrap_confint
from .compare import anova, compare
from .examples import load_example
from .datasets import ClickData, load_ctr, make_click_data
from .gibbs import HalfT, InverseGamma, gibbs_random_intercept
from .glmm import (ConvergenceWarning, GeneralizedLinearMixedModel, GlmerResult, QuadratureWarning,  # noqa: F401
                   glmer, glmer_nb)
from .lmm import LinearMixedModel, deviance_function, lmer
from .race import mspe
from .refit import refit, update
from .schools import simulate_schools
from .simulate import simulate_archers, westeros_names
from .tidy import coef_table, tidy, to_dict, to_json

__version__ = "0.1.0"

__all__ = [
    "lmer",
    "LinearMixedModel",
    "deviance_function",
    "glmer",
    "glmer_nb",
    "GeneralizedLinearMixedModel",
    "ConvergenceWarning",
    "QuadratureWarning",
    "simulate_archers",
    "westeros_names",
    "simulate_schools",
    "load_ctr",
    "make_click_data",
    "ClickData",
    "gibbs_random_intercept",
    "HalfT",
    "InverseGamma",
    "families",
    "race",
    "mspe",
    "anova",
    "load_example",
    "compare",
    "refit",
    "update",
    "bootstrap",
    "bootstrap_confint",
    "coef_table",
    "tidy",
    "to_dict",
    "to_json",
]
