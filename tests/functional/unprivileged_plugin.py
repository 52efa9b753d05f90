"""pytest plugin (``-p``) for the run test_unprivileged.py makes as an
unprivileged user.

* refuses to run as root;
* points the library's privsep context at the real helper
  (``IMAGEBACKEND_PRIVSEP_HELPER``, e.g. ``sudo -n <venv>/bin/privsep-helper``)
  and starts the daemon at session start, writing its PID for the root
  test, which stops it by that PID;
* records, per test, every call that reached the privsep daemon
  (``IMAGEBACKEND_UNPRIV_REPORT``, JSON), so the root test can check that
  Flat, Qcow2 and Rbd sent nothing there.
"""

import json
import os

import pytest
from oslo_config import cfg

from imagebackend import privileged

_calls: dict[str, list] = {}
_current = ['(session)']


def pytest_configure(config):
    if os.geteuid() == 0:
        raise pytest.UsageError('the unprivileged run must not be root')
    cfg.CONF.set_override('helper_command',
                          os.environ['IMAGEBACKEND_PRIVSEP_HELPER'],
                          group=privileged.default.cfg_section)
    real = privileged._entrypoint_for

    def counted(context, what='run_command'):
        entry = real(context, what)

        def call(*args):
            _calls.setdefault(_current[0], []).append(
                [what] + [a if isinstance(a, (str, int)) else list(a)
                          for a in args[:1]])
            return entry(*args)
        return call
    privileged._entrypoint_for = counted


def pytest_sessionstart(session):
    pid = privileged.pid()
    with open(os.environ['IMAGEBACKEND_PRIVSEP_PIDFILE'], 'w') as f:
        f.write(f'{pid}\n')


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _current[0] = item.nodeid
    _calls.setdefault(item.nodeid, [])
    yield
    _current[0] = '(session)'


def pytest_sessionfinish(session, exitstatus):
    with open(os.environ['IMAGEBACKEND_UNPRIV_REPORT'], 'w') as f:
        json.dump(_calls, f)
