"""Nova's own unit tests of its image backend and of its LibvirtDriver,
run on imagebackend.nova.

Nova 34.0.0's nova/tests/unit/virt/libvirt/test_imagebackend.py (144
tests) and test_driver.py (1213: the driver's own tests, which reach the
image backend through Nova's LibvirtImageBackendFixture and the module's
names), unmodified, in .venv-nova (tools/bootstrap.sh), with the library's
face put in place of ``nova.virt.libvirt.imagebackend`` through
``sys.modules`` only (tests/nova/run_nova_unittests.py). Every test passes,
or is skipped (or expected to fail) by Nova itself, as on Nova's own
module, or is on the module's allow-list with its reason.
"""

import json
import os
import subprocess
from typing import NamedTuple

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
NOVA_PYTHON = os.path.join(ROOT, '.venv-nova', 'bin', 'python')
PACKAGE = 'nova.tests.unit.virt.libvirt.'


class NovaModule(NamedTuple):
    allowlist: str
    tests: int
    # Outcomes Nova's own test code gives on Nova's own module too.
    nova_outcomes: dict[str, str]


MODULES = {
    'test_imagebackend': NovaModule(
        os.path.join(HERE, 'nova_unittests_allowlist.txt'), 144,
        # LUKS on a backend whose SUPPORTS_LUKS is False (all of them).
        {f'{case}.test_libvirt_info_with_encryption': 'skip'
         for case in ('FlatTestCase', 'Qcow2TestCase', 'LvmTestCase',
                      'EncryptedLvmTestCase', 'RbdTestCase',
                      'PloopTestCase')}),
    'test_driver': NovaModule(
        os.path.join(HERE, 'nova_driver_unittests_allowlist.txt'), 1213,
        {'LXCSnapshotTests.test_raw_with_rbd_clone_failure_does_cold_'
         'snapshot': 'skip',
         'TestUpdateProviderTree.test_update_provider_tree_for_shared_'
         'disk_gb_resource': 'xfail'}),
}
def read_allowlist(path: str) -> dict[str, str]:
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


@pytest.fixture(scope='module', params=sorted(MODULES))
def module(request):
    return request.param


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory, module):
    assert os.path.exists(NOVA_PYTHON), (
        'no .venv-nova: run tools/bootstrap.sh (tools/test.sh does)')
    out = tmp_path_factory.mktemp('nova') / f'{module}.json'
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS='ignore')
    proc = subprocess.run(
        [NOVA_PYTHON, os.path.join(HERE, 'run_nova_unittests.py'),
         '--json', str(out), PACKAGE + module], env=env,
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(out.read_text())
    prefix = PACKAGE + module + '.'
    return {k[len(prefix):]: v for k, v in result.items()}


def test_all_of_novas_tests_ran(outcomes, module):
    assert len(outcomes) == MODULES[module].tests, sorted(outcomes)


def test_novas_tests_pass_on_the_library(outcomes, module):
    spec = MODULES[module]
    allowed = read_allowlist(spec.allowlist)
    bad = {test: outcome for test, outcome in outcomes.items()
           if outcome != 'pass' and test not in allowed
           and spec.nova_outcomes.get(test) != outcome}
    passed = sum(1 for o in outcomes.values() if o == 'pass')
    print(f"Nova's {module}.py on imagebackend.nova: {passed} of "
          f"{len(outcomes)} pass, {len(allowed)} allow-listed")
    assert not bad, json.dumps(bad, indent=1, sort_keys=True)


def test_allowlist_names_only_tests_that_still_fail(outcomes, module):
    stale = [test for test in read_allowlist(MODULES[module].allowlist)
             if outcomes.get(test) in ('pass', None)]
    assert not stale, ('remove from the allow-list (they pass, or no '
                       f'longer exist): {stale}')
