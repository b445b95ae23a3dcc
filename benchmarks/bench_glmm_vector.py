"""Benchmarks of the Laplace path (PIRLS on the blocked sparse factor), beside lme4.

Issue 9's targets:

* a VerbAgg-shaped crossed binary GLMM ``r2 ~ Anger + Gender + btype + situ + (1 | id) +
  (1 | item)`` (7,584 rows, 316 x 24 levels) in at most half lme4's time;
* a binomial ``y ~ x + (x | g)`` at 400, 800 and 2,000 groups (25 rows each) in at most lme4's
  time at each size, with peak memory growing linearly;
* a crossed binary GLMM with 4,000 x 1,500 levels (60,000 rows) in under 60 s and 2 GB.

Data are simulated here with a seeded generator (VerbAgg's shape: 316 respondents x 24 items,
respondent-level ``Anger`` and ``Gender``, item-level ``btype`` and ``situ``) and written to a
temporary CSV that lme4 reads, so both fit the same data. lme4 is timed in the same run when
``Rscript`` with lme4 is installed; otherwise only our figures are printed. Peak memory is the
peak of Python's allocations during the fit (``tracemalloc``: numpy's arrays included), measured
in a second, separate fit so the timing is not slowed by tracing.

The last three columns compare Laplace log-likelihoods: ours at our estimates minus lme4's
reported one; ours at lme4's estimates minus lme4's deviance function there with a tight PIRLS
tolerance (``tolPwrss = 1e-12``; about 0: the same approximation); and that tight value minus
lme4's reported one -- what lme4's default ``tolPwrss = 1e-7`` PIRLS loses at its own estimates,
which is most of why our maximum is higher.

A second table times ``nagq=0`` (lme4's ``nAGQ = 0``: the fixed effects inside PIRLS, only
the covariance parameters optimized; :mod:`mixedmodels.glmm_nagq0`) on the same models beside
lme4's ``nAGQ = 0``, with our ``nagq=0`` log-likelihood minus lme4's (lme4's default PIRLS
tolerance reports a little less) and minus our Laplace one (never above 0).

Run ``python benchmarks/bench_glmm_vector.py [--quick]`` (``--quick`` skips the 60,000-row
crossed model).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings

import numpy as np
import pandas as pd

import mixedmodels as mm


def verbagg_like(seed: int = 9) -> pd.DataFrame:
    """316 respondents x 24 items, binary ``r2``, VerbAgg's covariates and roughly its effects."""
    rng = np.random.default_rng(seed)
    nid, nitem = 316, 24
    anger = rng.integers(11, 40, nid)
    gender = rng.choice(["F", "M"], nid, p=[0.77, 0.23])
    btype = np.tile(np.repeat(["curse", "scold", "shout"], 2), 4)
    situ = np.repeat(["other", "self"], 12)
    b_id = rng.normal(0, 1.34, nid)
    b_item = rng.normal(0, 0.49, nitem)
    i = np.repeat(np.arange(nid), nitem)
    j = np.tile(np.arange(nitem), nid)
    eta = (0.2 + 0.057 * (anger[i] - 20) + 0.32 * (gender[i] == "M")
           - 1.06 * (btype[j] == "scold") - 2.1 * (btype[j] == "shout")
           - 1.05 * (situ[j] == "self") + b_id[i] + b_item[j])
    r2 = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"r2": r2, "Anger": anger[i], "Gender": gender[i], "btype": btype[j],
                         "situ": situ[j], "id": (i + 1).astype(str), "item": (j + 1).astype(str)})


def slopes(ngroups: int, per: int = 25, seed: int = 0) -> pd.DataFrame:
    """``/work/shared/cases/b10``'s binomial ``y ~ x + (x | g)`` with ``ngroups`` groups."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(ngroups), per)
    x = rng.normal(size=ngroups * per)
    b = rng.multivariate_normal([0, 0], [[1.0, 0.2], [0.2, 0.25]], ngroups)
    eta = -1 + 0.5 * x + b[g, 0] + b[g, 1] * x
    y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})


def crossed(na: int = 4000, nb: int = 1500, n: int = 60_000, seed: int = 3) -> pd.DataFrame:
    """A crossed binary GLMM, ``y ~ x + (1 | a) + (1 | b)``, every level observed."""
    rng = np.random.default_rng(seed)
    a = np.concatenate([np.arange(na), rng.integers(0, na, n - na)])
    b = np.concatenate([np.arange(nb), rng.integers(0, nb, n - nb)])[rng.permutation(n)]
    x = rng.normal(size=n)
    eta = -0.5 + 0.4 * x + rng.normal(0, 0.9, na)[a] + rng.normal(0, 0.6, nb)[b]
    y = rng.binomial(1, 1 / (1 + np.exp(-eta)))
    return pd.DataFrame({"y": y, "x": x, "a": a.astype(str), "b": b.astype(str)})


def fit_ours(formula: str, data: pd.DataFrame, memory: bool = True):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        fit = mm.glmer(formula, data, family="binomial", nagq=1)
        seconds = time.perf_counter() - t0
        peak = np.nan
        if memory:
            tracemalloc.start()
            mm.glmer(formula, data, family="binomial", nagq=1)
            peak = tracemalloc.get_traced_memory()[1] / 2**20
            tracemalloc.stop()
    return fit, seconds, peak


def fit_ours_nagq0(formula: str, data: pd.DataFrame):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.perf_counter()
        fit = mm.glmer(formula, data, family="binomial", nagq=0)
    return fit, time.perf_counter() - t0


def fit_lme4_nagq0(formula: str, data: pd.DataFrame, factors: list[str]):
    """lme4's ``nAGQ = 0``: seconds (``glmer`` only) and log-likelihood."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "d.csv")
        data.to_csv(csv, index=False)
        conv = "; ".join(f"d${f} <- factor(d${f})" for f in factors)
        script = (f'suppressMessages(library(lme4)); d <- read.csv("{csv}"); {conv}; '
                  f't <- system.time(m <- glmer({formula}, d, family = binomial, nAGQ = 0))'
                  '[["elapsed"]]; cat(sprintf("%.15g", c(t, as.numeric(logLik(m)))), "\\n")')
        r = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
    if r.returncode != 0:
        return np.nan, np.nan
    t, ll = (float(v) for v in r.stdout.split())
    return t, ll


