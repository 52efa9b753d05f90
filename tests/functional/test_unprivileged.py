"""The library run by an unprivileged user, with a real privsep daemon.

nova-compute is not root: every root operation goes to an oslo.privsep
daemon. This test (run as root, like the rest of the suite) makes that
real:

* a system user, ``ibunpriv`` (tools/bootstrap.sh makes it too), and a
  sudoers rule letting it run exactly ``<venv>/bin/privsep-helper`` as
  root -- the way Nova starts its daemons (``sudo ... privsep-helper``);
  the rule keeps ``PATH``/``PYTHONPATH``/``LVM_*`` so the daemon runs this
  tree's code and the test's LVM (removed again at the end);
* a volume group on loop devices (tests/functional/lvm_env.py), made as
  root;
* a pytest run as that user (``runuser``) with
  tests/functional/unprivileged_plugin.py over the functional suite's
  Flat and Qcow2 tests (tests/functional/test_create.py), its Rbd backend
  tests (tests/functional/test_rbd.py, on this session's Ceph cluster,
  lent to that user: ``ceph_env.lend``) and an Lvm creation
  (tests/functional/unprivileged_lvm.py). The
  plugin starts the library's daemon through ``sudo -n privsep-helper``
  and reports every call that reached it.

Then, as root: Flat, Qcow2 and Rbd sent nothing to the daemon; the Lvm
commands did; the LV exists with the recorded size and holds the image's
bytes, though that user cannot run ``lvcreate`` itself; and the daemon,
a root process, is stopped by its PID and reaped (this process is made
the daemon's subreaper while the run lasts, as PID 1 here reaps nothing).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from tests.functional import ceph_env
from tests.functional import lvm_env as lvm_env_mod
from tests.hosts import GiB, MiB

USER = 'ibunpriv'
SUDOERS = '/etc/sudoers.d/imagebackend-unprivileged-test'
REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
HELPER = os.path.realpath(os.path.join(os.path.dirname(sys.executable),
                                       'privsep-helper'))
# The functional suite's Flat, Qcow2 and Rbd backend tests, and the Lvm
# creation. test_rbd.py's whole-flow tests (spawn, migrations, rescue, a
# domain, the CLI, killed imports, mixed backends) and its variations on
# one call (the generated equivalence cases, the unusable locations and
# fallbacks: an import and a clone again each) make the same backend
# calls many times over and would take minutes: left to the root run.
SELECTION = ['tests/functional/test_create.py', 'tests/functional/test_rbd.py',
             'tests/functional/unprivileged_lvm.py']
KEYWORDS = ('(flat or qcow2 or test_rbd.py or unprivileged_lvm.py) and not '
            '(migration or spawn or domain or rescue or mixed or cli or '
            'killed or hook or equivalence or unusable_location or '
            'fallback)')
PR_SET_CHILD_SUBREAPER = 36


def ensure_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(['useradd', '--system', '--no-create-home',
                        '--home-dir', '/nonexistent', '--shell',
                        '/usr/sbin/nologin', USER], check=True)
        return pwd.getpwnam(USER)


@contextlib.contextmanager
def sudoers_rule():
    """Let USER start this venv's privsep-helper as root, nothing else."""
    rule = (f'Defaults:{USER} !secure_path, !requiretty, env_keep += '
            '"PATH PYTHONPATH LVM_SYSTEM_DIR LVM_SUPPRESS_FD_WARNINGS"\n'
            f'{USER} ALL=(root) NOPASSWD: {HELPER}\n')
    tmp = SUDOERS + '.tmp'
    with open(tmp, 'w') as f:
        f.write(rule)
    os.chmod(tmp, 0o440)
    subprocess.run(['visudo', '-cqf', tmp], check=True)
    os.replace(tmp, SUDOERS)
    try:
        yield
    finally:
        os.unlink(SUDOERS)


@contextlib.contextmanager
def subreaper():
    """Orphans below this process (the daemon, once its helper exits)
    become its children, so it can reap them by PID."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    try:
        yield
    finally:
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def stop_by_pid(pid: int) -> None:
    """SIGTERM the daemon (if it has not already ended with its client's
    channel), then reap it: it is gone, not a zombie."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    reaped, _status = os.waitpid(pid, 0)
    assert reaped == pid
    assert not os.path.exists(f'/proc/{pid}')


def read_device(path: str, length: int) -> bytes:
    return subprocess.run(
        ['dd', f'if={path}', 'bs=1M', 'iflag=direct,count_bytes',
         f'count={length}', 'status=none'],
        check=True, capture_output=True).stdout


