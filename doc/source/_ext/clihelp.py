"""``.. cli-help:: module:function``: a command's ``--help``, every level.

The function returns an :class:`argparse.ArgumentParser`. The directive
emits one section per command and sub-command, each holding exactly what
``--help`` prints for it, as a literal block. Help strings are written for
a terminal (``RawDescriptionHelpFormatter``, ``*.conf``, indented lists),
not as reStructuredText, so they are shown, never parsed: any help text
renders, and the page is what an operator sees.
"""

from __future__ import annotations

import argparse
import importlib
import os

from docutils import nodes
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import make_id

# What argparse wraps to; fixed so the page does not depend on the
# terminal the build ran in.
COLUMNS = '79'


def _subcommands(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            yield from action.choices.items()


class CliHelp(SphinxDirective):
    required_arguments = 1
    has_content = False

    def run(self):
        module, _, func = self.arguments[0].partition(':')
        saved = os.environ.get('COLUMNS')
        os.environ['COLUMNS'] = COLUMNS
        try:
            parser = getattr(importlib.import_module(module), func)()
            return self._section(parser, parser.prog)
        finally:
            if saved is None:
                os.environ.pop('COLUMNS', None)
            else:
                os.environ['COLUMNS'] = saved

    def _section(self, parser, title):
        section = nodes.section()
        section['ids'].append(make_id(self.env, self.state.document, '',
                                      title))
        section += nodes.title(text=title)
        text = parser.format_help().rstrip()
        section += nodes.literal_block(text, text)
        for name, sub in _subcommands(parser):
            section += self._section(sub, sub.prog)
        return [section]


def setup(app):
    app.add_directive('cli-help', CliHelp)
    return {'parallel_read_safe': True, 'parallel_write_safe': True}
