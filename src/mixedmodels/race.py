"""The prediction race of Chapter 8: a GLMM against fixed-effect GLM, LASSO and ridge.

The post's question: fit each model once on a click-through experiment, then predict the
click rate of every user-display row of *future* data from the same users (their effects held
fixed, display assignment and exposures drawn afresh), and score the predictions by the mean
squared prediction error (:func:`mspe`).

The pieces, usable on their own:

- :func:`mspe`, the score;
- :func:`user_design`, the sparse one-hot design (covariates plus one column per user) that the
  fixed-effect competitors fit on, never a dense rows x users matrix;
- the competitors, each with one ``fit(data)`` returning a :class:`FittedModel` whose
  ``predict`` never refits: :class:`GlumPenalized` (LASSO, ridge), :class:`GlumGLM`,
  :class:`StatsmodelsGLM` (the same GLM with standard errors) and :class:`GLMM`;
- :func:`score_models`, :func:`race` and :func:`sweep`, the simulate-and-score loop;
- :func:`post_user_effects`, the users' true effects in the post's own data set.

glum and statsmodels are imported only by the competitors that need them.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit, ndtri

__all__ = [
    "mspe",
    "UserDesign",
    "user_design",
    "FittedModel",
    "Competitor",
    "GlumPenalized",
    "GlumGLM",
    "StatsmodelsGLM",
    "GLMM",
    "default_competitors",
    "future_data",
    "score_models",
    "RaceResult",
    "race",
    "sweep",
    "post_user_effects",
]

#: The post's simulation settings (``make_click_data(p, mu, tau, sig_a, pois_mean)``).
POST_SETTINGS: dict[str, float] = {"mu": -4.5, "tau": 0.5, "sig_a": 5.0, "pois_mean": 20.0}


# --------------------------------------------------------------------------------------------
# The score
# --------------------------------------------------------------------------------------------

def mspe(clicks: Any, expos: Any, p_hat: Any) -> float:
    """Mean squared prediction error of predicted click rates, weighting every impression.

    For rows ``i`` (a user on a display) with ``n_i`` exposures, ``c_i`` clicks and predicted
    click probability ``p_i``::

        MSPE = sum_i n_i * (c_i / n_i - p_i)^2  /  sum_i n_i

    the squared error of the observed click rate, each row weighted by its exposures, so that
    every impression counts once (the post's footnote). The per-impression Brier score,
    ``sum_i [c_i (1 - p_i)^2 + (n_i - c_i) p_i^2] / sum_i n_i``, differs from it by
    ``sum_i c_i (1 - c_i / n_i) / sum_i n_i``, which does not depend on the predictions: both
    rank models identically and give the same differences between them.

    Parameters
    ----------
    clicks, expos : array-like
        Clicks and exposures per row; ``0 <= clicks <= expos`` and ``expos > 0``.
    p_hat : array-like
        Predicted click probabilities, in ``[0, 1]``.

    Returns
    -------
    float

    Examples
    --------
    >>> mspe([1, 0], [2, 2], [0.5, 0.5])   # (2 * 0 + 2 * 0.25) / 4
    0.125
    """
    c = np.asarray(clicks, dtype=float)
    n = np.asarray(expos, dtype=float)
    p = np.asarray(p_hat, dtype=float)
    if not (c.shape == n.shape == p.shape) or c.ndim != 1:
        raise ValueError(f"`clicks`, `expos` and `p_hat` must be 1-d and of equal length, got "
                         f"shapes {c.shape}, {n.shape}, {p.shape}")
    if c.size == 0:
        raise ValueError("`clicks` is empty: nothing to score")
    if not np.all(np.isfinite(n)) or np.any(n <= 0):
        raise ValueError("`expos` must be finite and positive in every row")
    if not np.all(np.isfinite(c)) or np.any(c < 0) or np.any(c > n):
        raise ValueError("`clicks` must be between 0 and `expos` in every row")
    if not np.all(np.isfinite(p)) or np.any(p < 0) or np.any(p > 1):
        raise ValueError("`p_hat` must be probabilities in [0, 1] (is a model predicting on the "
                         "link scale, or missing a user?)")
    return float(np.sum(n * (c / n - p) ** 2) / np.sum(n))


# --------------------------------------------------------------------------------------------
# The sparse design
# --------------------------------------------------------------------------------------------

def _require_columns(data: pd.DataFrame, columns: Iterable[str], what: str = "data") -> None:
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"`{what}` must be a pandas DataFrame, got {type(data).__name__}")
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ValueError(f"`{what}` has no column(s) {missing}; it has {list(data.columns)}")


@dataclass(frozen=True)
class UserDesign:
    """A sparse design: covariate columns, then one indicator column per known user.

    Attributes
    ----------
    matrix : scipy.sparse.csr_matrix (n_rows, n_covariates + n_users)
    columns : list of str
        Column names: the covariates, then ``"<user>[<level>]"``.
    users : pandas.Index
        The users the columns stand for, in column order.
    unseen : ndarray of bool (n_rows,)
        Rows whose user is not in ``users``: their user block is all zero (the baseline).
    """

    matrix: sp.csr_matrix
    columns: list[str]
    users: pd.Index
    unseen: np.ndarray

    @property
    def n_covariates(self) -> int:
        """Number of covariate columns (before the user block)."""
        return len(self.columns) - len(self.users)


def user_design(data: pd.DataFrame, *, user: str = "id", covariates: Sequence[str] = ("display",),
                users: Sequence | pd.Index | None = None) -> UserDesign:
    """Build the sparse one-hot design of the fixed-effect competitors.

    Each row gets its covariate values and a single 1 in its user's column, in a CSR matrix
    (a dense rows x users matrix would hold 10,000 x 10,000 numbers for 10,000 users; this
    holds two per row).

    Parameters
    ----------
    data : pandas.DataFrame
        Not modified.
    user : str
        The user column.
    covariates : sequence of str
        Numeric columns to put first (the post: ``display``).
    users : sequence, optional
        The users to make columns for, in order: pass the training design's ``users`` to
        encode new data the same way. A row whose user is not among them gets no user
        indicator (``unseen``). Defaults to the users in ``data`` (categories in order for a
        categorical column, sorted otherwise).

    Returns
    -------
    UserDesign
    """
    covariates = list(covariates)
    _require_columns(data, [user, *covariates])
    col = data[user]
    if users is None:
        if isinstance(col.dtype, pd.CategoricalDtype):
            users = col.cat.remove_unused_categories().cat.categories
        else:
            users = pd.Index(pd.unique(col.dropna())).sort_values()
    users = pd.Index(users)
    if users.has_duplicates:
        raise ValueError("`users` has duplicates: each user must have one column")
    if col.isna().any():
        raise ValueError(f"column `{user}` has missing values")
    values = col.astype(object) if isinstance(col.dtype, pd.CategoricalDtype) else col
    codes = users.get_indexer(values)
    unseen = codes < 0
    n = len(data)
    cov = np.empty((n, len(covariates)))
    for j, name in enumerate(covariates):
        try:
            cov[:, j] = pd.to_numeric(data[name]).to_numpy(dtype=float)
        except (TypeError, ValueError) as err:
            raise ValueError(f"covariate column `{name}` must be numeric") from err
    if not np.all(np.isfinite(cov)):
        raise ValueError(f"covariate columns {covariates} must be finite")
    seen = np.flatnonzero(~unseen)
    Zu = sp.csr_matrix((np.ones(seen.size), (seen, codes[seen])), shape=(n, len(users)))
    X = sp.hstack([sp.csr_matrix(cov), Zu], format="csr")
    names = covariates + [f"{user}[{u}]" for u in users]
    return UserDesign(X, names, users, unseen)


# --------------------------------------------------------------------------------------------
# The competitors
# --------------------------------------------------------------------------------------------

def _check_click_data(data: pd.DataFrame, clicks: str, expos: str, user: str,
                      covariates: Sequence[str]) -> None:
    _require_columns(data, [clicks, expos, user, *covariates])
    c = data[clicks].to_numpy(dtype=float)
    n = data[expos].to_numpy(dtype=float)
    if np.any(~np.isfinite(n)) or np.any(n <= 0):
        raise ValueError(f"column `{expos}` must be positive in every row")
    if np.any(~np.isfinite(c)) or np.any(c < 0) or np.any(c > n):
        raise ValueError(f"column `{clicks}` must be between 0 and `{expos}` in every row")


@dataclass
class FittedModel:
    """A fitted competitor: its estimates, its fit time, and a predictor that never refits.

    Attributes
    ----------
    name : str
    display_effect : float
        The estimated effect of the new display on the log-odds of a click.
    fit_seconds : float
        Wall time of the fit (for the penalized models: cross-validation included).
    predictor : callable
        ``predictor(newdata) -> ndarray`` of click probabilities, one per row.
    model : object
        The underlying fitted object (a glum estimator, a statsmodels result, a GlmerResult).
    info : dict
        Extras: the chosen penalty, standard errors, warnings raised while fitting...
    """

    name: str
    display_effect: float
    fit_seconds: float
    predictor: Callable[[pd.DataFrame], np.ndarray] = field(repr=False)
    model: Any = field(default=None, repr=False)
    info: dict = field(default_factory=dict)

    def predict(self, newdata: pd.DataFrame) -> np.ndarray:
        """Predicted click probability of every row of ``newdata`` (no refitting)."""
        return np.asarray(self.predictor(newdata), dtype=float)


class Competitor(Protocol):
    """Anything with a ``name`` and a ``fit(data) -> FittedModel``."""

    name: str

    def fit(self, data: pd.DataFrame) -> FittedModel:
        """Fit the model to click data and return it, ready to predict."""
        ...


def _one_thread():
    """Limit BLAS and OpenMP (glum's tabmat) to one thread while fitting.

    The problems here are small and moderate; on a busy 2-core machine, threads waiting for each
    other made glum's fits ten times slower than one thread (measured on 300 users).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def _messages(caught: list) -> list[str]:
    return sorted({f"{w.category.__name__}: {str(w.message).splitlines()[0]}" for w in caught})


@dataclass
class GlumPenalized:
    """LASSO or ridge logistic regression, penalty chosen by K-fold cross-validation (glum).

    The response is each row's click rate with ``sample_weight`` = exposures, which is how glum
    takes binomial counts (the same log-likelihood as ``clicks`` successes in ``expos`` trials,
    up to a constant). The design is :func:`user_design`: the covariates and one column per user
    (no reference level: with a penalty every user column is identified). The intercept is not
    penalized; the display effect and the users are.

    Parameters
    ----------
    penalty : {"lasso", "ridge"}
        ``l1_ratio`` 1 or 0.
    folds : int
        Folds of the cross-validation (rows are split, as ``cv.glmnet`` does).
    standardize : bool
        Scale every column to unit variance before penalizing, as glmnet does by default (the
        post used glmnet). This is what shrinks the display effect so hard: a user column is
        almost always 0, its SD is tiny, so its coefficient is cheap to grow, while the display
        column's SD is near 1/2 and its coefficient pays the full price.
    n_alphas, min_alpha_ratio : int, float
        The penalty grid, from the smallest penalty that zeros every coefficient (lasso) down
        to ``min_alpha_ratio`` times it: 10 values down to 0.05 (LASSO), 12 down to 1e-4
        (ridge). Coarser than glmnet's 100 values down to 1e-4, for speed; the chosen penalty
        sits inside these grids on the post's data and in the book's sweep
        (``info["alpha_at_grid_edge"]`` says when it does not).
    seed : int
        Seeds the fold assignment.
    solver : str, optional
        glum's solver: ``"irls-cd"`` for the LASSO (the only one that takes an L1 penalty),
        ``"lbfgs"`` for ridge. The Newton solvers build a dense columns x columns Hessian at
        every step, whose cost grows with the square of the number of users; L-BFGS never forms
        it (on the post's 1,000 users, ridge by L-BFGS takes a fraction of a second, by Newton
        about twenty).
    clicks, expos, user, covariates : str
        Column names.
    """

    penalty: str = "lasso"
    folds: int = 10
    standardize: bool = True
    n_alphas: int | None = None
    min_alpha_ratio: float | None = None
    seed: int = 0
    solver: str | None = None
    clicks: str = "clicks"
    expos: str = "expos"
    user: str = "id"
    covariates: Sequence[str] = ("display",)

    def __post_init__(self) -> None:
        if self.penalty not in ("lasso", "ridge"):
            raise ValueError(f"`penalty` must be 'lasso' or 'ridge', got {self.penalty!r}")
        if isinstance(self.folds, bool) or not isinstance(self.folds, int) or self.folds < 2:
            raise ValueError(f"`folds` must be an integer >= 2, got {self.folds!r}")
        lasso = self.penalty == "lasso"
        if self.n_alphas is None:
            self.n_alphas = 10 if lasso else 12
        if self.min_alpha_ratio is None:
            # The LASSO's smallest penalties are where its solver is slowest (hundreds of active
            # users, near-separated); the chosen penalty lies well above them at 100 to 3,000
            # users. Ridge's largest glum alpha is a heuristic far above the useful range.
            self.min_alpha_ratio = 5e-2 if lasso else 1e-4
        if self.solver is None:
            self.solver = "irls-cd" if lasso else "lbfgs"

    @property
    def name(self) -> str:
        """``"LASSO"`` or ``"ridge"``, after the penalty."""
        return "LASSO" if self.penalty == "lasso" else "ridge"

    def fit(self, data: pd.DataFrame) -> FittedModel:
        """Fit to click data (one row per user and display) and return the fitted model.

        Raises ``ValueError`` naming the column if the clicks, exposures, user or covariate
        columns are missing or invalid.
        """
        from glum import GeneralizedLinearRegressorCV
        from sklearn.model_selection import KFold

        _check_click_data(data, self.clicks, self.expos, self.user, self.covariates)
        design = user_design(data, user=self.user, covariates=self.covariates)
        n = data[self.expos].to_numpy(dtype=float)
        y = data[self.clicks].to_numpy(dtype=float) / n
        solver = self.solver
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, _one_thread():
            warnings.simplefilter("always")
            est = GeneralizedLinearRegressorCV(
                family="binomial", l1_ratio=1.0 if self.penalty == "lasso" else 0.0,
                n_alphas=self.n_alphas, min_alpha_ratio=self.min_alpha_ratio,
                scale_predictors=self.standardize, solver=solver,
                cv=KFold(self.folds, shuffle=True, random_state=self.seed),
            )
            est.fit(design.matrix, y, sample_weight=n)
        seconds = time.perf_counter() - start
        alphas = np.asarray(est.alphas_)
        users, cov = design.users, list(self.covariates)

        def predictor(newdata: pd.DataFrame) -> np.ndarray:
            new = user_design(newdata, user=self.user, covariates=cov, users=users)
            return np.asarray(est.predict(new.matrix))

        return FittedModel(
            self.name, float(est.coef_[cov.index("display")]) if "display" in cov else np.nan,
            seconds, predictor, est,
            info={"alpha": float(est.alpha_), "alpha_at_grid_edge":
                  bool(np.isclose(est.alpha_, alphas.min()) or np.isclose(est.alpha_, alphas.max())),
                  "intercept": float(est.intercept_), "n_columns": design.matrix.shape[1],
                  "solver": solver,
                  "warnings": _messages(caught)},
        )


@dataclass
class GlumGLM:
    """Unpenalized logistic GLM with a coefficient per user (glum, ``alpha=0``).

    Like R's ``glm(clicks/expos ~ display + id - 1, weights = expos)``: no intercept, one
    log-odds level per user. A user who never clicked has no finite estimate (its coefficient
    runs off to minus infinity); the coordinate-descent solver stops where the predicted rate is
    negligibly small, as R's ``glm`` does after its iteration limit. Users not seen in the fit
    have no coefficient, so predicting for them raises.
    """

    clicks: str = "clicks"
    expos: str = "expos"
    user: str = "id"
    covariates: Sequence[str] = ("display",)
    max_iter: int = 100

    name: str = "GLM"

    def fit(self, data: pd.DataFrame) -> FittedModel:
        """Fit to click data (one row per user and display) and return the fitted model.

        Raises ``ValueError`` naming the column if the clicks, exposures, user or covariate
        columns are missing or invalid.
        """
        from glum import GeneralizedLinearRegressor

        _check_click_data(data, self.clicks, self.expos, self.user, self.covariates)
        design = user_design(data, user=self.user, covariates=self.covariates)
        n = data[self.expos].to_numpy(dtype=float)
        y = data[self.clicks].to_numpy(dtype=float) / n
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, _one_thread():
            warnings.simplefilter("always")
            # irls-cd: the Newton system is singular for never-clicking users (separation),
            # which a direct solve refuses and coordinate descent does not mind.
            est = GeneralizedLinearRegressor(alpha=0.0, family="binomial", fit_intercept=False,
                                             solver="irls-cd", max_iter=self.max_iter)
            est.fit(design.matrix, y, sample_weight=n)
        seconds = time.perf_counter() - start
        users, cov = design.users, list(self.covariates)

        def predictor(newdata: pd.DataFrame) -> np.ndarray:
            new = user_design(newdata, user=self.user, covariates=cov, users=users)
            if new.unseen.any():
                missing = pd.unique(newdata.loc[new.unseen, self.user].astype(object))[:5]
                raise ValueError(f"the GLM has no coefficient for users not in the fit "
                                 f"(column `{self.user}`: {list(missing)}...)")
            return np.asarray(est.predict(new.matrix))

        return FittedModel(self.name, float(est.coef_[cov.index("display")]), seconds, predictor,
                           est, info={"n_iter": int(est.n_iter_), "warnings": _messages(caught)})


@dataclass
class StatsmodelsGLM:
    """The same unpenalized GLM through statsmodels, which also computes standard errors.

    statsmodels needs a dense design (rows x users), so this is for the post's 1,000 users,
    not for the sweep: the point is what standard errors, and the dense algebra under them,
    cost. ``max_iter`` is R's ``glm`` default (25): the never-clicking users' coefficients
    would otherwise keep creeping toward minus infinity.
    """

    clicks: str = "clicks"
    expos: str = "expos"
    user: str = "id"
    covariates: Sequence[str] = ("display",)
    max_users: int = 5000
    max_iter: int = 25

    name: str = "GLM (statsmodels)"

    def fit(self, data: pd.DataFrame) -> FittedModel:
        """Fit to click data (one row per user and display) and return the fitted model.

        Raises ``ValueError`` naming the column if the clicks, exposures, user or covariate
        columns are missing or invalid.
        """
        import statsmodels.api as sm

        _check_click_data(data, self.clicks, self.expos, self.user, self.covariates)
        design = user_design(data, user=self.user, covariates=self.covariates)
        if len(design.users) > self.max_users:
            raise ValueError(f"{len(design.users)} users: a dense design would be too large; "
                             f"raise `max_users` ({self.max_users}) if you mean it")
        n = data[self.expos].to_numpy(dtype=float)
        y = data[self.clicks].to_numpy(dtype=float) / n
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, _one_thread():
            warnings.simplefilter("always")
            res = sm.GLM(y, design.matrix.toarray(), family=sm.families.Binomial(),
                         var_weights=n).fit(maxiter=self.max_iter)
        seconds = time.perf_counter() - start
        users, cov = design.users, list(self.covariates)
        j = cov.index("display")

        def predictor(newdata: pd.DataFrame) -> np.ndarray:
            new = user_design(newdata, user=self.user, covariates=cov, users=users)
            if new.unseen.any():
                raise ValueError("the GLM has no coefficient for users not in the fit")
            return expit(new.matrix @ np.asarray(res.params))

        return FittedModel(self.name, float(res.params[j]), seconds, predictor, res,
                           info={"display_se": float(res.bse[j]), "warnings": _messages(caught)})


@dataclass
class GLMM:
    """The mixed model ``clicks/expos ~ display + (1 | id)``, fitted with :func:`mixedmodels.glmer`.

    Predictions for known users use their conditional modes; for users not in the fit,
    ``population_average=True`` (the default) integrates over the random effect, the click rate
    of a random new user, not ``expit(intercept)``, the rate of a user at effect 0.
    """

    nagq: int | str = "auto"
    population_average: bool = True
    clicks: str = "clicks"
    expos: str = "expos"
    user: str = "id"
    covariates: Sequence[str] = ("display",)

    name: str = "GLMM"

    def fit(self, data: pd.DataFrame) -> FittedModel:
        """Fit to click data (one row per user and display) and return the fitted model.

        Raises ``ValueError`` naming the column if the clicks, exposures, user or covariate
        columns are missing or invalid.
        """
        from .glmm import glmer

        _check_click_data(data, self.clicks, self.expos, self.user, self.covariates)
        rhs = " + ".join(self.covariates) if self.covariates else "1"
        formula = f"{self.clicks}/{self.expos} ~ {rhs} + (1 | {self.user})"
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught, _one_thread():
            warnings.simplefilter("always")
            res = glmer(formula, data, family="binomial", weights=self.expos, nagq=self.nagq)
        seconds = time.perf_counter() - start
        known = set(pd.Index(data[self.user].astype(object)).unique())
        pop = self.population_average

        def predictor(newdata: pd.DataFrame) -> np.ndarray:
            # New users get the population-averaged rate (predict's rule for new levels on the
            # response scale) or, without ``population_average``, the rate at effect 0.
            p = np.array(res.predict(newdata, type="response", allow_new_levels=True), dtype=float)
            new = ~newdata[self.user].astype(object).isin(known).to_numpy()
            if not pop and new.any():
                p[new] = np.asarray(res.predict(newdata.loc[new], type="response",
                                                include_random=False), dtype=float)
            return p

        fixef = res.fixef
        return FittedModel(self.name, float(fixef["display"]) if "display" in fixef else np.nan,
                           seconds, predictor, res,
                           info={"nagq": res.nagq, "intercept": float(fixef["(Intercept)"]),
                                 "user_sd": float(np.asarray(res.theta)[0]),
                                 "warnings": _messages(caught)})


def default_competitors(seed: int = 0, nagq: int | str = "auto") -> list[Competitor]:
    """The race's four models: LASSO, ridge, GLM (glum) and GLMM, with the book's settings."""
    return [GlumPenalized("lasso", seed=seed), GlumPenalized("ridge", seed=seed), GlumGLM(),
            GLMM(nagq=nagq)]


# --------------------------------------------------------------------------------------------
# Simulate and score
# --------------------------------------------------------------------------------------------

def future_data(effects: np.ndarray, n_sets: int, *, seed: int | np.random.Generator,
                mu: float = POST_SETTINGS["mu"], tau: float = POST_SETTINGS["tau"],
                sig_a: float = POST_SETTINGS["sig_a"],
                pois_mean: float = POST_SETTINGS["pois_mean"]) -> Iterator[pd.DataFrame]:
    """New data sets from the same users: effects fixed, display and exposures redrawn.

    Parameters
    ----------
    effects : ndarray (p,)
        The users' effects (``effects[i]`` is user ``i + 1``, as :func:`mixedmodels.make_click_data`).
    n_sets : int
    seed : int or numpy.random.Generator
    mu, tau, sig_a, pois_mean : float
        As :func:`mixedmodels.make_click_data`.

    Yields
    ------
    pandas.DataFrame
        ``clicks``, ``expos``, ``display``, ``id``.
    """
    from .datasets import make_click_data

    if isinstance(n_sets, bool) or not isinstance(n_sets, int) or n_sets < 1:
        raise ValueError(f"`n_sets` must be a positive integer, got {n_sets!r}")
    effects = np.asarray(effects, dtype=float)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    for _ in range(n_sets):
        yield make_click_data(len(effects), mu, tau, sig_a, pois_mean, effects=effects,
                              seed=rng).data


def score_models(fitted: Mapping[str, FittedModel] | Sequence[FittedModel],
                 datasets: Iterable[pd.DataFrame], *, clicks: str = "clicks",
                 expos: str = "expos") -> pd.DataFrame:
    """Score fitted models on data sets by :func:`mspe`, predicting only (never refitting).

    Parameters
    ----------
    fitted : mapping name -> FittedModel, or sequence of FittedModel
    datasets : iterable of DataFrame
        Each must have ``clicks`` and ``expos`` columns and whatever the models predict from.

    Returns
    -------
    pandas.DataFrame
        One row per data set and model: ``dataset``, ``model``, ``mspe``.
    """
    if not isinstance(fitted, Mapping):
        fitted = {m.name: m for m in fitted}
    if not fitted:
        raise ValueError("`fitted` is empty: no models to score")
    rows = []
    for k, data in enumerate(datasets):
        _require_columns(data, [clicks, expos], "datasets")
        c, n = data[clicks].to_numpy(), data[expos].to_numpy()
        for name, model in fitted.items():
            rows.append({"dataset": k, "model": name, "mspe": mspe(c, n, model.predict(data))})
    if not rows:
        raise ValueError("`datasets` is empty: nothing to score on")
    return pd.DataFrame(rows)


def _summarize(scores: pd.DataFrame, order: Sequence[str]) -> pd.DataFrame:
    g = scores.groupby("model", sort=False)["mspe"]
    out = pd.DataFrame({"mspe_mean": g.mean(), "mspe_se": g.std(ddof=1) / np.sqrt(g.count()),
                        "n_sets": g.count()})
    return out.reindex(order)


@dataclass
class RaceResult:
    """What :func:`race` returns.

    Attributes
    ----------
    fitted : dict name -> FittedModel
    scores : DataFrame
        ``dataset``, ``model``, ``mspe`` for every future data set.
    summary : DataFrame
        Per model: ``display_effect``, ``fit_seconds``, ``mspe_mean``, ``mspe_se`` (the standard
        error of the mean over the future data sets), ``n_sets``.
    """

    fitted: dict[str, FittedModel]
    scores: pd.DataFrame
    summary: pd.DataFrame


def race(data: pd.DataFrame, effects: np.ndarray, *, competitors: Sequence[Competitor] | None = None,
         n_future: int = 50, seed: int = 0, settings: Mapping[str, float] | None = None) -> RaceResult:
    """Fit every competitor once on ``data``, then score it on future data from the same users.

    Parameters
    ----------
    data : DataFrame
        The training data (``clicks``, ``expos``, ``display``, ``id``; users ``1..p``).
    effects : ndarray (p,)
        The users' true effects, to draw the future data from.
    competitors : sequence, optional
        Defaults to :func:`default_competitors`.
    n_future : int
        Number of future data sets.
    seed : int
        Seeds the future data (and the folds of the default competitors).
    settings : mapping, optional
        ``mu``, ``tau``, ``sig_a``, ``pois_mean`` of the simulation (the post's by default).

    Returns
    -------
    RaceResult
    """
    settings = {**POST_SETTINGS, **(settings or {})}
    competitors = default_competitors(seed) if competitors is None else list(competitors)
    fitted = {}
    for comp in competitors:
        model = comp.fit(data)
        fitted[model.name] = model
    futures = future_data(effects, n_future, seed=np.random.default_rng([seed, 1]), **settings)
    scores = score_models(fitted, futures)
    summary = _summarize(scores, list(fitted))
    summary.insert(0, "fit_seconds", [fitted[k].fit_seconds for k in summary.index])
    summary.insert(0, "display_effect", [fitted[k].display_effect for k in summary.index])
    return RaceResult(fitted, scores, summary)


def sweep(user_counts: Sequence[int], *, competitors: Callable[[int], Sequence[Competitor]] | None = None,
          n_future: int = 10, seed: int = 0, settings: Mapping[str, float] | None = None,
          progress: bool = True) -> pd.DataFrame:
    """The race at several numbers of users: new users each time, every model fitted once.

    Parameters
    ----------
    user_counts : sequence of int
    competitors : callable, optional
        ``competitors(seed) -> list of competitors`` (fresh ones for every count); defaults to
        :func:`default_competitors`.
    n_future : int
        Future data sets per count.
    seed : int
    settings : mapping, optional
        As :func:`race`.
    progress : bool
        Show a tqdm progress bar (one step per model fit).

    Returns
    -------
    pandas.DataFrame
        One row per count and model: ``users``, ``model``, ``display_effect``, ``fit_seconds``,
        ``mspe_mean``, ``mspe_se``, ``n_sets``.
    """
    from tqdm.auto import tqdm

    from .datasets import make_click_data

    counts = [int(c) for c in user_counts]
    if not counts or min(counts) < 2:
        raise ValueError(f"`user_counts` must be numbers of users >= 2, got {user_counts!r}")
    make = default_competitors if competitors is None else competitors
    settings = {**POST_SETTINGS, **(settings or {})}
    rows = []
    n_models = len(make(seed))
    with tqdm(total=len(counts) * n_models, desc="sweep", disable=not progress) as bar:
        for k, p in enumerate(counts):
            rng = np.random.default_rng([seed, k, p])
            data, effects, _ = make_click_data(p, seed=rng, **settings)
            fitted = {}
            for comp in make(seed + k):
                bar.set_postfix_str(f"{p} users, {comp.name}")
                model = comp.fit(data)
                fitted[model.name] = model
                bar.update()
            scores = score_models(fitted, future_data(effects, n_future, seed=rng, **settings))
            summary = _summarize(scores, list(fitted))
            for name, row in summary.iterrows():
                rows.append({"users": p, "model": name,
                             "display_effect": fitted[name].display_effect,
                             "fit_seconds": fitted[name].fit_seconds,
                             "mspe_mean": row["mspe_mean"], "mspe_se": row["mspe_se"],
                             "n_sets": int(row["n_sets"])})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------
# The post's users
# --------------------------------------------------------------------------------------------

def _r_mersenne_twister(seed: int) -> np.random.MT19937:
    """numpy's MT19937 in the state R's ``set.seed(seed)`` leaves its default generator in."""
    s = np.uint32(seed % 2**32)
    key = np.empty(625, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for _ in range(50):  # R's initial scrambling (RNG.c, RNG_Init)
            s = np.uint32(69069) * s + np.uint32(1)
        for j in range(625):
            s = np.uint32(69069) * s + np.uint32(1)
            key[j] = s
    bits = np.random.MT19937()
    # key[0] is R's position slot (dummy[0]); 624 makes the first draw regenerate the block.
    bits.state = {"bit_generator": "MT19937", "state": {"key": key[1:], "pos": 624}}
    return bits


def _r_rnorm(n: int, sd: float, seed: int) -> np.ndarray:
    """R's ``set.seed(seed); rnorm(n, 0, sd)`` (Mersenne-Twister, inversion)."""
    u = _r_mersenne_twister(seed).random_raw(2 * n).astype(float) * 2.3283064365386963e-10
    u = u.reshape(n, 2)
    big = 134217728.0  # R's norm_rand: two uniforms make one of 2^27 * 2^32 resolution
    return sd * ndtri((np.floor(big * u[:, 0]) + u[:, 1]) / big)


def post_user_effects() -> np.ndarray:
    """The true effects of the 1,000 users in the post's data (:func:`mixedmodels.load_ctr`).

    The post's data was made by ``set.seed(1); make_click_data(p = 1e3, ..., sig_a = 5)``, whose
    first act is ``effects <- rnorm(p, 0, sig_a)``. R's default generator (Mersenne-Twister,
    normals by inversion) is reproduced here exactly, so future data can be drawn for the
    post's own users. ``effects[i]`` is user ``i + 1``.

    Returns
    -------
    ndarray (1000,)

    Examples
    --------
    >>> round(float(post_user_effects()[0]), 6)   # R: set.seed(1); 5 * rnorm(1)
    -3.132269
    """
    return _r_rnorm(1000, 5.0, seed=1)
