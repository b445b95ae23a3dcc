"""A Gibbs sampler for the Bayesian random-intercept model, written from scratch with numpy.

The model, for observation ``i`` of group ``j`` (a shot ``i`` of archer ``j``)::

    y_ij = x_ij' beta + a_j + e_ij,      e_ij ~ N(0, sigma^2),      a_j ~ N(0, sigma_a^2),

with these priors, independent of each other:

* ``beta``: flat (improper, the default) or normal, ``beta_k ~ N(beta_prior_mean_k, beta_prior_sd_k^2)``;
* ``sigma`` and ``sigma_a``: each either a half-t on the standard deviation,
  :class:`HalfT` ``(scale, df)`` (``df=1`` is the half-Cauchy of Gelman 2006, the default,
  with ``scale`` equal to the SD of ``y``), or an inverse-gamma on the variance,
  :class:`InverseGamma` ``(shape, scale)``, density proportional to
  ``v^(-shape-1) exp(-scale / v)``.

The half-t is made conditionally conjugate by the auxiliary-variable trick of Wand et al.
(2011): if ``v | c ~ IG(df/2, df/c)`` and ``c ~ IG(1/2, 1/scale^2)`` then ``sqrt(v)`` is
half-t with ``df`` degrees of freedom and scale ``scale``. The sampler draws ``c`` too.

One sweep of the sampler, for every chain at once:

1. ``beta | sigma, sigma_a, y`` with the random effects integrated out (a ``p``-dimensional
   normal; the marginal covariance ``sigma^2 I + sigma_a^2 Z Z'`` is inverted in closed form
   because ``Z Z'`` is block-diagonal with constant blocks);
2. ``a | beta, sigma, sigma_a, y``, independent normals, vectorized over groups;
3. ``sigma^2 | beta, a, y`` and ``sigma_a^2 | a`` (inverse-gamma; with a half-t prior, first
   the auxiliary variable, then the variance).

Steps 1 and 2 together draw ``(beta, a)`` jointly from their conditional distribution. This
blocking matters: drawing ``beta | a`` and ``a | beta`` one after the other mixes very slowly
when the groups are well determined, because the intercept and the mean of the ``a_j`` are then
almost perfectly correlated in the posterior.

Diagnostics: :func:`effective_sample_size` (bulk ESS) and :func:`rhat` follow Vehtari,
Gelman, Simpson, Carpenter and Buerkner (2021): rank-normalized split chains, Geyer's initial
monotone sequence for the autocorrelations, and the larger of the bulk and folded split R-hat.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from ._validate import check_count as _check_count
from ._validate import check_positive as _check_positive

__all__ = [
    "HalfT",
    "InverseGamma",
    "GibbsResult",
    "gibbs_random_intercept",
    "effective_sample_size",
    "rhat",
]


# --------------------------------------------------------------------------------------------
# Priors on the variance parameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HalfT:
    """Half-t prior on a standard deviation: ``df`` degrees of freedom, scale ``scale``.

    ``df=1`` (the default) is the half-Cauchy. ``scale=None`` means "the SD of the response",
    resolved when the sampler sees the data.
    """

    scale: float | None = None
    df: float = 1.0

    def __post_init__(self) -> None:
        if self.scale is not None:
            _check_positive(self.scale, "HalfT.scale")
        _check_positive(self.df, "HalfT.df")

    def describe(self) -> str:
        """One line naming the prior, as printed in a sampler's summary.

        Examples
        --------
        >>> HalfT().describe()
        'half-Cauchy on the SD, scale SD of y'
        """
        name = "half-Cauchy" if self.df == 1 else f"half-t({self.df:g} df)"
        scale = "SD of y" if self.scale is None else f"{self.scale:g}"
        return f"{name} on the SD, scale {scale}"


@dataclass(frozen=True)
class InverseGamma:
    """Inverse-gamma prior on a variance: density proportional to ``v^(-shape-1) exp(-scale/v)``."""

    shape: float = 0.001
    scale: float = 0.001

    def __post_init__(self) -> None:
        _check_positive(self.shape, "InverseGamma.shape")
        _check_positive(self.scale, "InverseGamma.scale")

    def describe(self) -> str:
        """One line naming the prior, as printed in a sampler's summary.

        Examples
        --------
        >>> InverseGamma(1, 2).describe()
        'inverse-gamma on the variance, shape 1, scale 2'
        """
        return f"inverse-gamma on the variance, shape {self.shape:g}, scale {self.scale:g}"


# --------------------------------------------------------------------------------------------
# Input checks: one small function per check, each message naming the argument
# --------------------------------------------------------------------------------------------




def _check_response(y: object) -> np.ndarray:
    try:
        arr = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`y` must be numeric: {error}") from None
    if arr.ndim != 1:
        raise ValueError(f"`y` must be one-dimensional, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("`y` contains missing or infinite values")
    return arr


def _check_design(X: object, n: int) -> tuple[np.ndarray, list[str]]:
    if isinstance(X, pd.DataFrame):
        names = [str(c) for c in X.columns]
    else:
        names = None
    try:
        arr = np.asarray(X, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"`X` must be numeric: {error}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"`X` must be two-dimensional (rows x columns), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"`X` has {arr.shape[0]} rows but `y` has {n} values")
    if arr.shape[1] == 0:
        raise ValueError("`X` has no columns")
    if not np.all(np.isfinite(arr)):
        raise ValueError("`X` contains missing or infinite values")
    if np.linalg.matrix_rank(arr) < arr.shape[1]:
        raise ValueError(f"`X` is rank deficient: its {arr.shape[1]} columns are linearly dependent")
    if names is None:
        names = [f"beta[{k}]" for k in range(arr.shape[1])]
    return arr, names


def _check_groups(groups: object, n: int) -> tuple[np.ndarray, pd.Index]:
    series = pd.Series(groups) if not isinstance(groups, pd.Series) else groups
    if series.ndim != 1 or len(series) != n:
        raise ValueError(f"`groups` must have one label per value of `y` ({n}), got {len(series)}")
    if series.isna().any():
        raise ValueError("`groups` contains missing labels")
    if isinstance(series.dtype, pd.CategoricalDtype):
        series = series.cat.remove_unused_categories()
        codes, labels = series.cat.codes.to_numpy(), pd.Index(series.cat.categories)
    else:
        codes, labels = pd.factorize(series)
        labels = pd.Index(labels)
    if labels.size < 2:
        raise ValueError(f"`groups` must have at least 2 distinct groups, got {labels.size}")
    return np.asarray(codes, dtype=np.intp), labels


def _check_variance_prior(prior: object, name: str, sd_y: float) -> HalfT | InverseGamma:
    if prior is None:
        prior = HalfT()
    if not isinstance(prior, (HalfT, InverseGamma)):
        raise ValueError(f"`{name}` must be a HalfT or an InverseGamma prior, got {prior!r}")
    if isinstance(prior, HalfT) and prior.scale is None:
        prior = HalfT(scale=sd_y, df=prior.df)
    return prior


def _check_beta_prior(mean: object, sd: object, p: int) -> tuple[np.ndarray, np.ndarray | None]:
    if sd is None:
        if mean is not None:
            raise ValueError("`beta_prior_mean` needs `beta_prior_sd` (the default prior is flat)")
        return np.zeros(p), None
    sd_arr = np.broadcast_to(np.asarray(sd, dtype=float), (p,)).copy() if np.ndim(sd) == 0 else np.asarray(sd, dtype=float)
    if sd_arr.shape != (p,) or not np.all(np.isfinite(sd_arr)) or np.any(sd_arr <= 0):
        raise ValueError(f"`beta_prior_sd` must be a positive number or {p} positive numbers, got {sd!r}")
    mean = 0.0 if mean is None else mean
    mean_arr = np.broadcast_to(np.asarray(mean, dtype=float), (p,)).copy() if np.ndim(mean) == 0 else np.asarray(mean, dtype=float)
    if mean_arr.shape != (p,) or not np.all(np.isfinite(mean_arr)):
        raise ValueError(f"`beta_prior_mean` must be a number or {p} numbers, got {mean!r}")
    return mean_arr, sd_arr


def _check_init(init: object, n_chains: int) -> dict[str, np.ndarray]:
    if init is None:
        return {}
    if not isinstance(init, dict) or set(init) - {"sigma", "sigma_a"}:
        raise ValueError("`init` must be a dict with keys 'sigma' and/or 'sigma_a'")
    out = {}
    for key, value in init.items():
        arr = np.broadcast_to(np.asarray(value, dtype=float), (n_chains,)).copy() if np.ndim(value) == 0 \
            else np.asarray(value, dtype=float)
        if arr.shape != (n_chains,) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"`init['{key}']` must be a positive number or {n_chains} positive numbers")
        out[key] = arr
    return out


# --------------------------------------------------------------------------------------------
# The sampler
# --------------------------------------------------------------------------------------------


def _inv_gamma(rng: np.random.Generator, shape: float | np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Draws from IG(shape, scale), one per element of ``scale``."""
    return scale / rng.gamma(shape, 1.0, size=np.shape(scale))


