"""lme4-style model formulas: from ``y ~ x + (x | g)`` to model matrices.

This is the first stage of a fit (lme4's ``lFormula``). Two public entry points:

* :func:`parse_formula` splits a formula string into its response, its fixed-effects
  right-hand side and its random-effects terms ``(expr | group)``. It is pure string work:
  the bar terms are cut out with a small parenthesis matcher, ``(x || g)`` is expanded into
  uncorrelated terms and ``(1 | a/b)`` into ``(1 | a) + (1 | b:a)``, as lme4 does.
* :func:`build_model` evaluates a formula on a DataFrame and returns a :class:`ModelStructure`
  (response, fixed-effects matrix ``X``, and one :class:`ReTerm` per random-effects term).

The fixed part and the columns of each random term are built by ``formulaic``; we only
rename its column labels to R's (``(Intercept)``, ``Bowlong`` rather than ``Bow[T.long]``) so
that results read like lme4's. Grouping columns of any dtype are treated as categorical.

Example
-------
>>> import pandas as pd
>>> df = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "g": ["a", "a", "b", "b"]})
>>> m = build_model("y ~ 1 + (1 | g)", df)
>>> m.xnames, m.reterms[0].group, m.reterms[0].levels
(['(Intercept)'], 'g', ['a', 'b'])
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import formulaic
from formulaic.errors import FormulaicError

from .offsets import evaluate_offsets

__all__ = [
    "RandomTermSpec",
    "ParsedFormula",
    "ReTerm",
    "ModelStructure",
    "parse_formula",
    "build_model",
    "evaluate_response",
    "grouping_codes",
]


# --------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomTermSpec:
    """One random-effects term ``(lhs | group)`` after expansion.

    Attributes
    ----------
    lhs : str
        The model formula of the term's columns, e.g. ``"1"``, ``"Days"``, ``"0 + Days"``.
    group : str
        The grouping expression with spaces removed, e.g. ``"Subject"`` or ``"cask:batch"``.
    group_vars : tuple of str
        The data columns whose interaction defines the groups, in the order written.
    correlated : bool
        False for the pieces of a ``||`` term (each piece then has a single column, or a
        factor's block, as in lme4's ``expandDoubleVerts``).
    """

    lhs: str
    group: str
    group_vars: tuple[str, ...]
    correlated: bool = True

    def __str__(self) -> str:
        return f"({self.lhs} | {self.group})"


@dataclass(frozen=True)
class ParsedFormula:
    """A formula split into response, fixed part and random-effects terms.

    Attributes
    ----------
    formula : str
        The original formula text.
    lhs : str
        The response expression, e.g. ``"Yield"``, ``"cbind(incidence, size - incidence)"``
        or ``"clicks/expos"``; empty if the formula has no left-hand side.
    fixed_rhs : str
        The right-hand side without the bar terms, ready for formulaic (``"1"`` if nothing
        else is left, since an intercept is implied).
    random : list of RandomTermSpec
        The expanded random-effects terms in the order written.
    offsets : list of str
        The expressions of the ``offset(...)`` terms, e.g. ``["log(t)"]``.
    """

    formula: str
    lhs: str
    fixed_rhs: str
    random: list[RandomTermSpec] = field(default_factory=list)
    offsets: list[str] = field(default_factory=list)


def _top_level_split(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` where it is not nested inside brackets."""
    parts, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and text.startswith(sep, i):
            parts.append(text[start:i])
            i += len(sep)
            start = i
            continue
        i += 1
    parts.append(text[start:])
    return parts


def _check_balanced(formula: str) -> None:
    depth = 0
    for c in formula:
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            raise ValueError(f"formula {formula!r} has an unmatched ')'")
    if depth != 0:
        raise ValueError(f"formula {formula!r} has an unmatched '('")


def _expand_group(group: str) -> list[tuple[str, tuple[str, ...]]]:
    """``a/b/c`` -> [c:b:a, b:a, a]; ``a:b`` -> [a:b] (lme4's expandSlash order)."""
    group = re.sub(r"\s+", "", group)
    if not group:
        raise ValueError("a random-effects term has an empty grouping factor after '|'")
    nested = group.split("/")
    out = []
    for depth in range(len(nested), 0, -1):
        pieces = nested[:depth]
        names: list[str] = []
        for piece in pieces:
            names.extend(piece.split(":"))
        if any(not nm for nm in names):
            raise ValueError(f"cannot read the grouping factor {group!r}")
        # lme4 writes the innermost factor first: batch/cask gives cask:batch.
        ordered: list[str] = []
        for piece in reversed(pieces):
            ordered.extend(piece.split(":"))
        out.append((":".join(ordered), tuple(ordered)))
    return out


