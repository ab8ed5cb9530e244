"""Sphinx configuration for geventws' documentation."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
sys.path.insert(0, os.path.abspath("_ext"))

import geventws  # noqa: E402

project = "geventws"
author = "the geventws developers"
copyright = "2026, the geventws developers"
release = version = geventws.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
    "geventws_options",
]
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_mock_imports = ["gunicorn"]  # only geventws.worker needs it
nitpicky = False
html_theme = "furo"
html_title = f"geventws {release}"
exclude_patterns = ["_build"]
