"""One BLAS thread while fitting (shared by the LMM, the GLMM and the profiler)."""

from __future__ import annotations

from threadpoolctl import ThreadpoolController

__all__ = ["single_thread_blas"]

_THREADPOOLS = ThreadpoolController()


def single_thread_blas():
    """Context manager limiting BLAS to one thread while fitting.

    Our matrices are small or moderate (the dense block is at most a few thousand wide), so a
    multithreaded BLAS gains little and, on a busy 2-core machine, threads that wait for each
    other can make a 1,000 x 1,000 Cholesky factorization 50 times slower.
    """
    return _THREADPOOLS.limit(limits=1, user_api="blas")
