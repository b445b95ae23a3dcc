"""Fit times and peak memory of Chapter 8's four contestants at several numbers of users.

For each number of users, a fresh process simulates the post's experiment
(``make_click_data(p, -4.5, 0.5, 5, 20)``), fits LASSO and ridge (10-fold CV, glum), the
unpenalized GLM (glum) and the GLMM (``nagq="auto"``) once each, and reports every fit's wall
time, the display-effect estimates and the process's peak memory (``ru_maxrss``). It asserts
nothing: timings depend on the machine and its load. It tells a reader what Chapter 8's
``FULL_SWEEP = True`` will cost (the LASSO's Newton steps build a dense users x users Hessian,
so its time and memory grow with the square of the users).

Usage: ``python benchmarks/bench_race.py [--full] [--counts 100 300 ...]``; the default counts
are 100, 300, 1,000 and 3,000 (the chapter's default sweep); ``--full`` adds 10,000.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

CHILD = r"""
import json, resource, sys, warnings
import numpy as np
import mixedmodels as mm
from mixedmodels import race
p = int(sys.argv[1])
data, effects, _ = mm.make_click_data(p, -4.5, 0.5, 5, 20, seed=np.random.default_rng([8, p]))
out = {"users": p, "rows": len(data)}
for comp in race.default_competitors(seed=8):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = comp.fit(data)
    out[fit.name] = {"seconds": round(fit.fit_seconds, 3), "display": round(fit.display_effect, 4)}
out["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 300, 1000, 3000])
    parser.add_argument("--full", action="store_true", help="add 10,000 users")
    args = parser.parse_args()
    counts = sorted(set(args.counts + ([10_000] if args.full else [])))
    print(f"python {platform.python_version()}, {platform.machine()}, "
          f"{platform.node()}; seconds per fit (LASSO and ridge include 10-fold CV)")
    print(f"{'users':>7} {'rows':>7} {'LASSO':>8} {'ridge':>8} {'GLM':>8} {'GLMM':>8} {'peak MB':>8}")
    for p in counts:
        done = subprocess.run([sys.executable, "-c", CHILD, str(p)], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{p:>7} failed:\n{done.stderr[-2000:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        times = " ".join(f"{r[m]['seconds']:8.2f}" for m in ("LASSO", "ridge", "GLM", "GLMM"))
        print(f"{p:>7} {r['rows']:>7} {times} {r['peak_mb']:>8}")


if __name__ == "__main__":
    main()
