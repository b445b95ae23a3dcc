"""Small Sphinx extension for the book's HTML: what the reader sees around the chapters.

- The repository URL (``repository: url:`` in ``_config.yml``) is the one setting for the
  repository and Binder buttons: when it is empty they are not shown.
- Every chapter offers its executed notebook (``.ipynb``) for download, with or without Binder.
- One search box, in the sidebar; a favicon on every page and at the site root.
- The execution-status table names chapters by their titles and says "✓ ran" in plain text
  (an emoji check mark shows as an empty box where no emoji font is installed).
- Scripts that Jupyter Book registers twice (sphinx-thebe's ``const THEBE_JS_URL``) are written
  once, so no page throws a console error.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.transforms.post_transforms import SphinxPostTransform


def _repository_setting(app, config) -> None:
    options = config.html_theme_options
    # One search box (the sidebar's); the PyData header would add a second one.
    options["navbar_persistent"] = []
    # A first visit has no stored mode; without a default the theme logs a console error.
    config.html_context = {**(config.html_context or {}), "default_mode": "light"}
    url = (options.get("repository_url") or "").strip()
    if url:
        options["repository_url"] = url
        options.setdefault("use_repository_button", True)
    else:
        options.pop("repository_url", None)
        options["use_repository_button"] = False
        options["use_issues_button"] = False
        options["use_edit_page_button"] = False
        options["launch_buttons"] = {}


def _offer_notebook(app, pagename, templatename, context, doctree) -> None:
    executed = Path(app.outdir).parent / "jupyter_execute" / f"{pagename}.ipynb"
    if not executed.exists() or not str(context.get("sourcename", "")).endswith((".md", ".md.txt")):
        return
    target = Path(app.outdir) / "_sources" / f"{pagename}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(executed, target)
    context["ipynb_source"] = f"{pagename}.ipynb"


def _unique_scripts(app, pagename, templatename, context, doctree) -> None:
    seen, kept = set(), []
    for script in context.get("script_files", []):
        key = (getattr(script, "filename", str(script)) or "",
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            kept.append(script)
    context["script_files"] = kept


class _ExecTableTitles(SphinxPostTransform):
    """Link text of the execution-status table: the chapter's title, not its file path."""

    default_priority = 9  # after myst-nb builds the table (8), before references resolve (10)

    def run(self, **kwargs) -> None:
        for table in self.document.findall(nodes.table):
            for ref in table.findall(pending_xref):
                if ref.get("reftype") == "doc" and ref.get("refexplicit"):
                    ref["refexplicit"] = False


def _root_favicon(app, exception) -> None:
    # Pages without a <link rel="icon"> (the root redirect) make browsers ask for /favicon.ico.
    icon = Path(app.srcdir) / "book" / "_static" / "favicon.png"
    if exception is None and icon.exists():
        shutil.copy2(icon, Path(app.outdir) / "favicon.ico")


def setup(app):
    app.connect("build-finished", _root_favicon)
    try:
        from myst_nb.ext import execution_tables
    except ImportError:  # older myst-nb: leave its table as it is
        pass
    else:
        execution_tables._key2transform["succeeded"] = lambda ok: "✓ ran" if ok is True else "✗ failed"
    app.add_post_transform(_ExecTableTitles)
    app.connect("config-inited", _repository_setting, priority=900)
    app.connect("html-page-context", _offer_notebook, priority=400)
    app.connect("html-page-context", _unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
