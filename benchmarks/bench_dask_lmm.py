"""lmer on Dask at 1,000,000 rows in 100,000 groups: time and peak memory, beside in memory.

The data: ``y = 1 + 0.5 x + b0_g + b1_g x + e`` with 10 rows per group, a correlated random
intercept and slope per group, made block by block of groups (each block from its own seeded
generator) and written to one Parquet file per block with pyarrow: the whole data set is
never in memory in this process. Each file holds whole groups, so the fitter does not shuffle.

Each case runs in a fresh process:

- **Dask**: a ``LocalCluster`` of single-threaded worker processes (default 2) reads the
  Parquet files (one partition per file, default 2) and fits ``y ~ x + (x | g)`` by REML;
  reported: wall time (setup: reading the files and building each partition's per-group
  blocks; fit: the optimizer), evaluations, the mean wall time of one evaluation, and the peak
  resident memory (``ru_maxrss``) of the driver (which runs the scheduler) and of each worker.
- **In memory**: the same rows read into pandas and fitted by :func:`mixedmodels.lmer`.
- **lme4** (only when ``Rscript`` with lme4 is installed): ``lmer`` on the same rows, the time
  of the fit alone (the CSV already read).

It prints figures and asserts nothing; the load average before and after is printed, because
a busy machine slows everything.

Usage::

    python benchmarks/bench_dask_lmm.py                      # 1e6 rows, 1e5 groups, 2 workers
    python benchmarks/bench_dask_lmm.py --rows 200000 --groups 20000 --workers 1 --no-r
    python benchmarks/bench_dask_lmm.py --out benchmarks/results/bench_dask_lmm.json
"""

from __future__ import annotations

import argparse
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
FORMULA = "y ~ x + (x | g)"


def write_parquet(rows: int, groups: int, files: int, folder: Path, seed: int = 13) -> Path:
    """One Parquet file per block of whole groups; a complete folder is reused."""
    import pandas as pd

    marker = folder / "_done.json"
    meta = {"rows": rows, "groups": groups, "files": files, "seed": seed}
    if marker.exists() and json.loads(marker.read_text()) == meta:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.parquet"):
        old.unlink()
    per_group = rows // groups
    bounds = np.linspace(0, groups, files + 1).astype(int)
    for i in range(files):
        rng = np.random.default_rng([seed, i])
        g = np.repeat(np.arange(bounds[i], bounds[i + 1]), per_group)
        m = len(g)
        b = rng.multivariate_normal([0.0, 0.0], [[1.0, 0.2], [0.2, 0.25]], bounds[i + 1] - bounds[i])
        x = rng.normal(size=m)
        local = g - bounds[i]
        y = 1.0 + 0.5 * x + b[local, 0] + b[local, 1] * x + rng.normal(size=m)
        pd.DataFrame({"y": y, "x": x, "g": g}).to_parquet(folder / f"part-{i:03d}.parquet",
                                                          index=False)
    marker.write_text(json.dumps(meta))
    return folder


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _estimates(fit) -> dict:
    return {"theta": [float(v) for v in fit.theta], "fixef": [float(v) for v in fit.fixef],
            "loglik": float(fit.loglik), "evaluations": int(fit.optsum.evaluations)}


def dask_case(folder: Path, workers: int) -> dict:
    """One Dask fit in this (fresh) process."""
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    import mixedmodels as mm

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=0, dashboard_address=":0") as cluster, Client(cluster) as client:
        data = dd.read_parquet(str(folder))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mm.lmer(FORMULA, data, client=client, verbose=False)
        worker_peaks = client.run(_peak_gb)
        d = fit.distributed
        out = {"workers": workers, "rows": fit.nobs, "groups": int(fit.ngroups["g"]),
               "npartitions": d["npartitions"], "shuffled": d["shuffled"],
               "setup_seconds": d["setup_seconds"], "fit_seconds": d["fit_seconds"],
               "seconds": d["seconds"], "eval_wall_seconds": d["eval_wall_seconds"],
               **_estimates(fit), "worker_peak_gb": sorted(worker_peaks.values())}
    out["driver_peak_gb"] = _peak_gb()
    return out


def memory_case(folder: Path) -> dict:
    """The same rows fitted in memory (pandas) in this (fresh) process."""
    import pandas as pd

    import mixedmodels as mm

    t0 = time.perf_counter()
    data = pd.read_parquet(folder)
    t1 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = mm.lmer(FORMULA, data)
    t2 = time.perf_counter()
    return {"rows": len(data), "read_seconds": t1 - t0, "seconds": t2 - t1,
            "peak_gb": _peak_gb(), **_estimates(fit)}


