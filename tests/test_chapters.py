"""The chapter checks: execute every chapter of the book and compare what it glues with its table.

Each executable chapter listed in ``_toc.yml`` has a tolerance table in
``tests/chapter_values/<chapter>.yml``: every row names a glued value, what it
should be (``expected`` with ``tol``/``rtol``, or bounds ``min``/``max``) and a
one-line reason for the tolerance.
"""

from __future__ import annotations

import functools

import pytest

from chapters import (
    chapter_path, executable_chapters, execute_chapter, glued_values,
    load_tables, stem, toc_files, typed_decimals,
)

CHAPTERS = executable_chapters()
TABLES = load_tables()


@functools.lru_cache(maxsize=None)
def run(entry: str):
    """Execute a chapter once per test session; a cell error fails with the chapter's name."""
    from nbclient.exceptions import CellExecutionError

    try:
        return execute_chapter(entry)
    except CellExecutionError as error:
        pytest.fail(f"chapter {entry} raised while executing:\n{error}", pytrace=False)


def test_every_chapter_has_a_table():
    missing = [c for c in CHAPTERS if c not in TABLES or not TABLES[c].rows]
    assert not missing, f"chapters without entries in tests/chapter_values: {missing}"


def test_every_table_belongs_to_a_chapter():
    stray = [c for c in TABLES if c not in toc_files()]
    assert not stray, f"tolerance tables for chapters not in _toc.yml: {stray}"


@pytest.mark.parametrize("entry", toc_files(), ids=stem)
def test_no_typed_decimals_in_prose(entry):
    typed = typed_decimals(chapter_path(entry))
    assert not typed, f"{entry}: glue these numbers instead of typing them:\n" + "\n".join(typed)


@pytest.mark.chapters
@pytest.mark.parametrize("entry", CHAPTERS, ids=stem)
def test_chapter_values(entry):
    notebook = run(entry)
    values = glued_values(notebook)
    table = TABLES.get(entry)
    assert table is not None, f"chapter {entry} has no tolerance table"
    problems = []
    for row in table.rows:
        if row.name not in values:
            problems.append(f"{row.name} was not glued")
            continue
        problem = row.problem(values[row.name])
        if problem:
            problems.append(problem)
    assert not problems, f"chapter {entry}:\n  " + "\n  ".join(problems)


@pytest.mark.chapters
@pytest.mark.parametrize("entry", CHAPTERS, ids=stem)
def test_chapter_shows_no_stderr(entry):
    """No cell writes a warning or a log line the reader would see.

    Output a chapter means to hide (a progress bar) is tagged ``remove-stderr``; the book build
    applies the same rule (``stderr_output: warn`` under ``-W``).
    """
    notebook = run(entry)
    shown = []
    for number, cell in enumerate(notebook.cells):
        if "remove-stderr" in cell.get("metadata", {}).get("tags", []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                shown.append(f"cell {number}: {output.get('text', '')[:300]}")
    assert not shown, f"chapter {entry} shows stderr:\n  " + "\n  ".join(shown)
