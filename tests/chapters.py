"""Helpers for the chapter checks: find the book's chapters, execute one, read its glued values."""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES_DIR = Path(__file__).resolve().parent / "chapter_values"


def toc_files(toc_path: Path = ROOT / "_toc.yml") -> list[str]:
    """Every file named in ``_toc.yml`` (root first), as paths without suffix."""
    toc = yaml.safe_load(toc_path.read_text())
    found: list[str] = [toc["root"]]

    def walk(entries: list[dict]) -> None:
        for entry in entries or []:
            if "file" in entry:
                found.append(entry["file"])
            walk(entry.get("sections", []))
            walk(entry.get("chapters", []))
            for part in entry.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []))
    for part in toc.get("parts", []):
        walk(part.get("chapters", []))
    return found


def chapter_path(entry: str) -> Path:
    for suffix in (".md", ".ipynb"):
        path = ROOT / f"{entry}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(f"_toc.yml names {entry!r} but no {entry}.md or .ipynb exists")


def is_executable(path: Path) -> bool:
    """A page is a chapter to execute when it has code cells (a jupytext notebook)."""
    text = path.read_text()
    return path.suffix == ".ipynb" or "```{code-cell}" in text


def executable_chapters() -> list[str]:
    return [entry for entry in toc_files() if is_executable(chapter_path(entry))]


def stem(entry: str) -> str:
    return Path(entry).name


@dataclass
class Expectation:
    """One row of a chapter's tolerance table."""

    name: str
    reason: str
    expected: float | None = None
    tol: float | None = None
    rtol: float | None = None
    minimum: float | None = None
    maximum: float | None = None

    def problem(self, value: object) -> str | None:
        """Why ``value`` fails this row, or None when it passes."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            if self.expected is not None and value == self.expected:
                return None
            return f"{self.name} = {value!r} is not a number"
        if self.expected is not None:
            allowed = (self.tol or 0.0) + (self.rtol or 0.0) * abs(self.expected)
            if not abs(value - self.expected) <= allowed:
                return (f"{self.name} = {value!r}, expected {self.expected!r} "
                        f"within {allowed:.3g} ({self.reason})")
        if self.minimum is not None and not value > self.minimum:
            return f"{self.name} = {value!r}, should be above {self.minimum!r} ({self.reason})"
        if self.maximum is not None and not value < self.maximum:
            return f"{self.name} = {value!r}, should be below {self.maximum!r} ({self.reason})"
        return None


@dataclass
class ToleranceTable:
    chapter: str
    rows: list[Expectation] = field(default_factory=list)


def load_table(path: Path) -> ToleranceTable:
    raw = yaml.safe_load(path.read_text())
    rows = []
    for item in raw.get("values", []):
        unknown = set(item) - {"name", "reason", "expected", "tol", "rtol", "min", "max"}
        if unknown:
            raise ValueError(f"{path.name}: unknown keys {sorted(unknown)} in row {item.get('name')}")
        if not item.get("reason"):
            raise ValueError(f"{path.name}: row {item.get('name')} has no reason")
        if item.get("expected") is not None and item.get("tol") is None and item.get("rtol") is None:
            raise ValueError(f"{path.name}: row {item['name']} has an expected value but no tol/rtol")
        rows.append(Expectation(
            name=item["name"], reason=item["reason"], expected=item.get("expected"),
            tol=item.get("tol"), rtol=item.get("rtol"), minimum=item.get("min"), maximum=item.get("max"),
        ))
    return ToleranceTable(chapter=raw["chapter"], rows=rows)


def load_tables() -> dict[str, ToleranceTable]:
    tables = {}
    for path in sorted(VALUES_DIR.glob("*.yml")):
        table = load_table(path)
        tables[table.chapter] = table
    return tables


def _parse_plain(text: str) -> object:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def glued_values(notebook) -> dict[str, object]:
    """Name -> value of every ``glue``d output (numbers and strings are parsed from text/plain)."""
    values: dict[str, object] = {}
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook")
            if not scrap:
                continue
            prefix = scrap.get("mime_prefix", "")
            plain = output.get("data", {}).get(f"{prefix}text/plain")
            values[scrap["name"]] = _parse_plain(plain) if plain is not None else output.get("data")
    return values


def execute_chapter(entry: str, timeout: int = 600):
    """Execute a chapter in a fresh kernel, from the chapter's folder, and return the notebook."""
    import jupytext
    from nbclient import NotebookClient

    path = chapter_path(entry)
    notebook = jupytext.read(path)
    client = NotebookClient(
        notebook, timeout=timeout, kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return notebook


TYPED_DECIMAL = re.compile(r"(^|[^`{0-9.\w])-?[0-9]+\.[0-9]{2,}")


def typed_decimals(path: Path) -> list[str]:
    """Prose lines that type a decimal number by hand (outside front matter, code, math and roles)."""
    lines, in_fence, in_math = [], False, False
    text = path.read_text()
    if text.startswith("---"):
        text = text.split("---", 2)[2]  # drop the jupytext front matter
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            in_fence = not in_fence
            continue
        if stripped == "$$":
            in_math = not in_math
            continue
        if in_fence or in_math:
            continue
        prose = re.sub(r"\{[a-z:-]+\}`[^`]*`", "", line)  # roles such as {glue:text}`x:.2f`
        prose = re.sub(r"`[^`]*`", "", prose)  # inline code
        prose = re.sub(r"\$[^$]*\$", "", prose)  # inline math
        if TYPED_DECIMAL.search(prose):
            lines.append(line)
    return lines
