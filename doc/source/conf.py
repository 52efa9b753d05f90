"""Sphinx configuration for the imagebackend documentation.

Built by ``tox -e docs`` (``sphinx-build -W --keep-going``): every warning
fails the build, so a docstring or option help text that does not render
breaks CI.
"""

import os
import sys

# Local extensions (doc/source/_ext).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '_ext'))

project = 'imagebackend'
copyright = 'imagebackend contributors'
author = 'imagebackend contributors'

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.viewcode',
    'clihelp',
    'oslo_config.sphinxext',
]

# The API reference documents what the modules say about themselves, in
# source order, so related members stay together.
autodoc_member_order = 'bysource'
autodoc_typehints = 'description'
autodoc_default_options = {
    'show-inheritance': True,
}
# Cross-references to names Sphinx cannot resolve are left as text, not
# warned about: the docstrings name Nova's and oslo's objects freely.
nitpicky = False

exclude_patterns = []
html_theme = 'alabaster'
html_static_path = []
html_title = 'imagebackend'

