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

Formulas read as R reads them:

* ``^`` inside a function call is a power: ``I(x^2)``, ``log(x^2)`` (Python's ``^`` would be a
  bitwise XOR). At the formula's own level ``(a + b)^2`` still crosses terms, as in R.
* Integer columns are promoted to float before any arithmetic, so ``I(x^3)`` on an ``int8``
  column never wraps around (a column coded as a factor, ``factor(k)``, keeps its labels).
* ``center(x)``, ``scale(x)`` (R's, dividing by the n - 1 SD) and ``poly(x, k)`` (orthogonal
  polynomials, R's values and names ``poly(x, 2)1``) work, and remember the fit's centring and
  scaling when predicting on new data.
* An ordered categorical gets R's polynomial contrasts (``contr.poly``; columns ``o.L``,
  ``o.Q``, ``o.C``, ``o^4``...), an unordered one treatment contrasts.
* ``factor(g)`` / ``as.factor(g)`` anywhere, `` `odd name` `` for any column, transformations
  of the response (``log(y) ~ ...``, ``I(y / 1000) ~ ...``), and ``y ~ . + (1 | g)``, where the
  dot is every column but the response's and the grouping factors'.
* A function the formula language does not know is an error naming it and listing those it
  does (``log``, ``exp``, ``sqrt``, ``abs``, ``poly``, ``center``, ``scale``, ``factor``, ``C``,
  ``bs``, ``np.*``).

Example
-------
>>> import pandas as pd
>>> df = pd.DataFrame({"y": [1.0, 2.0, 3.0, 4.0], "g": ["a", "a", "b", "b"]})
>>> m = build_model("y ~ 1 + (1 | g)", df)
>>> m.xnames, m.reterms[0].group, m.reterms[0].levels
(['(Intercept)'], 'g', ['a', 'b'])
"""

from __future__ import annotations

import ast
import copy
import functools
import re
import warnings
from dataclasses import dataclass, field, replace
from numbers import Real
from typing import Any

import numpy as np
import pandas as pd
import formulaic
from formulaic.errors import FormulaicError
from formulaic.transforms import TRANSFORMS, C

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
    "match_levels",
    "apply_new_level_rule",
    "row_argument",
    "new_model_matrix",
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


def _scan(text: str):
    """Yield ``(i, c, depth)`` for each character outside backticks (R's quoted names such as
    `` `body mass` ``), with the bracket depth before the character."""
    depth, quoted = 0, False
    for i, c in enumerate(text):
        if c == "`":
            quoted = not quoted
            continue
        if quoted:
            continue
        yield i, c, depth
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1


def _top_level_split(text: str, sep: str) -> list[str]:
    """Split ``text`` on ``sep`` where it is not nested inside brackets or backticks."""
    parts, start, skip_to = [], 0, 0
    for i, c, depth in _scan(text):
        if i < skip_to or depth != 0 or c in "([{)]}":
            continue
        if text.startswith(sep, i):
            parts.append(text[start:i])
            start = skip_to = i + len(sep)
    parts.append(text[start:])
    return parts


def _check_balanced(formula: str) -> None:
    if formula.count("`") % 2:
        raise ValueError(f"formula {formula!r} has an unmatched backtick (`)")
    depth = 0
    for _, c, _ in _scan(formula):
        depth += c == "("
        depth -= c == ")"
        if depth < 0:
            raise ValueError(f"formula {formula!r} has an unmatched ')'")
    if depth != 0:
        raise ValueError(f"formula {formula!r} has an unmatched '('")


_CALL_BEFORE = re.compile(r"[A-Za-z0-9_.]\s*$")


def _power_inside_calls(text: str) -> str:
    """R's ``^`` is a power inside a function call (``I(x^2)``, ``log(x^2)``, ``poly(x^2, 2)``);
    at the formula's own level it crosses terms (``(a + b)^2``), which formulaic reads the same
    way. Python's ``^`` is a bitwise XOR, so inside calls it becomes ``**``."""
    out, stack = [], []
    last = 0
    for i, c, _ in _scan(text):
        if c == "(":
            stack.append(bool(_CALL_BEFORE.search(text[:i])))
        elif c == ")":
            if stack:
                stack.pop()
        elif c == "^" and any(stack):
            out.append(text[last:i] + "**")
            last = i + 1
    out.append(text[last:])
    return "".join(out)


def _r_spellings(text: str) -> str:
    """R spellings formulaic does not read: ``as.factor(g)`` is ``factor(g)``."""
    return re.sub(r"(?<![A-Za-z0-9_.])as\.factor\s*\(", "factor(", _power_inside_calls(text))


_FACTOR_CALL = re.compile(r"(?:factor|as\.factor|as\.character)\((.+)\)")


def _group_variable(piece: str, group: str) -> str:
    """The data column behind one factor of a grouping expression: ``g``, `` `my g` `` or
    ``factor(g)`` (R converts grouping variables to factors anyway)."""
    m = _FACTOR_CALL.fullmatch(piece)
    if m:
        piece = m.group(1).strip()
    if len(piece) >= 2 and piece[0] == piece[-1] == "`":
        piece = piece[1:-1]
    if not piece or ("(" in piece or ")" in piece):
        raise ValueError(f"cannot read the grouping factor {group!r}: a grouping factor is a column "
                         "name, an interaction a:b, a nesting a/b, or factor(column)")
    return piece


def _expand_group(group: str) -> list[tuple[str, tuple[str, ...]]]:
    """``a/b/c`` -> [c:b:a, b:a, a]; ``a:b`` -> [a:b] (lme4's expandSlash order)."""
    group = group.strip()
    if not group:
        raise ValueError("a random-effects term has an empty grouping factor after '|'")
    nested = [[x.strip() for x in _top_level_split(piece, ":")] for piece in _top_level_split(group, "/")]
    if any(not x for pieces in nested for x in pieces):
        raise ValueError(f"cannot read the grouping factor {group!r}")
    out = []
    for depth in range(len(nested), 0, -1):
        # lme4 writes the innermost factor first: batch/cask gives cask:batch.
        ordered = [x for pieces in reversed(nested[:depth]) for x in pieces]
        names = [re.sub(r"\s+", "", x) if "`" not in x else x for x in ordered]
        out.append((":".join(names), tuple(_group_variable(x, group) for x in ordered)))
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
    lhs, rhs = sides[0].strip(), _r_spellings(sides[1].strip())
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
        if "|" in _BACKTICKED.sub("", stripped):
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
    out, start, sign = [], 0, "+"
    for i, c, depth in _scan(text):
        if depth == 0 and c in "+-":
            out.append((sign, text[start:i]))
            sign, start = c, i + 1
    out.append((sign, text[start:]))
    return [(s, p) for s, p in out if p.strip()]