def _expand_double_bar(lhs: str) -> list[str]:
    """``x + z`` in ``(x + z || g)`` -> ``["1", "0 + x", "0 + z"]`` like lme4."""
    try:
        terms = [str(t) for t in formulaic.Formula(lhs)]
    except FormulaicError as exc:
        raise ValueError(f"cannot parse the random-effects expression {lhs!r}: {exc}") from None
    pieces = []
    if "1" in terms:
        pieces.append("1")
    pieces.extend(f"0 + {t}" for t in terms if t != "1")
    return pieces


def parse_formula(formula: str) -> ParsedFormula:
    """Split an lme4 formula into response, fixed part and random-effects terms.

    Parameters
    ----------
    formula : str
        For example ``"Reaction ~ Days + (Days | Subject)"``, ``"y ~ x + (x || g)"``,
        ``"strength ~ 1 + (1 | batch/cask)"``.

    Returns
    -------
    ParsedFormula

    Raises
    ------
    ValueError
        If the formula is not a string, has no ``~``, unbalanced parentheses, or an empty
        side of a ``|``.
    """
    if not isinstance(formula, str):
        raise ValueError(f"formula must be a string such as 'y ~ x + (1 | g)', got {type(formula).__name__}")
    _check_balanced(formula)
    sides = _top_level_split(formula, "~")
    if len(sides) != 2:
        raise ValueError(f"formula {formula!r} must contain exactly one '~' (response ~ terms)")
    lhs, rhs = sides[0].strip(), sides[1].strip()
    if not rhs:
        raise ValueError(f"formula {formula!r} has nothing on the right of '~'")

    random: list[RandomTermSpec] = []
    fixed_pieces: list[tuple[str, str]] = []
    offsets: list[str] = []
    for sign, piece in _signed_pieces(rhs):
        stripped = piece.strip()
        # A bar term is a whole parenthesised piece with a '|' at its own top level.
        if stripped.startswith("(") and _matching_paren(stripped) == len(stripped) - 1:
            inner = stripped[1:-1]
            if len(_top_level_split(inner, "|")) > 1:
                if sign == "-":
                    raise ValueError(f"formula {formula!r}: a random-effects term cannot be subtracted")
                random.extend(_bar_term(inner, formula))
                continue
        off = re.fullmatch(r"offset\s*\((.*)\)", stripped, flags=re.S)
        if off and _matching_paren(stripped[stripped.index("("):]) == len(stripped) - 1 - stripped.index("("):
            if sign == "-":
                raise ValueError(f"formula {formula!r}: an offset cannot be subtracted; write offset(-({off.group(1)}))")
            offsets.append(off.group(1).strip())
            continue
        if "|" in stripped:
            raise ValueError(
                f"formula {formula!r}: random-effects terms must be written in parentheses, "
                f"as in '(1 | g)'; could not read {stripped!r}"
            )
        if stripped:
            fixed_pieces.append((sign, stripped))
    fixed = ""
    for sign, piece in fixed_pieces:
        fixed += (f" {sign} " if fixed or sign == "-" else "") + piece
    fixed = fixed.strip() or "1"
    if fixed.startswith("-"):
        fixed = "1 " + fixed
    return ParsedFormula(formula=formula, lhs=lhs, fixed_rhs=fixed, random=random, offsets=offsets)


def _signed_pieces(text: str) -> list[tuple[str, str]]:
    """Split at top-level '+' and '-', keeping each piece's sign."""
    out, depth, start, sign = [], 0, 0, "+"
    for i, c in enumerate(text):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0 and c in "+-":
            out.append((sign, text[start:i]))
            sign, start = c, i + 1
    out.append((sign, text[start:]))
    return [(s, p) for s, p in out if p.strip()]


def _matching_paren(text: str) -> int:
    depth = 0
    for i, c in enumerate(text):
        depth += c == "("
        depth -= c == ")"
        if depth == 0:
            return i
    return -1


