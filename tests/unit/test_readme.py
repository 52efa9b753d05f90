"""README.rst's two commands are the ones CI and the tools run."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_quick_start_has_exactly_two_commands():
    text = (ROOT / 'README.rst').read_text()
    quick = text.split('Quick start', 1)[1].split('\nArchitecture\n', 1)[0]
    commands = re.findall(r'^    (\S.*)$', quick, flags=re.M)
    assert commands == ['bash tools/demo.sh', 'bash tools/test.sh']


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / '.ci' / 'run').read_text()
    assert re.search(r'^bash tools/test\.sh', ci, flags=re.M) or \
        'bash tools/test.sh </dev/null' in ci