def _matching_paren(text: str) -> int:
    for i, c, depth in _scan(text):
        if c == ")" and depth == 1:
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
    variables : list of str
        The data columns the term's columns read (not the grouping columns).
    float_columns : tuple of str
        Integer columns promoted to float before the term's columns were computed.
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
    variables: list[str] = field(default_factory=list)
    float_columns: tuple[str, ...] = ()

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

    def new_codes(self, data: pd.DataFrame, allow_new_levels: bool = False) -> np.ndarray:
        """Level indices of the rows of ``data``, for prediction.

        Labels are matched by value where that is unambiguous (a group fitted as 101 is found
        as 101, 101.0 or "101"; see :func:`match_levels`).

        Parameters
        ----------
        data : DataFrame
            Must have the grouping columns.
        allow_new_levels : bool
            lme4's ``allow.new.levels``: if False (lme4's default) a level not seen in the fit,
            or a missing value in a grouping column, is an error; if True such rows get -1 (the
            caller gives them the population value, a random effect of 0).

        Returns
        -------
        ndarray of int64, shape (len(data),)
            0..nlevels-1, or -1 for a new level or a missing value (only when allowed).

        Raises
        ------
        ValueError
            Naming the grouping factor and its new levels (or its missing values).
        """
        gvars = self.spec.group_vars
        per_col = []
        for j, v in enumerate(gvars):
            known = list(dict.fromkeys(key[j] for key in self.level_keys))
            per_col.append((known, match_levels(data[v], known)))
        if len(gvars) == 1:
            codes = per_col[0][1].copy()  # position among level_keys == level index
        else:
            index = {tuple(known.index(key[j]) for j, (known, _) in enumerate(per_col)): i
                     for i, key in enumerate(self.level_keys)}
            stacked = np.column_stack([c for _, c in per_col])
            codes = np.full(len(data), -1, dtype=np.int64)
            missing = (stacked == -2).any(axis=1)
            codes[missing] = -2
            ok = (stacked >= 0).all(axis=1)
            for r in np.flatnonzero(ok):
                codes[r] = index.get(tuple(stacked[r]), -1)
        return apply_new_level_rule(codes, data, gvars, self.group, allow_new_levels)

    def new_Z(self, data: pd.DataFrame) -> np.ndarray:
        """The term's columns evaluated on new data (factor levels matched as in
        :meth:`ModelStructure.fixed_matrix`)."""
        if self.model_spec is None:
            return np.ones((len(data), 1))
        return new_model_matrix(self.model_spec, data, self.variables, self.float_columns,
                                f"columns of {self.spec}")


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
    fixed_variables : list of str
        The data columns the fixed part reads.
    float_columns : tuple of str
        Integer columns promoted to float before the fixed part was computed.
    row_mask : ndarray of bool (len(data),) or None
        Which rows of the user's data were used, by position (None: all of them, or not
        recorded); per-row arguments are read through it, which index labels cannot do when
        they repeat.
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
    fixed_variables: list[str] = field(default_factory=list)
    float_columns: tuple[str, ...] = ()
    row_mask: np.ndarray | None = None

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    def replace(self, **changes: Any) -> ModelStructure:
        """``dataclasses.replace(self, **changes)``, without building a deferred ``data``.

        Raises
        ------
        TypeError
            For a name that is not a field.
        """
        unknown = set(changes) - set(self.__dataclass_fields__)
        if unknown:
            raise TypeError(f"ModelStructure has no field(s) {', '.join(sorted(unknown))}")
        out = copy.copy(self)  # the instance's attributes, a deferred frame included
        out.__dict__.update(changes)
        if "data" in changes:
            out.__dict__.pop("_deferred_data", None)
        return out

    def __getattr__(self, name: str) -> Any:
        # Reached only for an attribute not set: ``data`` while build_model has deferred it
        # (building a DataFrame costs more than the rest of a small model, and few read it).
        if name == "data":
            state = self.__dict__
            deferred = state.get("_deferred_data")
            if deferred is not None:
                state["data"] = deferred.get()
                state.pop("_deferred_data", None)
            if "data" in state:
                return state["data"]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def fixed_matrix(self, newdata: pd.DataFrame) -> np.ndarray:
        """The fixed-effects matrix of new data (same coding, same kept columns).

        Factor levels are matched by value (101, 101.0 and "101" are one level); a level the
        fit never saw is always an error naming the column (lme4: "factor f has new level c").
        A row with a missing value in a column the fixed part reads is all NaN.

        Raises
        ------
        ValueError
            For a new factor level, or data the fixed part cannot be evaluated on.
        """
        mm = new_model_matrix(self.fixed_spec, newdata, self.fixed_variables, self.float_columns,
                              "fixed-effects matrix")
        return mm[:, self.x_keep]


_IDENT = re.compile(r"[A-Za-z_.][A-Za-z0-9_.]*")
_BACKTICKED = re.compile(r"`([^`]*)`")

# R names a formula may call that formulaic does not define itself. ``factor(g)`` is
# formulaic's ``C(g)`` (treatment contrasts; the columns are named factor(g)2, ..., as R's).
_R_CONTEXT: dict[str, Any] = {
    "factor": C, "sqrt": np.sqrt, "abs": np.abs, "log1p": np.log1p, "expm1": np.expm1,
    "sin": np.sin, "cos": np.cos, "tan": np.tan, "exp": np.exp, "log": np.log,
    "log10": np.log10, "log2": np.log2, "pmin": np.minimum, "pmax": np.maximum,
}
_KNOWN_FUNCTIONS = frozenset(TRANSFORMS) | frozenset(_R_CONTEXT) | {"contr", "np", "round", "min", "max"}
# The functions a user is told about when a formula calls something we cannot evaluate.
_SUPPORTED_TEXT = ("I() (with ^ as a power), log(), log2(), log10(), log1p(), exp(), sqrt(), abs(), "
                   "poly(x, k) (orthogonal, as R's), center(), scale(), factor(), C(), bs(), "
                   "numpy functions as np.name()")


def _r_name(label: str, renames: dict[str, str] | None = None) -> str:
    """formulaic's column label -> R's: Intercept -> (Intercept), g[T.b] -> gb,
    poly(x, 2)[1] -> poly(x, 2)1, C(o, contr.poly)[.L] -> o.L (an ordered factor)."""
    if label == "Intercept":
        return "(Intercept)"
    parts = []
    for piece in label.split(":"):
        m = re.fullmatch(r"(.*)\[(?:T\.)?(.*)\]", piece)
        head, tail = (m.group(1), m.group(2)) if m else (piece, "")
        if renames and head in renames:
            head = renames[head]
        parts.append(head + tail)
    return ":".join(parts)


def _level_key_values(col: pd.Series) -> list:
    vals = col.tolist()
    return [v.item() if isinstance(v, np.generic) else v for v in vals]


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


_SMALL_FACTORIZE = 256


