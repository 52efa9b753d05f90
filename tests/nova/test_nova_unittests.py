"""Nova's own unit tests of its image backend, run on imagebackend.nova.

Nova 34.0.0's nova/tests/unit/virt/libvirt/test_imagebackend.py (144
tests), unmodified, in .venv-nova (tools/bootstrap.sh), with the library's
face put in place of ``nova.virt.libvirt.imagebackend`` through
``sys.modules`` only (tests/nova/run_nova_unittests.py). Every test passes,
or is skipped by Nova itself (as on Nova's own module), or is on
tests/nova/nova_unittests_allowlist.txt with its reason.
"""

import json
import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NOVA_PYTHON = os.path.join(ROOT, '.venv-nova', 'bin', 'python')
ALLOWLIST = os.path.join(HERE, 'nova_unittests_allowlist.txt')
PREFIX = 'nova.tests.unit.virt.libvirt.test_imagebackend.'

# Skipped by Nova's own test code on Nova's own module too: LUKS on a
# backend whose SUPPORTS_LUKS is False (all of them, in Nova 34).
NOVA_SKIPS = {
    f'{case}.test_libvirt_info_with_encryption'
    for case in ('FlatTestCase', 'Qcow2TestCase', 'LvmTestCase',
                 'EncryptedLvmTestCase', 'RbdTestCase', 'PloopTestCase')
}


def read_allowlist(path=ALLOWLIST) -> dict[str, str]:
    """{test id (without the module prefix): reason}; '#' lines are
    comments, a reason follows the id after ' -- '."""
    allowed = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith('#'):
                continue
            test_id, _, reason = line.partition(' -- ')
            assert reason.strip(), f'no reason given for {test_id}'
            allowed[test_id.strip()] = reason.strip()
    return allowed


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
    assert os.path.exists(NOVA_PYTHON), (
        'no .venv-nova: run tools/bootstrap.sh (tools/test.sh does)')
    out = tmp_path_factory.mktemp('nova') / 'outcomes.json'
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore')
    proc = subprocess.run(
        [NOVA_PYTHON, os.path.join(HERE, 'run_nova_unittests.py'),
         '--json', str(out)], env=env, capture_output=True, text=True,
        timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(out.read_text())
    return {k[len(PREFIX):]: v for k, v in result.items()}


def test_all_of_novas_tests_ran(outcomes):
    assert len(outcomes) == 144, sorted(outcomes)


def test_novas_tests_pass_on_the_library(outcomes):
    allowed = read_allowlist()
    bad = {test: outcome for test, outcome in outcomes.items()
           if outcome != 'pass' and test not in allowed
           and not (outcome == 'skip' and test in NOVA_SKIPS)}
    passed = sum(1 for o in outcomes.values() if o == 'pass')
    print(f"Nova's test_imagebackend.py on imagebackend.nova: {passed} of "
          f"{len(outcomes)} pass, {len(allowed)} allow-listed")
    assert not bad, json.dumps(bad, indent=1, sort_keys=True)


def test_allowlist_names_only_tests_that_still_fail(outcomes):
    stale = [test for test in read_allowlist()
             if outcomes.get(test) in ('pass', None)]
    assert not stale, ('remove from the allow-list (they pass, or no '
                       f'longer exist): {stale}')
