"""Methods every fitted model has (LMM and GLMM alike): comparison, simulation, refitting and
tidy outputs, a base class of :class:`mixedmodels.mixedmodel.MixedModel` (so every result class
has them). Each is a thin call of the module function that does the work
(:mod:`~mixedmodels.compare`, :mod:`~mixedmodels.bootstrap`, :mod:`~mixedmodels.refit`,
:mod:`~mixedmodels.tidy`), so ``fit.anova(other)`` and ``mm.anova(fit, other)`` are the same.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["FitMethods"]


class FitMethods:
    """Base of :class:`~mixedmodels.mixedmodel.MixedModel`: see the module docstring."""

    def anova(self, *others, refit: bool = True, names: list[str] | None = None) -> pd.DataFrame:
        """Likelihood-ratio tests of this fit and ``others`` (see :func:`mixedmodels.anova`)."""
        from .compare import anova

        return anova(self, *others, refit=refit, names=names)

    def simulate(self, nsim: int = 1, seed: int | np.random.Generator | None = None,
                 use_u: bool = False) -> pd.DataFrame:
        """Simulated responses, shape (nobs, nsim) (see :func:`mixedmodels.bootstrap.simulate`)."""
        from .bootstrap import simulate

        return simulate(self, nsim=nsim, seed=seed, use_u=use_u)

    def refit(self, newresponse, *, start: np.ndarray | None = None):
        """The same model fitted to a new response (see :func:`mixedmodels.refit`)."""
        from .refit import refit

        return refit(self, newresponse, start=start)

    def update(self, formula: str | None = None, **changes):
        """The model fitted again with changes, e.g. ``". ~ . + x"`` or ``reml=False``
        (see :func:`mixedmodels.update`)."""
        from .refit import update

        return update(self, formula, **changes)

    def bootstrap(self, nsim: int = 500, seed: int | np.random.Generator | None = None,
                  use_u: bool = False, progress: bool | None = None) -> pd.DataFrame:
        """Parametric bootstrap replicates of the estimates, shape (nsim, parameters)
        (see :func:`mixedmodels.bootstrap`)."""
        from .bootstrap import bootstrap

        return bootstrap(self, nsim=nsim, seed=seed, use_u=use_u, progress=progress)

    def coef_table(self, level: float = 0.95) -> pd.DataFrame:
        """Fixed effects with SE, Wald statistic, p-value and interval
        (see :func:`mixedmodels.coef_table`)."""
        from .tidy import coef_table

        return coef_table(self, level=level)

    def tidy(self, effects: str = "fixed", level: float = 0.95) -> pd.DataFrame:
        """Long table of fixed effects, variance parameters or random effects
        (see :func:`mixedmodels.tidy`)."""
        from .tidy import tidy

        return tidy(self, effects=effects, level=level)

    def to_dict(self) -> dict:
        """The estimates as plain Python values (see :func:`mixedmodels.to_dict`)."""
        from .tidy import to_dict

        return to_dict(self)

    def to_json(self, path=None, indent: int | None = 1) -> str:
        """The estimates as JSON text, written to ``path`` when given
        (see :func:`mixedmodels.to_json`)."""
        from .tidy import to_json

        return to_json(self, path=path, indent=indent)
