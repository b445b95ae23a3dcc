"""The summary of a fitted mixed model: data first, printing second.

A :class:`ModelSummary` holds what lme4's ``summary.merMod`` returns (title lines, fit
statistics, scaled-residual quantiles, the random-effects table, group counts, the
fixed-effects coefficient table, the correlation of the fixed effects, notes); ``str()`` renders
it like lme4's ``print.summary.merMod`` and ``_repr_html_`` renders the same content as HTML
tables in a notebook. It is generic: the LMM and the GLMM both fill it.

Example
-------
>>> import pandas as pd
>>> s = ModelSummary(
...     title=["Linear mixed model fit by REML", "Formula: y ~ 1 + (1 | g)"],
...     fit_statistics={"REML criterion at convergence": 319.65},
...     random_effects=random_effects_table([("g", "(Intercept)", 42.0, [])], residual_sd=49.5),
...     ngroups={"g": 6}, nobs=30,
...     fixed_effects=pd.DataFrame({"Estimate": [1527.5], "Std. Error": [19.4], "t value": [78.8]},
...                                index=["(Intercept)"]),
... )
>>> print(str(s).splitlines()[0])
Linear mixed model fit by REML
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

__all__ = ["ModelSummary", "random_effects_table", "residual_quantiles", "percent_labels", "format_column", "format_residuals",
           "format_pvalue"]


def percent_labels(level: float) -> list[str]:
    """R's column labels of a confidence interval: ``["2.5 %", "97.5 %"]`` for 0.95.

    As R's ``format(100 * c(a, 1 - a), digits = 3)``: each value to 3 significant digits,
    both printed with the larger number of decimals (``1.25 %``, ``98.75 %`` at 0.975).
    """
    a = (1 - float(level)) / 2
    vals = [100 * a, 100 * (1 - a)]

    def decimals(x: float) -> int:
        s = f"{float(f'{x:.3g}'):.10f}".rstrip("0")
        return len(s.split(".")[1]) if "." in s else 0

    d = max(decimals(v) for v in vals)
    return [f"{v:.{d}f} %" for v in vals]


def residual_quantiles(resid: np.ndarray) -> pd.Series:
    """Min, 1Q, Median, 3Q, Max of (scaled) residuals, as lme4 prints them.

    R's ``quantile`` type 7 is numpy's default linear interpolation.
    """
    q = np.quantile(np.asarray(resid, dtype=float), [0, 0.25, 0.5, 0.75, 1])
    return pd.Series(q, index=["Min", "1Q", "Median", "3Q", "Max"])


def random_effects_table(
    rows: Iterable[tuple[str, str, float, Sequence[float]]], residual_sd: float | None = None
) -> pd.DataFrame:
    """Build the random-effects table.

    Parameters
    ----------
    rows : iterable of (group, name, sd, correlations)
        One row per random effect; ``correlations`` are the correlations with the earlier
        names of the same block (empty for the first one and for scalar terms).
    residual_sd : float, optional
        Adds the ``Residual`` row (LMM); omit it for a GLMM without a scale parameter.

    Returns
    -------
    DataFrame
        Columns ``Groups``, ``Name``, ``Variance``, ``Std.Dev.``, ``Corr`` (a tuple per row).
    """
    records = [
        {"Groups": g, "Name": nm, "Variance": sd**2, "Std.Dev.": sd, "Corr": tuple(float(c) for c in cors)}
        for g, nm, sd, cors in rows
    ]
    if residual_sd is not None:
        records.append({"Groups": "Residual", "Name": "", "Variance": residual_sd**2,
                        "Std.Dev.": residual_sd, "Corr": ()})
    return pd.DataFrame.from_records(records, columns=["Groups", "Name", "Variance", "Std.Dev.", "Corr"])


def _decimals(x: float, digits: int) -> int:
    if not np.isfinite(x) or x == 0:
        return 0
    return max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))


def format_column(values: Sequence[float], digits: int = 4, max_decimals: int = 7) -> list[str]:
    """Format numbers with a common number of decimals, like R's ``format(x, digits=)``.

    The number of decimals is the smallest that shows every element with ``digits``
    significant digits (capped at ``max_decimals``; tiny numbers switch to scientific).
    """
    vals = [float(v) for v in values]
    finite = [v for v in vals if np.isfinite(v) and v != 0]
    if finite and min(abs(v) for v in finite) < 10.0 ** (-max_decimals + digits - 1):
        return [f"{v:.{digits - 1}e}" if np.isfinite(v) else "NA" for v in vals]
    dec = min(max_decimals, max((_decimals(v, digits) for v in finite), default=0))
    return [f"{v:.{dec}f}" if np.isfinite(v) else "NA" for v in vals]


def format_residuals(values: Sequence[float], digits: int = 4) -> list[str]:
    """Residual quantiles as lme4 prints them: ``zapsmall(q, digits + 1)``, so the decimals
    follow the largest quantile (a median near zero does not call for seven decimals)."""
    vals = np.asarray(values, dtype=float)
    finite = vals[np.isfinite(vals)]
    largest = float(np.max(np.abs(finite))) if finite.size else 0.0
    dec = digits + 1 if largest == 0 else max(0, digits + 1 - math.ceil(math.log10(largest)))
    return [f"{v:.{dec}f}" if np.isfinite(v) else "NA" for v in vals]


def format_pvalue(p: float) -> str:
    """R's ``format.pval`` with 4 digits and its ``< 2e-16`` floor."""
    if not np.isfinite(p):
        return "NA"
    if p < 2e-16:
        return "<2e-16"
    if p < 1e-4:
        return f"{p:.2e}"
    return f"{p:.4g}" if p >= 1e-3 else f"{p:.3g}"