def _bar_term(inner: str, formula: str) -> list[RandomTermSpec]:
    double = _top_level_split(inner, "||")
    if len(double) == 2:
        expr, group, correlated = double[0].strip(), double[1].strip(), False
    else:
        single = _top_level_split(inner, "|")
        if len(single) != 2:
            raise ValueError(f"formula {formula!r}: cannot read the term ({inner})")
        expr, group, correlated = single[0].strip(), single[1].strip(), True
    if not expr:
        raise ValueError(f"formula {formula!r}: nothing before '|' in ({inner})")
    lhs_list = [expr] if correlated else _expand_double_bar(expr)
    out = []
    for gname, gvars in _expand_group(group):
        for lhs in lhs_list:
            out.append(RandomTermSpec(lhs=lhs, group=gname, group_vars=gvars, correlated=correlated))
    return out


# --------------------------------------------------------------------------------------
# Model structure
# --------------------------------------------------------------------------------------


@dataclass
class ReTerm:
    """One random-effects term evaluated on the data.

    Attributes
    ----------
    spec : RandomTermSpec
        The parsed term.
    group : str
        Name of the grouping factor, e.g. ``"Subject"`` or ``"cask:batch"``.
    codes : ndarray of int, shape (n,)
        Level index (0..nlevels-1) of each observation.
    levels : list of str
        Level labels, in R's order (sorted, or the categorical's order; interactions with the
        first factor varying slowest, unobserved combinations dropped).
    Z : ndarray, shape (n, k)
        The term's model columns (``k`` is small); the full random-effects matrix of the term
        is the row-wise Khatri-Rao product of the level indicators and these columns, and is
        never formed densely.
    cnames : list of str
        Column names in R's spelling, e.g. ``["(Intercept)", "Days"]``.
    correlated : bool
        Whether the ``k`` columns share an unstructured covariance block (always True when
        ``k == 1``; False marks the pieces of a ``||`` term).
    level_keys : list of tuple
        The raw values of the grouping columns for each level (used to map new data).
    model_spec : object
        formulaic's model spec of ``Z``, to rebuild it on new data.
    """

    spec: RandomTermSpec
    group: str
    codes: np.ndarray
    levels: list[str]
    Z: np.ndarray
    cnames: list[str]
    correlated: bool
    level_keys: list[tuple]
    model_spec: Any = None

    @property
    def nlevels(self) -> int:
        return len(self.levels)

    @property
    def k(self) -> int:
        """Number of columns (random effects per level)."""
        return self.Z.shape[1]

    @property
    def q(self) -> int:
        """Number of random effects in the term (``k * nlevels``)."""
        return self.k * self.nlevels

    @property
    def ntheta(self) -> int:
        """Number of covariance parameters (lower triangle of a ``k x k`` factor)."""
        return self.k * (self.k + 1) // 2

    def new_codes(self, data: pd.DataFrame) -> np.ndarray:
        """Level indices of the rows of ``data``; -1 marks a level not seen in the fit."""
        lookup = {key: i for i, key in enumerate(self.level_keys)}
        cols = [_level_key_values(data[v]) for v in self.spec.group_vars]
        return np.array([lookup.get(key, -1) for key in zip(*cols)], dtype=np.int64)

    def new_Z(self, data: pd.DataFrame) -> np.ndarray:
        """The term's columns evaluated on new data."""
        if self.model_spec is None:
            return np.ones((len(data), 1))
        return np.asarray(self.model_spec.get_model_matrix(data), dtype=float)


