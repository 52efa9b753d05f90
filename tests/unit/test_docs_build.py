"""The docs build is part of the whole suite: CI fails on a Sphinx warning.

``bash tools/test.sh`` without arguments (what README.rst and .ci/run give)
runs ``tox -e docs`` after pytest; with pytest arguments it runs only those
tests. These tests run the real script in a scratch copy of the project
whose bootstrap, python and tox only log how they were called.
"""

import configparser
import os
import pathlib
import shutil
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[2]

FAKE = """#!/bin/sh
echo "$(basename "$0") $*" >> "{log}"
exit ${{{rc_var}:-0}}
"""


def _project(tmp_path):
    root = tmp_path / 'project'
    (root / 'tools').mkdir(parents=True)
    shutil.copy(ROOT / 'tools' / 'test.sh', root / 'tools' / 'test.sh')
    (root / 'tools' / 'bootstrap.sh').write_text('exit 0\n')
    bindir = root / '.venv' / 'bin'
    bindir.mkdir(parents=True)
    log = tmp_path / 'calls.log'
    for name, rc_var in (('python', 'FAKE_PYTEST_RC'),
                         ('tox', 'FAKE_TOX_RC')):
        path = bindir / name
        path.write_text(FAKE.format(log=log, rc_var=rc_var))
        path.chmod(0o755)
    return root, log


def _run(root, *args, **env):
    return subprocess.run(
        ['bash', str(root / 'tools' / 'test.sh'), *args],
        env={**os.environ, **env}, capture_output=True, text=True,
        stdin=subprocess.DEVNULL)


def test_whole_suite_builds_the_docs(tmp_path):
    root, log = _project(tmp_path)
    result = _run(root)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ['python -m pytest',
                                            'tox -q -e docs']


def test_pytest_arguments_run_only_those_tests(tmp_path):
    root, log = _project(tmp_path)
    result = _run(root, 'tests/unit', '-q')
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ['python -m pytest tests/unit -q']


def test_a_failed_docs_build_fails_the_suite(tmp_path):
    root, _log = _project(tmp_path)
    result = _run(root, FAKE_TOX_RC='1')
    assert result.returncode == 1
    assert 'tox -e docs exited with 1' in result.stderr


def test_a_failed_pytest_run_keeps_its_status_and_still_builds_docs(
        tmp_path):
    root, log = _project(tmp_path)
    result = _run(root, FAKE_PYTEST_RC='3')
    assert result.returncode == 3
    assert log.read_text().splitlines()[-1] == 'tox -q -e docs'


def test_docs_env_treats_warnings_as_errors():
    tox = configparser.ConfigParser(interpolation=None)
    tox.read(ROOT / 'tox.ini')
    command = tox['testenv:docs']['commands'].split()
    assert command[:3] == ['sphinx-build', '-W', '--keep-going']
    assert 'doc/source' in command
