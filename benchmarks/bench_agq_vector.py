"""Speed of glmer with adaptive quadrature for a vector random effect, ``y ~ x + (x | g)``.

Prints figures; asserts nothing (timings depend on the machine and its load). Targets from
issue 15, on the project's 2-core machine:

- ``binom_slopes`` (150 groups x 10 binary rows) at nagq = 5: under 1 s;
- 2,000 groups x 10 rows at nagq = 5: under 20 s.

It also prints the estimates on ``binom_slopes`` at nagq = 1, 3, 5, 9 and "auto". Where
``Rscript`` with lme4 is installed, lme4's Laplace fit (its only choice for this model: nAGQ > 1
needs a single scalar term there) is timed on the same data in the same run.

Usage: ``python benchmarks/bench_agq_vector.py``
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "y ~ x + (x | g)"


def simulate(groups: int, rows: int, seed: int = 15) -> pd.DataFrame:
    """Binary rows with a correlated random intercept and slope per group."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), rows)
    x = rng.normal(size=groups * rows)
    S = np.array([[1.0, 0.25], [0.25, 0.36]])
    b = rng.multivariate_normal(np.zeros(2), S, size=groups)
    eta = -0.7 + 0.75 * x + b[g, 0] + b[g, 1] * x
    y = (rng.uniform(size=len(eta)) < 1 / (1 + np.exp(-eta))).astype(float)
    return pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})


def fit(data: pd.DataFrame, nagq):
    import mixedmodels as mm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)
        t0 = time.perf_counter()
        f = mm.glmer(FORMULA, data, nagq=nagq)
        return f, time.perf_counter() - t0


def lme4_time(csv: Path) -> float | None:
    """Median lme4 (Laplace) fit time, if R and lme4 are installed."""
    if shutil.which("Rscript") is None:
        return None
    script = f"""
    suppressMessages(library(lme4))
    d <- read.csv("{csv}"); d$g <- factor(d$g)
    f <- function() glmer(y ~ x + (x | g), d, binomial)
    invisible(f()); t <- replicate(3, system.time(f())[["elapsed"]]); cat(median(t))
    """
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(script)
    try:
        out = subprocess.run(["Rscript", fh.name], capture_output=True, text=True, timeout=600)
        return float(out.stdout.strip()) if out.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None
    finally:
        os.unlink(fh.name)


def main() -> None:
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    csv = ROOT / "tests/fixtures/binom_slopes.csv"
    d = pd.read_csv(csv, dtype={"g": str})
    print(f"binom_slopes ({len(d)} rows, {d['g'].nunique()} groups), {FORMULA}:")
    print(f"{'nagq':>6} {'(Intercept)':>12} {'x':>10} {'sd_(Int)':>10} {'cor':>8} {'sd_x':>8} "
          f"{'logLik':>12} {'seconds':>8}")
    for q in (1, 3, 5, 9, "auto"):
        f, secs = fit(d, q)
        vc = f.varcorr()["sdcor"].to_numpy()
        label = f"auto={f.nagq}" if q == "auto" else str(q)
        print(f"{label:>6} {f.fixef.iloc[0]:12.5f} {f.fixef.iloc[1]:10.5f} {vc[0]:10.5f} "
              f"{vc[2]:8.4f} {vc[1]:8.5f} {f.loglik:12.4f} {secs:8.3f}")
    times = [fit(d, 5)[1] for _ in range(5)]
    live = lme4_time(csv)
    lme4 = f"lme4 Laplace {live:.3f} s (measured now)" if live is not None else "lme4 not run"
    print(f"binom_slopes at nagq=5: {np.median(times):.3f} s median of 5 (target < 1 s); {lme4}")

    big = simulate(2000, 10)
    f, secs = fit(big, 5)
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "big.csv"
        big.to_csv(p, index=False)
        live = lme4_time(p)
    lme4 = f"lme4 Laplace {live:.2f} s (measured now)" if live is not None else "lme4 not run"
    print(f"2,000 groups x 10 rows at nagq=5: {secs:.2f} s (target < 20 s), "
          f"{f.opt.nevals} evaluations, converged {f.converged}, fixef "
          f"{np.round(f.fixef.to_numpy(), 4).tolist()}; {lme4}")


if __name__ == "__main__":
    main()
