"""One lock per instance, across real processes (imagebackend/locks.py).

Two ``python -m driver.cli resize`` processes on one instance, and two
processes spawning the same instance through the driver flows, race for
real; every outcome must be one a serial run could give: nothing lost,
nothing made twice, no ``creating`` record left behind. Nothing here
asserts on time: a guard only keeps a hung test from hanging CI.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import traceback

import pytest
from oslo_concurrency import lockutils

from driver import cli
from driver import flows
from driver import instance as instance_mod
from imagebackend import exception
from imagebackend import locks
from imagebackend import records as records_mod
from tests.functional.conftest import GiB, MiB, blkid, run
from tests.hosts import make_conf
import imagebackend

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
GUARD = 300          # seconds: a deadlock guard, never an assertion
MARK = b'\x5c' * 65536


# -- the lock itself ----------------------------------------------------------

def _child_takes_lock(lock_dir: str, uuid: str, log: str) -> None:
    with open(log, 'a') as f:
        f.write('child-trying\n')
    with locks.instance_lock(lock_dir, uuid):
        with open(log, 'a') as f:
            f.write('child-got\n')


def _log(path: str) -> list[str]:
    with open(path) as f:
        return f.read().split()


def test_lock_is_reentrant_and_excludes_other_processes(tmp_path):
    lock_dir = str(tmp_path / 'locks')
    uuid = '6c0ffee0-0000-4000-8000-000000000001'
    log = str(tmp_path / 'log')
    open(log, 'w').close()
    ctx = multiprocessing.get_context('spawn')
    with locks.instance_lock(lock_dir, uuid):
        # The same thread takes it again at once (oslo's lock alone would
        # deadlock here), through a config or the directory alike.
        conf = make_conf(str(tmp_path), str(tmp_path / 'images'))
        with locks.instance_lock(conf, uuid):
            assert locks.held(lock_dir, uuid)
        assert locks.held(lock_dir, uuid)
        # Another host's lock dir is another lock, even in this process.
        other = str(tmp_path / 'other-host' / 'locks')
        with locks.instance_lock(other, uuid):
            pass
        child = ctx.Process(target=_child_takes_lock,
                            args=(lock_dir, uuid, log))
        child.start()
        while 'child-trying' not in _log(log) and child.is_alive():
            child.join(0.05)
        # Another thread of this process waits too.
        got = []

        def other_thread():
            with locks.instance_lock(lock_dir, uuid):
                got.append(True)
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join(0.5)
        assert got == [] and 'child-got' not in _log(log)
        with open(log, 'a') as f:
            f.write('parent-released\n')
    assert not locks.held(lock_dir, uuid)
    child.join(GUARD)
    assert child.exitcode == 0
    assert _log(log) == ['child-trying', 'parent-released', 'child-got']
    thread.join(GUARD)
    assert len(got) == 1


def test_not_recorded_requires_the_lock(host):
    backend = imagebackend.Backend(conf=host)
    instance = instance_mod.Instance(image_ref='img')
    with pytest.raises(exception.InvalidInput):
        list(flows._not_recorded(backend, instance, []))


# -- two resizes at once (issue point 2) ------------------------------------

def _cli(state: str, *args: str) -> dict:
    """One CLI call in this process (setup and checks only)."""
    from io import StringIO
    import contextlib
    out = StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(['--state-dir', state, '--json', *args])
    assert code == 0, out.getvalue()
    return json.loads(out.getvalue())


def _resize_proc(state: str, uuid: str, root_gb: int) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.Popen(
        [sys.executable, '-m', 'driver.cli', '--state-dir', state, '--json',
         'resize', uuid, '--root-gb', str(root_gb)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def _opens_a_lock_of(pid: int, lock_dir: str, uuid: str) -> bool:
    """Whether process ``pid`` has one of the instance's lock files open
    (fasteners keeps the file open while it waits for the lock)."""
    fds = f'/proc/{pid}/fd'
    try:
        targets = [os.readlink(os.path.join(fds, fd))
                   for fd in os.listdir(fds)]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return any(os.path.dirname(t) == lock_dir and uuid in t
               for t in targets)


def _guest_writer(path: str, at: int, procs, wrote: list) -> None:
    """The guest: as soon as its disk reaches past ``at``, write there."""
    while any(p.poll() is None for p in procs):
        try:
            if os.path.getsize(path) >= at + len(MARK):
                with open(path, 'r+b') as f:
                    f.seek(at)
                    f.write(MARK)
                    f.flush()
                    os.fsync(f.fileno())
                wrote.append(at)
                return
        except FileNotFoundError:
            pass
        threading.Event().wait(0.005)


def _read(path: str, at: int, n: int) -> bytes:
    with open(path, 'rb') as f:
        f.seek(at)
        return f.read(n)


def test_concurrent_cli_resizes_lose_nothing(tmp_path):
    """``resize --root-gb 5`` and ``--root-gb 3`` at once, Flat, several
    rounds: serial outcomes only (3 then 5, both succeed; or 5 then 3,
    the shrink refused), and data written past 3 GiB survives."""
    at = int(4.5 * GiB)
    outcomes = set()
    for round_ in range(5):
        state = str(tmp_path / f'state-{round_}')
        _cli(state, 'image', 'create-sample', 'img', '--size', '64M',
             '--format', 'raw')
        _cli(state, 'host', 'set', 'host-a', '--images-type', 'flat')
        view = _cli(state, 'spawn', '--image', 'img', '--name', 'vm',
                    '--root-gb', '1')
        uuid = view['uuid']
        path = os.path.join(state, 'hosts', 'host-a', 'instances', uuid,
                            'disk')
        lock_dir = os.path.realpath(os.path.join(
            state, 'hosts', 'host-a', 'instances', 'locks'))
        # Hold the record store's lock until both commands wait for a lock
        # of this instance: without an instance lock both have read the
        # records by then (a resize writes them only once it has decided),
        # so the race is a real one in every round, not a rare overlap.
        with lockutils.lock(f'records-{uuid}', lock_file_prefix='ib-',
                            external=True, lock_path=lock_dir):
            procs = [_resize_proc(state, uuid, 5),
                     _resize_proc(state, uuid, 3)]
            while not all(_opens_a_lock_of(p.pid, lock_dir, uuid)
                          for p in procs):
                assert all(p.poll() is None for p in procs), [
                    p.communicate() for p in procs]
                threading.Event().wait(0.01)
        wrote: list = []
        writer = threading.Thread(target=_guest_writer,
                                  args=(path, at, procs, wrote))
        writer.start()
        results = []
        for p in procs:
            out, err = p.communicate(timeout=GUARD)
            results.append((p.returncode, out, err))
        writer.join(GUARD)
        (code5, out5, err5), (code3, out3, err3) = results
        # Growing to 5 GiB can never be refused.
        assert code5 == 0, (out5, err5)
        if code3 != 0:
            assert json.loads(out3)['error'] == 'CannotShrink', (out3, err3)
        outcomes.add(code3 == 0)
        shown = _cli(state, 'show', uuid)
        disk = {d['name']: d for d in shown['disks']}['disk']
        # The disk, its record and the instance agree, at 5 GiB.
        assert os.path.getsize(path) == disk['virtual_size'] == 5 * GiB
        assert shown['flavor']['root_gb'] == 5
        assert disk['state'] == 'created'
        # What the guest wrote is there; so is the image's data.
        if wrote:
            assert _read(path, at, len(MARK)) == MARK
        assert _read(path, 0, 4) == b'\xab' * 4
        # A later shrink is refused, and changes nothing.
        assert cli.main(['--state-dir', state, 'resize', uuid,
                         '--root-gb', '3']) == 2
        assert os.path.getsize(path) == 5 * GiB


# -- two spawns of one instance at once (issue point 3) ---------------------

def _spawn_worker(instances_path: str, images_dir: str, uuid: str, barrier,
                  report: str) -> None:
    """A compute process of its own, spawning instance ``uuid``."""
    result = {}
    try:
        conf = make_conf(instances_path, images_dir)
        conf.set_override('images_type', 'flat', group='libvirt')
        backend = imagebackend.Backend(conf=conf)
        instance = instance_mod.Instance(
            uuid=uuid, image_ref='img', name='vm',
            flavor=instance_mod.Flavor(root_gb=1, ephemeral_gb=1))
        mapping = instance_mod.disk_mapping(instance)
        barrier.wait(GUARD)
        result['created'] = flows.spawn(backend, None, instance, mapping)
        local = os.path.join(instances_path, uuid, 'disk.local')
        result['fs_uuid'] = blkid(local).get('UUID')
    except exception.ImageBackendError as e:
        result['error'] = type(e).__name__
    except BaseException:
        result['crash'] = traceback.format_exc()
    with open(report, 'w') as f:
        json.dump(result, f)


def test_concurrent_spawns_make_each_disk_once(host, make_image, tmp_path):
    make_image('img', 'raw', 64 * MiB)
    ctx = multiprocessing.get_context('spawn')
    for round_ in range(3):
        uuid = f'6c0ffee0-0000-4000-8000-00000000010{round_}'
        barrier = ctx.Barrier(2)
        reports = [str(tmp_path / f'spawn-{round_}-{i}') for i in range(2)]
        procs = [ctx.Process(target=_spawn_worker,
                             args=(host.instances_path,
                                   host.imagebackend.images_dir, uuid,
                                   barrier, r)) for r in reports]
        for p in procs:
            p.start()
        for p in procs:
            p.join(GUARD)
        assert [p.exitcode for p in procs] == [0, 0]
        results = []
        for r in reports:
            with open(r) as f:
                results.append(json.load(f))
        assert not any('crash' in r for r in results), results
        ok = [r for r in results if 'created' in r]
        assert ok, results   # at most one may fail, and only typed
        # Each disk made exactly once, by one of them.
        made = sorted(n for r in ok for n in r['created'])
        assert made == ['disk', 'disk.local'], results
        backend = imagebackend.Backend(conf=host)
        recs = backend.records.list(uuid)
        assert [(r.name, r.state) for r in recs] == [
            ('disk', records_mod.CREATED), ('disk.local', records_mod.CREATED)]
        local = os.path.join(host.instances_path, uuid, 'disk.local')
        # The filesystem each saw is the one there, and it is whole.
        fs_uuid = blkid(local)['UUID']
        assert {r['fs_uuid'] for r in ok} == {fs_uuid}
        run('e2fsck', '-fn', local)
        root = os.path.join(host.instances_path, uuid, 'disk')
        assert os.path.getsize(root) == GiB
        assert _read(root, 0, 4) == b'\xab' * 4