def _abbrev(name: str, width: int = 6) -> str:
    """R's ``abbreviate(name, 6)`` roughly: (Intercept) -> (Intr)."""
    if len(name) <= width:
        return name
    if name == "(Intercept)":
        return "(Intr)"
    head, rest = name[0], name[1:]
    consonants = "".join(c for c in rest if c.lower() not in "aeiou")
    short = head + consonants
    return short[:width] if len(short) >= width else (head + rest)[:width]


def _text_table(header: list[str], rows: list[list[str]], align_left: Sequence[bool]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    def line(cells: list[str]) -> str:
        return " ".join(c.ljust(w) if left else c.rjust(w) for c, w, left in zip(cells, widths, align_left)).rstrip()
    return [line(header)] + [line(r) for r in rows]


@dataclass
class ModelSummary:
    """The content of a fitted model's summary, rendered as text or HTML.

    Attributes
    ----------
    title : list of str
        Leading lines, e.g. ``"Linear mixed model fit by REML"``, ``" Family: binomial  ( logit )"``,
        ``"Formula: ..."``.
    fit_statistics : dict
        ``{"REML criterion at convergence": 1743.6}`` (a single entry prints as one line) or
        ``{"AIC": ..., "BIC": ..., "logLik": ..., "deviance": ..., "df.resid": ...}`` (a table).
    random_effects : DataFrame
        From :func:`random_effects_table`.
    ngroups : dict
        Number of levels of each grouping factor.
    nobs : int
    fixed_effects : DataFrame
        Indexed by coefficient name; columns ``Estimate``, ``Std. Error`` and ``t value`` or
        ``z value`` and optionally ``Pr(>|z|)``.
    residuals : Series, optional
        Quantiles of the scaled residuals (:func:`residual_quantiles`).
    residuals_label : str
        Heading of the residual block.
    correlation : DataFrame, optional
        Correlation of the fixed-effects estimates (printed when there are two or more).
    notes : list of str
        Warnings printed at the end (singular fit, convergence, dropped columns...).
    """

    title: list[str]
    fit_statistics: dict[str, float]
    random_effects: pd.DataFrame
    ngroups: dict[str, int]
    nobs: int
    fixed_effects: pd.DataFrame
    residuals: pd.Series | None = None
    residuals_label: str = "Scaled residuals"
    correlation: pd.DataFrame | None = None
    notes: list[str] = field(default_factory=list)

    # ---- text -------------------------------------------------------------------------

    def _fit_lines(self) -> list[str]:
        if not self.fit_statistics:
            return []
        if len(self.fit_statistics) == 1:
            (k, v), = self.fit_statistics.items()
            return [f"{k}: {v:.1f}"]
        header, cells = [], []
        for k, v in self.fit_statistics.items():
            header.append(k)
            cells.append(f"{v:.0f}" if k == "df.resid" else f"{v:.1f}")
        return _text_table(header, [cells], [False] * len(header))

    def _random_rows(self) -> tuple[list[str], list[list[str]]]:
        re_ = self.random_effects
        var = format_column(re_["Variance"])
        sd = format_column(re_["Std.Dev."])
        ncor = max((len(c) for c in re_["Corr"]), default=0)
        header = ["Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] + [""] * (ncor - 1) if ncor else [])
        rows, prev = [], None
        for i, r in enumerate(re_.itertuples(index=False)):
            group = "" if r.Groups == prev else r.Groups
            prev = r.Groups
            cors = [f"{c:.2f}" for c in r.Corr] + [""] * (ncor - len(r.Corr))
            rows.append([group, r.Name, var[i], sd[i]] + cors)
        return header, rows

    def _fixed_rows(self) -> tuple[list[str], list[list[str]]]:
        fe = self.fixed_effects
        est_se = [c for c in fe.columns if c in ("Estimate", "Std. Error")]
        joint = format_column(np.concatenate([fe[c].to_numpy(dtype=float) for c in est_se])) if est_se else []
        formatted: dict[str, list[str]] = {}
        for j, c in enumerate(est_se):
            formatted[c] = joint[j * len(fe):(j + 1) * len(fe)]
        for c in fe.columns:
            if c in formatted:
                continue
            if c.startswith("Pr("):
                formatted[c] = [format_pvalue(v) for v in fe[c]]
            else:
                formatted[c] = [f"{v:.2f}" if np.isfinite(v) else "NA" for v in fe[c]]
        rows = [[str(name)] + [formatted[c][i] for c in fe.columns] for i, name in enumerate(fe.index)]
        return [""] + list(fe.columns), rows

    def _correlation_lines(self) -> list[str]:
        C = self.correlation
        if C is None or len(C) < 2:
            return []
        names = list(C.index)
        header = [""] + [_abbrev(n) for n in names[:-1]]
        rows = []
        for i in range(1, len(names)):
            rows.append([names[i]] + [f"{C.iloc[i, j]:.3f}" for j in range(i)] + [""] * (len(names) - 1 - i))
        return ["Correlation of Fixed Effects:"] + _text_table(header, rows, [True] + [False] * (len(names) - 1))

    def __str__(self) -> str:
        lines = list(self.title) + [""]
        fit = self._fit_lines()
        if fit:
            lines += fit + [""]
        if self.residuals is not None:
            lines.append(f"{self.residuals_label}: ")
            lines += _text_table(list(self.residuals.index), [format_residuals(self.residuals.to_numpy())],
                                 [False] * len(self.residuals))
            lines.append("")
        lines.append("Random effects:")
        header, rows = self._random_rows()
        lines += [" " + ln for ln in _text_table(header, rows, [True, True, False, False] + [False] * (len(header) - 4))]
        groups = "; ".join(f"{g}, {n}" for g, n in self.ngroups.items())
        lines.append(f"Number of obs: {self.nobs}, groups:  {groups}")
        lines.append("")
        lines.append("Fixed effects:")
        header, rows = self._fixed_rows()
        lines += _text_table(header, rows, [True] + [False] * (len(header) - 1))
        corr = self._correlation_lines()
        if corr:
            lines += [""] + corr
        if self.notes:
            lines.append("")
            lines += self.notes
        return "\n".join(lines)

    def __repr__(self) -> str:
        return str(self)

    # ---- HTML -------------------------------------------------------------------------

    @staticmethod
    def _html_table(header: list[str], rows: list[list[str]], caption: str | None = None,
                    left: int = 1) -> str:
        """An HTML table whose first ``left`` columns are text (left-aligned), the rest numbers."""
        # Inline styles: the summary must look the same in Jupyter, JupyterLab and the book's
        # theme, none of which we control (themes centre tables and their captions).
        esc = html.escape
        cell = "padding:0.15em 0.9em;text-align:{};white-space:nowrap"
        out = []
        if caption:
            out.append(f"<div style='font-weight:bold;margin-top:0.6em'>{esc(caption)}</div>")
        out.append('<table class="mm-summary" style="margin:0.2em 0 0.4em 0;border-collapse:collapse">')
        out.append("<thead><tr>" + "".join(
            f"<th style='{cell.format('left' if i < left else 'right')}'>{esc(h)}</th>"
            for i, h in enumerate(header)) + "</tr></thead><tbody>")
        for r in rows:
            out.append("<tr>" + "".join(
                f"<td style='{cell.format('left' if i < left else 'right')}'>{esc(c)}</td>"
                for i, c in enumerate(r)) + "</tr>")
        out.append("</tbody></table>")
        return "".join(out)

    def _repr_html_(self) -> str:
        esc = html.escape
        parts = ["<div class='mm-summary' style='text-align:left'>"]
        parts += [f"<div>{'<b>' if i == 0 else ''}{esc(t.strip())}{'</b>' if i == 0 else ''}</div>"
                  for i, t in enumerate(self.title)]
        if self.fit_statistics:
            cells = [f"{v:.0f}" if k == "df.resid" else f"{v:.1f}" for k, v in self.fit_statistics.items()]
            parts.append(self._html_table(list(self.fit_statistics), [cells], left=0))
        if self.residuals is not None:
            parts.append(self._html_table(list(self.residuals.index), [format_residuals(self.residuals.to_numpy())],
                                          caption=self.residuals_label, left=0))
        header, rows = self._random_rows()
        parts.append(self._html_table(header, rows, caption="Random effects", left=2))
        groups = ", ".join(f"{g}: {n}" for g, n in self.ngroups.items())
        parts.append(f"<div>Number of obs: {self.nobs}; groups: {esc(groups)}</div>")
        header, rows = self._fixed_rows()
        parts.append(self._html_table(header, rows, caption="Fixed effects"))
        C = self.correlation
        if C is not None and len(C) >= 2:
            names = list(C.index)
            rows = [[names[i]] + [f"{C.iloc[i, j]:.3f}" for j in range(i)] + [""] * (len(names) - 1 - i)
                    for i in range(1, len(names))]
            parts.append(self._html_table([""] + names[:-1], rows, caption="Correlation of fixed effects"))
        for note in self.notes:
            parts.append(f"<div style='color:#a33'>{esc(note)}</div>")
        parts.append("</div>")
        return "".join(parts)
