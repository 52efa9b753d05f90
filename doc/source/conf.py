"""Sphinx configuration for the imagebackend documentation.

Built by ``tox -e docs`` (``sphinx-build -W --keep-going``): every warning
fails the build, so a docstring or option help text that does not render
breaks CI.
"""

project = 'imagebackend'
copyright = 'imagebackend contributors'
author = 'imagebackend contributors'

extensions = [
    'sphinx.ext.autodoc',
    'sphinx.ext.viewcode',
    'sphinxarg.ext',
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


# Text that docutils parses outside Sphinx's logging (sphinx-argparse parses
# the CLI's help strings itself) reports markup errors only as "problematic"
# nodes in the page. Turn each into a Sphinx warning, so -W fails the build
# on them as on any other warning.
def _warn_on_problematic(app, doctree, docname):
    from docutils import nodes
    from sphinx.util import logging
    logger = logging.getLogger('imagebackend.docs')
    for node in doctree.findall(nodes.problematic):
        logger.warning('markup error in generated text near %r',
                       node.astext(), location=docname)


def setup(app):
    app.connect('doctree-resolved', _warn_on_problematic)