def have_lme4() -> bool:
    if shutil.which("Rscript") is None:
        return False
    r = subprocess.run(["Rscript", "-e", "library(lme4)"], capture_output=True)
    return r.returncode == 0


def fit_lme4(formula: str, data: pd.DataFrame, factors: list[str]):
    """lme4's time (seconds, ``glmer`` only, data already loaded), log-likelihood, its
    deviance function at its estimates with a tight PIRLS tolerance (``tolPwrss = 1e-12``), as a
    log-likelihood, and its estimates ``(beta, theta)``."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "d.csv")
        data.to_csv(csv, index=False)
        conv = "; ".join(f"d${f} <- factor(d${f})" for f in factors)
        script = (f'suppressMessages(library(lme4)); d <- read.csv("{csv}"); {conv}; '
                  f't <- system.time(m <- glmer({formula}, d, family = binomial))[["elapsed"]]; '
                  'dd <- update(m, devFunOnly = TRUE, control = glmerControl(tolPwrss = 1e-12)); '
                  'tight <- -dd(c(getME(m, "theta"), fixef(m))) / 2; '
                  'cat(sprintf("%.15g", c(t, as.numeric(logLik(m)), tight, fixef(m), getME(m, "theta"))), '
                  '"\\n")')
        r = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
    if r.returncode != 0:
        return np.nan, np.nan, np.nan, None
    vals = [float(v) for v in r.stdout.split()]
    return vals[0], vals[1], vals[2], np.array(vals[3:])


def main(quick: bool = False) -> None:
    R = have_lme4()
    print(f"mixedmodels {mm.__version__}; lme4 {'timed in this run' if R else 'not available'}; "
          f"{os.cpu_count()} cores (timings on a shared machine vary with its load)")
    cases = [("VerbAgg-shaped  r2 ~ Anger + Gender + btype + situ + (1|id) + (1|item)",
              "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)", verbagg_like(),
              ["id", "item"], 0.5)]
    for ng in (400, 800, 2000):
        cases.append((f"y ~ x + (x | g), {ng} groups x 25", "y ~ x + (x | g)", slopes(ng), ["g"], 1.0))
    if not quick:
        cases.append(("crossed 4,000 x 1,500 levels, 60,000 rows", "y ~ x + (1 | a) + (1 | b)",
                      crossed(), ["a", "b"], None))
    print(f"{'model':<75} {'ours s':>8} {'peak MB':>8} {'lme4 s':>8} {'ratio':>6} {'target':>7}"
          f" {'loglik - lme4':>14} {'at lme4 est':>12} {'lme4 tight':>11}")
    laplace = {}
    for label, formula, data, factors, target in cases:
        big = len(data) > 50_000
        fit, sec, peak = fit_ours(formula, data, memory=True)
        laplace[label] = fit.loglik
        if R and not big:
            t_r, ll_r, tight_r, est_r = fit_lme4(formula, data, factors)
        else:
            t_r, ll_r, tight_r, est_r = np.nan, np.nan, np.nan, None  # lme4: ~6 minutes on the 60,000-row model
        # Our Laplace log-likelihood at lme4's estimates against lme4's own deviance function
        # there at a tight PIRLS tolerance: the same number when both compute the same Laplace
        # approximation.
        at_r = (fit._obj.evaluate(est_r, gradient=False, keep=False)[0] - tight_r
                if est_r is not None and len(est_r) == fit._obj.nparams else np.nan)
        ratio = sec / t_r if np.isfinite(t_r) else np.nan
        tgt = f"<= {target:g}x" if target else "< 60 s"
        print(f"{label:<75} {sec:8.2f} {peak:8.0f} {t_r:8.2f} {ratio:6.2f} {tgt:>7}"
              f" {fit.loglik - ll_r:14.2e} {at_r:12.1e} {tight_r - ll_r:11.2e}", flush=True)
    print(f"\nnagq=0 (lme4's nAGQ = 0)\n{'model':<75} {'ours s':>8} {'lme4 s':>8} {'ratio':>6}"
          f" {'loglik - lme4':>14} {'- nagq=1':>9}")
    for label, formula, data, factors, _ in cases:
        fit, sec = fit_ours_nagq0(formula, data)
        t_r, ll_r = (fit_lme4_nagq0(formula, data, factors) if R and len(data) <= 50_000
                     else (np.nan, np.nan))
        ratio = sec / t_r if np.isfinite(t_r) else np.nan
        print(f"{label:<75} {sec:8.2f} {t_r:8.2f} {ratio:6.2f} {fit.loglik - ll_r:14.2e}"
              f" {fit.loglik - laplace[label]:9.2e}", flush=True)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