def guest_bytes(image: str, length: int, workdir: str) -> bytes:
    out = os.path.join(workdir, 'guest.raw')
    subprocess.run(['qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw',
                    image, out], check=True)
    with open(out, 'rb') as f:
        data = f.read(length)
    return data + b'\0' * (length - len(data))


@pytest.fixture
def lvm_root():
    """A volume group on a loop device, made as root; removed after."""
    root = tempfile.mkdtemp(prefix='ib-unpriv-lvm-')
    os.chmod(root, 0o755)   # the user reads lvm.conf (it may not write)
    env = lvm_env_mod.LvmEnv(root).start()
    try:
        env.vg = env.add_vg(GiB)
        yield env
    finally:
        left = env.close()
        shutil.rmtree(root, ignore_errors=True)
        assert left == []


def test_unprivileged_run_with_a_real_privsep_daemon(lvm_root,
                                                     ceph_cluster):
    if os.geteuid() != 0:
        pytest.fail('this test makes a user and a sudoers rule: run as root')
    if shutil.which('sudo') is None or not os.path.exists(HELPER):
        pytest.fail(f'sudo and {HELPER} are needed (tools/bootstrap.sh)')
    user = ensure_user()
    workdir = tempfile.mkdtemp(prefix='ib-unpriv-')
    os.chown(workdir, user.pw_uid, user.pw_gid)
    files = {k: os.path.join(workdir, f'{k}.out')
             for k in ('pid', 'report', 'lvm')}
    env = {
        'PATH': os.pathsep.join([
            lvm_root.bin, os.path.dirname(sys.executable),
            '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']),
        'HOME': workdir, 'LC_ALL': 'C.UTF-8', 'PYTHONPATH': REPO,
        'PYTHONDONTWRITEBYTECODE': '1',
        'LVM_SYSTEM_DIR': lvm_root.etc, 'LVM_SUPPRESS_FD_WARNINGS': '1',
        'IMAGEBACKEND_PRIVSEP_HELPER': f'sudo -n {HELPER}',
        'IMAGEBACKEND_PRIVSEP_PIDFILE': files['pid'],
        'IMAGEBACKEND_UNPRIV_REPORT': files['report'],
        'IMAGEBACKEND_UNPRIV_LVM_RESULT': files['lvm'],
        'IMAGEBACKEND_UNPRIV_VG': lvm_root.vg,
        ceph_env.LENT: ceph_env.lend(ceph_cluster, workdir, user.pw_uid,
                                     user.pw_gid),
    }
    cmd = ['runuser', '-u', USER, '--', 'env', '-i',
           *(f'{k}={v}' for k, v in env.items()),
           sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
           '-p', 'tests.functional.unprivileged_plugin',
           '--basetemp', os.path.join(workdir, 'pytest'),
           '-k', KEYWORDS, *SELECTION]
    try:
        with sudoers_rule(), subreaper():
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True,
                                  text=True, timeout=600)
            pid = None
            if os.path.exists(files['pid']):
                with open(files['pid']) as f:
                    pid = int(f.read())
                stop_by_pid(pid)
        assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
        assert pid is not None

        with open(files['report']) as f:
            report = json.load(f)
        ran = [n for n in report if n != '(session)']
        assert any('test_create.py' in n and 'flat' in n for n in ran)
        assert any('test_create.py' in n and 'qcow2' in n for n in ran)
        assert sum('test_rbd.py' in n for n in ran) >= 20
        lvm_tests = [n for n in ran if 'unprivileged_lvm.py' in n]
        assert len(lvm_tests) == 2
        # Flat, Qcow2 and Rbd need no root: nothing reached the daemon.
        assert {n: report[n] for n in ran
                if n not in lvm_tests and report[n]} == {}
        sent = [c for n in lvm_tests for c in report[n]]
        programs = {c[1][0] for c in sent if c[0] == 'run_command'}
        assert {'vgs', 'lvs', 'lvcreate', 'qemu-img'} <= programs

        # As root: the LV the unprivileged run made, with the record's
        # size and the image's bytes.
        with open(files['lvm']) as f:
            made = json.load(f)
        lvs = lvm_root.lvs(lvm_root.vg)
        assert made['lv'] in lvs
        assert lvs[made['lv']]['size'] == made['size'] == 24 * MiB
        assert read_device(made['path'], made['size']) == \
            guest_bytes(made['image'], made['size'], workdir)
        # The probe the user tried to create itself does not exist.
        assert [lv for lv in lvs if lv.startswith('probe-')] == []
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