@dataclass
class ModelStructure:
    """Everything a fitter needs from a formula and a DataFrame.

    Attributes
    ----------
    formula : str
    parsed : ParsedFormula
    data : DataFrame
        A copy of the rows used (complete cases of the columns the formula needs).
    y : ndarray, shape (n,) or (n, m)
        The evaluated response, as float; two columns for ``cbind(a, b)``.
    lhs_terms : list of ndarray
        The raw pieces of the response: one array for a plain response, the two arguments of
        ``cbind(a, b)``, or, for ``a/b``, the already divided ratio (numerator and denominator
        are in ``lhs_ratio`` then).
    lhs_ratio : tuple of ndarray or None
        ``(numerator, denominator)`` when the response is written ``a/b`` (glmer's proportion
        with weights); None otherwise.
    X : ndarray, shape (n, p)
        Fixed-effects model matrix, after dropping linearly dependent columns.
    xnames : list of str
        Names of the columns of ``X`` (R spelling).
    dropped_columns : list of str
        Fixed-effects columns dropped because ``X`` was rank deficient.
    rows : Index
        Index labels of the rows of the user's data that were used.
    n_dropped : int
        Number of rows dropped for missing values.
    reterms : list of ReTerm
        Random-effects terms sorted like lme4: by decreasing number of levels, ties in the
        order written.
    fixed_spec : object
        formulaic's model spec of ``X`` (rebuild ``X`` on new data with
        ``fixed_spec.get_model_matrix(newdata)``; then keep ``x_keep`` columns).
    x_keep : ndarray of int
        Indices of the columns of formulaic's matrix that were kept in ``X``.
    offset : ndarray, shape (n,), or None
        The known part of the linear predictor: the formula's ``offset(...)`` terms plus a
        fitter's ``offset=`` argument (see :mod:`mixedmodels.offsets`); None without one.
    offset_argument : str or None
        How the ``offset=`` argument was given (its column name, or ``"array"``).
    weights : ndarray, shape (n,), or None
        ``lmer``'s precision weights (see :mod:`mixedmodels.weights`); None without them.
    """

    formula: str
    parsed: ParsedFormula
    data: pd.DataFrame
    y: np.ndarray
    lhs_terms: list[np.ndarray]
    lhs_ratio: tuple[np.ndarray, np.ndarray] | None
    X: np.ndarray
    xnames: list[str]
    dropped_columns: list[str]
    rows: pd.Index
    n_dropped: int
    reterms: list[ReTerm]
    fixed_spec: Any
    x_keep: np.ndarray
    offset: np.ndarray | None = None
    offset_argument: Any = None
    weights: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    def fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """The fixed-effects matrix of new data (same coding, same kept columns)."""
        mm = np.asarray(self.fixed_spec.get_model_matrix(newdata), dtype=float)
        return mm[:, self.x_keep]


_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")


def _r_name(label: str) -> str:
    """formulaic's column label -> R's: Intercept -> (Intercept), g[T.b] -> gb."""
    if label == "Intercept":
        return "(Intercept)"
    parts = []
    for piece in label.split(":"):
        m = re.fullmatch(r"(.*)\[(?:T\.)?(.*)\]", piece)
        parts.append(m.group(1) + m.group(2) if m else piece)
    return ":".join(parts)


def _level_key_values(col: pd.Series) -> list:
    vals = col.tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in vals]


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def grouping_codes(data: pd.DataFrame, group_vars: tuple[str, ...]) -> tuple[np.ndarray, list[str], list[tuple]]:
    """Integer codes, labels and raw keys of the interaction of ``group_vars``.

    Each column is treated as categorical whatever its dtype; its levels are the categorical's
    categories (if it is one) or its sorted unique values, unobserved levels dropped. An
    interaction ``a:b`` orders its levels with ``a`` varying slowest, as R's ``a:b`` does, and
    keeps only the combinations that occur.

    Returns
    -------
    codes : ndarray of int64, shape (n,)
    labels : list of str
    keys : list of tuple
        The raw values of the grouping columns for each level.
    """
    codes_list, uniques_list = [], []
    for v in group_vars:
        col = data[v]
        if isinstance(col.dtype, pd.CategoricalDtype):
            col = col.cat.remove_unused_categories()
            codes = col.cat.codes.to_numpy(dtype=np.int64)
            uniques = list(col.cat.categories)
        else:
            try:
                codes, uniques = pd.factorize(col, sort=True)
            except TypeError:
                # Mixed types do not sort; fall back to their string forms.
                codes, uniques = pd.factorize(col.astype(str), sort=True)
            uniques = list(uniques)
        codes_list.append(np.asarray(codes, dtype=np.int64))
        uniques_list.append([u.item() if isinstance(u, np.generic) else u for u in uniques])
    if len(group_vars) == 1:
        # One grouping column (the common case, and the big one: a user id with a million
        # levels) needs no interaction bookkeeping; its unused levels are already dropped.
        uniques = uniques_list[0]
        return codes_list[0], list(map(_label, uniques)), list(zip(uniques))
    combined = codes_list[0].copy()
    for c, u in zip(codes_list[1:], uniques_list[1:]):
        combined = combined * len(u) + c
    keys_sorted, codes = np.unique(combined, return_inverse=True)
    labels, raw = [], []
    for key in keys_sorted:
        parts = []
        for u in reversed(uniques_list):
            key, r = divmod(int(key), len(u))
            parts.append(u[r])
        parts.reverse()
        raw.append(tuple(parts))
        labels.append(":".join(_label(p) for p in parts))
    return codes.astype(np.int64), labels, raw