class _VarianceUpdate:
    """The conditional draw of one variance given its sum of squares ``ss`` over ``m`` terms."""

    def __init__(self, prior: HalfT | InverseGamma, m: int):
        self.prior, self.m = prior, m

    def init_aux(self, rng: np.random.Generator, v: np.ndarray) -> np.ndarray | None:
        return self.update_aux(rng, v) if isinstance(self.prior, HalfT) else None

    def update_aux(self, rng: np.random.Generator, v: np.ndarray) -> np.ndarray:
        nu, A = self.prior.df, self.prior.scale
        return _inv_gamma(rng, (nu + 1) / 2, nu / v + 1 / A**2)

    def draw(self, rng: np.random.Generator, ss: np.ndarray, aux: np.ndarray | None) -> np.ndarray:
        if isinstance(self.prior, InverseGamma):
            return _inv_gamma(rng, self.prior.shape + self.m / 2, self.prior.scale + ss / 2)
        nu = self.prior.df
        return _inv_gamma(rng, nu / 2 + self.m / 2, nu / aux + ss / 2)


@dataclass
class GibbsResult:
    """Draws of a :func:`gibbs_random_intercept` run and their summaries.

    Attributes
    ----------
    draws : dict of str -> ndarray (n_chains, n_draws)
        Kept draws of the fixed effects (named after the columns of ``X``), ``sigma`` and
        ``sigma_a``.
    effects : ndarray (n_chains, n_draws, n_groups)
        Kept draws of the random effects ``a_j``.
    warmup : dict of str -> ndarray (n_chains, n_warmup)
        The discarded warm-up draws of the same parameters, for trace plots.
    groups : pandas.Index
        Group labels, in the order of the last axis of ``effects``.
    priors : dict of str -> str
        The priors used, in words.
    """

    draws: dict[str, np.ndarray]
    effects: np.ndarray
    warmup: dict[str, np.ndarray]
    groups: pd.Index
    priors: dict[str, str]
    seed: int | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        n_warmup = next(iter(self.warmup.values())).shape[1] if self.warmup else 0
        priors = "; ".join(f"{k}: {v}" for k, v in self.priors.items())
        return (f"<GibbsResult: {self.n_chains} chains x {self.n_draws} draws (after {n_warmup} warm-up), "
                f"{len(self.groups)} groups, parameters {', '.join(self.params)}; priors {priors}>")

    @property
    def n_chains(self) -> int:
        """Number of chains."""
        return self.effects.shape[0]

    @property
    def n_draws(self) -> int:
        """Kept draws per chain (after burn-in and thinning)."""
        return self.effects.shape[1]

    @property
    def params(self) -> list[str]:
        """Names of the sampled parameters, in the order of :attr:`draws`."""
        return list(self.draws)

    def to_frame(self, effects: bool = False) -> pd.DataFrame:
        """Tidy draws: one row per chain and draw, one column per parameter."""
        chain, draw = np.meshgrid(np.arange(self.n_chains), np.arange(self.n_draws), indexing="ij")
        columns = {"chain": chain.ravel(), "draw": draw.ravel()}
        columns.update({name: values.ravel() for name, values in self.draws.items()})
        if effects:
            flat = self.effects.reshape(-1, self.effects.shape[2])
            columns.update({f"a[{label}]": flat[:, j] for j, label in enumerate(self.groups)})
        return pd.DataFrame(columns)

    def ess(self) -> pd.Series:
        """Bulk effective sample size of every parameter (random effects excluded)."""
        return pd.Series({k: effective_sample_size(v) for k, v in self.draws.items()}, name="ess")

    def rhat(self) -> pd.Series:
        """R-hat of every parameter (random effects excluded); near 1 when the chains agree."""
        return pd.Series({k: rhat(v) for k, v in self.draws.items()}, name="rhat")

    def summary(self, level: float = 0.95) -> pd.DataFrame:
        """Posterior mean, SD, central interval, bulk ESS and R-hat of every parameter."""
        return _summarize(self.draws, level)

    def ranef(self, level: float = 0.95) -> pd.DataFrame:
        """The same summary for the random effects ``a_j``, indexed by group label."""
        named = {label: self.effects[:, :, j] for j, label in enumerate(self.groups)}
        table = _summarize(named, level)
        table.index = pd.Index(self.groups, name="group")
        return table


