"""Response families for the GLMM: the few functions of the linear predictor the math needs.

A family here knows, for each observation with linear predictor ``eta``, its exact
log-probability (with every constant: the binomial coefficient, ``-log y!``) and the first
three derivatives of that log-probability in ``eta``. Laplace needs two (the conditional mode
and the curvature); the analytic gradient of adaptive quadrature needs the third, because the
quadrature nodes move with the parameters.

Only canonical links are implemented (logit for the binomial, log for the Poisson): there the
observed and expected information agree, so our node placement matches lme4's.

Conventions: ``y`` is the response on the mean scale (a proportion for the binomial), ``m``
the prior weight (the number of trials for the binomial). The log-likelihood of a row is
``m * (y * eta - b(eta)) + c(y, m)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, gammaln

__all__ = ["Family", "Binomial", "Poisson", "get_family"]


@dataclass(frozen=True)
class Family:
    """Base class: a distribution with a canonical link (see the module docstring)."""

    name: str = "family"
    link: str = "identity"

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

    def pearson_residuals(self, y: np.ndarray, mu: np.ndarray, m: np.ndarray) -> np.ndarray:
        """``(y - mu) / sqrt(V(mu) / m)``, the residuals lme4's summary scales."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return (y - mu) * np.sqrt(m / self.variance(mu))

    def __str__(self) -> str:
        return f"{self.name}  ( {self.link} )"


@dataclass(frozen=True)
class Binomial(Family):
    """Binomial with the logit link; ``y`` is the proportion of successes out of ``m`` trials."""

    name: str = "binomial"
    link: str = "logit"

    def linkinv(self, eta):
        return expit(eta)

    def linkfun(self, mu):
        mu = np.asarray(mu, dtype=float)
        with np.errstate(divide="ignore"):
            return np.log(mu) - np.log1p(-mu)

    def variance(self, mu):
        return mu * (1.0 - mu)

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
        eta = np.asarray(eta, dtype=float)
        return np.maximum(eta, 0.0) + np.log1p(np.exp(-np.abs(eta)))

    def derivs(self, eta, y, m, order=2):
        # expit via one exp (scipy's expit and numpy's logaddexp are several times slower).
        with np.errstate(over="ignore"):
            mu = 1.0 / (1.0 + np.exp(-eta))
        v = mu * (1.0 - mu)
        d1 = m * (y - mu)
        d2 = -m * v
        if order < 3:
            return d1, d2
        return d1, d2, d2 * (1.0 - 2.0 * mu)


@dataclass(frozen=True)
class Poisson(Family):
    """Poisson with the log link; ``y`` is the count, ``m`` an optional prior weight."""

    name: str = "poisson"
    link: str = "log"

    def linkinv(self, eta):
        return np.exp(eta)

    def linkfun(self, mu):
        with np.errstate(divide="ignore"):
            return np.log(mu)

    def cumulant(self, eta):
        return np.exp(eta)

    def variance(self, mu):
        return mu

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


_FAMILIES = {"binomial": Binomial, "poisson": Poisson}
_LINKS = {"binomial": ("logit",), "poisson": ("log",)}


def get_family(family: str | Family, link: str | None = None) -> Family:
    """Turn ``"binomial"`` / ``"poisson"`` (or a :class:`Family`) into a family object.

    Parameters
    ----------
    family : str or Family
        ``"binomial"`` or ``"poisson"`` (case-insensitive), or a family instance.
    link : str, optional
        Only the canonical link is implemented: ``"logit"`` or ``"log"``.

    Raises
    ------
    ValueError
        For an unknown family or a link we do not implement, naming the alternatives.
    """
    if isinstance(family, Family):
        fam = family
    else:
        key = str(family).lower()
        if key not in _FAMILIES:
            raise ValueError(
                f"`family` must be one of {sorted(_FAMILIES)}, got {family!r}"
            )
        fam = _FAMILIES[key]()
    if link is not None and link != fam.link:
        raise ValueError(
            f"`link`={link!r} is not implemented for the {fam.name} family; "
            f"available: {list(_LINKS[fam.name])}"
        )
    return fam
