"""``lmer`` out of core on Dask: the profiled objective as sums of per-group blocks.

A Dask frame passed to :func:`mixedmodels.lmer` is fitted here. With one grouping factor the
penalized least-squares system of an LMM is block diagonal in the groups: group ``g`` has its
own ``Z_g' Z_g`` (``k x k``) and ``Z_g' [X y]`` (``k x (p + 1)``), and everything else is the
``(p + 1) x (p + 1)`` sum ``[X y]' [X y]``. At a given ``theta`` (``T`` the relative covariance
factor), the objective of :class:`mixedmodels.lmm.LMMProblem` needs only

- ``sum_g log det(T' Z_g' Z_g T + I)`` and
- ``sum_g U_g' U_g`` with ``U_g = L_g^{-1} T' Z_g' [X y]`` (``L_g`` the Cholesky factor of
  the block above), which the dense block's Schur complement subtracts;

both are sums over groups. So:

1. **Once, on the workers.** The frame is shuffled on the grouping column if a group's rows
   span partitions. Each partition evaluates the formula on its rows (the fit's coding, read
   from a sample and the column levels of the whole frame), builds the in-memory
   :class:`~mixedmodels.lmm.LMMProblem` of its rows -- the same code computes its groups'
   blocks -- and keeps the blocks and its rows there (a persisted future).
2. **Each evaluation** sends ``T`` and gets back the two sums per partition
   (:func:`mixedmodels.lmm.first_term_cholesky` and :func:`~mixedmodels.lmm.first_term_U`,
   the functions the in-memory objective calls); the driver factors the small dense block and
   forms the REML criterion or the deviance with
   :meth:`~mixedmodels.lmm.LMMProblem.components_from`, the in-memory formulas.
3. **The driver runs the in-memory optimizer** (:func:`~mixedmodels.lmm.optimize_theta`, its
   boundary rule and convergence check) and builds the in-memory result class; the conditional
   modes and variances are solved per group on the workers and gathered (one row per group).

A ``||`` term, or several terms of the one grouping factor (``(1 | g) + (0 + x | g)``), is
fitted as one block per group whose factor ``T`` is block diagonal: the same model, the same
``theta`` and the same result as in memory.

The objective equals the in-memory one to rounding (about 1e-15 relative: the sums are added
in another order), and so does its analytic gradient, which the partitions' sums also give
(:meth:`DaskLMMProblem.value_and_gradient`, one round trip per evaluation). With the gradient
the optimizer lands on the optimum to ~1e-10, in memory and here alike; minimized by finite
differences instead, the flat profiled criterion lets it stop anywhere within ~1e-5 relative
of the optimal ``theta`` (as an in-memory fit of the same rows in another order does). The
estimates at a given ``theta`` agree to rounding either way.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import uuid
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.linalg as sla

from .blas import single_thread_blas
from .distributed import DistributedFitError, _part_keys, _rank_of, get_client
from .distributed_frame import build_partitions, partition_counts
from .formula import (ModelStructure, ReTerm, _drop_dependent_columns, _label, _lhs_variables,
                      _formula_variables, build_model, evaluate_response, new_model_matrix,
                      parse_formula, resolve_spec)
from .lmm import (EXACT_FIT_FLOOR, LinearMixedModel, LMMProblem, _cholesky_exact_fit,
                  first_term_cholesky, first_term_U, one_factor_sums,
                  optimize_theta)
from .offsets import new_offset
from .results import ConvergenceWarning, OptSummary
from .covariance import CovarianceLayout

__all__ = ["lmer_dask", "DaskLMMProblem", "DaskLinearMixedModel", "dask_lmm_problem"]

SUPPORTED = ("lmer on a Dask frame supports one grouping factor with any number of "
             "random-effect columns, such as (1 | g), (x | g), (x || g) or "
             "(1 | g) + (0 + x | g)")

#: Rows of the frame read on the driver to learn the formula's coding (column types, names).
SAMPLE_ROWS = 500


# =========================================================================================
# Stage 1 on the workers: each partition's blocks
# =========================================================================================


@dataclass
class _Spec:
    """How every partition reads its rows: the columns and the fit's coding."""

    formula: str
    lhs: str
    cols: list[str]
    group: str
    categories: dict[str, pd.CategoricalDtype]
    template: ModelStructure       # the formula evaluated on a sample (specs, names, offsets)
    weights: str | None
    offset: str | None
    reml: bool