def _model_matrix(rhs: str, data: pd.DataFrame, what: str) -> tuple[np.ndarray, list[str], Any]:
    try:
        mm = formulaic.model_matrix(rhs, data, na_action="ignore")
    except FormulaicError as exc:
        raise ValueError(f"could not build the {what} from {rhs!r}: {str(exc).splitlines()[0]}") from None
    names = [_r_name(str(c)) for c in mm.columns]
    values = np.asarray(mm, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    return values, names, mm.model_spec


def _required_fixed(rhs: str, what: str) -> set[str]:
    try:
        return set(formulaic.Formula(rhs).required_variables)
    except FormulaicError as exc:
        raise ValueError(f"could not parse the {what} {rhs!r}: {str(exc).splitlines()[0]}") from None


def _lhs_variables(lhs: str, columns: pd.Index) -> set[str]:
    if lhs in columns:
        return {lhs}
    found = {tok for tok in _IDENT.findall(lhs) if tok in columns}
    return found


def evaluate_response(lhs: str, data: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray], tuple | None]:
    """Evaluate a response expression on data.

    Parameters
    ----------
    lhs : str
        A column name, ``cbind(a, b)`` (each argument an expression), ``a/b`` or another
        arithmetic expression of columns.
    data : DataFrame

    Returns
    -------
    y : ndarray, float, shape (n,) or (n, 2) for ``cbind``
    pieces : list of ndarray
        The arguments of ``cbind`` or ``[y]``.
    ratio : tuple (numerator, denominator) or None
        Set when ``lhs`` is ``a/b`` at its top level.

    Raises
    ------
    ValueError
        If the response is not numeric or cannot be evaluated.
    """

    def ev(expr: str) -> np.ndarray:
        expr = expr.strip()
        if expr in data.columns:
            col = data[expr]
        else:
            try:
                col = data.eval(expr, engine="python")
            except Exception as exc:  # pandas raises many types here
                raise ValueError(f"could not evaluate the response {expr!r}: {exc}") from None
        col = pd.Series(col) if not isinstance(col, pd.Series) else col
        if col.dtype == bool:
            col = col.astype(float)
        if not pd.api.types.is_numeric_dtype(col.dtype):
            raise ValueError(f"the response {expr!r} must be numeric, but it has dtype {col.dtype}")
        return col.to_numpy(dtype=float)

    m = re.fullmatch(r"\s*cbind\s*\((.*)\)\s*", lhs)
    if m:
        args = _top_level_split(m.group(1), ",")
        if len(args) != 2:
            raise ValueError(f"cbind() in the response {lhs!r} needs exactly two arguments")
        pieces = [ev(a) for a in args]
        return np.column_stack(pieces), pieces, None
    ratio = None
    halves = _top_level_split(lhs, "/")
    if len(halves) == 2:
        ratio = (ev(halves[0]), ev(halves[1]))
    y = ev(lhs)
    return y, [y], ratio


def _drop_dependent_columns(X: np.ndarray, names: list[str], tol: float = 1e-7) -> np.ndarray:
    """Indices of columns to keep: a column is dropped when it is (numerically) a linear
    combination of the columns before it, as R's pivoted QR with its tolerance 1e-7 does."""
    keep: list[int] = []
    Q = np.zeros((X.shape[0], 0))
    for j in range(X.shape[1]):
        col = X[:, j]
        norm = np.linalg.norm(col)
        if norm == 0:
            continue
        resid = col - Q @ (Q.T @ col)
        resid = resid - Q @ (Q.T @ resid)  # second pass for numerical orthogonality
        rnorm = np.linalg.norm(resid)
        if rnorm > tol * norm:
            keep.append(j)
            Q = np.column_stack([Q, resid / rnorm])
    return np.array(keep, dtype=np.int64)


