"""Speed and memory of glmer on the post's model, ``clicks/expos ~ display + (1 | id)``, nagq = 10.

Prints figures; it asserts nothing (timings depend on the machine and its load). Targets from
the GLMM issue, on the project's 2-core machine:

- the post's data (1,000 users): at least 10x faster than lme4 1.1-31 (about 0.26 s there);
- 100,000 users (about 150,000 rows): under 2 s (lme4: about 13 s);
- 1,000,000 users: under 30 s and under 4 GB.

Each large case runs in a fresh process so its peak memory (``ru_maxrss``) is its own. Where
``Rscript`` with lme4 is installed, lme4 is timed on the post's data in the same run.

Usage: ``python benchmarks/bench_glmm.py [--quick]`` (``--quick`` skips the 1,000,000 users).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "clicks/expos ~ display + (1 | id)"


def _fit(data):
    import mixedmodels as mm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", mm.QuadratureWarning)  # nagq=10 is coarse here, known
        t0 = time.perf_counter()
        fit = mm.glmer(FORMULA, data, weights="expos", nagq=10)
        return fit, time.perf_counter() - t0


def case(users: int, seed: int = 2016) -> dict:
    """Fit one simulated data set of ``users`` users; runs in its own process."""
    import mixedmodels as mm

    data, _, _ = mm.make_click_data(users, -4.5, 0.5, 5, 20, seed=seed)
    fit, secs = _fit(data)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB
    return {"users": users, "rows": len(data), "seconds": secs, "peak_gb": peak_gb,
            "fixef": fit.fixef.round(4).tolist(), "sd": round(float(fit.theta[0]), 4),
            "loglik": round(fit.loglik, 3), "converged": fit.converged,
            "evaluations": fit.opt.nevals}


def post_data(repeats: int = 9) -> dict:
    import mixedmodels as mm

    d = mm.load_ctr()
    _fit(d)  # warm-up: imports, memoized rules
    times = [_fit(d)[1] for _ in range(repeats)]
    return {"median": float(np.median(times)), "min": float(np.min(times))}


def lme4_time() -> float | None:
    """Median lme4 fit time on the post's data, if R and lme4 are installed."""
    if shutil.which("Rscript") is None:
        return None
    script = f"""
    suppressMessages(library(lme4))
    d <- read.csv("{ROOT / 'src/mixedmodels/data/ctr_seed1.csv'}"); d$id <- factor(d$id)
    f <- function() glmer(clicks/expos ~ display + (1 | id), d, binomial, weights = expos, nAGQ = 10)
    invisible(f()); t <- replicate(5, system.time(f())[["elapsed"]]); cat(median(t))
    """
    with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as fh:
        fh.write(script)
    try:
        out = subprocess.run(["Rscript", fh.name], capture_output=True, text=True, timeout=300)
        return float(out.stdout.strip()) if out.returncode == 0 else None
    except (subprocess.TimeoutExpired, ValueError):
        return None
    finally:
        os.unlink(fh.name)


def in_subprocess(users: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--case", str(users)], capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    if "--case" in argv:
        print(json.dumps(case(int(argv[argv.index("--case") + 1]))))
        return
    quick = "--quick" in argv
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    ref = json.loads((ROOT / "tests/fixtures/lme4/ctr_seed1_nagq10.json").read_text())
    ours = post_data()
    live = lme4_time()
    lme4 = live if live is not None else ref["lme4_seconds"]
    src = "measured now" if live is not None else "from the reference machine (R not installed)"
    print(f"post's data (1,000 users, 1,481 rows), nagq=10: {ours['median'] * 1e3:.1f} ms median "
          f"(min {ours['min'] * 1e3:.1f} ms); lme4 {lme4:.3f} s ({src}): "
          f"{lme4 / ours['median']:.1f}x faster (target >= 10x)")
    for users, target_s in [(100_000, 2.0)] + ([] if quick else [(1_000_000, 30.0)]):
        r = in_subprocess(users)
        print(f"{users:,} users ({r['rows']:,} rows): {r['seconds']:.2f} s (target < {target_s:g} s), "
              f"peak memory {r['peak_gb']:.2f} GB (whole process, incl. simulating the data; "
              f"target < 4 GB), {r['evaluations']} full-data evaluations in the last stage; "
              f"fixef {r['fixef']}, SD {r['sd']}, logLik {r['loglik']}, converged {r['converged']}")


if __name__ == "__main__":
    main(sys.argv[1:])