@dataclass
class _Part:
    """A partition's state on its worker: its groups' blocks and its rows (for residuals)."""

    n: int
    keys: np.ndarray
    A11: np.ndarray | None = None      # (G_p, K, K)
    A1R: np.ndarray | None = None      # (G_p, K, p_full + 1)
    ARR: np.ndarray | None = None      # (p_full + 1, p_full + 1)
    ldW: float = 0.0
    XtX: np.ndarray | None = None      # unweighted X'X of all formula columns (rank check)
    yrange: tuple[float, float] = (np.inf, -np.inf)
    n_dropped: int = 0
    warnings: list = field(default_factory=list)
    rows: dict | None = None           # index, y, X, Z, codes, offset, weights
    cols: np.ndarray | None = None     # the columns of X kept (set on the restricted state)


def _merged_Z(spec: _Spec, sub: pd.DataFrame) -> np.ndarray:
    """The grouping factor's random-effect columns, all terms side by side (term order)."""
    return np.ascontiguousarray(np.column_stack([t.new_Z(sub) for t in spec.template.reterms]))


def _codes(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.cat.remove_unused_categories()
        return col.cat.codes.to_numpy(dtype=np.int64), np.asarray(col.cat.categories)
    codes, keys = pd.factorize(col, sort=True)
    return np.asarray(codes, dtype=np.int64), np.asarray(keys)


def _build_part(df: pd.DataFrame, spec: _Spec) -> _Part:
    """Evaluate the formula on a partition's rows and build its groups' blocks (the in-memory
    :class:`~mixedmodels.lmm.LMMProblem` of the rows computes them)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sub = df[spec.cols]
        complete = sub.notna().all(axis=1).to_numpy()
        sub = sub.loc[complete]
        for c, dt in spec.categories.items():
            sub = sub.assign(**{c: sub[c].astype(dt)})
        part = _Part(n=len(sub), keys=np.asarray(sub[spec.group].iloc[:0]),
                     n_dropped=int((~complete).sum()))
        if len(sub):
            tpl = spec.template
            y, _, _ = evaluate_response(spec.lhs, sub)
            y = np.asarray(y, dtype=float)
            if y.ndim != 1:
                raise ValueError(f"the response {spec.lhs!r} must be a single numeric column "
                                 "for a linear mixed model")
            if not np.all(np.isfinite(y)):
                raise ValueError(f"the response {spec.lhs!r} has infinite or undefined values")
            X = np.ascontiguousarray(new_model_matrix(tpl.fixed_spec, sub, tpl.fixed_variables,
                                                      tpl.float_columns, "fixed-effects matrix"))
            Z = _merged_Z(spec, sub)
            for M, what in ((X, "fixed-effects"), (Z, "random-effects")):
                if not np.all(np.isfinite(M)):
                    raise ValueError(f"the {what} matrix has infinite values")
            codes, keys = _codes(sub[spec.group])
            off = new_offset(tpl, sub) if (tpl.parsed.offsets or spec.offset) else None
            w = None
            if spec.weights is not None:
                w = sub[spec.weights].to_numpy(dtype=float)
                if np.any(~(w > 0)) or not np.all(np.isfinite(w)):
                    raise ValueError(f"`weights` must be positive ({int(np.sum(~(w > 0)))} values "
                                     "are zero or negative); drop rows that should not count")
            term = ReTerm(spec=tpl.reterms[0].spec, group=spec.group, codes=codes, levels=keys,
                          Z=Z, cnames=[c for t in tpl.reterms for c in t.cnames], correlated=True,
                          level_keys=[])
            ms = dataclasses.replace(tpl, data=None, y=y, X=X, reterms=[term], rows=sub.index,
                                     offset=off, weights=w, x_keep=np.arange(X.shape[1]))
            problem = LMMProblem(ms, reml=spec.reml)
            part.keys = keys
            part.A11, part.A1R, part.ARR, part.ldW = problem.A11, problem.A1R, problem.ARR, problem.ldW
            part.XtX = X.T @ X
            part.yrange = (float(y.min()), float(y.max()))
            part.rows = {"index": sub.index, "y": y, "X": X, "Z": Z, "codes": codes,
                         "offset": off, "weights": w}
    part.warnings = [(w.category, str(w.message)) for w in caught]
    return part


def _summary(part: _Part) -> dict:
    """What the driver needs once (everything but the per-group blocks and the rows)."""
    return {"n": part.n, "keys": part.keys, "ARR": part.ARR, "ldW": part.ldW, "XtX": part.XtX,
            "yrange": part.yrange, "n_dropped": part.n_dropped, "warnings": part.warnings}


def _restrict(part: _Part, cols: np.ndarray) -> _Part:
    """The state on the kept columns of X (the rank check may drop some), plus ``y``."""
    if part.A1R is None:
        return part
    sel = np.r_[cols, part.A1R.shape[2] - 1]
    rows = dict(part.rows, X=np.ascontiguousarray(part.rows["X"][:, cols]))
    return dataclasses.replace(part, A1R=np.ascontiguousarray(part.A1R[:, :, sel]),
                               ARR=part.ARR[np.ix_(sel, sel)], rows=rows, cols=np.asarray(cols))


def _evaluate(part: _Part, T: np.ndarray, gradient: bool = False):
    """A partition's sums at ``T`` (:func:`mixedmodels.lmm.one_factor_sums`, the in-memory
    objective's kernel): ``sum_g log det M_g`` and ``sum_g U_g' U_g``; with ``gradient``, also
    the two sums :func:`mixedmodels.lmm.one_factor_gradient` forms the gradient from."""
    if part.A11 is None:
        return None
    t0 = time.perf_counter()
    try:
        with single_thread_blas():
            sums = one_factor_sums(T, part.A11, part.A1R, gradient=gradient)
    except np.linalg.LinAlgError as exc:
        return ("error", str(exc))
    out = ["ok", sums[0], sums[1], 0.0, *sums[2:]]
    out[3] = time.perf_counter() - t0
    return tuple(out)


def _modes(part: _Part, T: np.ndarray, beta: np.ndarray):
    """Each group's spherical modes ``u_g``, scaled ``b_g = T u_g`` and the conditional
    covariance ``T (L_g L_g')^{-1} T'`` (times sigma^2: lme4's condVar), at ``T`` and ``beta``
    (the in-memory :meth:`LMMProblem.solve` with one grouping factor, per group)."""
    if part.A11 is None:
        return None
    with single_thread_blas():
        _, L11 = first_term_cholesky(T, part.A11)
        U = first_term_U(L11, T, part.A1R)
        rhs = U[:, :, -1] - U[:, :, :-1] @ beta
        u = np.linalg.solve(np.transpose(L11, (0, 2, 1)), rhs[:, :, None])[:, :, 0]
        Linv = np.linalg.inv(L11)
        V = np.einsum("gji,gjk->gik", Linv, Linv)
        cv = np.einsum("ij,gjk,lk->gil", T, V, T)
    return u, u @ T.T, cv


def _rows_out(part: _Part, beta: np.ndarray, b: np.ndarray):
    """The partition's rows: index labels, response, prior weights and fitted values at the
    estimates (``b``: the partition's groups' random effects, its own order)."""
    if part.rows is None:
        return None
    r = part.rows
    mu = r["X"] @ beta + np.einsum("ij,ij->i", r["Z"], b[r["codes"]])
    if r["offset"] is not None:
        mu = mu + r["offset"]
    w = np.ones(len(mu)) if r["weights"] is None else r["weights"]
    return r["index"], r["y"], w, mu


# =========================================================================================
# Stage 2 on the driver: the objective
# =========================================================================================


class DaskLMMStructure(ModelStructure):
    """The model structure of a Dask fit without its rows (they stay on the workers): the
    coding, names, specs and the random-effect terms with all levels, for the result's
    accessors and ``predict``. ``n`` is the number of rows used."""

    nobs: int = 0

    @property
    def n(self) -> int:
        return self.nobs


class DaskLMMProblem(LMMProblem):
    """The profiled LMM objective of a Dask frame (one grouping factor).

    Has the in-memory :class:`~mixedmodels.lmm.LMMProblem`'s interface (call it with
    ``theta``; ``components``, ``solve``, ``lower``, ``theta0``, ``ntheta``, ``n``, ``p``), so
    :func:`~mixedmodels.lmm.optimize_theta`, :class:`~mixedmodels.lmm.LinearMixedModel` and
    the profiler use it unchanged. Built by :func:`dask_lmm_problem`.

    Attributes
    ----------
    client : distributed.Client
    parts : list of Future
        The partitions' persisted blocks.
    ARR : ndarray (p + 1, p + 1)
        ``[X y]' [X y]`` over all rows (weighted, offset subtracted).
    eval_log : list of (float, list of float)
        Per evaluation: wall seconds on the driver and each partition's compute seconds.
    """

    # value_and_gradient below gives the in-memory gradient's formula from per-partition sums,
    # so the optimizer runs as in memory (and lands on the same optimum to ~1e-10).
    analytic_gradient = True

    def __init__(self, client, parts: list, model: DaskLMMStructure, ARR: np.ndarray, ldW: float,
                 part_keys: list[np.ndarray], rank: np.ndarray, reml: bool = True,
                 verbose: bool = False):
        self.client, self.parts, self.model = client, parts, model
        self.reml = bool(reml)
        self.terms = model.reterms
        self.n, self.p = model.nobs, model.p
        self.k1, self.l1 = sum(t.k for t in self.terms), self.terms[0].nlevels
        self.qrest = 0                      # one block per group: no dense random part
        # The dense block's width: optimize_theta picks L-BFGS-B with the analytic gradient for
        # it. (In memory, several terms of one factor -- a || term -- make the dense block as
        # wide as the levels, and a wide one is minimized by COBYQA without derivatives.)
        self.r = self.p + 1
        self.ARR, self.ldW = ARR, float(ldW)
        # theta's positions, bounds and start: from its one owner, mixedmodels.covariance.
        self.layout = CovarianceLayout(self.terms)
        self.ntheta = self.layout.ntheta
        self.lower = self.layout.lower
        self.theta0 = self.layout.start()
        self.sparse = False
        self._part_keys = part_keys
        # Partition-order group i is level pos[i] of the fit (the in-memory order of levels).
        self._perm = np.argsort(rank, kind="stable")
        self.evaluations = 0
        self.history: list[tuple[np.ndarray, float]] = []
        self.record_history = False
        self.eval_log: list[tuple[float, list[float]]] = []
        self._bar = None
        if verbose:
            from tqdm import tqdm
            self._bar = tqdm(desc="lmer on Dask", unit=" evaluations", leave=False)

    def with_reml(self, reml: bool) -> "DaskLMMProblem":
        """The same blocks with the other criterion (REML or ML), nothing recomputed."""
        out = LMMProblem.__new__(DaskLMMProblem)
        out.__dict__.update(self.__dict__)
        out.reml = bool(reml)
        out.evaluations, out.history, out.record_history, out.eval_log = 0, [], False, []
        out._bar = None
        return out

    # ---- the cluster ---------------------------------------------------------------------
    def _map(self, fn, *args):
        futures = [self.client.submit(fn, f, *args, pure=False) for f in self.parts]
        try:
            return self.client.gather(futures)
        except (ValueError, np.linalg.LinAlgError):
            raise
        except Exception as exc:
            raise DistributedFitError(
                f"the Dask cluster failed during the fit ({type(exc).__name__}: {exc}); no "
                "estimate is returned from a partial evaluation. Check the workers (memory, "
                "lost connections) and fit again.") from exc

    def block_T(self, theta: np.ndarray) -> np.ndarray:
        """The grouping factor's whole relative covariance factor: the terms' factors on the
        diagonal (one term: its ``T``)."""
        return sla.block_diag(*self.split_theta(theta))

    # ---- the objective --------------------------------------------------------------------
    def factor(self, theta: np.ndarray, need_U: bool = True):
        """``(None, None, LRR)``: the factor of the dense block (the per-group factors stay
        on the workers).

        Raises
        ------
        numpy.linalg.LinAlgError
            If the dense block is not positive definite.
        """
        if need_U:
            raise ValueError("the per-group blocks of a Dask fit stay on its workers")
        return None, None, self._factor(theta)[1]

    def _factor(self, theta: np.ndarray, gradient: bool = False):
        t0 = time.perf_counter()
        outs = [o for o in self._map(_evaluate, self.block_T(theta), gradient) if o is not None]
        bad = [o for o in outs if o[0] == "error"]
        if bad:
            raise np.linalg.LinAlgError(bad[0][1])
        ld = float(sum(o[1] for o in outs))
        S = self.ARR.copy()
        for o in outs:
            S -= o[2]
        LRR, info = sla.lapack.dpotrf(S, lower=1, clean=1, overwrite_a=1)
        if info != 0:
            LRR = _cholesky_exact_fit(LRR, info, self.ARR[-1, -1])
        self.eval_log.append((time.perf_counter() - t0, [o[3] for o in outs]))
        if self._bar is not None:
            self._bar.update(1)
        if gradient:
            return ld, LRR, sum(o[4] for o in outs), sum(o[5] for o in outs)
        return ld, LRR

    def value_and_gradient(self, theta: np.ndarray) -> tuple[float, np.ndarray | None]:
        """The objective and its analytic gradient at theta, in one round trip.

        The in-memory formula for one grouping factor
        (:func:`mixedmodels.lmm.one_factor_gradient`, from the partitions' sums of
        :func:`mixedmodels.lmm.one_factor_sums`): no ``T^{-1}``, so exact on the boundary too.

        Returns
        -------
        value : float
            As :meth:`__call__` (one evaluation); +inf where undefined.
        gradient : ndarray (ntheta,) or None
            None where the objective is undefined.
        """
        theta = np.asarray(theta, dtype=float)
        return self._one_factor_result(theta, lambda: self._factor(theta, gradient=True))

    def components(self, theta: np.ndarray):
        """The named pieces of the objective at theta (as the in-memory problem's)."""
        ld, LRR = self._factor(theta)
        return self.components_from(ld, LRR)

    def solve(self, theta: np.ndarray) -> dict:
        """Fixed effects and every group's modes and conditional variances at theta (the
        per-group solves run on the workers; one row per group is gathered)."""
        ld, LRR = self._factor(theta)
        comps = self.components_from(ld, LRR)
        p = self.p
        beta = sla.solve_triangular(LRR[:p, :p], LRR[p, :p], lower=True, trans="T")
        outs = [o for o in self._map(_modes, self.block_T(theta), beta) if o is not None]
        u, b, cv = (np.concatenate([o[j] for o in outs])[self._perm] for j in range(3))
        self._b_parts = [o[1] for o in outs]
        Ts = self.split_theta(theta)
        us, bs, cvs, c = [], [], [], 0
        for t in self.terms:
            s = slice(c, c + t.k)
            us.append(u[:, s])
            bs.append(b[:, s])
            cvs.append(cv[:, s, s])
            c += t.k
        return {"beta": beta, "u": us, "b": bs, "L11": None, "U": None, "LRR": LRR, "T": Ts,
                "components": comps, "condvar": cvs}

    def conditional_variances(self, sol: dict) -> list[np.ndarray]:
        """Per term, ``(nlevels, k, k)`` blocks of ``Lambda (L L')^{-1} Lambda'`` (computed
        by :meth:`solve` on the workers)."""
        return sol["condvar"]

    def rows(self, beta: np.ndarray):
        """Index labels, response, prior weights and fitted values of every row, gathered
        (partition order), at ``beta`` and the modes of the last :meth:`solve`."""
        futures = [self.client.submit(_rows_out, f, beta, b, pure=False)
                   for f, b in zip(self.parts, self._b_parts)]
        try:
            outs = [o for o in self.client.gather(futures) if o is not None]
        except Exception as exc:
            raise DistributedFitError(f"the Dask cluster failed ({exc})") from exc
        index = outs[0][0].append([o[0] for o in outs[1:]]) if len(outs) > 1 else outs[0][0]
        return (index, *(np.concatenate([o[j] for o in outs]) for j in (1, 2, 3)))

    def close_progress(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


# =========================================================================================
# Stage 1 on the driver: check the formula, learn the coding, shuffle, build partitions
# =========================================================================================


def _check_formula(formula: str, weights, offset):
    parsed = parse_formula(formula)
    if not parsed.lhs:
        raise ValueError(f"formula {formula!r} has no response on the left of '~'")
    if not parsed.random:
        raise ValueError(f"formula {formula!r} has no random-effects term such as (1 | group); "
                         "for a model without random effects use ordinary least squares")
    groups = list(dict.fromkeys(t.group for t in parsed.random))
    if len(groups) != 1:
        raise ValueError(f"{SUPPORTED}; {formula!r} has {len(groups)} grouping factors "
                         f"({', '.join(groups)}). The profiled objective is a sum over "
                         "partitions only when each partition holds whole groups of the one "
                         "factor; fit it in memory (compute() the frame into pandas)")
    if len(parsed.random[0].group_vars) != 1:
        raise ValueError(f"{SUPPORTED}; the grouping factor {groups[0]!r} is an interaction or "
                         "a nesting: make it one column first")
    for name, v in (("weights", weights), ("offset", offset)):
        if v is not None and not isinstance(v, str):
            raise ValueError(f"with a Dask frame, `{name}` must be the name of a column")
    return parsed


def _template(formula: str, sample: pd.DataFrame, group: str, weights, offset) -> ModelStructure:
    """The formula evaluated on a sample of rows: model specs, names, offsets. The grouping
    column is replaced by two alternating levels (the sample's own groups do not matter)."""
    from .offsets import attach_offset
    from .weights import attach_weights

    sample = sample.assign(**{group: np.arange(len(sample)) % 2})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ms = build_model(formula, sample)
        if weights is not None or offset is not None:
            ms = attach_weights(attach_offset(ms, offset, sample), None, sample)
    # The model specs themselves (not deferred ones holding the sample): the workers apply them.
    terms = [dataclasses.replace(t, model_spec=resolve_spec(t.model_spec)) for t in ms.reterms]
    return dataclasses.replace(ms, fixed_spec=resolve_spec(ms.fixed_spec), reterms=terms)


def _full_names(ms: ModelStructure) -> list[str]:
    """All columns of the formula's fixed-effects matrix (the sample may have dropped some)."""
    names: list[Any] = [None] * (len(ms.xnames) + len(ms.dropped_columns))
    for j, nm in zip(ms.x_keep, ms.xnames):
        names[j] = nm
    rest = iter(ms.dropped_columns)
    return [nm if nm is not None else next(rest) for nm in names]


def _build_spec(formula, data, reml, weights, offset) -> _Spec:
    parsed = _check_formula(formula, weights, offset)
    group = parsed.random[0].group_vars[0]
    columns = pd.Index(data.columns)
    for name, v in (("weights", weights), ("offset", offset), ("grouping factor", group)):
        if v is not None and v not in columns:
            raise ValueError(f"{name} column {v!r} not found in data")
    # The first partition suffices (reading all of them would read the whole data once more).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sample = data.head(SAMPLE_ROWS, npartitions=1)
        if len(sample) < SAMPLE_ROWS:
            sample = data.head(SAMPLE_ROWS, npartitions=-1)
    if len(sample) == 0:
        raise ValueError("the Dask frame has no rows")
    # Dask reads text as pyarrow strings, which formulaic would not code as a factor.
    text = {c: object for c in sample.columns
            if not (pd.api.types.is_numeric_dtype(sample[c].dtype)
                    or pd.api.types.is_bool_dtype(sample[c].dtype)
                    or isinstance(sample[c].dtype, pd.CategoricalDtype))}
    tpl0 = _template(formula, sample.astype(text), group, weights, offset)
    lhs_vars = sorted(_lhs_variables(parsed.lhs, columns))
    model_vars = list(tpl0.fixed_variables) + [v for t in tpl0.reterms for v in t.variables]
    off_vars = [v for e in parsed.offsets
                for v in _formula_variables(f"0 + I({e})", columns, f"offset({e})")[0]]
    cols = list(dict.fromkeys(lhs_vars + model_vars + off_vars + [group]
                              + [v for v in (weights, offset) if v is not None]))
    # Text columns of the model matrices: their levels over the whole frame, so that every
    # partition codes them as one in-memory frame would.
    categories = {}
    meta = data._meta
    for c in dict.fromkeys(model_vars):
        dt = meta[c].dtype
        if isinstance(dt, pd.CategoricalDtype) and getattr(data[c].cat, "known", True) \
                and len(dt.categories):
            categories[c] = dt
        elif isinstance(dt, pd.CategoricalDtype) or not (pd.api.types.is_numeric_dtype(dt)
                                                         or pd.api.types.is_bool_dtype(dt)):
            vals = data[c].dropna().unique().compute()
            vals = vals.astype(str) if isinstance(vals.dtype, pd.CategoricalDtype) else vals
            categories[c] = pd.CategoricalDtype(sorted(pd.unique(vals)))
    sample = sample[cols].dropna()
    if len(sample) == 0:
        raise ValueError("no complete rows in the first partition of the data")
    for c, dt in categories.items():
        sample[c] = sample[c].astype(dt)
    tpl = _template(formula, sample, group, weights, offset)
    return _Spec(formula, parsed.lhs, cols, group, categories, tpl, weights, offset, bool(reml))


def dask_lmm_problem(formula: str, data, reml: bool = True, *, weights: str | None = None,
                     offset: str | None = None, client=None, verbose: bool = False
                     ) -> DaskLMMProblem:
    """Stages 1-2 of ``lmer`` on a Dask frame: the objective, its blocks on the workers
    (lme4's ``devFunOnly``).

    Parameters
    ----------
    formula : str
        lme4 syntax with one grouping factor (see :data:`SUPPORTED`).
    data : dask.dataframe.DataFrame
        Any partitioning: rows of a group spread over partitions are shuffled together once.
    reml : bool
        REML criterion (True) or ML deviance.
    weights, offset : str, optional
        Column names (precision weights; a known term of the linear predictor).
    client : distributed.Client or str, optional
        See :func:`~mixedmodels.distributed_frame.get_client`.
    verbose : bool
        A progress bar over evaluations (stderr).

    Returns
    -------
    DaskLMMProblem
        ``problem(theta)`` is the objective; ``problem.model`` the model structure.

    Raises
    ------
    ValueError
        An unsupported structure (several grouping factors), a missing column, bad values.
    DistributedFitError
        The cluster failed.
    """
    import dask

    spec = _build_spec(formula, data, reml, weights, offset)
    client = get_client(client)
    group_dtype = data._meta[spec.group].dtype
    keys = client.gather(client.compute([dask.delayed(_part_keys)(p, spec.group)
                                         for p in data[[spec.group]].to_delayed()]))
    allk = np.concatenate(keys) if keys else np.zeros(0)
    shuffled = len(pd.unique(allk)) != len(allk)
    if shuffled:
        data = data.shuffle(on=spec.group, method="tasks")
    futures, sums = build_partitions(client, data[spec.cols].to_delayed(), _build_part, _summary,
                                     spec, "mm-lmm")
    n, allk = partition_counts(sums, spec.cols, stacklevel=3)
    ndrop = sum(s["n_dropped"] for s in sums)
    part_keys = [s["keys"] for s in sums]
    tpl = spec.template
    lo = min(s["yrange"][0] for s in sums)
    hi = max(s["yrange"][1] for s in sums)
    if lo == hi:
        raise ValueError(f"the response {spec.lhs!r} is constant")
    # The rank of X by the in-memory rule, on a square root of X'X (same column dependencies).
    full = _full_names(tpl)
    XtX = sum(s["XtX"] for s in sums if s["XtX"] is not None)
    w, V = np.linalg.eigh(XtX)
    x_keep = _drop_dependent_columns(np.sqrt(np.clip(w, 0, None))[:, None] * V.T, full)
    dropped = [full[j] for j in range(len(full)) if j not in set(x_keep.tolist())]
    if dropped:
        warnings.warn(f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
                      f"column(s): {', '.join(dropped)}", UserWarning, stacklevel=3)
    p = len(x_keep)
    if n <= p:
        raise ValueError(f"{n} observations are not enough for {p} fixed effects")
    rank = _rank_of(allk, group_dtype)
    order = np.argsort(rank, kind="stable")
    gkeys = allk[order]
    G = len(gkeys)
    labels = [_label(v.item() if isinstance(v, np.generic) else v) for v in gkeys]
    terms = [dataclasses.replace(t, codes=np.zeros(0, dtype=np.int64), levels=labels,
                                 level_keys=[(v.item() if isinstance(v, np.generic) else v,)
                                             for v in gkeys],
                                 Z=np.zeros((0, t.k))) for t in tpl.reterms]
    if G < 2:
        raise ValueError(f"grouping factor {spec.group!r} has {G} level; a random effect needs "
                         "at least 2 levels")
    if G >= n:
        raise ValueError(f"grouping factor {spec.group!r} has {G} levels for {n} observations; "
                         "the number of levels must be smaller than the number of observations")
    for t in terms:
        if t.q >= n:
            raise ValueError(f"random-effects term {t.spec} has {t.q} random effects ({t.k} per "
                             f"level x {G} levels) for only {n} observations; the random-effects "
                             "parameters and the residual variance are unidentifiable")
    model = DaskLMMStructure(
        formula=formula, parsed=tpl.parsed, data=None, y=np.zeros(0), lhs_terms=[],
        lhs_ratio=None, X=np.zeros((0, p)), xnames=[full[j] for j in x_keep],
        dropped_columns=dropped, rows=None, n_dropped=ndrop, reterms=terms,
        fixed_spec=tpl.fixed_spec, x_keep=x_keep,
        offset=None, offset_argument=tpl.offset_argument, weights=None,
        fixed_variables=tpl.fixed_variables, float_columns=tpl.float_columns)
    model.nobs = n
    parts = [client.submit(_restrict, f, x_keep, pure=False) for f in futures]
    del futures
    sel = np.r_[x_keep, len(full)]
    ARR = sum(s["ARR"] for s in sums if s["ARR"] is not None)[np.ix_(sel, sel)]
    ldW = float(sum(s["ldW"] for s in sums))
    problem = DaskLMMProblem(client, parts, model, ARR, ldW, part_keys, rank, reml=reml,
                             verbose=verbose)
    problem.shuffled = shuffled
    return problem


# =========================================================================================
# The result
# =========================================================================================


class DaskLinearMixedModel(LinearMixedModel):
    """A linear mixed model fitted on Dask: the in-memory result, whose row-wise accessors
    (``fitted``, ``residuals``, the summary's residual quantiles) gather the rows' values
    from the workers.

    Attributes (beyond :class:`~mixedmodels.lmm.LinearMixedModel`'s)
    ------------------------------------------------------------------
    distributed : dict
        How the fit ran: ``npartitions``, ``nworkers``, ``shuffled``, ``evaluations``,
        ``seconds``, ``setup_seconds``, ``fit_seconds``, ``eval_wall_seconds``.
    """

    _gathered = None

    def _rows(self):
        if self._gathered is None:
            index, y, w, mu = self.problem.rows(self.fixef.to_numpy())
            self._gathered = (y, w, mu)
            self.model.rows = index
        return self._gathered

    def _mu(self) -> np.ndarray:
        return self._rows()[2]

    def _eta(self) -> np.ndarray:
        return self._rows()[2]

    def _response_parts(self):
        y, w, _ = self._rows()
        one = np.ones_like(y)
        return y, w, one, one

    def predict(self, newdata=None, include_random: bool = True, offset=None,
                allow_new_levels: bool = False):
        """Predictions, as :meth:`mixedmodels.lmm.LinearMixedModel.predict`; ``newdata`` may
        be a Dask frame (then a Dask Series). Without ``newdata``: the fitted values, gathered
        (``include_random`` must then be True)."""
        if newdata is None:
            if not include_random:
                raise ValueError("the rows of a Dask fit live on the cluster: pass them as "
                                 "newdata for population predictions")
            return self.fitted()
        if newdata.__class__.__module__.startswith("dask"):
            meta = pd.Series([], dtype=float, name="predicted")
            return newdata.map_partitions(_predict_part, _Predictor(self), include_random,
                                          offset, allow_new_levels, meta=meta)
        return LinearMixedModel.predict(self, newdata, include_random=include_random,
                                        offset=offset, allow_new_levels=allow_new_levels)

    def ml_problem(self):
        """The ML objective on the same blocks and its optimum (a REML fit is refitted)."""
        if not self.reml:
            return self.problem, np.asarray(self.theta, dtype=float)
        problem = self.problem.with_reml(False)
        opt = optimize_theta(problem, start=self.theta)
        return problem, np.asarray(opt.final, dtype=float)

    def evaluation_log(self) -> pd.DataFrame:
        """Each objective evaluation: its wall time on the driver and every partition's
        compute time on its worker (seconds).

        Returns
        -------
        DataFrame
            Columns ``evaluation``, ``partition``, ``seconds`` and ``wall_seconds``.
        """
        rows = [(i, j, t, wall) for i, (wall, ts) in enumerate(self.problem.eval_log)
                for j, t in enumerate(ts)]
        return pd.DataFrame(rows, columns=["evaluation", "partition", "seconds", "wall_seconds"])


class _Predictor:
    """What a partition of new data needs to be predicted: the fit without its cluster."""

    def __init__(self, fit: DaskLinearMixedModel):
        light = copy.copy(fit)
        light.problem, light.call, light._gathered = None, None, None
        self.fit, self.token = light, uuid.uuid4().hex

    def __dask_tokenize__(self):
        return self.token


def _predict_part(df: pd.DataFrame, pred: _Predictor, include_random, offset, allow_new_levels):
    return LinearMixedModel.predict(pred.fit, df, include_random=include_random, offset=offset,
                                    allow_new_levels=allow_new_levels)


def lmer_dask(formula: str, data, reml: bool = True, *, start: np.ndarray | None = None,
              weights: str | None = None, offset: str | None = None, client=None,
              verbose: bool = True) -> DaskLinearMixedModel:
    """Fit a linear mixed model to a Dask frame, out of core (what :func:`mixedmodels.lmer`
    calls for a Dask frame).

    Parameters
    ----------
    formula : str
        One grouping factor, any number of random-effect columns: ``"y ~ x + (x | g)"``,
        ``"y ~ x + (1 | g)"``, ``"y ~ x + (x || g)"``.
    data : dask.dataframe.DataFrame
    reml : bool
        REML (default) or ML.
    start : array, optional
        Starting theta.
    weights, offset : str, optional
        Column names, as :func:`mixedmodels.lmer`'s.
    client : distributed.Client or str, optional
        See :func:`~mixedmodels.distributed_frame.get_client`.
    verbose : bool
        A progress bar over objective evaluations (stderr).

    Returns
    -------
    DaskLinearMixedModel
        ``result.distributed`` says how the fit ran.

    Raises
    ------
    ValueError
        Several grouping factors (with what is supported), a missing column, bad values.
    DistributedFitError
        The cluster failed during the fit; no estimate is returned.
    """
    from . import _validate

    t0 = time.perf_counter()
    problem = dask_lmm_problem(formula, data, reml, weights=weights, offset=offset,
                               client=client, verbose=verbose)
    t1 = time.perf_counter()
    if start is not None:
        start = _validate.check_theta(start, problem.ntheta, problem.lower, "start")
    try:
        with single_thread_blas():
            optsum: OptSummary = optimize_theta(problem, start)
            fit = DaskLinearMixedModel(problem.model, problem, optsum)
    finally:
        problem.close_progress()
    t2 = time.perf_counter()
    info = problem.client.scheduler_info()
    walls = [w for w, _ in problem.eval_log]
    fit.distributed = {"npartitions": len(problem.parts),
                       "nworkers": len(info.get("workers", {})), "shuffled": problem.shuffled,
                       "evaluations": optsum.evaluations, "seconds": t2 - t0,
                       "setup_seconds": t1 - t0, "fit_seconds": t2 - t1,
                       "eval_wall_seconds": float(np.mean(walls)) if walls else float("nan")}
    if fit.components.pwrss <= 1.01 * EXACT_FIT_FLOOR * problem.ARR[-1, -1]:
        warnings.warn(f"the response {problem.model.parsed.lhs!r} is fitted exactly: the residual "
                      f"standard deviation is ~0 ({fit.sigma:.2g})", UserWarning, stacklevel=3)
    if fit.singular:
        warnings.warn("boundary (singular) fit: a variance component is estimated as zero",
                      UserWarning, stacklevel=3)
    if not fit.converged:
        warnings.warn("the model " + optsum.convergence_message, ConvergenceWarning, stacklevel=3)
    return fit

