"""Binder's environment.yml must install what pyproject.toml asks for (package, book and test extras)."""

from __future__ import annotations

import re
import tomllib

import yaml

from chapters import ROOT


def _split(requirement: str) -> tuple[str, str]:
    name = re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0)
    return name.lower().replace("_", "-"), requirement[len(name):].replace(" ", "")


def test_environment_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    wanted = dict(_split(r) for r in project["dependencies"] + extras["book"] + extras["test"])
    env = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    conda = dict(_split(d) for d in env if isinstance(d, str) and d.split("=")[0] not in {"python", "pip"})
    pip = next(d["pip"] for d in env if isinstance(d, dict))
    # Packages conda-forge lacks come from PyPI, in the pip section.
    from_pip = dict(_split(d) for d in pip if d != "-e .")
    assert not set(conda) & set(from_pip), f"listed twice: {set(conda) & set(from_pip)}"
    installed = conda | from_pip
    assert installed == wanted, f"environment.yml and pyproject.toml disagree: {installed} vs {wanted}"
    assert "-e ." in pip, "Binder must install the package itself"
    assert "python=3.11" in env
