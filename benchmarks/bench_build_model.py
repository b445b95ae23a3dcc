"""Benchmark of model building: what ``lmer`` does before it fits (issue 10's small-LMM target).

For each gaussian reference fit it prints the median wall-clock time of
``formula.build_model`` alone, of everything ``lmer`` runs before ``LMMProblem`` (input checks,
per-row arguments, ``build_model``, offsets, weights, structural checks; timed by stopping
``lmer`` where it enters its BLAS thread limit, just before ``LMMProblem``) and of the whole
``lmer`` call, so the share of model building in a small fit is visible. The first call of each
model is not timed (imports and the formula cache warm, as in a session).

Run: ``.venv/bin/python benchmarks/bench_build_model.py`` (``--repeats N`` for the timed runs of
model building, 300 by default; the whole fit gets a tenth of them). A loaded machine inflates
every figure: the load average is printed at the start and the end.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

import mixedmodels.lmm as lmm
from mixedmodels.formula import build_model

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_lmm_reference import GAUSSIAN, load_reference  # noqa: E402


class _Stop(Exception):
    """Raised where lmer starts fitting, to time what comes before."""


def _stop(*args, **kwargs):
    raise _Stop


def _before_fit(formula: str, df, reml: bool) -> None:
    """lmer up to the point where it builds the LMMProblem."""
    original = lmm.single_thread_blas
    lmm.single_thread_blas = _stop
    try:
        lmm.lmer(formula, df, reml=reml)
    except _Stop:
        return
    finally:
        lmm.single_thread_blas = original
    raise RuntimeError("lmer no longer enters single_thread_blas before fitting; update this benchmark")


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def main(repeats: int = 300) -> None:
    print(f"machine: {platform.machine()}, {platform.system()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}, load average {os.getloadavg()[0]:.2f} at the start")
    print(f"median wall-clock ms ({repeats} runs of model building, {max(repeats // 10, 5)} of the whole fit):")
    print(f"  {'model':25s} {'build_model':>11s} {'lmer before fit':>16s} {'whole lmer':>11s} {'share':>6s}")
    for name in GAUSSIAN:
        ref, df = load_reference(name)
        formula, reml = ref["formula"], ref["reml"]
        lmm.lmer(formula, df, reml=reml)
        build = _median_ms(lambda: build_model(formula, df), repeats)
        before = _median_ms(lambda: _before_fit(formula, df, reml), repeats)
        whole = _median_ms(lambda: lmm.lmer(formula, df, reml=reml), max(repeats // 10, 5))
        print(f"  {name:25s} {build:11.3f} {before:16.3f} {whole:11.2f} {before / whole:6.0%}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main(repeats=int(sys.argv[sys.argv.index("--repeats") + 1]) if "--repeats" in sys.argv else 300)
