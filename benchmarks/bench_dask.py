"""glmer on Dask at 1,000,000 and 10,000,000 users, by both paths: time and peak memory.

The data are made like the post's (``mm.make_click_data(users, -4.5, 0.5, 5, 20)``, about
1.5 rows per user), block by block of users, each block written to its own Parquet file with
pyarrow: the whole data set is never in memory. Each file holds whole users, so the fitter
finds the groups already together and does not shuffle.

Every case is one fit of ``clicks/expos ~ display + (1 | id)`` with ``nagq="auto"`` in a fresh
driver process, on a ``LocalCluster`` of single-threaded worker processes, by one path:

- ``patterns``: each partition reduces its users to their distinct (display, clicks,
  exposures) patterns, a tree reduction merges them, the table is fitted in memory;
- ``partitions``: the kernel mapped over the partitions (every evaluation a round trip).

It reports the wall time (setup: reading, and building the partitions or the table; fit: the
optimizer), the CPU seconds and peak resident memory (``ru_maxrss``) of the driver (which
runs the scheduler) and of each worker, the distinct patterns, evaluations, and the 1-minute
load average before and after the case (a busy machine slows every wall time; CPU seconds are
the steadier figure). At 1,000,000 users it also fits the same rows in memory (pandas).

Target (issue 13): 10,000,000 users (~15,000,000 rows), ``nagq="auto"``, under 3 minutes,
every process under 3 GB, on the project's 2-core machine.

It prints figures and asserts nothing; ``--out`` writes them as JSON (the book's Chapter 11
reads ``benchmarks/results/bench_dask.json``).

Usage (from the repository root)::

    # The default set: patterns at 1e6 and 1e7 users and partitions at 1e6, 1 and 2
    # workers, and the in-memory fit at 1e6 (~3 minutes on a quiet 2-core machine, plus
    # ~1 minute to write the 1e7 files the first time):
    python benchmarks/bench_dask.py --out benchmarks/results/bench_dask.json

    # --full adds the partition path at 1e7 users (~2 minutes with 2 workers, ~4 with 1,
    # on a quiet machine; ~9 minutes for everything):
    python benchmarks/bench_dask.py --full --out benchmarks/results/bench_dask.json

    # Any subset; --merge keeps the file's other cases:
    python benchmarks/bench_dask.py --users 10000000 --workers 2 --paths patterns \\
        --merge --out benchmarks/results/bench_dask.json
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

ROOT = Path(__file__).resolve().parents[1]
FORMULA = "clicks/expos ~ display + (1 | id)"
#: The post's simulation: mu, tau, sig_a, pois_mean.
POST = (-4.5, 0.5, 5.0, 20.0)
USERS_PER_FILE = 250_000
PATHS = ("patterns", "partitions")


def write_parquet(users: int, folder: Path, seed: int = 2016,
                  users_per_file: int = USERS_PER_FILE) -> Path:
    """Write the users with :func:`mixedmodels.datasets.write_click_parquet` (one file per
    block of users, never the whole data in memory); reuse a complete folder."""
    from mixedmodels.datasets import write_click_parquet

    marker = folder / "_done.json"
    meta = {"users": users, "seed": seed, "users_per_file": users_per_file, "post": list(POST)}
    if marker.exists() and json.loads(marker.read_text()) in (meta, {**meta, "post": POST}):
        return folder
    write_click_parquet(folder, users, users_per_file=users_per_file, seed=seed)
    marker.write_text(json.dumps(meta))
    return folder


def _usage() -> dict:
    """This process's peak resident memory (GB) and CPU seconds."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return {"peak_gb": r.ru_maxrss / 1024**2, "cpu_seconds": r.ru_utime + r.ru_stime}


def _estimates(fit) -> dict:
    return {"fixef": [float(v) for v in fit.fixef], "sd": float(fit.theta[0]),
            "se": [float(v) for v in fit.se], "loglik": float(fit.loglik), "nagq": int(fit.nagq),
            "converged": bool(fit.converged)}


def dask_case(folder: Path, workers: int, path: str) -> dict:
    """One Dask fit in this (fresh) process."""
    import dask
    import dask.dataframe as dd
    from distributed import Client, LocalCluster

    import mixedmodels as mm

    dask.config.set({"distributed.logging.distributed": "error"})
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=0, dashboard_address=":0") as cluster, Client(cluster) as client:
        data = dd.read_parquet(str(folder))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = mm.glmer(FORMULA, data, nagq="auto", client=client, verbose=False,
                           dask_path=path)
        usage = sorted(client.run(_usage).values(), key=lambda u: u["peak_gb"])
        log = fit.partition_log()
        out = {"workers": workers, "rows": fit.nobs, "groups": int(fit.ngroups["id"]),
               **fit.distributed, **_estimates(fit),
               "worker_peak_gb": [u["peak_gb"] for u in usage],
               "worker_cpu_seconds": [u["cpu_seconds"] for u in usage]}
        if "seconds" in log:
            out["partition_pass_seconds"] = [float(v) for v in log["seconds"]]
    me = _usage()
    out["driver_peak_gb"], out["driver_cpu_seconds"] = me["peak_gb"], me["cpu_seconds"]
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
    me = _usage()
    return {"rows": len(data), "read_seconds": t1 - t0, "seconds": t2 - t1,
            "peak_gb": me["peak_gb"], "cpu_seconds": me["cpu_seconds"],
            "patterns": fit.distinct_groups, **_estimates(fit)}


