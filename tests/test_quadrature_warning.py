"""QuadratureWarning only when the quadrature error matters (not on most Laplace fits).

Every fit with a fixed rule checks it at its estimates against a finer rule. A difference in
the log-likelihood above 0.01 is recorded (``quadrature_converged`` False, a note in
``summary()``); the warning is issued only when the finer rule would move an estimate by more
than 0.1 standard errors or the log-likelihood by more than 1.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import mixedmodels as mm

FIX = Path(__file__).parent / "fixtures"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def _fit(*a, **k):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = mm.glmer(*a, **k)
    return fit, [w for w in caught if issubclass(w.category, mm.QuadratureWarning)]


@pytest.fixture(scope="module")
def cbpp():
    return pd.read_csv(FIX / "cbpp.csv")


def test_laplace_on_cbpp_is_noted_not_warned(cbpp):
    fit, warned = _fit(CBPP, cbpp, nagq=1)
    k, llc = fit.loglik_check
    # The finer rule differs by more than the 0.01 of `quadrature_converged` ...
    assert not fit.quadrature_converged and abs(llc - fit.loglik) > 0.01
    # ... but by far less than would change the inference: no warning, a note.
    assert abs(llc - fit.loglik) < 1.0 and fit.quadrature_shift < 0.1
    assert not warned
    assert any("quadrature not converged" in n for n in fit.summary().notes)


def test_the_shift_predicts_the_finer_rules_estimates(cbpp):
    """quadrature_shift is what refitting with the finer rule does, in standard errors."""
    lap, _ = _fit(CBPP, cbpp, nagq=1)
    fine, _ = _fit(CBPP, cbpp, nagq=lap.loglik_check[0])
    x1 = np.concatenate([lap.fixef.to_numpy(), lap.theta])
    x2 = np.concatenate([fine.fixef.to_numpy(), fine.theta])
    se = np.sqrt(np.diag(np.linalg.inv(lap.opt.hessian)))
    actual = np.max(np.abs(x2 - x1) / se)
    assert actual == pytest.approx(lap.quadrature_shift, rel=0.25)


def test_laplace_on_the_posts_data_warns():
    """The post's data: Laplace is off by many standard errors and 80 log-likelihood units."""
    fit, warned = _fit("clicks/expos ~ display + (1 | id)", mm.load_ctr(), weights="expos",
                       nagq=1)
    assert fit.quadrature_shift > 1.0
    assert len(warned) == 1 and "standard errors" in str(warned[0].message)


def test_converged_rules_carry_no_shift(cbpp):
    fit, warned = _fit(CBPP, cbpp, nagq=10)
    assert fit.quadrature_converged and fit.quadrature_shift is None and not warned
