"""Run Nova's own unit tests of its image backend on imagebackend.nova.

Run with the Nova virtualenv (.venv-nova/bin/python), from anywhere:

    python tests/nova/run_nova_unittests.py [--json OUT] [--own] [TEST_ID...]

Nova's test module (nova/tests/unit/virt/libvirt/test_imagebackend.py from
the nova 34.0.0 wheel) runs unmodified; the only change is the module it
imports as ``nova.virt.libvirt.imagebackend``, put in ``sys.modules`` by
imagebackend.nova_swap.install() before anything imports Nova's libvirt
package. ``--own`` runs it on Nova's own module instead (the baseline).
Nova's tests are unittest/testtools tests, so they run with unittest.
Prints one line per test outcome; ``--json`` writes {test id: outcome}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unittest

NOVA_TESTS = 'nova.tests.unit.virt.libvirt.test_imagebackend'


class _Outcomes(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outcomes: dict[str, str] = {}
        self.details: dict[str, str] = {}

    def _set(self, test, outcome, err=None):
        self.outcomes[test.id()] = outcome
        if err is not None:
            self.details[test.id()] = self._exc_info_to_string(err, test)

    def addSuccess(self, test):
        super().addSuccess(test)
        self._set(test, 'pass')

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, 'fail', err)

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, 'error', err)

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self.outcomes[test.id()] = 'skip'
        self.details[test.id()] = reason

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, 'xfail', err)

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, 'xpass')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--json', help='write {test id: outcome} here')
    parser.add_argument('--details', help='write {test id: traceback} here')
    parser.add_argument('--own', action='store_true',
                        help="run on Nova's own module (baseline)")
    parser.add_argument('tests', nargs='*',
                        help='test ids (default: the whole module)')
    args = parser.parse_args(argv)

    if not args.own:
        import imagebackend.nova_swap
        imagebackend.nova_swap.install()
    # Nova's tests create their own instances_path etc.; no cwd state.
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    loader = unittest.TestLoader()
    names = args.tests or [NOVA_TESTS]
    suite = loader.loadTestsFromNames(
        [n if n.startswith('nova.') else f'{NOVA_TESTS}.{n}' for n in names])
    runner = unittest.TextTestRunner(resultclass=_Outcomes, verbosity=0,
                                     stream=sys.stderr)
    result = runner.run(suite)
    for test_id, outcome in sorted(result.outcomes.items()):
        print(f'{outcome} {test_id}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(result.outcomes, f, indent=1, sort_keys=True)
    if args.details:
        with open(args.details, 'w') as f:
            json.dump(result.details, f, indent=1, sort_keys=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
