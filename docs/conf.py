"""
Sphinx configuration for txsmtpclient's documentation site.

Built in CI with warnings as errors and nitpicky references::

    .venv/bin/sphinx-build -W -n --keep-going -b html docs docs/_build/html

Intersphinx reads Python's and Twisted's inventories from Debian's
``python3.11-doc`` and ``twisted-doc`` packages when they are installed
(``.ci/run`` installs them), so the build needs no network; links still
point at the public sites.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

import txsmtpclient

project = "txsmtpclient"
author = "The txsmtpclient developers"
copyright = "2026, The txsmtpclient developers"
release = version = txsmtpclient.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
]

exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "none"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}


def _inventory(*paths: str) -> str | None:
    for path in paths:
        if os.path.exists(path):
            return path
    return None


_python = _inventory(
    "/usr/share/doc/python3.11/html/objects.inv", "/usr/share/doc/python3/html/objects.inv"
)
_twisted = _inventory("/usr/share/doc/twisted-doc/html/api/objects.inv")
# Only local inventories: the build must not reach the network.
intersphinx_mapping = {}
if _python is not None:
    intersphinx_mapping["python"] = ("https://docs.python.org/3", _python)
if _twisted is not None:
    intersphinx_mapping["twisted"] = ("https://docs.twisted.org/en/stable/api/", _twisted)

nitpicky = True
nitpick_ignore_regex = [
    # zope.interface classes render as their repr in annotations.
    ("py:class", r"<InterfaceClass .*>"),
    # Private modules' names show where a public name is defined.
    ("py:class", r"txsmtpclient(\.\w+)*\._\w+(\.\w+)*"),
    ("py:class", r"twisted\.internet\._sslverify\..*"),
    # Docstrings name their neighbours by short names (``Reply``,
    # ``SMTP.connect``): those render as code without a link.  Qualified
    # references are still checked.
    ("py:.*", r"[A-Za-z_]\w*(\.\w+)?"),
    # Private modules are not documented.
    ("py:mod", r"txsmtpclient(\.\w+)*\._\w+"),
    ("py:(func|class|meth|data)", r"txsmtpclient(\.\w+)*\._\w+\..*"),
]
