"""Response families for the GLMM: the few functions of the linear predictor the math needs.

A family here knows, for each observation with linear predictor ``eta``, its exact
log-probability (with every constant: the binomial coefficient, ``-log y!``) and the first
three derivatives of that log-probability in ``eta``. Laplace needs two (the conditional mode
and the curvature); the analytic gradient of adaptive quadrature needs the third, because the
quadrature nodes move with the parameters.

Links: logit (canonical), probit and cloglog for the binomial; log (canonical) for the Poisson.
For a canonical link the observed and the expected (Fisher) information in ``eta`` agree; for
probit and cloglog they do not, and lme4 scales its Laplace approximation and its quadrature
nodes by the *expected* information (its PIRLS weights ``m mu'(eta)^2 / V(mu)``), while the
conditional mode is the same either way. :meth:`Family.info_derivs` gives that weight (negated,
like ``d2``) and its derivative, so that the kernels can scale the same way and agree with lme4
(with many quadrature points the scale no longer matters: the integral is exact either way).

Conventions: ``y`` is the response on the mean scale (a proportion for the binomial), ``m``
the prior weight (the number of trials for the binomial). The log-likelihood of a binomial row
is ``m * (y * log(mu) + (1 - y) * log(1 - mu)) + c(y, m)``, for the logit
``m * (y * eta - b(eta)) + c(y, m)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from scipy.special import erfcx, expit, gammaln, log_ndtr, ndtr, ndtri

__all__ = ["Family", "Binomial", "Poisson", "binomial", "poisson", "get_family",
           "BINOMIAL_LINKS", "POISSON_LINKS", "Gamma", "InverseGaussian", "NegativeBinomial",
           "inverse_gaussian", "negative_binomial", "GAMMA_LINKS", "INVERSE_GAUSSIAN_LINKS",
           "NB_LINKS"]

#: Links implemented per family; the first is the default (canonical) one.
BINOMIAL_LINKS = ("logit", "probit", "cloglog")
POISSON_LINKS = ("log",)
GAMMA_LINKS = ("log", "inverse")
INVERSE_GAUSSIAN_LINKS = ("1/mu^2",)
NB_LINKS = ("log",)

_SQRT_2_OVER_PI = np.sqrt(2.0 / np.pi)
_SQRT_HALF = np.sqrt(0.5)
#: Above this eta cloglog's mu is 1, and log(mu) and its derivatives 0, to double precision
#: (exp(-exp(40)) underflows): evaluating that part at min(eta, 40) keeps exp(eta) from
#: overflowing into inf * 0 = NaN.
_CLOGLOG_EMAX = 40.0
#: Below this eta cloglog's log(mu) is eta - exp(eta)/2 to double precision (further down
#: exp(eta) underflows to 0, where log(-expm1(-w)) would be log(0)).
_CLOGLOG_EMIN = -30.0


@dataclass(frozen=True)
class Family:
    """Base class: a distribution and its link (see the module docstring)."""

    name: str = "family"
    link: str = "identity"

    @property
    def canonical(self) -> bool:
        """Whether the link is canonical (observed information = expected information)."""
        return True

    def info_derivs(self, eta: np.ndarray, y: np.ndarray, m: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Minus the expected (Fisher) information of each row in ``eta``, and its derivative.

        ``e2 = -m mu'(eta)^2 / V(mu)`` (lme4's PIRLS weight, negated to mirror ``d2``) and
        ``e3 = d e2 / d eta``. For a canonical link these are ``d2`` and ``d3``.
        """
        return self.derivs(eta, y, m, order=3)[1:]

    # -- to override -------------------------------------------------------------------
    def linkinv(self, eta: np.ndarray) -> np.ndarray:
        """Mean ``mu`` from the linear predictor ``eta``."""
        raise NotImplementedError

    def linkfun(self, mu: np.ndarray) -> np.ndarray:
        """Linear predictor from the mean."""
        raise NotImplementedError

    def cumulant(self, eta: np.ndarray) -> np.ndarray:
        """``b(eta)``, the cumulant function of the canonical form."""
        raise NotImplementedError

    def variance(self, mu: np.ndarray) -> np.ndarray:
        """Variance function ``V(mu)`` (per unit prior weight)."""
        raise NotImplementedError

    def log_const(self, y: np.ndarray, m: np.ndarray) -> np.ndarray:
        """``c(y, m)``: the part of the log-probability free of ``eta``."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def loglik_rows(self, eta: np.ndarray, y: np.ndarray, m: np.ndarray,
                    const: np.ndarray | None = None) -> np.ndarray:
        """Exact log-probability of each row (broadcasts over trailing node axes).

        ``const`` is ``log_const(y, m)`` when precomputed, which saves a ``gammaln`` pass
        per objective evaluation.
        """
        c = self.log_const(y, m) if const is None else const
        return m * (y * eta - self.cumulant(eta)) + c

    def loglik_d1(self, eta: np.ndarray, y: np.ndarray, m: np.ndarray, const: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Row log-probabilities and first derivatives in ``eta`` (one pass where possible)."""
        return self.loglik_rows(eta, y, m, const), self.derivs(eta, y, m, order=2)[0]

    def derivs(self, eta: np.ndarray, y: np.ndarray, m: np.ndarray, order: int = 2
               ) -> tuple[np.ndarray, ...]:
        """Derivatives of the row log-probability in ``eta``: ``(d1, d2[, d3])``.

        For a canonical link ``d1 = m (y - mu)``, ``d2 = -m V(mu)``, ``d3 = -m V'(mu) V(mu)``.
        """
        mu = self.linkinv(eta)
        v = self.variance(mu)
        d1 = m * (y - mu)
        d2 = -m * v
        if order < 3:
            return d1, d2
        return d1, d2, -m * v * self.dvariance(mu)

    def dvariance(self, mu: np.ndarray) -> np.ndarray:
        """``dV/dmu``."""
        raise NotImplementedError

    def sample(self, mu: np.ndarray, m: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw responses with means ``mu`` and prior weights ``m`` (R's ``simulate``).

        Returns values on the scale of ``y`` (a proportion for the binomial).
        """
        raise NotImplementedError(f"simulation from the {self.name} family is not implemented")

    def pearson_residuals(self, y: np.ndarray, mu: np.ndarray, m: np.ndarray) -> np.ndarray:
        """``(y - mu) / sqrt(V(mu) / m)``, the residuals lme4's summary scales."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (y - mu) * np.sqrt(m / self.variance(mu))

    def __str__(self) -> str:
        return f"{self.name}  ( {self.link} )"


@dataclass(frozen=True)
class Binomial(Family):
    """Binomial; ``y`` is the proportion of successes out of ``m`` trials.

    Parameters
    ----------
    link : {"logit", "probit", "cloglog"}
        ``logit``: ``mu = 1 / (1 + exp(-eta))`` (canonical, the default); ``probit``:
        ``mu = Phi(eta)``; ``cloglog``: ``mu = 1 - exp(-exp(eta))``.

    Notes
    -----
    The logit methods are the hand-tuned fast path of the kernel's innermost loop and are kept
    as they were; the other links branch off at the top of each method. Every link's row
    log-likelihood is concave in ``eta`` (``log Phi`` and ``log(1 - exp(-exp(eta)))`` are
    concave), which the conditional-mode iteration relies on.
    """

    name: str = "binomial"
    link: str = "logit"

    def __post_init__(self) -> None:
        _check_link(self.name, self.link)

    @property
    def canonical(self) -> bool:
        return self.link == "logit"

    def linkinv(self, eta):
        if self.link == "probit":
            return ndtr(eta)
        if self.link == "cloglog":
            return -np.expm1(-np.exp(np.minimum(eta, _CLOGLOG_EMAX)))
        return expit(eta)

    def linkfun(self, mu):
        mu = np.asarray(mu, dtype=float)
        if self.link == "probit":
            return ndtri(mu)
        with np.errstate(divide="ignore"):
            if self.link == "cloglog":
                return np.log(-np.log1p(-mu))
            return np.log(mu) - np.log1p(-mu)

    def loglik_rows(self, eta, y, m, const=None):
        if self.link == "logit":
            return super().loglik_rows(eta, y, m, const)
        c = self.log_const(y, m) if const is None else const
        if self.link == "probit":
            eta = np.asarray(eta, dtype=float)
            return m * (y * log_ndtr(eta) + (1.0 - y) * log_ndtr(-eta)) + c
        return m * (y * _cloglog_log_mu(eta) - _cloglog_fail_w(eta, y)) + c

    def variance(self, mu):
        return mu * (1.0 - mu)

    def sample(self, mu, m, rng):
        # m successes out of round(m) trials, returned as a proportion (rows with no trials: 0).
        n = np.round(np.asarray(m, dtype=float)).astype(np.int64)
        k = rng.binomial(n, np.clip(mu, 0.0, 1.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, k / np.maximum(n, 1), 0.0)

    def dvariance(self, mu):
        return 1.0 - 2.0 * mu

    def log_const(self, y, m):
        # R's dbinom rounds the counts; so do we (and warn elsewhere when they aren't whole).
        n = np.round(m)
        k = np.round(m * y)
        return gammaln(n + 1.0) - gammaln(k + 1.0) - gammaln(n - k + 1.0)

    def loglik_d1(self, eta, y, m, const):
        """Row log-probabilities and first derivatives (few passes, in place: this is the
        innermost loop over rows x quadrature nodes)."""
        if self.link != "logit":
            return self.loglik_rows(eta, y, m, const), self.derivs(eta, y, m, order=1)[0]
        e = np.abs(eta)
        np.negative(e, out=e)
        np.exp(e, out=e)                          # exp(-|eta|), never overflows
        ll = np.log1p(e)
        ll += np.maximum(eta, 0.0)                # log(1 + e^eta), stably
        np.subtract(np.multiply(y, eta), ll, out=ll)
        ll *= m
        ll += const
        # mu = expit(eta) from the same exponential
        inv = np.add(e, 1.0)
        np.reciprocal(inv, out=inv)
        e *= inv
        mu = np.where(eta >= 0, inv, e)
        np.subtract(y, mu, out=mu)
        mu *= m
        return ll, mu

    def cumulant(self, eta):
        if self.link != "logit":
            raise NotImplementedError(f"the {self.link} link is not canonical: no cumulant form")
        eta = np.asarray(eta, dtype=float)
        return np.maximum(eta, 0.0) + np.log1p(np.exp(-np.abs(eta)))

    def derivs(self, eta, y, m, order=2):
        if self.link == "probit":
            return _probit_derivs(np.asarray(eta, dtype=float), y, m, order)
        if self.link == "cloglog":
            return _cloglog_derivs(np.asarray(eta, dtype=float), y, m, order)
        # expit via one exp (scipy's expit and numpy's logaddexp are several times slower).
        with np.errstate(over="ignore"):
            mu = 1.0 / (1.0 + np.exp(-eta))
        v = mu * (1.0 - mu)
        d1 = m * (y - mu)
        d2 = -m * v
        if order < 3:
            return d1, d2
        return d1, d2, d2 * (1.0 - 2.0 * mu)

    def info_derivs(self, eta, y, m):
        if self.link == "probit":
            # W = m phi^2 / (Phi (1 - Phi)) = m r(eta) r(-eta); with r'(x) = -r (x + r),
            # dW/deta = W (r(-eta) - r(eta) - 2 eta).
            eta = np.asarray(eta, dtype=float)
            rp, rn = _mills(eta), _mills(-eta)
            w = m * rp * rn
            return -w, -w * (rn - rp - 2.0 * eta)
        if self.link == "cloglog":
            # W = m mu'^2 / V = m w^2 / expm1(w) = m w q, dW/deta = m w q (1 + f - w).
            w, q, f = _cloglog_wqf(np.asarray(eta, dtype=float))
            wq = m * w * q
            return -wq, -wq * (1.0 + f - w)
        return super().info_derivs(eta, y, m)


# -- probit and cloglog: log(mu) = A(eta), log(1 - mu) = B(eta), so the row log-likelihood is
# m (y A + (1 - y) B) + c and its derivatives are those of A and B, weighted the same way.


def _mills(x: np.ndarray) -> np.ndarray:
    """``r(x) = phi(x) / Phi(x)`` = d log Phi(x) / dx, without underflow for x << 0.

    ``Phi(x) = erfcx(-x / sqrt 2) exp(-x^2 / 2) / 2`` cancels ``phi``'s exponential; for
    x >> 0 ``erfcx`` overflows to inf and r = 0, as it should.
    """
    with np.errstate(over="ignore"):
        return _SQRT_2_OVER_PI / erfcx(-_SQRT_HALF * x)


def _probit_derivs(eta: np.ndarray, y, m, order: int) -> tuple[np.ndarray, ...]:
    """``d^k/deta^k`` of ``m (y log Phi(eta) + (1 - y) log Phi(-eta))``, k = 1..order.

    With ``A(x) = log Phi(x)`` and ``r = A'``: ``A'' = -r (x + r)`` and
    ``A''' = r ((x + r)(x + 2 r) - 1)``; ``log(1 - Phi(eta)) = A(-eta)``.
    """
    rp, rn = _mills(eta), _mills(-eta)
    d1 = m * (y * rp - (1.0 - y) * rn)
    if order < 2:
        return (d1,)
    sp_, sn = eta + rp, rn - eta                  # x + r(x) at x = eta and at x = -eta
    d2 = -m * (y * rp * sp_ + (1.0 - y) * rn * sn)
    if order < 3:
        return d1, d2
    a3p = rp * (sp_ * (eta + 2.0 * rp) - 1.0)
    a3n = rn * (sn * (2.0 * rn - eta) - 1.0)
    return d1, d2, m * (y * a3p - (1.0 - y) * a3n)


def _cloglog_wqf(eta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``w = exp(eta)``, ``q = w / expm1(w)`` (= d log mu / d eta) and ``f = 1 - q``, stably.

    Evaluated at ``min(eta, 40)``, where ``q`` and ``w q`` are already 0 to double precision;
    ``f`` by its series where ``1 - q`` would cancel (w < 0.01; the next term is < 1e-20
    relative).
    """
    w = np.exp(np.minimum(eta, _CLOGLOG_EMAX))
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        q = np.where(w > 0.0, w / np.expm1(w), 1.0)
    f = np.where(w < 0.01, w * (0.5 - w / 12.0 + w * w * w / 720.0), 1.0 - q)
    return w, q, f


def _cloglog_log_mu(eta) -> np.ndarray:
    """``log(1 - exp(-exp(eta)))`` (= log mu), stably at both ends."""
    eta = np.asarray(eta, dtype=float)
    w = np.exp(np.minimum(eta, _CLOGLOG_EMAX))
    with np.errstate(divide="ignore"):
        return np.where(eta < _CLOGLOG_EMIN, eta - 0.5 * w, np.log(-np.expm1(-w)))


def _cloglog_fail_w(eta, y) -> np.ndarray:
    """``(1 - y) exp(eta)`` = -(1 - y) log(1 - mu), as ``exp(eta + log(1 - y))``: an all-success
    row (y = 1) gives 0, not ``0 * inf``, when ``exp(eta)`` overflows."""
    with np.errstate(divide="ignore", over="ignore"):
        return np.exp(eta + np.log1p(-np.asarray(y, dtype=float)))


def _cloglog_derivs(eta: np.ndarray, y, m, order: int) -> tuple[np.ndarray, ...]:
    """``d^k/deta^k`` of ``m (y log mu + (1 - y) log(1 - mu))`` for ``mu = 1 - exp(-e^eta)``.

    ``log(1 - mu) = -w`` (every derivative is ``-w``); ``A = log mu`` has ``A' = q``,
    ``A'' = q (f - w)`` and ``A''' = A'' (f - q - w) - w q`` (``f = 1 - q``).
    """
    w, q, f = _cloglog_wqf(eta)
    t = _cloglog_fail_w(eta, y)
    d1 = m * (y * q - t)
    if order < 2:
        return (d1,)
    a2 = q * (f - w)
    d2 = m * (y * a2 - t)
    if order < 3:
        return d1, d2
    a3 = a2 * (f - q - w) - w * q
    return d1, d2, m * (y * a3 - t)


class _LogLink:
    """The log link of the count families (Poisson, negative binomial)."""

    def linkinv(self, eta):
        return np.exp(eta)

    def linkfun(self, mu):
        with np.errstate(divide="ignore"):
            return np.log(mu)


@dataclass(frozen=True)
class Poisson(_LogLink, Family):
    """Poisson with the log link; ``y`` is the count, ``m`` an optional prior weight."""

    name: str = "poisson"
    link: str = "log"

    def __post_init__(self) -> None:
        _check_link(self.name, self.link)

    def cumulant(self, eta):
        return np.exp(eta)

    def variance(self, mu):
        return mu

    def sample(self, mu, m, rng):
        # As R's poisson()$simulate: prior weights do not enter the draw.
        return rng.poisson(mu).astype(float)

    def dvariance(self, mu):
        return np.ones_like(mu)

    def log_const(self, y, m):
        return -m * gammaln(y + 1.0)

    def loglik_d1(self, eta, y, m, const):
        mu = np.exp(eta)
        return m * (y * eta - mu) + const, m * (y - mu)

    def derivs(self, eta, y, m, order=2):
        mu = np.exp(eta)
        d1 = m * (y - mu)
        d2 = -m * mu
        if order < 3:
            return d1, d2
        return d1, d2, d2


# -- families with a dispersion parameter ---------------------------------------------------
#
# Gamma, inverse Gaussian and negative binomial (NB2) carry a dispersion parameter that the
# GLMM estimates jointly with the fixed effects and the random-effect covariance by maximum
# likelihood (as glmmTMB; lme4's Gamma uses a moment estimate, and its glmer.nb alternates).
# A family object holds one value of it (``with_dispersion`` gives another); its row
# log-density keeps every constant, which therefore depends on the dispersion, so
# ``log_const`` is 0 and ``loglik_rows`` is the whole log-density. The Laplace approximation and
# the quadrature scale use the observed information (``canonical`` is True for them in that
# sense), as glmmTMB's Laplace does; every implemented link keeps the row log-likelihood
# concave in eta, which the conditional-mode iteration relies on.

#: Below this eta the inverse links' log(eta) and sqrt(eta) are continued by their second-order
#: Taylor expansion: finite, concave and steep, so a Newton step of the mode search that lands
#: at eta <= 0 (where the density is undefined) is pulled back instead of producing NaN.
_ETA_MIN = 1e-8


def _log_barrier(eta):
    """``log(eta)`` and its first three derivatives, continued quadratically below _ETA_MIN."""
    eta = np.asarray(eta, dtype=float)
    e = np.maximum(eta, _ETA_MIN)
    d = eta - e                                  # 0 where eta >= _ETA_MIN, negative below
    f = np.log(e) + d / e - 0.5 * d * d / (e * e)
    f1 = 1.0 / e - d / (e * e)
    f2 = -1.0 / (e * e) + 0.0 * d
    f3 = np.where(d < 0, 0.0, 2.0 / (e * e * e))
    return f, f1, f2, f3


def _sqrt_barrier(eta):
    """``sqrt(eta)`` and its first three derivatives, continued quadratically below _ETA_MIN."""
    eta = np.asarray(eta, dtype=float)
    e = np.maximum(eta, _ETA_MIN)
    d = eta - e
    r = np.sqrt(e)
    f = r + 0.5 * d / r - 0.125 * d * d / (e * r)
    f1 = 0.5 / r - 0.25 * d / (e * r)
    f2 = -0.25 / (e * r) + 0.0 * d
    f3 = np.where(d < 0, 0.0, 0.375 / (e * e * r))
    return f, f1, f2, f3


@dataclass(frozen=True)
class _DispersionFamily(Family):
    """Shared behaviour of the families with a dispersion parameter."""

    #: The dispersion parameter's value (Gamma: shape; NB: theta; inverse Gaussian: phi).
    dispersion: float = 1.0

    #: Name of the dispersion parameter in results (``fit.dispersion``).
    dispersion_name = "dispersion"
    has_dispersion = True

    @property
    def canonical(self) -> bool:
        # Not "canonical link": the observed information scales Laplace and AGQ, as glmmTMB.
        return True

    def with_dispersion(self, value: float) -> "_DispersionFamily":
        """The same family and link with another dispersion value."""
        return dataclasses.replace(self, dispersion=float(value))

    def log_const(self, y, m):
        return np.zeros_like(np.asarray(y, dtype=float))

    def loglik_d1(self, eta, y, m, const):
        return self.loglik_rows(eta, y, m, const), self.derivs(eta, y, m, order=2)[0]

    def __str__(self) -> str:
        return f"{self.name}  ( {self.link} ), {self.dispersion_name} {self.dispersion:.4g}"


@dataclass(frozen=True)
class Gamma(_DispersionFamily):
    """Gamma with shape ``alpha`` (``dispersion``): mean ``mu``, variance ``mu^2 / alpha``.

    Parameters
    ----------
    link : {"log", "inverse"}
        ``log`` (``mu = exp(eta)``) or the canonical ``inverse`` (``mu = 1 / eta``, which
        needs ``eta > 0``).
    dispersion : float
        The shape ``alpha`` (glmmTMB's ``sigma`` is ``1 / sqrt(alpha)``, the coefficient of
        variation).

    Notes
    -----
    Row log-density: ``m (alpha log(alpha y / mu) - alpha y / mu - log y - lgamma(alpha))``.
    """

    name: str = "Gamma"
    link: str = "log"
    dispersion: float = 1.0
    dispersion_name = "shape"

    def __post_init__(self) -> None:
        _check_link(self.name, self.link)

    def linkinv(self, eta):
        if self.link == "inverse":
            return 1.0 / np.asarray(eta, dtype=float)
        return np.exp(eta)

    def linkfun(self, mu):
        mu = np.asarray(mu, dtype=float)
        return 1.0 / mu if self.link == "inverse" else np.log(mu)

    def variance(self, mu):
        return np.asarray(mu, dtype=float) ** 2 / self.dispersion

    def _parts(self, eta):
        """``log mu`` and ``1 / mu`` (with their eta-derivatives)."""
        if self.link == "inverse":
            lg, l1, l2, l3 = _log_barrier(eta)     # log(1/mu) = log(eta)
            return -lg, -l1, -l2, -l3, np.asarray(eta, float), np.ones_like(lg), 0.0, 0.0
        eta = np.asarray(eta, dtype=float)
        inv = np.exp(-eta)
        return eta, 1.0, 0.0, 0.0, inv, -inv, inv, -inv

    def loglik_rows(self, eta, y, m, const=None):
        a = self.dispersion
        logmu, _, _, _, inv, _, _, _ = self._parts(eta)
        with np.errstate(divide="ignore"):
            ly = np.log(y)
        return m * (a * (np.log(a) + ly - logmu) - a * y * inv - ly - gammaln(a))

    def derivs(self, eta, y, m, order=2):
        a = self.dispersion
        _, l1, l2, l3, _, i1, i2, i3 = self._parts(eta)
        d1 = -m * a * (l1 + y * i1)
        d2 = -m * a * (l2 + y * i2)
        if order < 2:
            return (d1,)
        if order < 3:
            return d1, d2
        return d1, d2, -m * a * (l3 + y * i3)

    def sample(self, mu, m, rng):
        a = self.dispersion
        return rng.gamma(a, np.asarray(mu, dtype=float) / a)

    def dispersion_start(self, y, mu):
        """Moment estimate of the shape from a GLM fit's means: ``1 / mean(((y - mu)/mu)^2)``."""
        cv2 = np.mean(((y - mu) / mu) ** 2)
        return float(1.0 / cv2) if np.isfinite(cv2) and cv2 > 0 else 1.0


@dataclass(frozen=True)
class InverseGaussian(_DispersionFamily):
    """Inverse Gaussian with dispersion ``phi``: mean ``mu``, variance ``phi mu^3``.

    Parameters
    ----------
    link : {"1/mu^2"}
        The canonical link ``eta = 1 / mu^2`` (needs ``eta > 0``), R's default. (The log
        link's row log-likelihood is not concave in eta, which the mode search needs.)
    dispersion : float
        ``phi`` (``1 / lambda`` of the usual ``IG(mu, lambda)``).

    Notes
    -----
    Row log-density: ``m (-log(2 pi phi y^3) / 2 - (y - mu)^2 / (2 phi mu^2 y))``, and
    ``(y - mu)^2 / (mu^2 y) = y eta - 2 sqrt(eta) + 1 / y``.
    """

    name: str = "inverse_gaussian"
    link: str = "1/mu^2"
    dispersion: float = 1.0
    dispersion_name = "dispersion"

    def __post_init__(self) -> None:
        _check_link(self.name, self.link)

    def linkinv(self, eta):
        return 1.0 / np.sqrt(np.asarray(eta, dtype=float))

    def linkfun(self, mu):
        return 1.0 / np.asarray(mu, dtype=float) ** 2

    def variance(self, mu):
        return self.dispersion * np.asarray(mu, dtype=float) ** 3

    def loglik_rows(self, eta, y, m, const=None):
        phi = self.dispersion
        r = _sqrt_barrier(eta)[0]
        with np.errstate(divide="ignore"):
            return m * (-0.5 * np.log(2 * np.pi * phi * y ** 3)
                        - (y * np.asarray(eta, float) - 2.0 * r + 1.0 / y) / (2.0 * phi))

    def derivs(self, eta, y, m, order=2):
        phi = self.dispersion
        _, r1, r2, r3 = _sqrt_barrier(eta)
        d1 = -m * (y - 2.0 * r1) / (2.0 * phi)
        d2 = m * r2 / phi
        if order < 2:
            return (d1,)
        if order < 3:
            return d1, d2
        return d1, d2, m * r3 / phi

    def sample(self, mu, m, rng):
        return rng.wald(np.asarray(mu, dtype=float), 1.0 / self.dispersion)

    def dispersion_start(self, y, mu):
        """Moment estimate ``mean((y - mu)^2 / mu^3)``."""
        phi = np.mean((y - mu) ** 2 / mu ** 3)
        return float(phi) if np.isfinite(phi) and phi > 0 else 1.0


@dataclass(frozen=True)
class NegativeBinomial(_LogLink, _DispersionFamily):
    """Negative binomial NB2 (glmmTMB's ``nbinom2``, lme4's ``glmer.nb``): variance
    ``mu + mu^2 / theta``.

    Parameters
    ----------
    link : {"log"}
    dispersion : float
        ``theta`` (R's ``size``; glmmTMB's ``sigma``). Large theta approaches the Poisson.

    Notes
    -----
    Row log-probability: ``lgamma(y + theta) - lgamma(theta) - lgamma(y + 1)
    + theta log(theta / (mu + theta)) + y log(mu / (mu + theta))`` (times the prior weight).
    """

    name: str = "negative_binomial"
    link: str = "log"
    dispersion: float = 1.0
    dispersion_name = "theta"

    def __post_init__(self) -> None:
        _check_link(self.name, self.link)

    def variance(self, mu):
        mu = np.asarray(mu, dtype=float)
        return mu + mu * mu / self.dispersion

    def loglik_rows(self, eta, y, m, const=None):
        th = self.dispersion
        eta = np.asarray(eta, dtype=float)
        lmt = np.logaddexp(eta, np.log(th))        # log(mu + theta), no overflow
        return m * (gammaln(y + th) - gammaln(th) - gammaln(y + 1.0)
                    + th * (np.log(th) - lmt) + y * (eta - lmt))

    def derivs(self, eta, y, m, order=2):
        th = self.dispersion
        eta = np.asarray(eta, dtype=float)
        p = np.exp(eta - np.logaddexp(eta, np.log(th)))   # mu / (mu + theta)
        q = 1.0 - p                                        # theta / (mu + theta)
        d1 = m * (y - (y + th) * p)
        d2 = -m * (y + th) * p * q
        if order < 2:
            return (d1,)
        if order < 3:
            return d1, d2
        return d1, d2, -m * (y + th) * p * q * (q - p)

    def sample(self, mu, m, rng):
        th = self.dispersion
        mu = np.asarray(mu, dtype=float)
        return rng.negative_binomial(th, th / (th + mu)).astype(float)

    def dispersion_start(self, y, mu):
        """Moment estimate from ``Var = mu + mu^2 / theta`` (10 if there is no overdispersion)."""
        excess = np.sum((y - mu) ** 2 - mu)
        th = np.sum(mu ** 2) / excess if excess > 0 else 10.0
        return float(np.clip(th, 1e-3, 1e3))


def inverse_gaussian(link: str = "1/mu^2") -> InverseGaussian:
    """The inverse Gaussian family with its canonical link ``1/mu^2`` (R's ``inverse.gaussian``)."""
    return InverseGaussian(link=link)


def negative_binomial(theta: float = 1.0, link: str = "log") -> NegativeBinomial:
    """The NB2 negative binomial (glmmTMB's ``nbinom2``); ``theta`` is only a starting value in
    ``glmer``, which estimates it."""
    return NegativeBinomial(link=link, dispersion=theta)


_FAMILIES = {"binomial": Binomial, "poisson": Poisson, "gamma": Gamma,
             "inverse_gaussian": InverseGaussian, "negative_binomial": NegativeBinomial}
_ALIASES = {"inverse.gaussian": "inverse_gaussian", "inversegaussian": "inverse_gaussian",
            "nbinom2": "negative_binomial", "negbin": "negative_binomial", "nb": "negative_binomial",
            "negative.binomial": "negative_binomial"}
_LINKS = {"binomial": BINOMIAL_LINKS, "poisson": POISSON_LINKS, "Gamma": GAMMA_LINKS,
          "inverse_gaussian": INVERSE_GAUSSIAN_LINKS, "negative_binomial": NB_LINKS}


def _check_link(name: str, link) -> str:
    if not isinstance(link, str) or link not in _LINKS[name]:
        raise ValueError(f"`link`={link!r} is not implemented for the {name} family; "
                         f"available: {list(_LINKS[name])}")
    return link


def binomial(link: str = "logit") -> Binomial:
    """The binomial family with a link, as R's ``binomial(link = "probit")``.

    Parameters
    ----------
    link : {"logit", "probit", "cloglog"}

    Raises
    ------
    ValueError
        For another link, naming the available ones.
    """
    return Binomial(link=link)


def poisson(link: str = "log") -> Poisson:
    """The Poisson family (only its canonical log link is implemented)."""
    return Poisson(link=link)


def get_family(family: str | Family, link: str | None = None) -> Family:
    """Turn ``"binomial"`` / ``"poisson"`` (or a :class:`Family`) into a family object.

    Parameters
    ----------
    family : str or Family
        ``"binomial"`` or ``"poisson"`` (case-insensitive), or a family object such as
        ``binomial(link="probit")``.
    link : str, optional
        The link (default: the family's canonical one): ``"logit"``, ``"probit"`` or
        ``"cloglog"`` for the binomial, ``"log"`` for the Poisson. With a family object it may
        only repeat the object's own link.

    Raises
    ------
    ValueError
        For an unknown family or a link we do not implement (naming the alternatives), or a
        ``link`` that contradicts the family object's.
    """
    if isinstance(family, Family):
        if link is not None and link != family.link:
            raise ValueError(f"`link`={link!r} contradicts the link {family.link!r} of the "
                             f"family object {family}; give the link in one place only")
        return family
    key = str(family).lower()
    key = _ALIASES.get(key, key)
    if key in ("gaussian", "normal"):
        # lme4's glmer hands a gaussian identity-link model to lmer; say so instead.
        raise ValueError(f"`family`={family!r}: fit a gaussian (normal) model with lmer(), the "
                         "linear mixed model; glmer takes " + ", ".join(sorted(_FAMILIES)))
    if key not in _FAMILIES:
        raise ValueError(
            f"`family` must be one of {sorted(_FAMILIES)}, got {family!r}"
        )
    if link is None:
        return _FAMILIES[key]()
    return _FAMILIES[key](link=link)
