"""Simulation from a fitted model and the parametric bootstrap (lme4's ``simulate.merMod``
and ``bootMer`` / ``confint(method = "boot")``).

:func:`simulate` draws new responses from the fitted model: new random effects from their
estimated distribution (``use_u=False``, lme4's default) or the conditional modes held fixed
(``use_u=True``), then new observations given them. :func:`bootstrap` refits the model to
each simulated response (:func:`mixedmodels.refit.refit`, warm-started at the estimates) and
collects the estimates; :func:`bootstrap_confint` turns them into percentile intervals, the
rows named as ``confint``'s. Every draw comes from one seeded :class:`numpy.random.Generator`,
so a seed reproduces the whole run.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import pandas as pd

from . import _validate
from .summary import percent_labels

__all__ = ["simulate", "bootstrap", "bootstrap_confint", "parameter_vector"]

#: Show a progress bar (``progress=None``) when the bootstrap is expected to take longer.
PROGRESS_SECONDS = 5.0


def _is_glmm(fit) -> bool:
    return hasattr(fit, "frame") and hasattr(fit, "family")


def term_covariances(fit) -> list[np.ndarray]:
    """Each random-effect term's covariance matrix (k x k, absolute scale), in
    ``fit.model.reterms`` order (the fit's :class:`~mixedmodels.covariance.CovarianceLayout`)."""
    sigma = fit._scale()
    return fit.layout.covariances(fit.theta, 1.0 if sigma is None else sigma)


def _sqrt_psd(S: np.ndarray) -> np.ndarray:
    """A square root ``R`` with ``R R' = S`` that also works for a singular ``S``."""
    w, V = np.linalg.eigh(S)
    return V * np.sqrt(np.clip(w, 0.0, None))


def simulate(fit, nsim: int = 1, seed: int | np.random.Generator | None = None,
             use_u: bool = False) -> pd.DataFrame:
    """Simulate responses from a fitted model (lme4's ``simulate(fit, nsim, seed, use.u)``).

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
    nsim : int
        Number of simulated responses (columns).
    seed : int or numpy.random.Generator, optional
        Seed of the generator (or the generator itself, which is advanced).
    use_u : bool
        False (lme4's default): draw new random effects from ``N(0, Sigma_hat)``, i.e.
        simulate new groups. True: keep the conditional modes (BLUPs), so only the
        observation-level noise is new.

    Returns
    -------
    DataFrame, shape (nobs, nsim)
        Columns ``sim_1``, ... indexed by the rows used in the fit; values on the scale of
        the stored response (for ``lmer`` the response, transformed if the formula
        transforms it; for a binomial GLMM the proportion of successes out of the same
        trials), ready for :func:`mixedmodels.refit.refit`.

    Raises
    ------
    ValueError
        For ``nsim`` not a positive whole number or a bad ``seed``.
    """
    if isinstance(nsim, bool) or not isinstance(nsim, (int, np.integer)) or nsim < 1:
        raise ValueError(f"`nsim` must be a whole number >= 1, got {nsim!r}")
    try:
        rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    except (TypeError, ValueError):
        raise ValueError(f"`seed` must be an int, a numpy Generator or None, got {seed!r}") from None
    model = fit.model
    n = fit.nobs
    glmm = _is_glmm(fit)
    if use_u:
        eta = (fit.predict(type="link") if glmm else fit.fitted()).to_numpy(dtype=float)
        eta = np.broadcast_to(eta[:, None], (n, nsim))
    else:
        base = (fit.predict(type="link", include_random=False) if glmm
                else fit.predict(include_random=False)).to_numpy(dtype=float)
        eta = np.repeat(base[:, None], nsim, axis=1)
        for t, S in zip(model.reterms, term_covariances(fit)):
            R = _sqrt_psd(S)
            u = rng.standard_normal((nsim, t.nlevels, t.k))
            b = u @ R.T                                        # (nsim, levels, k)
            eta += np.einsum("ik,sik->is", t.Z, b[:, t.codes, :])
    if glmm:
        frame = fit.frame
        mu = fit.family.linkinv(eta)
        m = np.broadcast_to(np.asarray(frame.m, dtype=float)[:, None], mu.shape)
        y = fit.family.sample(mu, m, rng)
    else:
        w = getattr(model, "weights", None)
        scale = fit.sigma if w is None else fit.sigma / np.sqrt(np.asarray(w, dtype=float))[:, None]
        y = eta + scale * rng.standard_normal((n, nsim))
    cols = [f"sim_{i + 1}" for i in range(nsim)]
    return pd.DataFrame(np.asarray(y, dtype=float), index=model.rows, columns=cols)


def parameter_vector(fit) -> pd.Series:
    """The estimates in ``confint``'s order and names: variance parameters (lme4's
    ``sd_(Intercept)|g``, ``cor_x.(Intercept)|g``, ``sigma``; a dispersion parameter where the
    family has one), then the fixed effects."""
    sigma = fit._scale()
    # A correlation of a zero SD is undefined (NaN, as lme4's bootstrap gets it); the
    # percentile intervals skip it.
    vals = list(fit.layout.sdcor(fit.theta, 1.0 if sigma is None else sigma, undefined=np.nan))
    names = list(fit.layout.names)
    if sigma is not None:
        names.append("sigma")
        vals.append(sigma)
    disp = getattr(fit, "dispersion", None)
    if disp is not None:
        names.append(glmm_dispersion_name(fit))
        vals.append(disp)
    names += list(fit.fixef.index)
    vals += list(fit.fixef.to_numpy())
    return pd.Series(np.asarray(vals, dtype=float), index=names)


def glmm_dispersion_name(fit) -> str:
    """The name of a GLMM family's dispersion parameter (Gamma: shape; NB: theta)."""
    return getattr(fit.family, "dispersion_name", "dispersion")


def bootstrap(fit, nsim: int = 500, seed: int | np.random.Generator | None = None,
              use_u: bool = False, progress: bool | None = None) -> pd.DataFrame:
    """Parametric bootstrap: simulate, refit, collect the estimates (lme4's ``bootMer``).

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
    nsim : int
        Number of bootstrap replicates.
    seed : int or numpy.random.Generator, optional
        Seeds every draw; the same seed gives the same replicates.
    use_u : bool
        Passed to :func:`simulate` (default False: new random effects in each replicate).
    progress : bool, optional
        Show a ``tqdm`` progress bar (on stderr). Default: shown when the run is expected
        to take more than :data:`PROGRESS_SECONDS` (timed on the first replicate).

    Returns
    -------
    DataFrame, shape (nsim, number of parameters)
        One row per replicate, columns as :func:`parameter_vector`. A replicate whose refit
        failed is a row of NaN (their number is in ``.attrs["failed"]``, and a warning says
        how many).
    """
    from .refit import refit

    sims = simulate(fit, nsim=nsim, seed=seed, use_u=use_u)
    names = parameter_vector(fit).index
    rows = np.full((nsim, len(names)), np.nan)
    failed = 0
    bar = None
    t0 = time.perf_counter()
    for i in range(nsim):
        try:
            with warnings.catch_warnings():
                # Singular or slow-to-converge replicates are part of the bootstrap
                # distribution; their warnings would drown the output.
                warnings.simplefilter("ignore")
                f = refit(fit, sims.iloc[:, i].to_numpy())
            rows[i] = parameter_vector(f).reindex(names).to_numpy()
        except (ValueError, FloatingPointError, np.linalg.LinAlgError):
            failed += 1
        if i == 0 and nsim > 1:
            show = progress if progress is not None else \
                (time.perf_counter() - t0) * nsim > PROGRESS_SECONDS
            if show:
                # Plain tqdm (text on stderr): tqdm.auto warns in notebooks without ipywidgets.
                from tqdm import tqdm

                bar = tqdm(total=nsim, initial=1, desc="bootstrap", unit="fit")
        elif bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if failed:
        warnings.warn(f"{failed} of {nsim} bootstrap refits failed and are left as NaN",
                      UserWarning, stacklevel=2)
    out = pd.DataFrame(rows, columns=names)
    out.attrs["failed"] = failed
    return out


def bootstrap_confint(fit, level: float = 0.95, nsim: int = 500,
                      seed: int | np.random.Generator | None = None,
                      progress: bool | None = None) -> pd.DataFrame:
    """Percentile intervals from a parametric bootstrap (lme4's
    ``confint(fit, method = "boot")``, ``boot.type = "perc"``).

    Parameters
    ----------
    fit : LinearMixedModel or GlmerResult
    level : float
        Coverage, strictly between 0 and 1.
    nsim : int
        Replicates (lme4's default is 500). The Monte Carlo error of a 2.5 % quantile from
        500 replicates is a few percent of the interval's width.
    seed : int or numpy.random.Generator, optional
    progress : bool, optional
        See :func:`bootstrap`.

    Returns
    -------
    DataFrame
        Rows named as ``fit.confint()``'s, columns like ``"2.5 %"`` and ``"97.5 %"``.
    """
    _validate.check_level(level)
    reps = bootstrap(fit, nsim=nsim, seed=seed, progress=progress)
    a = (1 - level) / 2
    cols = percent_labels(level)
    lo = reps.quantile(a, interpolation="linear")
    hi = reps.quantile(1 - a, interpolation="linear")
    out = pd.DataFrame({cols[0]: lo, cols[1]: hi})
    out.attrs["nsim"] = nsim
    out.attrs["failed"] = reps.attrs.get("failed", 0)
    return out
