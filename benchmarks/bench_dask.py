"""glmer on Dask at 1,000,000 and 10,000,000 users: time and peak memory per process.

The data are made like the post's (``mm.make_click_data(users, -4.5, 0.5, 5, 20)``, about
1.5 rows per user), block by block of users, each block written to its own Parquet file with
pyarrow: the whole data set is never in memory. Each file holds whole users, so the fitter
finds the groups already together and does not shuffle.

For every user count and worker count (a ``LocalCluster`` of single-threaded worker
processes) a fresh driver process fits ``clicks/expos ~ display + (1 | id)`` with
``nagq="auto"`` and reports: wall time (setup: reading and building the partitions; fit: the
optimizer), evaluations, the mean time of one evaluation and of one partition's share, the
bytes each evaluation moves, and the peak resident memory (``ru_maxrss``) of the driver (which
runs the scheduler) and of each worker. At 1,000,000 users it also fits the same rows in
memory (pandas) in another fresh process, for the comparison.

Target (issue 13): 10,000,000 users (~15,000,000 rows), ``nagq="auto"``, under 3 minutes,
every process under 3 GB, on the project's 2-core machine.

It prints figures and asserts nothing. ``--out`` writes them as JSON (the book's Chapter 11
reads ``benchmarks/results/bench_dask.json``); the load average before and after is recorded,
because a busy machine slows everything.

Usage::

    python benchmarks/bench_dask.py                       # 1e6 and 1e7 users, 1 and 2 workers
    python benchmarks/bench_dask.py --users 1000000 --workers 2
    python benchmarks/bench_dask.py --out benchmarks/results/bench_dask.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "clicks/expos ~ display + (1 | id)"
#: The post's simulation: mu, tau, sig_a, pois_mean.
POST = (-4.5, 0.5, 5.0, 20.0)
USERS_PER_FILE = 250_000


def write_parquet(users: int, folder: Path, seed: int = 2016,
                  users_per_file: int = USERS_PER_FILE) -> Path:
    """Write the users with :func:`mixedmodels.datasets.write_click_parquet` (one file per
    block of users, never the whole data in memory); reuse a complete folder."""
    from mixedmodels.datasets import write_click_parquet

    marker = folder / "_done.json"
    meta = {"users": users, "seed": seed, "users_per_file": users_per_file, "post": POST}
    if marker.exists() and json.loads(marker.read_text()) == meta:
        return folder
    write_click_parquet(folder, users, users_per_file=users_per_file, seed=seed)
    marker.write_text(json.dumps(meta))
    return folder


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def _estimates(fit) -> dict:
    return {"fixef": [float(v) for v in fit.fixef], "sd": float(fit.theta[0]),
            "se": [float(v) for v in fit.se], "loglik": float(fit.loglik), "nagq": int(fit.nagq),
            "converged": bool(fit.converged)}


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
            fit = mm.glmer(FORMULA, data, nagq="auto", client=client, verbose=False)
        worker_peaks = client.run(_peak_gb)
        out = {"workers": workers, "rows": fit.nobs, "groups": int(fit.ngroups["id"]),
               **fit.distributed, **_estimates(fit),
               "worker_peak_gb": sorted(worker_peaks.values())}
    out["driver_peak_gb"] = _peak_gb()
    return out


def memory_case(folder: Path) -> dict:
    """The same rows fitted in memory (pandas) in this (fresh) process."""
    import pandas as pd

    import mixedmodels as mm

    t0 = time.perf_counter()
    data = pd.read_parquet(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t1 = time.perf_counter()
        fit = mm.glmer(FORMULA, data, nagq="auto")
    t2 = time.perf_counter()
    return {"rows": len(data), "read_seconds": t1 - t0, "seconds": t2 - t1,
            "peak_gb": _peak_gb(), **_estimates(fit)}


def _in_fresh_process(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) /
                    "mixedmodels-bench-dask")
    ap.add_argument("--no-memory", action="store_true", help="skip the in-memory comparison")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    ap.add_argument("--_case", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_memory", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._case:
        print(json.dumps(dask_case(Path(a._case[0]), int(a._case[1]))))
        return
    if a._memory:
        print(json.dumps(memory_case(Path(a._memory))))
        return

    load0 = os.getloadavg()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load average {load0[0]:.1f} (1 min) at the start")
    results = {"machine": {"cores": os.cpu_count(), "platform": platform.platform(),
                           "load_start": load0[0], "date": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                         time.gmtime())},
               "formula": FORMULA, "nagq": "auto", "cases": [], "in_memory": []}
    for users in a.users:
        t0 = time.perf_counter()
        folder = write_parquet(users, a.data_dir / f"users-{users}")
        files = len(list(folder.glob("*.parquet")))
        mb = sum(f.stat().st_size for f in folder.glob("*.parquet")) / 1e6
        print(f"\n{users:,} users: {files} Parquet files, {mb:.0f} MB "
              f"(written or found in {time.perf_counter() - t0:.0f} s)")
        for w in a.workers:
            r = _in_fresh_process("--_case", str(folder), str(w))
            r.update(users=users, files=files)
            results["cases"].append(r)
            if "error" in r:
                print(f"  {w} worker(s): FAILED: {r['error']}")
                continue
            print(f"  {w} worker(s): {r['seconds']:.1f} s (setup {r['setup_seconds']:.1f} s, "
                  f"fit {r['fit_seconds']:.1f} s, {r['evaluations']} evaluations of "
                  f"{r['eval_wall_seconds']:.2f} s, a partition's share "
                  f"{r['partition_eval_seconds']:.3f} s); nagq={r['nagq']}; peak memory: driver "
                  f"{r['driver_peak_gb']:.2f} GB, workers "
                  f"{', '.join(f'{g:.2f}' for g in r['worker_peak_gb'])} GB; per evaluation "
                  f"{r['bytes_to_partition']} bytes out and {r['bytes_from_partition']} back "
                  "per partition")
            print(f"      display {r['fixef'][1]:.4f} (SE {r['se'][1]:.4f}), sd {r['sd']:.4f}, "
                  f"logLik {r['loglik']:.2f}")
        if users <= 1_000_000 and not a.no_memory:
            m = _in_fresh_process("--_memory", str(folder))
            m.update(users=users)
            results["in_memory"].append(m)
            if "error" in m:
                print(f"  in memory: FAILED: {m['error']}")
            else:
                print(f"  in memory (pandas): {m['seconds']:.1f} s, peak {m['peak_gb']:.2f} GB; "
                      f"display {m['fixef'][1]:.4f}, sd {m['sd']:.4f}, logLik {m['loglik']:.2f}")
    results["machine"]["load_end"] = os.getloadavg()[0]
    print(f"\nload average {results['machine']['load_end']:.1f} (1 min) at the end "
          "(other work on the machine slows every figure)")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
