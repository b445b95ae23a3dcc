"""Joint maximum likelihood of a family's dispersion parameter (Gamma shape, NB theta,
inverse-Gaussian phi) with the fixed effects and the random-effect covariance, as glmmTMB.

The objectives of :mod:`mixedmodels.glmm_objective` (the scalar AGQ kernel) and
:mod:`mixedmodels.laplace` take ``(beta, theta)`` with the family fixed. For a family with a
dispersion parameter, :func:`with_dispersion` turns the objective into one of
``(beta, theta, log dispersion)``: each evaluation sets the family's dispersion and calls the
original objective; the derivative in ``log dispersion`` is a central difference of two more
evaluations at the same ``(beta, theta)`` (a smooth function of one variable, evaluated with
the conditional modes converged to 1e-10, so the difference is accurate to ~1e-8). The same
optimizer, check of the optimum, ``nagq`` ladder and result then serve every family.
"""

from __future__ import annotations

import numpy as np

__all__ = ["with_dispersion", "has_dispersion", "DISPERSION_STEP"]

#: Step of the central difference in log(dispersion).
DISPERSION_STEP = 1e-4


def has_dispersion(family) -> bool:
    """Whether the family carries a dispersion parameter to estimate."""
    return bool(getattr(family, "has_dispersion", False))


class _DispersionMixin:
    """Overrides of an objective whose last parameter is ``log(dispersion)``."""

    has_dispersion = True

    def _set_dispersion(self, log_disp: float) -> None:
        self.family = self._base_family.with_dispersion(float(np.exp(log_disp)))

    def lower(self) -> np.ndarray:
        return np.concatenate([super().lower(), [-np.inf]])

    def evaluate(self, params, gradient=True, nagq=None, keep=True, opg=False, **kw):
        params = np.asarray(params, dtype=float)
        core, ld = params[:-1], float(params[-1])
        if not np.isfinite(ld) or abs(ld) > 30:
            raise FloatingPointError("the dispersion parameter left its range")
        self._set_dispersion(ld)
        if opg:
            ll, g, B = super().evaluate(core, gradient=True, nagq=nagq, keep=keep, opg=True, **kw)
        else:
            ll, g = super().evaluate(core, gradient=gradient, nagq=nagq, keep=keep, **kw)
        if not (gradient or opg):
            return ll, None
        h = DISPERSION_STEP
        out = []
        for s in (1.0, -1.0):
            self._set_dispersion(ld + s * h)
            out.append(super().evaluate(core, gradient=False, nagq=nagq, keep=False, **kw)[0])
        self._set_dispersion(ld)
        gd = (out[0] - out[1]) / (2 * h)
        grad = np.concatenate([g, [gd]])
        if not opg:
            return ll, grad
        # BHHH's information: the scores' outer products for (beta, theta), and for the
        # dispersion (whose per-group scores we do not have) its curvature, uncoupled. The
        # Newton steps that follow use the full Hessian.
        curv = max(-(out[0] - 2 * ll + out[1]) / h ** 2, 1e-8 * (1.0 + abs(ll)))
        Bx = np.zeros((len(grad), len(grad)))
        Bx[:-1, :-1] = B
        Bx[-1, -1] = curv
        return ll, grad, Bx

    def modes(self, params):
        params = np.asarray(params, dtype=float)
        # The parent's modes() evaluates through our evaluate(): pass every parameter.
        self._set_dispersion(float(params[-1]))
        return super().modes(params)

    def subset(self, groups):
        sub = super().subset(groups)
        return _attach(sub, self._base_family)

    def dispersion_start_params(self, frame, base_start: np.ndarray) -> np.ndarray:
        """The base start ``(beta, theta)`` with a moment estimate of the dispersion."""
        from .glmm_objective import _glm_start

        fam = self._base_family
        start = np.asarray(base_start, dtype=float).copy()
        off = 0.0 if frame.ms.offset is None else frame.ms.offset
        if fam.link != "log":
            # The random-intercept start works on the log scale; on the inverse scales take
            # the GLM's fixed effects and a tenth of the typical linear predictor as the SDs,
            # which keeps eta > 0.
            start[:self.p] = _glm_start(frame)
            eta = frame.ms.X @ start[:self.p] + off
            start[self.p:] = np.where(start[self.p:] != 0, 0.1 * np.mean(np.abs(eta)), 0.0)
        mu = fam.linkinv(frame.ms.X @ start[:self.p] + off)
        return np.append(start, np.log(fam.dispersion_start(frame.y, mu)))


_CLASSES: dict[type, type] = {}


def _attach(obj, family):
    cls = type(obj)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"Dispersion{cls.__name__}", (_DispersionMixin, cls), {})
    obj.__class__ = _CLASSES[cls]
    obj._base_family = family
    obj.nparams = obj.nparams + 1
    return obj


def with_dispersion(obj, frame):
    """Make ``obj`` (an objective of ``(beta, theta)``) an objective of
    ``(beta, theta, log dispersion)`` when the frame's family has a dispersion parameter.

    The object keeps its class's behaviour (``isinstance`` checks still hold) and gains the
    extra parameter; returned unchanged for families without one.
    """
    if not has_dispersion(frame.family) or getattr(obj, "has_dispersion", False):
        return obj
    return _attach(obj, frame.family)