def _sorted_factorize(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(col, sort=True)``, sorting only the few uniques with numpy: pandas sorts
    arrow-backed strings (pandas 3's default) through pyarrow, ~0.1 ms a column, more than
    the factorization. Python's string order is the code-point order pyarrow sorts by.
    Raises TypeError where the uniques do not sort (mixed types)."""
    dt = col.dtype
    if isinstance(dt, pd.StringDtype) and len(col) <= _SMALL_FACTORIZE and not col.array.isna().any():
        # A short text column (the grouping factor of a small model): a dict of its Python
        # strings is ~2x faster than a pandas/pyarrow factorization there; slower beyond a few
        # hundred rows. Sorted as np.argsort below sorts them (Python's string order).
        values = col.array.to_numpy(dtype=object).tolist()  # 2x faster than .tolist() on arrow
        uniques = sorted(set(values))
        position = {u: i for i, u in enumerate(uniques)}
        codes = np.fromiter(map(position.__getitem__, values), dtype=np.int64, count=len(values))
        return codes, np.array(uniques, dtype=object)
    # Series.factorize is pd.factorize of the values wrapped in an Index (a cost here); the
    # same values without it: the ndarray for numpy dtypes (float16 aside: Series.factorize
    # widens it), the extension array otherwise.
    if isinstance(dt, np.dtype) and dt.kind in "biufO" and dt != np.float16:
        codes, uniques = pd.factorize(col.to_numpy(), sort=False)
    elif isinstance(dt, np.dtype):
        codes, uniques = pd.factorize(col, sort=False)
    else:
        arr = col.array
        codes, uniques = arr.factorize()
        if uniques.dtype != arr.dtype:  # what pd.factorize would rebuild
            codes, uniques = pd.factorize(arr, sort=False)
    uniques = np.asarray(uniques, dtype=object)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = np.asarray(codes, dtype=np.int64)
    # -1 (a missing value) stays -1.
    return np.where(codes >= 0, rank[np.maximum(codes, 0)], -1), uniques[order]


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
    return _grouping_codes(data, group_vars, None)


def _column_levels(col: pd.Series) -> tuple[np.ndarray, list]:
    """Codes (int64, -1 for a missing value) and levels of one grouping column."""
    if isinstance(col.dtype, pd.CategoricalDtype):
        col = col.cat.remove_unused_categories()
        codes = col.cat.codes.to_numpy(dtype=np.int64)
        uniques = list(col.cat.categories)
    else:
        try:
            codes, uniques = _sorted_factorize(col)
        except TypeError:
            # Mixed types do not sort; fall back to their string forms.
            codes, uniques = pd.factorize(col.astype(str), sort=True)
        uniques = list(uniques)
    return np.asarray(codes, dtype=np.int64), [u.item() if isinstance(u, np.generic) else u for u in uniques]


def _grouping_codes(data: Any, group_vars: tuple[str, ...],
                    memo: dict[Any, tuple[np.ndarray, list]] | None) -> tuple[np.ndarray, list[str], list[tuple]]:
    """:func:`grouping_codes`; ``memo`` keeps each column's levels for the next term that
    reads it (``(1 | batch/cask)`` reads ``batch`` twice)."""
    codes_list, uniques_list = [], []
    for v in group_vars:
        if memo is None:
            codes, uniques = _column_levels(data[v])
        elif v in memo:
            codes, uniques = memo[v]
            codes, uniques = codes.copy(), list(uniques)  # each term owns its arrays
        else:
            codes, uniques = memo[v] = _column_levels(data[v])
            codes, uniques = codes.copy(), list(uniques)
        codes_list.append(codes)
        uniques_list.append(uniques)
    if len(group_vars) == 1:
        # One grouping column (the common case, and the big one: a user id with a million
        # levels) needs no interaction bookkeeping; its unused levels are already dropped.
        uniques = uniques_list[0]
        return codes_list[0], list(map(_label, uniques)), list(zip(uniques))
    combined = codes_list[0].copy()
    for c, u in zip(codes_list[1:], uniques_list[1:]):
        combined = combined * len(u) + c
    keys_sorted, codes = np.unique(combined, return_inverse=True)
    # Each level's position among each column's levels (numpy's // and % floor as Python's).
    positions, key = [], keys_sorted
    for u in reversed(uniques_list):
        key, r = np.divmod(key, len(u))
        positions.append(r.tolist())
    positions.reverse()
    raw = list(zip(*[[u[r] for r in pos] for u, pos in zip(uniques_list, positions)]))
    names = [[_label(x) for x in u] for u in uniques_list]
    labels = [":".join(parts) for parts in zip(*[[nm[r] for r in pos] for nm, pos in zip(names, positions)])]
    return codes.astype(np.int64), labels, raw


# ---- matching labels of new data by value ----------------------------------------------


def _value_key(v: Any) -> tuple | None:
    """A hashable key of a label that compares by value across types: 101, 101.0 and
    np.int64(101) share one key; None and NaN have none."""
    if isinstance(v, np.generic):
        v = v.item()
    if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA or v is pd.NaT:
        return None
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, Real):
        return ("n", float(v))
    if isinstance(v, str):
        return ("s", v)
    return ("o", v)


def _other_type_key(key: tuple) -> tuple | None:
    """The same label as the other of number/string: 101.0 <-> "101"."""
    kind, v = key
    if kind == "n":
        return ("s", _label(v))
    if kind == "s":
        try:
            return ("n", float(v.strip()))
        except ValueError:
            return None
    return None


def match_levels(values: pd.Series | np.ndarray | list, known: list) -> np.ndarray:
    """Positions of ``values`` among the labels ``known``, matched by value.

    A label matches a known one of the same value (101, 101.0 and np.int64(101) are one
    label); failing that, a number matches the known string that spells it ("101") and a
    string a known number it spells, so ids read from a CSV as text still find their groups.

    Returns
    -------
    ndarray of int64
        The position in ``known``, -1 for a label not among them, -2 for a missing value.
    """
    lookup: dict[tuple, int] = {}
    for i, k in enumerate(known):
        key = _value_key(k)
        if key is not None:
            lookup.setdefault(key, i)
    codes, uniques = pd.factorize(pd.Series(values, dtype=object) if not isinstance(values, pd.Series)
                                  else values.astype(object), use_na_sentinel=True)
    mapped = np.empty(len(uniques) + 1, dtype=np.int64)
    for j, u in enumerate(uniques):
        key = _value_key(u)
        if key is None:
            mapped[j] = -2
            continue
        pos = lookup.get(key)
        if pos is None:
            alt = _other_type_key(key)
            pos = lookup.get(alt, -1) if alt is not None else -1
        mapped[j] = pos
    mapped[-1] = -2  # factorize's -1: a missing value
    return mapped[np.asarray(codes)]


def apply_new_level_rule(codes: np.ndarray, data: pd.DataFrame, group_vars: tuple[str, ...], group: str,
                         allow_new_levels: bool) -> np.ndarray:
    """lme4's ``allow.new.levels`` on codes from :func:`match_levels` (-1 new, -2 missing).

    Returns the codes with every new or missing level as -1 when allowed; otherwise raises
    ValueError naming the grouping factor and its new levels (or its missing values).
    """
    codes = np.asarray(codes, dtype=np.int64).copy()
    if not allow_new_levels:
        missing = codes == -2
        if missing.any():
            raise ValueError(
                f"newdata: the grouping factor {group!r} has missing values in {int(missing.sum())} "
                "row(s); pass allow_new_levels=True to predict them at the population level "
                "(random effect 0), as lme4 does")
        new = codes == -1
        if new.any():
            cols = [data[v].to_numpy(dtype=object)[new] for v in group_vars]
            labels = [":".join(_label(x.item() if isinstance(x, np.generic) else x) for x in key)
                      for key in zip(*cols)]
            bad = list(dict.fromkeys(labels))
            raise ValueError(
                f"newdata: the grouping factor {group!r} has new level(s) {_show_levels(bad)} not "
                "seen in the fit; pass allow_new_levels=True to predict them at the population level "
                "(random effect 0), as lme4's allow.new.levels = TRUE")
    codes[codes == -2] = -1
    return codes


def _show_levels(values: list, limit: int = 8) -> str:
    shown = ", ".join(repr(v.item() if isinstance(v, np.generic) else v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


# ---- the variables of an expression ---------------------------------------------------


def _names_in(expr: str) -> tuple[set[str], set[str], set[str]]:
    """Backticked names, bare names and called function names of one Python expression."""
    quoted = set(_BACKTICKED.findall(expr))
    text = _BACKTICKED.sub("_q_", expr)
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return quoted, set(_IDENT.findall(text)) - {"_q_"}, set()
    names, calls = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            while isinstance(f, ast.Attribute):
                f = f.value
            if isinstance(f, ast.Name):
                calls.add(f.id)
        if isinstance(node, ast.Name) and node.id != "_q_":
            names.add(node.id)
    return quoted, names, calls


def _expression_variables(expr: str, columns: pd.Index, what: str) -> tuple[list[str], list[str]]:
    """Columns of ``data`` an expression reads, and names that are neither a column nor a known
    function (reported by the caller as missing columns).

    Raises
    ------
    ValueError
        If the expression calls a function the formula language does not know.
    """
    if expr in columns:
        return [expr], []
    quoted, names, calls = _names_in(expr)
    unknown_calls = sorted(c for c in calls if c not in _KNOWN_FUNCTIONS and c not in columns)
    if unknown_calls:
        fn = unknown_calls[0]
        raise ValueError(f"the {what} calls {fn}(), which formulas here do not support; "
                         f"supported: {_SUPPORTED_TEXT}")
    found = [v for v in sorted(quoted) if v in columns]
    found += [v for v in sorted(names) if v in columns and v not in quoted]
    missing = [v for v in sorted(quoted) if v not in columns]
    missing += [v for v in sorted(names) if v not in columns and v not in _KNOWN_FUNCTIONS and v not in calls]
    return found, missing


def _formula_variables(rhs: str, columns: pd.Index, what: str) -> tuple[list[str], list[str]]:
    """Data columns a right-hand side reads (formulaic's ``required_variables`` misses the ones
    inside stateful transforms such as ``center(x)``), and names not found among them."""
    simple = _simple_terms(rhs)
    if simple is not None and all(v in columns for v in simple[1]):
        return list(simple[1]), []
    try:
        terms = list(formulaic.Formula(rhs))
    except FormulaicError as exc:
        raise ValueError(f"could not parse the {what} {rhs!r}: {str(exc).splitlines()[0]}") from None
    found: list[str] = []
    missing: list[str] = []
    for term in terms:
        for factor in term.factors:
            expr = str(factor.expr)
            if expr in ("0", "1", "-1"):
                continue
            f, m = _expression_variables(expr, columns, what)
            found += f
            missing += m
    return list(dict.fromkeys(found)), list(dict.fromkeys(missing))


_FACTOR_ARG = re.compile(r"(?<![A-Za-z0-9_.])(?:factor|C)\(\s*(`[^`]*`|[A-Za-z_.][A-Za-z0-9_.]*)")


def _required_fixed(rhs: str, what: str) -> set[str]:
    """Every name a right-hand side reads as data (columns or not), for callers that have no
    DataFrame at hand yet (the Dask fitter checks its columns with it)."""
    found, missing = _formula_variables(rhs, pd.Index([]), what)
    return set(found) | set(missing)


def _integer_columns(data: pd.DataFrame, variables: list[str]) -> list[str]:
    """Integer columns among ``variables``: promoted to float before any formula arithmetic,
    since ``x**3`` on an int8 column would wrap around."""
    out = []
    for v in variables:
        dt = data[v].dtype
        if pd.api.types.is_integer_dtype(dt) and not pd.api.types.is_bool_dtype(dt):
            out.append(v)
    return out


def _promote(data: pd.DataFrame, float_columns: tuple[str, ...] | list[str]) -> pd.DataFrame:
    cols = [c for c in float_columns if c in data.columns]
    if not cols:
        return data
    data = data.copy()
    for c in cols:
        data[c] = pd.to_numeric(data[c], errors="coerce").astype(float)
    return data


def _ordered_contrasts(rhs: str, ordered: tuple[str, ...]) -> tuple[str, dict[str, str]]:
    """R codes an ordered factor by polynomial contrasts (``contr.poly``: columns ``o.L``,
    ``o.Q``, ``o.C``, ``o^4``...): bare names of the ``ordered`` categorical columns (in the
    data's column order) become ``C(o, contr.poly)``, and the returned map renames the columns
    back to R's spelling."""
    renames: dict[str, str] = {}
    for col in ordered:
        pattern = re.compile(r"(?<![A-Za-z0-9_.`])" + re.escape(col) + r"(?![A-Za-z0-9_.`(])")
        wrapped = f"C({col}, contr.poly)"
        # R's factor(o) of an ordered factor stays ordered: polynomial contrasts, factor(o).L
        as_factor = re.compile(r"(?<![A-Za-z0-9_.])factor\(\s*" + re.escape(col) + r"\s*\)")
        if as_factor.search(rhs):
            rhs = as_factor.sub(wrapped, rhs)
            renames[wrapped] = f"factor({col})"

        def wrap(m: re.Match, text: str = rhs) -> str:
            # Only bare terms: not an argument of a call (C(o), factor(o), I(o == "a")).
            before = text[:m.start()].rstrip()
            in_call = before.endswith("(") and _CALL_BEFORE.search(before[:-1]) is not None
            return m.group(0) if in_call else wrapped

        new = pattern.sub(wrap, rhs)
        if new != rhs:
            rhs = new
            renames[wrapped] = col
    return rhs, renames


def _expand_dot(rhs: str, columns: pd.Index, exclude: set[str]) -> str:
    """``y ~ . + (1 | g)``: the dot is every column except the response's and the grouping
    factors' and the offsets' (R's dot excludes the response; a grouping factor as a fixed
    effect as well would be confounded with its random effect)."""
    pattern = re.compile(r"(?<![A-Za-z0-9_.`])\.(?![A-Za-z0-9_.`])")
    if not pattern.search(rhs):
        return rhs
    cols = [c for c in columns if c not in exclude]
    if not cols:
        raise ValueError("'.' in the formula stands for every column but the response and the grouping "
                         "factors, and there are none left")
    names = [c if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(c)) else f"`{c}`" for c in cols]
    return pattern.sub("(" + " + ".join(names) + ")", rhs)


# ---- model matrices ----------------------------------------------------------------------


def _model_matrix(rhs: str, data: pd.DataFrame, what: str,
                  renames: dict[str, str] | None = None) -> tuple[np.ndarray, list[str], Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mm = formulaic.model_matrix(rhs, data, na_action="ignore", context=_R_CONTEXT)
    except (FormulaicError, ValueError, TypeError, NameError) as exc:
        raise ValueError(f"could not build the {what} from {rhs!r}: {str(exc).splitlines()[0]}") from None
    names = [_r_name(str(c), renames) for c in mm.columns]
    values = np.asarray(mm, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    return values, names, mm.model_spec


# A right-hand side of plain column names and an intercept ("1", "Days", "0 + x + z", "x - 1").
_SIMPLE_PIECE = r"(?:[A-Za-z_][A-Za-z0-9_]*|[01])"
_SIMPLE_RHS = re.compile(rf"\s*{_SIMPLE_PIECE}(?:\s*\+\s*{_SIMPLE_PIECE})*\s*(-\s*1\s*)?")


def _simple_terms(rhs: str) -> tuple[bool, list[str]] | None:
    """(has intercept, column names) of a right-hand side formulaic would read as plain
    numeric columns, or None for anything else (calls, interactions, factors...)."""
    m = _SIMPLE_RHS.fullmatch(rhs)
    if m is None:
        return None
    body = rhs[:m.start(1)] if m.group(1) else rhs
    pieces = [piece.strip() for piece in body.split("+")]
    names = [piece for piece in pieces if piece not in ("0", "1")]
    if len(set(names)) != len(names) or ("0" in pieces and "1" in pieces) or (m.group(1) and "1" in pieces):
        return None
    return not ("0" in pieces or m.group(1)), names


class _DeferredSpec:
    """formulaic's model spec of a matrix built without formulaic (:func:`_simple_model_matrix`),
    made by formulaic from the same data only when something asks for it (prediction on new
    data): building it costs more than a small fit."""

    def __init__(self, rhs: str, data: pd.DataFrame | _PromotedFrame, what: str, renames: dict[str, str] | None):
        self._args = (rhs, data, what, renames)
        self._spec = None

    def resolve(self) -> Any:
        if self._spec is None:
            rhs, data, what, renames = self._args
            if isinstance(data, _PromotedFrame):
                data = data.get()
            self._spec = _model_matrix(rhs, data, what, renames)[2]
        return self._spec

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.resolve(), name)


def resolve_spec(spec: Any) -> Any:
    """The formulaic model spec behind a possibly deferred one."""
    return spec.resolve() if isinstance(spec, _DeferredSpec) else spec


def _simple_model_matrix(rhs: str, data: pd.DataFrame, what: str,
                         renames: dict[str, str] | None = None) -> tuple[np.ndarray, list[str], Any] | None:
    """:func:`_model_matrix` without formulaic for an intercept and plain numeric columns (the
    common case, where formulaic's parsing and materializing dominate a small fit); None when
    the right-hand side is anything else. Same columns, names and values as formulaic's."""
    simple = _simple_terms(rhs)
    if simple is None:
        return None
    intercept, names = simple
    cols = []
    for name in names:
        if name not in data.columns or not isinstance(data[name].dtype, np.dtype) or data[name].dtype.kind not in "iuf":
            return None
        cols.append(data[name].to_numpy(dtype=float))
    if intercept:
        cols.insert(0, np.ones(len(data)))
    values = np.column_stack(cols) if cols else np.empty((len(data), 0))
    return values, ["(Intercept)"] * intercept + names, _DeferredSpec(rhs, data, what, renames)


def _categorical_columns(spec: Any, columns: pd.Index) -> list[tuple[str, list]]:
    """(data column, fitted levels) of each categorical factor of a formulaic model spec
    that reads a single column (``f``, ``factor(f)``, ``C(f, ...)``)."""
    out = []
    for expr, (kind, state) in getattr(spec, "encoder_state", {}).items():
        if str(getattr(kind, "value", kind)) != "categorical" or "categories" not in state:
            continue
        if expr in columns:
            cols = [expr]
        else:
            quoted, names, _ = _names_in(expr)
            cols = [c for c in list(quoted) + sorted(names) if c in columns]
        if len(cols) == 1:
            out.append((cols[0], list(state["categories"])))
    return out


def new_model_matrix(spec: Any, newdata: pd.DataFrame, variables: list[str], float_columns: tuple[str, ...],
                     what: str) -> np.ndarray:
    """A fitted formulaic model spec evaluated on new data, with lme4's rules for prediction.

    Factor levels are matched by value (101, 101.0 and "101" are one level); a level the fit
    never saw is an error naming the column and the levels (lme4: "factor f has new level c"),
    never silently the reference level. Integer columns are promoted as in the fit. A row
    with a missing value in any variable the part reads gets NaN in every column (R's
    ``na.pass``).

    Raises
    ------
    ValueError
        For a level not in the fit, or a matrix formulaic cannot build.
    """
    data = newdata
    spec = resolve_spec(spec)
    for expr, (kind, _) in getattr(spec, "encoder_state", {}).items():
        # A column numeric in the fit must be numeric now (formulaic would quietly re-learn it
        # as a factor, and remember that in the fit's spec).
        if str(getattr(kind, "value", kind)) == "numerical" and expr in newdata.columns:
            dt = newdata[expr].dtype
            if not (pd.api.types.is_numeric_dtype(dt) or pd.api.types.is_bool_dtype(dt)):
                raise ValueError(f"newdata: column {expr!r} must be numeric, as in the fit; got dtype {dt}")
    spec = copy.deepcopy(spec)  # formulaic may update a spec's state while evaluating
    replaced = {}
    for col, levels in _categorical_columns(spec, newdata.columns):
        codes = match_levels(newdata[col], levels)
        new = codes == -1
        if new.any():
            bad = pd.unique(newdata[col].to_numpy(dtype=object)[new]).tolist()
            raise ValueError(f"newdata: factor {col!r} has new level(s) {_show_levels(bad)} not seen in the fit "
                             f"(its levels: {_show_levels(levels)})")
        lv = np.array(levels + [levels[0]], dtype=object)
        replaced[col] = pd.Categorical(lv[np.where(codes >= 0, codes, len(levels))], categories=levels)
    if replaced:
        data = newdata.copy()
        for col, val in replaced.items():
            data[col] = val
    data = _promote(data, float_columns)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            mm = spec.get_model_matrix(data, context=_R_CONTEXT, na_action="ignore")
    except Exception as exc:  # formulaic raises many types on unusable data
        raise ValueError(f"could not build the {what} of newdata: {str(exc).splitlines()[0]}") from None
    out = np.asarray(mm, dtype=float)
    if out.ndim == 1:
        out = out[:, None]
    cols = [v for v in variables if v in newdata.columns]
    if cols:
        na = newdata[cols].isna().any(axis=1).to_numpy()
        if na.any():
            out = out.copy()
            out[na] = np.nan
    return out


def _lhs_variables(lhs: str, columns: pd.Index) -> set[str]:
    if lhs in columns:
        return {lhs}
    quoted = {q for q in _BACKTICKED.findall(lhs) if q in columns}
    rest = _BACKTICKED.sub(" ", lhs)
    return quoted | {tok for tok in _IDENT.findall(rest) if tok in columns}


_RESPONSE_FUNCTIONS: dict[str, Any] = {"I": lambda x: x, **{k: v for k, v in _R_CONTEXT.items() if k != "factor"},
                                       "np": np}


def _evaluate_expression(expr: str, data: pd.DataFrame) -> pd.Series:
    """Evaluate an arithmetic expression of columns as R would: ``^`` is a power, integer
    columns are promoted to float first, `` `odd name` `` reads a column, and ``log``, ``exp``,
    ``sqrt``, ``I()`` ... are available."""
    names: dict[str, Any] = {}

    def quote(m: re.Match) -> str:
        key = f"_col{len(names)}_"
        names[key] = m.group(1)
        return key

    text = _BACKTICKED.sub(quote, expr).replace("^", "**")
    env: dict[str, Any] = dict(_RESPONSE_FUNCTIONS)
    for key, col in names.items():
        if col not in data.columns:
            raise ValueError(f"could not evaluate the response {expr!r}: no column {col!r} in data")
        env[key] = _numeric(data[col], expr)
    for tok in _IDENT.findall(text):
        if tok in data.columns and tok not in env:
            env[tok] = _numeric(data[tok], expr)
    try:
        with np.errstate(all="ignore"):
            value = eval(compile(text, "<response>", "eval"), {"__builtins__": {}}, env)  # noqa: S307
    except Exception as exc:  # any error evaluating the user's expression
        raise ValueError(f"could not evaluate the response {expr!r}: {exc}") from None
    if np.isscalar(value):
        value = np.full(len(data), value, dtype=float)
    return pd.Series(np.asarray(value), index=data.index)


def _numeric(col: pd.Series, expr: str) -> pd.Series:
    if col.dtype == bool:
        return col.astype(float)
    if not pd.api.types.is_numeric_dtype(col.dtype):
        raise ValueError(f"the response {expr!r} must be numeric, but column {col.name!r} has dtype {col.dtype}")
    return col.astype(float)


def evaluate_response(lhs: str, data: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray], tuple | None]:
    """Evaluate a response expression on data.

    Parameters
    ----------
    lhs : str
        A column name, ``cbind(a, b)`` (each argument an expression), ``a/b`` or another
        expression of columns as R reads it: ``log(y)``, ``I(y / 1000)``, ``y^2`` (a power),
        `` `odd name` ``. Integer columns are promoted to float before any arithmetic.
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
            col = _numeric(data[expr], expr)
        else:
            col = _evaluate_expression(expr, data)
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
    Q = None
    for j in range(X.shape[1]):
        col = X[:, j]
        norm = np.linalg.norm(col)
        if norm == 0:
            continue
        if Q is None:
            resid, rnorm = col, norm  # nothing to project out yet
        else:
            resid = col - Q @ (Q.T @ col)
            resid = resid - Q @ (Q.T @ resid)  # second pass for numerical orthogonality
            rnorm = np.linalg.norm(resid)
        if rnorm > tol * norm:
            keep.append(j)
            Q = (resid / rnorm)[:, None] if Q is None else np.column_stack([Q, resid / rnorm])
    return np.array(keep, dtype=np.int64)


class _ColumnsKey:
    """A DataFrame's column labels as a cache key that carries the labels themselves: two keys
    are equal when the labels, their types and the index type are, so a cached formula plan is
    reused only for columns that read the same (1 and 1.0, or "a" and np.str_("a"), differ)."""

    __slots__ = ("columns", "_key", "_hash")

    def __init__(self, columns: pd.Index):
        self.columns = columns
        labels = tuple(columns)
        self._key = (type(columns), labels, tuple(map(type, labels)))
        self._hash = hash(self._key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ColumnsKey) and self._key == other._key


@dataclass(frozen=True)
class _FormulaPlan:
    """What :func:`build_model` reads from a formula and the data's column labels (and which of
    them are ordered categoricals), before touching any values. Shared between calls through
    a cache: never modified, and its lists are copied into each model."""

    parsed: ParsedFormula
    renames: dict[str, str]
    needed: dict[Any, str]
    fixed_vars: list[str]
    term_vars: list[list[str]]
    offset_vars: list[str]
    as_factor: frozenset[str]


def _formula_terms(formula: str, cols: pd.Index) -> tuple[ParsedFormula, dict[Any, str], list[str], tuple]:
    """The first, dtype-free half of a plan: the parsed formula with the dot expanded, the
    columns of the response and offsets, and the labels whose dtype the rest depends on."""
    parsed = parse_formula(formula)
    if not parsed.lhs:
        raise ValueError(f"formula {formula!r} has no response on the left of '~'")
    needed: dict[Any, str] = {}
    lhs_vars = _lhs_variables(parsed.lhs, cols)
    if not lhs_vars:
        raise ValueError(f"response {parsed.lhs!r}: no such column in data (columns: {', '.join(map(str, cols))})")
    for v in sorted(lhs_vars):
        needed.setdefault(v, "response")
    offset_vars: list[str] = []
    for e in parsed.offsets:
        found, miss = _formula_variables(f"0 + I({e})", cols, f"offset({e})")
        offset_vars += found
        for v in found + miss:
            needed.setdefault(v, f"offset({e})")
    group_vars = {v for term in parsed.random for v in term.group_vars}
    fixed_rhs = _expand_dot(parsed.fixed_rhs, cols, set(lhs_vars) | group_vars | set(offset_vars))
    for term in parsed.random:
        if re.search(r"(?<![A-Za-z0-9_.`])\.(?![A-Za-z0-9_.`])", term.lhs):
            raise ValueError(f"formula {formula!r}: '.' (all other columns) is supported in the fixed part only, "
                             f"not in the random-effects term {term}")
    parsed = replace(parsed, fixed_rhs=fixed_rhs)
    # _ordered_contrasts rewrites a name only where it occurs in the text (or in the text it
    # inserts), so only those labels' dtypes matter.
    texts = [fixed_rhs, "C(, contr.poly)"] + [t.lhs for t in parsed.random]
    candidates = tuple(c for c in cols if isinstance(c, str) and any(c in t for t in texts))
    return parsed, needed, offset_vars, candidates


def _formula_plan(formula: str, cols: pd.Index, ordered: tuple[str, ...], terms: tuple) -> _FormulaPlan:
    """The whole plan of :func:`build_model` for a formula, the data's column labels, the
    labels of its ordered categorical columns (among the candidates of :func:`_formula_terms`)
    and the result of :func:`_formula_terms`."""
    parsed, needed, offset_vars, _ = terms
    needed = dict(needed)
    fixed_rhs, renames = _ordered_contrasts(parsed.fixed_rhs, ordered)
    random = []
    for term in parsed.random:
        lhs, more = _ordered_contrasts(term.lhs, ordered)
        renames.update(more)
        random.append(replace(term, lhs=lhs))
    parsed = replace(parsed, fixed_rhs=fixed_rhs, random=random)
    fixed_vars, missing_fixed = _formula_variables(parsed.fixed_rhs, cols, "fixed-effects part")
    for v in fixed_vars + missing_fixed:
        needed.setdefault(v, "fixed effects")
    term_vars = []
    for term in parsed.random:
        found, miss = ([], []) if term.lhs.strip() == "1" else _formula_variables(
            term.lhs, cols, f"random-effects term {term}")
        term_vars.append(found)
        for v in found + miss:
            needed.setdefault(v, f"random-effects term {term}")
        for v in term.group_vars:
            needed.setdefault(v, f"grouping factor of {term}")
    missing = [v for v in needed if v not in cols]
    if missing:
        detail = "; ".join(f"{v!r} (used in the {needed[v]})" for v in missing)
        raise ValueError(f"column(s) not found in data: {detail}")
    # Integer columns coded as factors keep their integer labels (factor(k)2, not 2.0).
    as_factor = set(_FACTOR_ARG.findall(" ".join([parsed.fixed_rhs] + [t.lhs for t in parsed.random])))
    return _FormulaPlan(parsed=parsed, renames=renames, needed=needed, fixed_vars=fixed_vars, term_vars=term_vars,
                        offset_vars=offset_vars, as_factor=frozenset(v.strip("`") for v in as_factor))


class _Columns:
    """The data columns a model reads, each taken from the user's frame once (a DataFrame
    lookup costs more than the arithmetic of a small model)."""

    def __init__(self, data: pd.DataFrame):
        self.data = data
        self.series: dict[Any, pd.Series] = {}

    def __getitem__(self, c: Any) -> pd.Series:
        s = self.series.get(c)
        if s is None:
            s = self.series[c] = self.data[c]
        return s


def _ordered_columns(columns: _Columns, candidates: tuple) -> tuple[str, ...]:
    return tuple(c for c in candidates
                 if isinstance(dt := columns[c].dtype, pd.CategoricalDtype) and dt.ordered)


@functools.lru_cache(maxsize=256)
def _cached_terms(formula: str, key: _ColumnsKey) -> tuple:
    return _formula_terms(formula, key.columns)


@functools.lru_cache(maxsize=256)
def _cached_plan(formula: str, key: _ColumnsKey, ordered: tuple[str, ...]) -> _FormulaPlan:
    return _formula_plan(formula, key.columns, ordered, _cached_terms(formula, key))


def _plan(formula: str, data: pd.DataFrame, columns: _Columns) -> _FormulaPlan:
    """The formula's plan on ``data``'s columns, from the cache when the labels are plain and
    unique (a MultiIndex matches partial keys, duplicates are looked up as frames)."""
    if isinstance(data.columns, pd.MultiIndex) or not data.columns.is_unique:
        terms = _formula_terms(formula, data.columns)
        ordered = tuple(c for c, dt in data.dtypes.items() if c in terms[3] and isinstance(c, str)
                        and isinstance(dt, pd.CategoricalDtype) and dt.ordered)
        return _formula_plan(formula, data.columns, ordered, terms)
    key = _ColumnsKey(data.columns)
    candidates = _cached_terms(formula, key)[3]
    return _cached_plan(formula, key, _ordered_columns(columns, candidates))


def _simple_response(lhs: str, columns: _Columns, labels: pd.Index) -> np.ndarray | None:
    """A response that is a plain numeric column, as float: what :func:`evaluate_response`
    gives for it (a new array, read-only as pandas' copy-on-write arrays are); None for
    anything else."""
    if lhs not in labels or "/" in lhs or "cbind" in lhs:
        return None
    dt = columns[lhs].dtype
    if not isinstance(dt, np.dtype) or dt.kind not in "biuf":
        return None
    y = np.array(columns[lhs].to_numpy(dtype=float), dtype=float)
    y.flags.writeable = False
    return y


def build_model(formula: str, data: pd.DataFrame, *, drop_rank_deficient: bool = True,
                row_arguments: dict[str, pd.Series | None] | None = None) -> ModelStructure:
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
    row_arguments : dict of str to Series, optional
        A fitter's per-row arguments (``weights``, ``offset``) from :func:`row_argument`: a row
        where one is missing is dropped with the others, in the same warning.

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
    if not isinstance(formula, str):
        parse_formula(formula)  # raises the error for a formula that is not a string
    unique = data.columns.is_unique
    columns = _Columns(data)
    plan = _plan(formula, data, columns)
    parsed = replace(plan.parsed, random=list(plan.parsed.random), offsets=list(plan.parsed.offsets))
    renames = dict(plan.renames)
    fixed_vars = list(plan.fixed_vars)
    term_vars = [list(tv) for tv in plan.term_vars]

    cols = list(plan.needed)
    if unique:
        # Column by column: pandas' list indexing costs more than a small fit's optimization.
        complete = None
        for c in cols:
            na = np.asarray(pd.isna(columns[c].array), dtype=bool)
            if na.any():
                complete = ~na if complete is None else complete & ~na
    else:
        complete = data[cols].notna().all(axis=1).to_numpy().copy()
    extra = {k: v for k, v in (row_arguments or {}).items() if v is not None}
    for v in extra.values():
        na = np.asarray(pd.isna(v.array), dtype=bool)
        if na.any():
            complete = ~na if complete is None else complete & ~na
    if complete is not None and complete.all():
        complete = None
    n_dropped = 0 if complete is None else int((~complete).sum())
    if n_dropped:
        bad = ([c for c in cols if (columns[c] if unique else data[c]).isna().any()]
               + [f"`{k}`" for k, v in extra.items() if v.isna().any()])
        warnings.warn(
            f"dropped {n_dropped} of {len(data)} rows with missing values in {', '.join(map(str, bad))} "
            "(like R's na.omit)",
            UserWarning,
            stacklevel=2,
        )
    if unique and complete is None and _COPY_ON_WRITE:
        # Every row used: the columns taken out are (copy-on-write) snapshots of the user's.
        sub: pd.DataFrame | _DeferredFrame = _DeferredFrame({c: columns[c] for c in cols}, data.index)
        n = len(data)
    else:
        sub = _select(data, cols, complete, columns.series if unique else None)
        n = len(sub)
    if n == 0:
        raise ValueError("no complete rows left after dropping rows with missing values")
    # The columns of the rows used: the user's own when every row is (read only, never written).
    used = columns if unique and complete is None else _Columns(sub)

    y = _simple_response(parsed.lhs, used, data.columns) if unique else None
    if y is not None:
        pieces, ratio = [y], None
    else:
        y, pieces, ratio = evaluate_response(parsed.lhs, _frame_of(sub))
    if not np.all(np.isfinite(y)):
        raise ValueError(f"the response {parsed.lhs!r} has {int(np.sum(~np.isfinite(y)))} infinite or "
                         "undefined values (log of 0 or of a negative number?)")

    model_vars = list(dict.fromkeys(fixed_vars + [v for tv in term_vars for v in tv]))
    float_columns = tuple(v for v in _integer_columns(used, model_vars) if v not in plan.as_factor)
    frame = _PromotedFrame(sub, float_columns)
    X_full, xnames_full, fixed_spec = _model_columns(parsed.fixed_rhs, used, frame, "fixed-effects matrix", renames,
                                                     data.columns)
    if X_full.shape[0] != n:
        raise ValueError("the fixed-effects matrix has a different number of rows from the data")
    _check_finite_columns(X_full, xnames_full, "fixed-effects")
    keep = _drop_dependent_columns(X_full, xnames_full)
    kept = set(keep.tolist())
    dropped = [xnames_full[j] for j in range(len(xnames_full)) if j not in kept]
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
    levels_memo: dict[Any, tuple[np.ndarray, list]] = {}
    for term, tvars in zip(parsed.random, term_vars):
        if term.lhs.strip() == "1":
            # Skip formulaic for the common intercept-only term (it is the slow part of tiny fits).
            Z, cnames, spec = np.ones((n, 1)), ["(Intercept)"], None
        else:
            Z, cnames, spec = _model_columns(term.lhs, used, frame, f"random-effects term {term}", renames,
                                             data.columns)
        if Z.shape[1] == 0:
            raise ValueError(f"random-effects term {term} has no columns")
        _check_finite_columns(Z, cnames, f"random-effects term {term}")
        codes, labels, keys = _grouping_codes(used if unique else sub, term.group_vars, levels_memo)
        if len(labels) < 2:
            raise ValueError(
                f"grouping factor {term.group!r} has {len(labels)} level; a random effect needs at least 2 levels"
            )
        reterms.append(
            ReTerm(spec=term, group=term.group, codes=codes, levels=labels, Z=np.ascontiguousarray(Z),
                   cnames=cnames, correlated=term.correlated, level_keys=keys, model_spec=spec,
                   variables=tvars, float_columns=tuple(c for c in float_columns if c in tvars))
        )
    # lme4 orders terms by decreasing number of levels (a stable sort).
    reterms.sort(key=lambda t: -t.nlevels)

    offset = None
    if parsed.offsets:
        offset = evaluate_offsets(parsed.offsets, _promote(_frame_of(sub), _integer_columns(used, plan.offset_vars)))
    model = ModelStructure(
        formula=formula, parsed=parsed, data=sub if isinstance(sub, pd.DataFrame) else None, y=y, lhs_terms=pieces, lhs_ratio=ratio,
        X=X, xnames=xnames, dropped_columns=dropped,
        rows=data.index[complete] if complete is not None else data.index.copy(),
        n_dropped=n_dropped, reterms=reterms, fixed_spec=fixed_spec, x_keep=keep, fixed_variables=fixed_vars,
        float_columns=tuple(c for c in float_columns if c in fixed_vars), offset=offset,
        row_mask=None if complete is None else np.asarray(complete, dtype=bool),
    )
    if isinstance(sub, _DeferredFrame):
        # Built when first read (see ModelStructure.__getattr__).
        del model.__dict__["data"]
        model.__dict__["_deferred_data"] = sub
    return model


class _DeferredFrame:
    """``data[cols]`` with every row, built on first use from columns already taken out
    (under copy-on-write they are snapshots: a later change to the user's frame does not
    reach them). The frame is what :func:`_select` builds."""

    def __init__(self, series: dict[Any, pd.Series], index: pd.Index):
        self.series, self.index, self._frame = series, index, None

    def get(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = pd.DataFrame(self.series, index=self.index, copy=False)
        return self._frame

    def __len__(self) -> int:
        return len(self.index)


def _frame_of(sub: pd.DataFrame | _DeferredFrame) -> pd.DataFrame:
    return sub.get() if isinstance(sub, _DeferredFrame) else sub


class _PromotedFrame:
    """The rows used with integer columns promoted to float (what formulaic evaluates), made
    only when formulaic is needed: now for a term the fast path cannot build, or later for
    prediction (a picklable stand-in for the frame in a deferred spec)."""

    def __init__(self, sub: pd.DataFrame | _DeferredFrame, float_columns: tuple[str, ...]):
        self.sub, self.float_columns, self._frame = sub, float_columns, None

    def get(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = _promote(_frame_of(self.sub), self.float_columns)
        return self._frame

    def __getstate__(self) -> dict:
        return {"sub": self.sub, "float_columns": self.float_columns, "_frame": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _model_columns(rhs: str, columns: _Columns, frame: _PromotedFrame, what: str,
                   renames: dict[str, str], labels: pd.Index) -> tuple[np.ndarray, list[str], Any]:
    """:func:`_simple_model_matrix` on the columns already taken out, else formulaic on the
    promoted frame. ``labels`` are the user's column labels (the used ones among them are the
    frame's columns; the user's Index has its hash table built already)."""
    simple = _simple_terms(rhs)
    if simple is not None:
        intercept, names = simple
        cols = []
        for name in names:
            dt = columns[name].dtype if name in labels else None
            if isinstance(dt, np.dtype) and dt.kind in "iuf":
                cols.append(columns[name].to_numpy(dtype=float))
            elif name in frame.float_columns:  # a nullable integer column, promoted as _promote does
                cols.append(pd.to_numeric(columns[name], errors="coerce").astype(float).to_numpy(dtype=float))
            else:
                break
        else:
            n = len(frame.sub)
            if intercept:
                cols.insert(0, np.ones(n))
            values = np.column_stack(cols) if cols else np.empty((n, 0))
            return values, ["(Intercept)"] * intercept + names, _DeferredSpec(rhs, frame, what, renames)
    return _model_matrix(rhs, frame.get(), what, renames)


# Under copy-on-write (pandas >= 3) a frame built from another's columns is already a copy.
_COPY_ON_WRITE = int(pd.__version__.split(".")[0]) >= 3


def _select(data: pd.DataFrame, cols: list, rows: np.ndarray | None,
            series: dict[Any, pd.Series] | None = None) -> pd.DataFrame:
    """A copy of ``data[cols]`` (only the ``rows`` where given): the frame
    ``data.loc[rows, cols].copy()`` is, built from the columns directly (~5x faster);
    ``series`` holds columns already taken out of ``data``."""
    if not data.columns.is_unique:
        return data.loc[rows if rows is not None else slice(None), cols].copy()
    series = series or {}
    out = pd.DataFrame({c: series[c] if c in series else data[c] for c in cols}, index=data.index,
                       copy=not _COPY_ON_WRITE)
    return out if rows is None else out[rows]


def row_argument(value: Any, data: pd.DataFrame, name: str) -> pd.Series | None:
    """A per-row argument of a fitter (``weights``, ``offset``) as a float Series on ``data``'s index.

    Parameters
    ----------
    value : None, str, Series or array-like
        A column name of ``data``; a Series, aligned to ``data`` by its index (not by
        position, so a filtered or shuffled frame gets the right values); or one value per
        row of ``data``, in order.
    data : DataFrame
    name : str
        The argument's name, for messages.

    Returns
    -------
    Series or None
        Indexed like ``data``; NaN where a value is missing (those rows are dropped with the
        rows missing a formula variable, by :func:`build_model`).

    Raises
    ------
    ValueError
        A missing column, a Series whose index lacks rows of ``data``, a wrong length, or
        values that are not numbers.
    """
    if value is None:
        return None
    if isinstance(value, str):
        if value not in data.columns:
            raise ValueError(f"`{name}`={value!r} is not a column of data")
        s = data[value]
        if not pd.api.types.is_numeric_dtype(s.dtype) or pd.api.types.is_bool_dtype(s.dtype):
            raise ValueError(f"`{name}` column {value!r} must be numeric, got dtype {s.dtype}")
        return pd.Series(s.to_numpy(dtype=float, na_value=np.nan), index=data.index, name=name)
    if isinstance(value, pd.Series):
        if not value.index.equals(data.index):
            if value.index.has_duplicates:
                raise ValueError(f"`{name}` is a Series with duplicate index labels; it is matched to data "
                                 "by index, so its labels must be unique")
            absent = data.index[~data.index.isin(value.index)]
            if len(absent):
                raise ValueError(f"`{name}` is a Series matched to data by index, and it has no value for "
                                 f"{len(absent)} row(s) of data (e.g. index {absent[0]!r}); pass "
                                 f"`{name}`.to_numpy() to match by position instead")
            value = value.reindex(data.index)
        values = value.to_numpy()
    else:
        values = np.asarray(value)
    try:
        arr = np.asarray(values, dtype=float).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a column name or numbers, got {type(value).__name__}") from None
    if arr.shape[0] != len(data):
        raise ValueError(f"`{name}` has {arr.shape[0]} values but data has {len(data)} rows")
    return pd.Series(arr, index=data.index, name=name)


def _check_finite_columns(M: np.ndarray, names: list[str], what: str) -> None:
    """No infinite values in a model matrix; the message names the columns."""
    bad = ~np.isfinite(M)
    if bad.any():
        cols = [names[j] for j in np.flatnonzero(bad.any(axis=0))]
        raise ValueError(f"the {what} column(s) {', '.join(map(repr, cols))} have {int(bad.sum())} infinite "
                         "value(s); remove those rows or transform the variable")
