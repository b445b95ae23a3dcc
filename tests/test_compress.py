"""Exact group compression (mixedmodels.compress) and weighted chunks in the AGQ kernel."""

import numpy as np
import pytest

from mixedmodels.agq import agq_chunk, make_chunks
from mixedmodels.compress import group_patterns
from mixedmodels.families import Binomial

from test_agq import ctr_arrays


def test_patterns_ignore_row_order_and_labels():
    # Groups 0 and 2 hold the same rows in another order; group 1 differs in one value;
    # group 3 differs only in the sign of a zero (bitwise different: kept apart, safely).
    y = np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0, -0.0])
    x = np.array([2.0, 3.0, 2.0, 4.0, 3.0, 2.0, 3.0, 3.0])
    codes = np.array([0, 0, 1, 1, 2, 2, 3, 3])
    gp = group_patterns([y, x], codes, 4)
    assert gp.pattern[0] == gp.pattern[2]
    assert len({gp.pattern[0], gp.pattern[1], gp.pattern[3]}) == 3
    assert gp.npatterns == 3 and gp.count.sum() == 4
    assert gp.count[gp.pattern[0]] == 2
    # Groups of different sizes never share a pattern, even when one's rows repeat the other's.
    gp = group_patterns([np.ones(3)], np.array([0, 1, 1]), 2)
    assert gp.npatterns == 2


def test_hash_collision_costs_only_compression(monkeypatch):
    # Force every group onto one hash: the bitwise check must split them again.
    import mixedmodels.compress as C
    monkeypatch.setattr(C, "_mix", lambda a: np.zeros_like(a))
    y = np.array([0.0, 1.0, 2.0, 1.0, 0.0])
    gp = C.group_patterns([y], np.array([0, 1, 2, 3, 4]), 5)
    # Only group 4 equals the hash's representative (group 0); nothing else is merged.
    assert gp.pattern[4] == gp.pattern[0]
    assert len(set(gp.pattern[:4])) == 4


def test_ctr_patterns():
    X, s, n, codes = ctr_arrays()
    gp = group_patterns([s, n, X], codes, codes.max() + 1)
    assert gp.npatterns == 508 and gp.worthwhile       # the count
    # Each group's rows, sorted, equal its pattern representative's.
    for g in np.random.default_rng(1).choice(codes.max() + 1, 50, replace=False):
        r = gp.rep[gp.pattern[g]]
        a = np.sort(np.column_stack([s, n, X])[codes == g], axis=0)
        b = np.sort(np.column_stack([s, n, X])[codes == r], axis=0)
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rule", ["gh", "trapezoid"])
def test_weighted_patterns_give_the_same_sums(rule):
    X, s, n, codes = ctr_arrays()
    fam = Binomial()
    y = s / n
    G = codes.max() + 1
    full, _ = make_chunks(X, y, n, np.ones(len(y)), np.zeros(len(y)), fam.log_const(y, n),
                          codes, G)
    gp = group_patterns([y, n, X], codes, G)
    is_rep = np.zeros(G, bool)
    is_rep[gp.rep] = True
    rows = is_rep[codes]
    unit = np.full(G, -1)
    unit[gp.rep] = np.arange(gp.npatterns)
    comp, _ = make_chunks(X[rows], y[rows], n[rows], np.ones(rows.sum()), np.zeros(rows.sum()),
                          fam.log_const(y[rows], n[rows]), unit[codes[rows]], gp.npatterns,
                          group_weights=gp.count)
    beta, sigma = np.array([-4.7, 0.45]), 5.3
    a = agq_chunk(beta, sigma, full[0], fam, 15, opg=True, rule=rule)
    b = agq_chunk(beta, sigma, comp[0], fam, 15, opg=True, rule=rule)
    assert b.loglik == pytest.approx(a.loglik, abs=1e-9)
    np.testing.assert_allclose(b.grad, a.grad, rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(b.opg, a.opg, rtol=1e-10)
    # Per group: the pattern's value is each of its groups' value.
    np.testing.assert_allclose(b.loglik_groups[gp.pattern], a.loglik_groups, atol=1e-10)
