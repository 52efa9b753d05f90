"""A real, throwaway Ceph cluster on 127.0.0.1 for the Rbd tests.

One ``ceph-mon`` and one ``ceph-osd`` whose object store is ``memstore``
(data kept in the OSD's RAM: no disk, no loop device), cephx on, no mgr
(RBD needs none), everything under one temporary directory: the recipe of
real-backends.md section 3, run from Python so the test session owns the
daemons. They are started with :class:`subprocess.Popen` and stopped by
their PIDs -- the OSD first, then the mon, so the OSD's "going down" message
is acked at once -- each with SIGTERM, a bounded wait and SIGKILL, and
reaped with ``wait()`` (this box's PID 1 reaps nothing). Every ``ceph``
CLI call runs with ``--connect-timeout`` under a subprocess timeout: without
a mgr some commands would otherwise hang.

The mon listens on two ports picked free by the kernel (msgr2 and msgr1),
never the fixed 3300/6789, so a cluster already on this host (another test
session, a real Ceph) is never touched; if the mon cannot bind what was
picked (taken in between) it exits and other ports are tried.

:func:`ceph_cluster` is the session-scoped fixture (registered once, in
``tests/functional/conftest.py``); :func:`running_cluster` is the same as a context manager, and
``python -m tests.functional.ceph_env DIR`` starts one by hand until Ctrl-C.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid as uuid_mod
from typing import Iterator, NamedTuple

import pytest

from tests.daemons import session_members

POOL = 'rbd'
# A second pool, as Glance's 'images' pool would be: rbd:// locations point
# into it, so clones across pools are tested too.
IMAGES_POOL = 'images'
CLI_TIMEOUT = 60          # seconds, any single ceph/rbd CLI call
STOP_TIMEOUT = 10         # seconds between SIGTERM and SIGKILL
START_ATTEMPTS = 3
TOOLS = ('ceph', 'ceph-mon', 'ceph-osd', 'ceph-authtool', 'monmaptool',
         'rbd')


class Cluster(NamedTuple):
    """What a test needs to use the cluster."""

    conf: str            # ceph.conf (the admin keyring is found through it)
    pool: str            # the pool for instance disks
    fsid: str
    images_pool: str     # a second pool ("Glance's")
    directory: str
    mon_ports: tuple[int, int]   # (msgr2, msgr1)
    start_seconds: float


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _conf_text(d: str, fsid: str, v2: int, v1: int) -> str:
    mon = f'[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]'
    return f"""\