def lme4_seconds(folder: Path) -> float:
    """Seconds of lme4's ``lmer`` alone on the same rows (NaN without R and lme4)."""
    if shutil.which("Rscript") is None:
        return float("nan")
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "d.csv")
        pd.read_parquet(folder).to_csv(csv, index=False)
        script = (f'suppressMessages(library(lme4)); d <- read.csv("{csv}"); d$g <- factor(d$g); '
                  f'cat(system.time(lmer({FORMULA}, d))[["elapsed"]])')
        r = subprocess.run(["Rscript", "-e", script], capture_output=True, text=True)
    try:
        return float(r.stdout.split()[-1])
    except (IndexError, ValueError):
        return float("nan")


def _in_fresh_process(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--groups", type=int, default=100_000)
    ap.add_argument("--partitions", type=int, default=2, help="Parquet files = partitions")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "mm_bench_dask_lmm")
    ap.add_argument("--no-r", action="store_true", help="skip lme4 even if R is installed")
    ap.add_argument("--out", type=Path, help="also write the figures to this JSON file")
    ap.add_argument("--case", choices=["dask", "memory"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    folder = args.data / f"rows{args.rows}_groups{args.groups}_files{args.partitions}"
    if args.case == "dask":
        print(json.dumps(dask_case(folder, args.workers)))
        return
    if args.case == "memory":
        print(json.dumps(memory_case(folder)))
        return

    print(f"machine: {platform.machine()}, {platform.system()}, {os.cpu_count()} cores, "
          f"python {platform.python_version()}; load average before: "
          f"{', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    t0 = time.perf_counter()
    write_parquet(args.rows, args.groups, args.partitions, folder)
    print(f"data: {args.rows} rows, {args.groups} groups, {args.partitions} Parquet files in "
          f"{folder} ({time.perf_counter() - t0:.1f} s to make or reuse)")
    print(f"model: lmer({FORMULA!r}), REML")
    common = ["--rows", str(args.rows), "--groups", str(args.groups),
              "--partitions", str(args.partitions), "--data", str(args.data)]
    d = _in_fresh_process(*common, "--workers", str(args.workers), "--case", "dask")
    if "error" in d:
        print(f"  Dask: failed ({d['error']})")
    else:
        print(f"  Dask, {d['workers']} worker processes, {d['npartitions']} partitions"
              f"{' (shuffled)' if d['shuffled'] else ''}: {d['seconds']:.1f} s (setup "
              f"{d['setup_seconds']:.1f} s, fit {d['fit_seconds']:.1f} s: {d['evaluations']} "
              f"evaluations, {1000 * d['eval_wall_seconds']:.0f} ms each); peak memory: driver "
              f"{d['driver_peak_gb']:.2f} GB, workers "
              f"{', '.join(f'{g:.2f}' for g in d['worker_peak_gb'])} GB")
    m = _in_fresh_process(*common, "--case", "memory")
    if "error" in m:
        print(f"  in memory: failed ({m['error']})")
    else:
        print(f"  in memory (pandas): {m['seconds']:.1f} s ({m['evaluations']} evaluations; "
              f"reading {m['read_seconds']:.1f} s), peak {m['peak_gb']:.2f} GB")
    if "error" not in d and "error" not in m:
        dth = np.max(np.abs(np.array(d["theta"]) / np.array(m["theta"]) - 1))
        print(f"  Dask vs in memory: log-likelihood {d['loglik'] - m['loglik']:+.2e}, theta "
              f"{dth:.1e} relative")
    r = float("nan") if args.no_r else lme4_seconds(folder)
    if not args.no_r:
        print(f"  lme4 lmer: {r:.1f} s" if np.isfinite(r) else "  lme4: not available (Rscript "
              "with lme4 not found)")
    print(f"load average after: {', '.join(f'{v:.2f}' for v in os.getloadavg())}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "rows": args.rows, "groups": args.groups, "partitions": args.partitions,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", "formula": FORMULA,
            "dask": d, "memory": m, "lme4_seconds": r if np.isfinite(r) else None,
            "load_average_after": list(os.getloadavg())}, indent=1))


if __name__ == "__main__":
    main()