def _in_fresh_process(*args: str) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    load = os.getloadavg()[0]
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=env, check=False)
    if out.returncode != 0:
        res = {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed"}
    else:
        res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(load_before=load, load_after=os.getloadavg()[0])
    return res


def _git_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _print_case(r: dict) -> None:
    head = f"  {r['path']:<10} {r['workers']} worker(s):"
    if "error" in r:
        print(f"{head} FAILED: {r['error']}")
        return
    patterns = f"{r['patterns']:,} distinct patterns" if r.get("patterns") else "patterns not counted"
    print(f"{head} {r['seconds']:.1f} s (setup {r['setup_seconds']:.1f} s, fit "
          f"{r['fit_seconds']:.1f} s, {r['evaluations']} evaluations); {patterns}; load "
          f"{r['load_before']:.1f} -> {r['load_after']:.1f}")
    print(f"      peak memory: driver {r['driver_peak_gb']:.2f} GB, workers "
          f"{', '.join(f'{g:.2f}' for g in r['worker_peak_gb'])} GB; CPU seconds: driver "
          f"{r['driver_cpu_seconds']:.0f}, workers "
          f"{', '.join(f'{c:.0f}' for c in r['worker_cpu_seconds'])}")
    print(f"      display {r['fixef'][1]:.5f} (SE {r['se'][1]:.5f}), sd {r['sd']:.4f}, "
          f"logLik {r['loglik']:.3f}, nagq {r['nagq']}, converged {r['converged']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__[__doc__.index("Usage"):])
    ap.add_argument("--users", type=int, nargs="+", default=[1_000_000, 10_000_000],
                    help="user counts (default: 1000000 10000000)")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                    help="worker processes (default: 1 2)")
    ap.add_argument("--paths", nargs="+", choices=PATHS, default=list(PATHS),
                    help="paths to time (default: both)")
    ap.add_argument("--full", action="store_true",
                    help="also the partition path at more than 1,000,000 users (slow)")
    ap.add_argument("--data-dir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) /
                    "mixedmodels-bench-dask", help="where the Parquet files go (reused)")
    ap.add_argument("--no-memory", action="store_true", help="skip the in-memory comparison")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other cases of an existing --out file")
    ap.add_argument("--_case", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_memory", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._case:
        print(json.dumps(dask_case(Path(a._case[0]), int(a._case[1]), a._case[2])))
        return
    if a._memory:
        print(json.dumps(memory_case(Path(a._memory))))
        return

    load0 = os.getloadavg()
    code = _git_head()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; load average {load0[0]:.1f} (1 min) at the start; "
          f"code {code}")
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
        for path in a.paths:
            if path == "partitions" and users > 1_000_000 and not a.full:
                print(f"  {path:<10} skipped (slow at this size: --full runs it)")
                continue
            for w in a.workers:
                r = _in_fresh_process("--_case", str(folder), str(w), path)
                r.update(users=users, files=files, workers=w, path=path, code=code,
                         date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
                results["cases"].append(r)
                _print_case(r)
        if users <= 1_000_000 and not a.no_memory:
            m = _in_fresh_process("--_memory", str(folder))
            m.update(users=users, code=code)
            results["in_memory"].append(m)
            if "error" in m:
                print(f"  in memory: FAILED: {m['error']}")
            else:
                print(f"  in memory (pandas): {m['seconds']:.1f} s, peak {m['peak_gb']:.2f} GB; "
                      f"display {m['fixef'][1]:.5f}, sd {m['sd']:.4f}, logLik "
                      f"{m['loglik']:.3f}; load {m['load_before']:.1f} -> {m['load_after']:.1f}")
    results["machine"]["load_end"] = os.getloadavg()[0]
    print(f"\nload average {results['machine']['load_end']:.1f} (1 min) at the end "
          "(other work on the machine slows every wall time)")
    if a.out:
        if a.merge and a.out.exists():
            old = json.loads(a.out.read_text())
            new = {(c["users"], c["workers"], c["path"]) for c in results["cases"]}
            results["cases"] = [c for c in old.get("cases", [])
                                if (c.get("users"), c.get("workers"), c.get("path")) not in new
                                and c.get("path") in PATHS] + results["cases"]
            if not results["in_memory"]:
                results["in_memory"] = old.get("in_memory", [])
            results["machine"]["note"] = ("cases measured at different times: each case "
                                          "records its own load and date")
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(results, indent=1) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