def build_model(formula: str, data: pd.DataFrame, *, drop_rank_deficient: bool = True) -> ModelStructure:
    """Evaluate an lme4 formula on a DataFrame.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"Reaction ~ Days + (Days | Subject)"``.
    data : DataFrame
        Not modified. Rows with a missing value in any column the formula uses are dropped
        (as R's ``na.omit``) with a warning that says how many.
    drop_rank_deficient : bool
        Drop fixed-effects columns that are linear combinations of earlier ones (lme4's
        default) with a warning naming them; if False, raise ValueError instead.

    Returns
    -------
    ModelStructure

    Raises
    ------
    ValueError
        For a missing column, a formula that does not parse, a non-numeric response, a
        grouping factor with fewer than two levels, or no rows left.
    """
    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"data must be a pandas DataFrame, got {type(data).__name__}")
    parsed = parse_formula(formula)
    if not parsed.lhs:
        raise ValueError(f"formula {formula!r} has no response on the left of '~'")

    needed: dict[str, str] = {}
    lhs_vars = _lhs_variables(parsed.lhs, data.columns)
    if not lhs_vars:
        raise ValueError(f"response {parsed.lhs!r}: no such column in data (columns: {', '.join(map(str, data.columns))})")
    for v in lhs_vars:
        needed.setdefault(v, "response")
    for v in sorted(_required_fixed(parsed.fixed_rhs, "fixed-effects part")):
        needed.setdefault(v, "fixed effects")
    for e in parsed.offsets:
        for v in sorted(_required_fixed(f"0 + I({e})", f"offset({e})")):
            needed.setdefault(v, f"offset({e})")
    for term in parsed.random:
        for v in sorted(_required_fixed(term.lhs, f"random-effects term {term}")):
            needed.setdefault(v, f"random-effects term {term}")
        for v in term.group_vars:
            needed.setdefault(v, f"grouping factor of {term}")
    missing = [v for v in needed if v not in data.columns]
    if missing:
        detail = "; ".join(f"{v!r} (used in the {needed[v]})" for v in missing)
        raise ValueError(f"column(s) not found in data: {detail}")

    cols = list(needed)
    complete = data[cols].notna().all(axis=1).to_numpy()
    n_dropped = int((~complete).sum())
    if n_dropped:
        bad = [c for c in cols if data[c].isna().any()]
        warnings.warn(
            f"dropped {n_dropped} of {len(data)} rows with missing values in {', '.join(bad)} (like R's na.omit)",
            UserWarning,
            stacklevel=2,
        )
    sub = data.loc[complete, cols].copy()
    if len(sub) == 0:
        raise ValueError("no complete rows left after dropping rows with missing values")

    y, pieces, ratio = evaluate_response(parsed.lhs, sub)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"the response {parsed.lhs!r} has infinite values")

    X_full, xnames_full, fixed_spec = _model_matrix(parsed.fixed_rhs, sub, "fixed-effects matrix")
    if X_full.shape[0] != len(sub):
        raise ValueError("the fixed-effects matrix has a different number of rows from the data")
    if not np.all(np.isfinite(X_full)):
        raise ValueError("the fixed-effects matrix has infinite values")
    keep = _drop_dependent_columns(X_full, xnames_full)
    dropped = [xnames_full[j] for j in range(len(xnames_full)) if j not in set(keep.tolist())]
    if dropped:
        if not drop_rank_deficient:
            raise ValueError(f"fixed-effects model matrix is rank deficient; linearly dependent column(s): {', '.join(dropped)}")
        warnings.warn(
            f"fixed-effect model matrix is rank deficient so dropping {len(dropped)} "
            f"column(s): {', '.join(dropped)}",
            UserWarning,
            stacklevel=2,
        )
    X = np.ascontiguousarray(X_full[:, keep])
    xnames = [xnames_full[j] for j in keep]

    reterms = []
    for term in parsed.random:
        if term.lhs.strip() == "1":
            # Skip formulaic for the common intercept-only term (it is the slow part of tiny fits).
            Z, cnames, spec = np.ones((len(sub), 1)), ["(Intercept)"], None
        else:
            Z, cnames, spec = _model_matrix(term.lhs, sub, f"random-effects term {term}")
        if Z.shape[1] == 0:
            raise ValueError(f"random-effects term {term} has no columns")
        codes, labels, keys = grouping_codes(sub, term.group_vars)
        if len(labels) < 2:
            raise ValueError(
                f"grouping factor {term.group!r} has {len(labels)} level; a random effect needs at least 2 levels"
            )
        reterms.append(
            ReTerm(spec=term, group=term.group, codes=codes, levels=labels, Z=np.ascontiguousarray(Z),
                   cnames=cnames, correlated=term.correlated, level_keys=keys, model_spec=spec)
        )
    # lme4 orders terms by decreasing number of levels (a stable sort).
    reterms.sort(key=lambda t: -t.nlevels)

    return ModelStructure(
        formula=formula, parsed=parsed, data=sub, y=y, lhs_terms=pieces, lhs_ratio=ratio,
        X=X, xnames=xnames, dropped_columns=dropped, rows=data.index[complete], n_dropped=n_dropped,
        reterms=reterms, fixed_spec=fixed_spec, x_keep=keep,
        offset=evaluate_offsets(parsed.offsets, sub),
    )
