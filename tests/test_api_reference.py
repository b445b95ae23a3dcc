"""The book's API reference (book/api.md) documents every public name of ``mixedmodels``."""

from __future__ import annotations

import inspect
import re

import mixedmodels as mm
from chapters import ROOT, toc_files

API_PAGE = ROOT / "book" / "api.md"


def _documented() -> tuple[set[str], set[str]]:
    text = API_PAGE.read_text()
    objects = set(re.findall(
        r"\.\. auto(?:function|class|exception|data):: mixedmodels\.([\w.]+)", text))
    modules = set(re.findall(r"\.\. automodule:: mixedmodels\.(\w+)", text))
    return objects, modules


def test_every_public_name_is_in_the_reference():
    objects, modules = _documented()
    missing = []
    for name in mm.__all__:
        value = getattr(mm, name)
        if inspect.ismodule(value):
            found = name in modules
        else:
            # A name re-exported from a module the page documents whole (mm.mspe is mm.race.mspe).
            found = name in objects or any(
                getattr(getattr(mm, m, None), name, None) is value for m in modules)
        if not found:
            missing.append(name)
    assert not missing, f"add these public names of mixedmodels to {API_PAGE.name}: {missing}"


def test_the_reference_names_only_public_names():
    """A top-level entry is in ``mm.__all__``; a submodule's (``mixedmodels.distributed.x``)
    is in that submodule's ``__all__``."""
    import importlib

    objects, _ = _documented()
    stale = sorted(o for o in objects if "." not in o and o not in mm.__all__)
    for dotted in (o for o in objects if "." in o):
        module, name = dotted.rsplit(".", 1)
        public = getattr(importlib.import_module(f"mixedmodels.{module}"), "__all__", ())
        if name not in public:
            stale.append(dotted)
    assert not stale, f"{API_PAGE.name} documents names no longer in mixedmodels.__all__: {stale}"


def test_the_reference_is_in_the_toc():
    assert "book/api" in toc_files()