[global]
fsid = {fsid}
mon host = {mon}
mon initial members = a
public network = 127.0.0.0/8
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
run dir = {d}/run
admin socket = {d}/run/$name.asok
pid file = {d}/run/$name.pid
log file = {d}/log/$name.log
crash dir = {d}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon data avail warn = 1
mon data avail crit = 0
[client]
keyring = {d}/ceph.client.admin.keyring
[mon]
mon data = {d}/mon.$id
keyring = {d}/mon.$id/keyring
# The mon batches map changes for up to a second (paxos propose interval):
# every RBD snapshot create/remove and pool change waits for it. One
# client on loopback needs no batching: snapshot removal drops from ~0.9 s
# to ~0.02 s, which is most of an Rbd test's time.
paxos propose interval = 0.01
paxos min wait = 0.001
[osd]
osd data = {d}/osd.$id
keyring = {d}/osd.$id/keyring
osd objectstore = memstore
memstore device bytes = 2147483648
osd max object name len = 256
osd max object namespace len = 64
# A client killed mid-write (the failure tests kill an `rbd import`) holds
# its watch and exclusive lock until this expires: removing its image
# waits for it. Ceph's default is 30 s.
osd client watch timeout = 5
"""


class CephCluster:
    """Start and stop one cluster in directory ``d``."""

    def __init__(self, d: str):
        self.d = os.path.abspath(d)
        self.conf = os.path.join(self.d, 'ceph.conf')
        self.env = dict(os.environ, CEPH_CONF=self.conf, LC_ALL='C')
        self.mon: subprocess.Popen | None = None
        self.osd: subprocess.Popen | None = None
        self.fsid = ''
        self.ports = (0, 0)

    # -- commands ----------------------------------------------------------

    def run(self, *cmd: str, timeout: int = CLI_TIMEOUT,
            check: bool = True) -> str:
        """Run a command against this cluster, bounded by ``timeout``."""
        if cmd[0] == 'ceph':
            cmd = ('ceph', '--connect-timeout', str(timeout)) + cmd[1:]
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, env=self.env, capture_output=True,
                                  text=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise RuntimeError(f'{" ".join(cmd)} timed out after '
                               f'{timeout}s; logs in {self.d}/log') from e
        if os.environ.get('CEPH_ENV_TIMING'):
            sys.stderr.write(f'[ceph_env] {time.monotonic() - t0:6.2f}s '
                             f'{" ".join(cmd[:4])}\n')
        if check and done.returncode != 0:
            raise RuntimeError(f'{" ".join(cmd)} failed ({done.returncode})'
                               f':\n{done.stdout}{done.stderr}\n'
                               f'logs in {self.d}/log')
        return done.stdout

    def _daemon(self, name: str, *cmd: str) -> subprocess.Popen:
        log = open(os.path.join(self.d, 'log', f'{name}.out'), 'ab')
        with log:
            return subprocess.Popen(cmd, env=self.env,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT,
                                    start_new_session=True)

    # -- start -------------------------------------------------------------

    def start(self, pools: tuple[str, ...] = (POOL, IMAGES_POOL)) -> None:
        missing = [t for t in TOOLS if not _which(t)]
        if missing:
            raise RuntimeError(
                f'Ceph tools missing: {", ".join(missing)} (apt: ceph-mon '
                'ceph-osd ceph-common; tools/bootstrap.sh installs them)')
        for sub in ('mon.a', 'osd.0', 'run', 'log', 'crash'):
            os.makedirs(os.path.join(self.d, sub), exist_ok=True)
        self._keys()
        for attempt in range(START_ATTEMPTS):
            if self._start_mon():
                break
            self._stop_one(self.mon)
            self.mon = None
        else:
            raise RuntimeError(
                f'ceph-mon did not start in {START_ATTEMPTS} attempts with '
                f'free ports; see {self.d}/log/mon.a.out')
        self._start_osd()
        # The pools are made side by side: most of the time is the wait
        # for their placement groups to become active (rbd pool init).
        with concurrent.futures.ThreadPoolExecutor(len(pools)) as pool_ex:
            list(pool_ex.map(self._make_pool, pools))

    def _make_pool(self, pool: str) -> None:
        self.run('ceph', 'osd', 'pool', 'create', pool, '8', '8')
        # Returns once the pool's placement groups are active.
        self.run('rbd', 'pool', 'init', pool)

    def _keys(self) -> None:
        d = self.d
        self.run('ceph-authtool', '--create-keyring', f'{d}/mon.keyring',
                 '--gen-key', '-n', 'mon.', '--cap', 'mon', 'allow *')
        self.run('ceph-authtool', '--create-keyring',
                 f'{d}/ceph.client.admin.keyring', '--gen-key', '-n',
                 'client.admin', '--cap', 'mon', 'allow *', '--cap', 'osd',
                 'allow *', '--cap', 'mgr', 'allow *', '--cap', 'mds',
                 'allow *')
        self.run('ceph-authtool', f'{d}/mon.keyring', '--import-keyring',
                 f'{d}/ceph.client.admin.keyring')

    def _start_mon(self) -> bool:
        """Write the config for two free ports and start the mon; False if
        it exits (a port was taken in between)."""
        d = self.d
        self.fsid = str(uuid_mod.uuid4())
        v2, v1 = free_port(), free_port()
        while v1 == v2:
            v1 = free_port()
        self.ports = (v2, v1)
        with open(self.conf, 'w') as f:
            f.write(_conf_text(d, self.fsid, v2, v1))
        for old in ('monmap',):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, old))
        subprocess.run(['rm', '-rf', os.path.join(d, 'mon.a')], check=True)
        os.makedirs(os.path.join(d, 'mon.a'))
        self.run('monmaptool', '--create', '--fsid', self.fsid, '--addv',
                 'a', f'[v2:127.0.0.1:{v2},v1:127.0.0.1:{v1}]',
                 f'{d}/monmap')
        self.run('ceph-mon', '--mkfs', '-i', 'a', '--monmap', f'{d}/monmap',
                 '--keyring', f'{d}/mon.keyring')
        self.mon = self._daemon('mon.a', 'ceph-mon', '-f', '-i', 'a')
        # The mon is up once it accepts on its port; if that port was taken
        # in between, ceph-mon exits instead (and the next call would fail
        # cephx against whoever has it).
        deadline = time.monotonic() + CLI_TIMEOUT
        while time.monotonic() < deadline:
            if self.mon.poll() is not None:
                return False
            if _accepts(v1) and _accepts(v2):
                return self.mon.poll() is None
            time.sleep(0.02)
        return False

    def _start_osd(self) -> None:
        d = self.d
        osd_uuid = str(uuid_mod.uuid4())
        osd_id = self.run('ceph', 'osd', 'new', osd_uuid).strip()
        if osd_id != '0':
            raise RuntimeError(f'unexpected OSD id {osd_id!r}')
        self.run('ceph-osd', '-i', osd_id, '--mkfs', '--mkkey',
                 '--osd-uuid', osd_uuid, '--no-mon-config')
        self.run('ceph', 'auth', 'add', f'osd.{osd_id}', 'osd', 'allow *',
                 'mon', 'allow profile osd', 'mgr', 'allow profile osd',
                 '-i', f'{d}/osd.{osd_id}/keyring')
        self.osd = self._daemon('osd.0', 'ceph-osd', '-f', '-i', osd_id)

    # -- stop --------------------------------------------------------------

    @staticmethod
    def _stop_one(proc: subprocess.Popen | None) -> None:
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # Anything the daemon forked lives in its own session: end it too.
        for pid in session_members(proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def stop(self) -> None:
        """OSD first, then the mon; then check both are gone."""
        self._stop_one(self.osd)
        self._stop_one(self.mon)
        for proc in (self.osd, self.mon):
            if proc is None:
                continue
            assert proc.returncode is not None
            assert not os.path.exists(f'/proc/{proc.pid}'), \
                f'ceph daemon (pid {proc.pid}) still exists'
            assert session_members(proc.pid) == [], \
                f'ceph daemon (pid {proc.pid}) left processes'

    def pids(self) -> list[int]:
        return [p.pid for p in (self.mon, self.osd) if p is not None]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(('127.0.0.1', port), timeout=1):
            return True
    except OSError:
        return False


def _which(tool: str) -> bool:
    return any(os.access(os.path.join(p, tool), os.X_OK)
               for p in os.environ.get('PATH', '').split(os.pathsep))


@contextlib.contextmanager
def running_cluster(d: str) -> Iterator[Cluster]:
    """A started cluster in ``d``, stopped (and checked gone) on exit."""
    cluster = CephCluster(d)
    started = time.monotonic()
    try:
        cluster.start()
        info = Cluster(conf=cluster.conf, pool=POOL, fsid=cluster.fsid,
                       images_pool=IMAGES_POOL, directory=cluster.d,
                       mon_ports=cluster.ports,
                       start_seconds=time.monotonic() - started)
        yield info
    finally:
        cluster.stop()


# Set by a test that runs pytest again in a child (as another user,
# tests/functional/test_unprivileged.py): a JSON file describing the
# parent's cluster (see lend()), used instead of starting a second one.
LENT = 'IMAGEBACKEND_TEST_CEPH'


def lend(cluster: Cluster, d: str, uid: int, gid: int) -> str:
    """Let user ``uid`` use ``cluster`` from a child test run: a client
    ceph.conf and a copy of the admin keyring in ``d`` (owned by that
    user), and the JSON file the child's :func:`ceph_cluster` reads
    (through the environment variable :data:`LENT`). Returns its path."""
    keyring = os.path.join(d, 'ceph.client.admin.keyring')
    with open(os.path.join(cluster.directory,
                           'ceph.client.admin.keyring'), 'rb') as f:
        key = f.read()
    conf = os.path.join(d, 'ceph.conf')
    mon = (f'[v2:127.0.0.1:{cluster.mon_ports[0]},'
           f'v1:127.0.0.1:{cluster.mon_ports[1]}]')
    files = {
        keyring: key,
        conf: (f'[global]\nfsid = {cluster.fsid}\nmon host = {mon}\n'
               'auth client required = cephx\n'
               f'log file = {d}/$name.log\nrun dir = {d}\n'
               f'admin socket = {d}/$name.asok\n'
               f'[client]\nkeyring = {keyring}\n').encode(),
    }
    lent = os.path.join(d, 'cluster.json')
    files[lent] = json.dumps(dict(cluster._asdict(), conf=conf,
                                  directory=d)).encode()
    for path, data in files.items():
        with open(path, 'wb') as f:
            f.write(data)
        os.chmod(path, 0o600)
        os.chown(path, uid, gid)
    return lent


@pytest.fixture(scope='session')
def ceph_cluster(tmp_path_factory) -> Iterator[Cluster]:
    """(conf, pool, fsid, ...) of a real Ceph started once per session,
    or the one a parent test run lent (:func:`lend`)."""
    if os.environ.get(LENT):
        with open(os.environ[LENT]) as f:
            fields = json.load(f)
        fields['mon_ports'] = tuple(fields['mon_ports'])
        yield Cluster(**fields)
        return
    d = tmp_path_factory.mktemp('ceph')
    with running_cluster(str(d)) as cluster:
        sys.stderr.write(f'\n[ceph_env] cluster {cluster.fsid} up in '
                         f'{cluster.start_seconds:.1f}s (mon ports '
                         f'{cluster.mon_ports}, {cluster.directory})\n')
        with open(os.path.join(str(d), 'start_seconds'), 'w') as f:
            f.write(f'{cluster.start_seconds:.2f}\n')
        yield cluster


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == '__main__':
    signal.signal(signal.SIGTERM, _interrupt)   # stop the daemons on TERM too
    target = sys.argv[1] if len(sys.argv) > 1 else '/tmp/ceph-test'
    with running_cluster(target) as c:
        print(f'export CEPH_CONF={c.conf}   # up in {c.start_seconds:.1f}s;'
              f' Ctrl-C stops it', flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