def _summarize(draws: dict[str, np.ndarray], level: float) -> pd.DataFrame:
    if not 0 < level < 1:
        raise ValueError(f"`level` must be between 0 and 1, got {level!r}")
    lo, hi = (1 - level) / 2, (1 + level) / 2
    rows = {}
    for name, values in draws.items():
        flat = values.ravel()
        rows[name] = {
            "mean": flat.mean(), "sd": flat.std(ddof=1),
            f"{100 * lo:g}%": np.quantile(flat, lo), f"{100 * hi:g}%": np.quantile(flat, hi),
            "ess": effective_sample_size(values), "rhat": rhat(values),
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def gibbs_random_intercept(
    y,
    X,
    groups,
    *,
    n_iter: int = 1000,
    n_warmup: int = 500,
    n_chains: int = 4,
    beta_prior_mean=None,
    beta_prior_sd=None,
    prior_sigma: HalfT | InverseGamma | None = None,
    prior_sigma_a: HalfT | InverseGamma | None = None,
    init: dict | None = None,
    seed: int | None = None,
) -> GibbsResult:
    """Sample the posterior of the Bayesian random-intercept model by Gibbs sampling.

    Model and priors (see the module docstring for the sampling steps)::

        y_ij = x_ij' beta + a_j + e_ij,   e_ij ~ N(0, sigma^2),   a_j ~ N(0, sigma_a^2)
        beta ~ flat  (or N(beta_prior_mean, diag(beta_prior_sd^2)))
        sigma ~ prior_sigma,  sigma_a ~ prior_sigma_a  (default: half-Cauchy, scale SD of y)

    Parameters
    ----------
    y : array-like (n,)
        Response.
    X : array-like or DataFrame (n, p)
        Fixed-effects design, full column rank; a DataFrame's column names name the draws.
    groups : array-like (n,)
        Group label of every observation (at least 2 groups); categorical order is kept.
    n_iter : int
        Draws kept per chain, after the warm-up.
    n_warmup : int
        Draws discarded per chain at the start (kept in ``result.warmup`` for trace plots).
    n_chains : int
        Independent chains, run together (vectorized); at least 2 to compute R-hat.
    beta_prior_mean, beta_prior_sd : float or array-like (p,), optional
        Normal prior on the fixed effects; ``beta_prior_sd=None`` (the default) is flat.
    prior_sigma, prior_sigma_a : HalfT or InverseGamma, optional
        Priors on the residual and the random-effect SD (variance, for an inverse-gamma).
    init : dict, optional
        Starting values ``{"sigma": ..., "sigma_a": ...}``, a number or one per chain. By
        default each chain starts at a rough moment estimate times a random factor between
        about a seventh and seven, so that the chains start apart and R-hat can tell.
    seed : int, optional
        Seed of the :class:`numpy.random.Generator`; the same seed gives the same draws.

    Returns
    -------
    GibbsResult
        Draws, with ``summary()``, ``ess()``, ``rhat()``, ``ranef()`` and ``to_frame()``.

    Raises
    ------
    ValueError
        Naming the argument: a response that is not finite, a design of the wrong length or
        not of full column rank, fewer than two groups, a count that is not a whole number,
        a prior that is not a HalfT or InverseGamma.

    Examples
    --------
    The random-intercept model of the archers, intercept only, four short chains:

    >>> import numpy as np
    >>> from mixedmodels import simulate_archers
    >>> shots = simulate_archers(n_archers=3, shots_per_bow=10, seed=23)
    >>> post = gibbs_random_intercept(shots["Distance"], np.ones((len(shots), 1)), shots["Name"],
    ...                               n_iter=200, n_warmup=100, seed=1)
    >>> post.params, post.n_chains, post.n_draws
    (['beta[0]', 'sigma', 'sigma_a'], 4, 200)
    """
    y = _check_response(y)
    n = y.size
    X, names = _check_design(X, n)
    g, labels = _check_groups(groups, n)
    n_iter = _check_count(n_iter, "n_iter", 1)
    n_warmup = _check_count(n_warmup, "n_warmup", 0)
    n_chains = _check_count(n_chains, "n_chains", 1)
    p, J = X.shape[1], labels.size
    sd_y = float(y.std(ddof=1)) if n > 1 and y.std() > 0 else 1.0
    prior_e = _check_variance_prior(prior_sigma, "prior_sigma", sd_y)
    prior_a = _check_variance_prior(prior_sigma_a, "prior_sigma_a", sd_y)
    b_mean, b_sd = _check_beta_prior(beta_prior_mean, beta_prior_sd, p)
    start = _check_init(init, n_chains)
    if set(names) & {"sigma", "sigma_a"}:
        raise ValueError("`X` must not have columns named 'sigma' or 'sigma_a'")
    rng = np.random.default_rng(seed)

    # Sufficient statistics, computed once.
    n_j = np.bincount(g, minlength=J).astype(float)                      # (J,)
    XtX = X.T @ X                                                         # (p, p)
    Xty = X.T @ y                                                         # (p,)
    ZtX = np.zeros((J, p))
    np.add.at(ZtX, g, X)                                                  # group sums of X
    Zty = np.bincount(g, weights=y, minlength=J)                          # group sums of y
    prior_prec = np.zeros(p) if b_sd is None else 1 / b_sd**2

    # Starting values: rough moment estimates, spread over the chains.
    if "sigma" in start and "sigma_a" in start:
        sig2, siga2 = start["sigma"] ** 2, start["sigma_a"] ** 2
    else:
        beta_ols = np.linalg.solve(XtX, Xty)
        resid = y - X @ beta_ols
        means = np.bincount(g, weights=resid, minlength=J) / n_j
        within = max(float(np.sum((resid - means[g]) ** 2) / max(n - J, 1)), 1e-8 * sd_y**2)
        between = max(float(means.var(ddof=1)), 1e-4 * sd_y**2)
        spread = np.exp(rng.uniform(-2.0, 2.0, size=(2, n_chains)))
        sig2 = start["sigma"] ** 2 if "sigma" in start else within * spread[0]
        siga2 = start["sigma_a"] ** 2 if "sigma_a" in start else between * spread[1]
    upd_e, upd_a = _VarianceUpdate(prior_e, n), _VarianceUpdate(prior_a, J)
    aux_e, aux_a = upd_e.init_aux(rng, sig2), upd_a.init_aux(rng, siga2)

    total = n_warmup + n_iter
    out_beta = np.empty((n_chains, total, p))
    out_a = np.empty((n_chains, total, J))
    out_sig = np.empty((n_chains, total))
    out_siga = np.empty((n_chains, total))

    for t in range(total):
        # 1. beta | sigma, sigma_a, y, random effects integrated out. With
        #    V = sigma^2 I + sigma_a^2 Z Z',  V^-1 = (I - Z D Z') / sigma^2,
        #    D_j = sigma_a^2 / (sigma^2 + n_j sigma_a^2).
        D = siga2[:, None] / (sig2[:, None] + n_j[None, :] * siga2[:, None])        # (C, J)
        prec = (XtX[None] - np.einsum("jp,cj,jq->cpq", ZtX, D, ZtX)) / sig2[:, None, None]
        rhs = (Xty[None] - np.einsum("jp,cj,j->cp", ZtX, D, Zty)) / sig2[:, None]
        prec = prec + np.diag(prior_prec)[None]
        rhs = rhs + (prior_prec * b_mean)[None]
        L = np.linalg.cholesky(prec)                                              # (C, p, p)
        mean = np.linalg.solve(prec, rhs[..., None])[..., 0]
        # beta = mean + L^-T z has covariance (L L')^-1.
        z = rng.standard_normal((n_chains, p))
        beta = mean + np.linalg.solve(np.swapaxes(L, 1, 2), z[..., None])[..., 0]

        # 2. a_j | beta, sigma, sigma_a, y: independent normals, all groups and chains at once.
        group_resid = Zty[None] - beta @ ZtX.T                                    # (C, J)
        post_prec = n_j[None] / sig2[:, None] + 1 / siga2[:, None]
        a = group_resid / sig2[:, None] / post_prec + rng.standard_normal((n_chains, J)) / np.sqrt(post_prec)

        # 3. The variances (half-t: auxiliary variable first).
        resid = y[None] - beta @ X.T - a[:, g]                                     # (C, n)
        if aux_e is not None:
            aux_e = upd_e.update_aux(rng, sig2)
        sig2 = upd_e.draw(rng, np.sum(resid**2, axis=1), aux_e)
        if aux_a is not None:
            aux_a = upd_a.update_aux(rng, siga2)
        siga2 = upd_a.draw(rng, np.sum(a**2, axis=1), aux_a)

        out_beta[:, t], out_a[:, t] = beta, a
        out_sig[:, t], out_siga[:, t] = np.sqrt(sig2), np.sqrt(siga2)

    def split(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return values[:, :n_warmup], values[:, n_warmup:]

    draws, warmup = {}, {}
    for k, name in enumerate(names):
        warmup[name], draws[name] = split(out_beta[:, :, k])
    warmup["sigma"], draws["sigma"] = split(out_sig)
    warmup["sigma_a"], draws["sigma_a"] = split(out_siga)
    beta_prior = "flat" if b_sd is None else "normal, mean " + ", ".join(f"{m:g}" for m in b_mean) \
        + "; SD " + ", ".join(f"{s:g}" for s in b_sd)
    return GibbsResult(
        draws=draws, effects=out_a[:, n_warmup:], warmup=warmup, groups=labels,
        priors={"beta": beta_prior, "sigma": prior_e.describe(), "sigma_a": prior_a.describe()},
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# Diagnostics (Vehtari et al. 2021)
# --------------------------------------------------------------------------------------------


def _as_chains(draws) -> np.ndarray:
    arr = np.asarray(draws, dtype=float)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise ValueError(f"`draws` must be (n_chains, n_draws), got shape {arr.shape}")
    if arr.shape[1] < 4:
        raise ValueError(f"`draws` needs at least 4 draws per chain, got {arr.shape[1]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("`draws` contains missing or infinite values")
    return arr


def _split(arr: np.ndarray) -> np.ndarray:
    """Split every chain in two halves (dropping the middle draw of an odd length)."""
    half = arr.shape[1] // 2
    return np.concatenate([arr[:, :half], arr[:, -half:]], axis=0)


def _rank_normalize(arr: np.ndarray) -> np.ndarray:
    ranks = stats.rankdata(arr, method="average").reshape(arr.shape)
    return stats.norm.ppf((ranks - 3 / 8) / (arr.size + 1 / 4))


def _ess_raw(arr: np.ndarray) -> float:
    """ESS of (n_chains, n_draws) draws, with Geyer's initial monotone sequence estimator."""
    m, n = arr.shape
    centred = arr - arr.mean(axis=1, keepdims=True)
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(spectrum * np.conj(spectrum), n=size, axis=1)[:, :n] / n   # biased
    chain_var = acov[:, 0] * n / (n - 1)
    mean_var = chain_var.mean()
    var_plus = mean_var * (n - 1) / n + (arr.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    if var_plus <= 0:
        return float("nan")
    rho = 1 - (mean_var - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Sums of adjacent pairs, kept while positive and made monotone (Geyer 1992).
    n_pairs = n // 2
    pairs = rho[: 2 * n_pairs].reshape(n_pairs, 2).sum(axis=1)
    negative = np.flatnonzero(pairs <= 0)
    pairs = pairs[: negative[0]] if negative.size else pairs
    pairs = np.minimum.accumulate(pairs)
    tau = -1 + 2 * pairs.sum()
    tau = max(tau, 1 / np.log10(m * n)) if m * n > 1 else tau
    return float(m * n / tau)


def effective_sample_size(draws) -> float:
    """Bulk effective sample size of ``draws`` (n_chains, n_draws), or of a single chain.

    Rank-normalized split chains and Geyer's initial monotone sequence, as in Vehtari et al.
    (2021). Independent draws give about ``n_chains * n_draws``; autocorrelated ones fewer.
    """
    arr = _as_chains(draws)
    if np.ptp(arr) == 0:
        return float("nan")
    return _ess_raw(_rank_normalize(_split(arr)))


def _rhat_raw(arr: np.ndarray) -> float:
    m, n = arr.shape
    within = arr.var(axis=1, ddof=1).mean()
    between = n * arr.mean(axis=1).var(ddof=1)
    if within <= 0:
        return float("nan")
    return float(np.sqrt(((n - 1) / n * within + between / n) / within))


def rhat(draws) -> float:
    """R-hat of ``draws`` (n_chains, n_draws): near 1 when the chains agree, large when not.

    The larger of the rank-normalized split R-hat and the same for the folded draws
    (distance from the median), as in Vehtari et al. (2021).
    """
    arr = _as_chains(draws)
    if np.ptp(arr) == 0:
        return float("nan")
    halves = _split(arr)
    bulk = _rhat_raw(_rank_normalize(halves))
    folded = _rhat_raw(_rank_normalize(np.abs(halves - np.median(halves))))
    return max(bulk, folded)
