"""The operator CLI as a hostile user or an unlucky operator uses it (issue
9, point 11): real ``python -m driver.cli`` processes on a real state
directory, one of them killed with SIGKILL at a named step."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from oslo_concurrency import lockutils

from imagebackend import cache as cache_mod
from tests.functional.conftest import tree

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _env(extra_path: str | None = None) -> dict:
    env = dict(os.environ, PYTHONPATH=REPO)
    if extra_path:
        env['PATH'] = extra_path + os.pathsep + env['PATH']
    return env


@pytest.fixture
def ib(tmp_path):
    """ib(*args) -> (exit code, JSON printed) of one real CLI process."""
    state = str(tmp_path / 'state')

    def call(*args):
        out = subprocess.run(
            [sys.executable, '-m', 'driver.cli', '--state-dir', state,
             '--json', *args], capture_output=True, text=True, cwd=REPO,
            env=_env())
        data = json.loads(out.stdout) if out.stdout.strip() else None
        return out.returncode, data
    call.state = state
    call.argv = [sys.executable, '-m', 'driver.cli', '--state-dir', state,
                 '--json']
    return call


def _host_dir(ib, host='host-a'):
    return os.path.join(ib.state, 'hosts', host, 'instances')


def _spawn(ib, *extra):
    code, view = ib('spawn', '--image', 'img', '--name', 'vm', *extra)
    assert code == 0, view
    return view


# -- names are checked before anything is written -----------------------------

@pytest.mark.parametrize('image_id', ['../../x', 'a/b', 'disks.json'])
def test_image_add_checks_the_id_before_writing(ib, tmp_path, image_id):
    ib('image', 'list')  # the state directory exists
    src = tmp_path / 'src.raw'
    src.write_bytes(b'\xab' * 65536)
    before = tree(tmp_path)
    code, err = ib('image', 'add', image_id, str(src), '--format', 'raw')
    assert code == 2 and err['error'] == 'InvalidDiskName', err
    # Nothing written anywhere: not in the images folder, not beside it.
    assert tree(tmp_path) == before
    assert ib('image', 'list')[1] == []


def test_image_add_never_replaces_an_image(ib, tmp_path):
    src = tmp_path / 'src.raw'
    src.write_bytes(b'\xab' * 65536)
    assert ib('image', 'add', 'img', str(src), '--format', 'raw')[0] == 0
    other = tmp_path / 'other.raw'
    other.write_bytes(b'\xcd' * 65536)
    code, err = ib('image', 'add', 'img', str(other), '--format', 'qcow2')
    assert code == 2 and err['error'] == 'InvalidInput'
    assert sorted(os.listdir(os.path.join(ib.state, 'images'))) == \
        ['img.raw']
    with open(os.path.join(ib.state, 'images', 'img.raw'), 'rb') as f:
        assert f.read() == b'\xab' * 65536
    assert src.exists()  # added as a copy


# -- a failed command leaves nothing half-made --------------------------------

@pytest.mark.parametrize('size', [
    '1M',          # qemu-io cannot write its 4M of sample data into it
    '9000000T',    # qemu-img refuses the size
])
def test_create_sample_failure_leaves_no_temp_file(ib, size):
    code, err = ib('image', 'create-sample', 'img', '--size', size)
    assert code != 0 and err['error'] == 'ProcessError', err
    images = os.path.join(ib.state, 'images')
    assert os.listdir(images) == []
    # The same id then works: nothing in the way.
    assert ib('image', 'create-sample', 'img', '--size', '16M')[0] == 0
    assert os.listdir(images) == ['img.qcow2']


# -- hosts ----------------------------------------------------------------------

def test_unknown_hosts_are_errors_never_created(ib):
    assert ib('image', 'create-sample', 'img', '--size', '16M')[0] == 0
    hosts = os.path.join(ib.state, 'hosts')
    code, err = ib('spawn', '--image', 'img', '--host', 'nowhere')
    assert code == 2 and err['error'] == 'UnknownHost', err
    assert not os.path.exists(os.path.join(hosts, 'nowhere'))
    assert ib('list')[1] == []

    view = _spawn(ib, '--root-gb', '1')
    for args in (['migrate', 'vm', '--to', 'nowhere'],
                 ['live-migrate-prepare', 'vm', '--to', 'nowhere'],
                 ['cache', 'list', '--host', 'nowhere']):
        code, err = ib(*args)
        assert code == 2 and err['error'] == 'UnknownHost', (args, err)
        assert not os.path.exists(os.path.join(hosts, 'nowhere')), args
    code, shown = ib('show', 'vm')
    assert shown['host'] == 'host-a' and shown['uuid'] == view['uuid']

    # A host made with `host set` is known.
    assert ib('host', 'set', 'host-b')[0] == 0
    code, moved = ib('migrate', 'vm', '--to', 'host-b')
    assert code == 0 and moved['host'] == 'host-b', moved


def test_an_empty_reference_matches_no_instance(ib):
    assert ib('image', 'create-sample', 'img', '--size', '16M')[0] == 0
    _spawn(ib, '--root-gb', '1')
    for command, ref in (('show', ''), ('delete', ''), ('delete', ' ')):
        code, err = ib(command, ref)
        assert code == 2 and err['error'] == 'InvalidInput', \
            (command, ref, err)
    assert len(ib('list')[1]) == 1
    assert len(os.listdir(_host_dir(ib))) == 3  # _base, locks, instance


# -- delete refuses what records do not describe ------------------------------

def test_delete_refuses_disks_without_records(ib):
    assert ib('image', 'create-sample', 'img', '--size', '16M')[0] == 0
    view = _spawn(ib, '--root-gb', '1', '--ephemeral-gb', '1')
    inst_dir = os.path.join(_host_dir(ib), view['uuid'])
    os.unlink(os.path.join(inst_dir, 'disks.json'))
    before = tree(inst_dir)

    code, err = ib('delete', 'vm')
    assert code == 2 and err['error'] == 'UnrecordedDisk', err
    assert 'no disk record' in err['message']
    assert os.path.join(inst_dir, 'disk') in err['message']
    # Nothing deleted: the disks, and the instance that owns them.
    assert tree(inst_dir) == before
    assert [i['uuid'] for i in ib('list')[1]] == [view['uuid']]


# -- a spawn killed mid-way -----------------------------------------------------

# Stands in for ``mkfs`` (the ephemeral disk's template step): says it has
# started by writing to the fifo $IB_STEP_READY (which blocks until the test
# reads it), then waits until the test closes the fifo $IB_STEP_HOLD.
_BLOCKING_MKFS = '''#!/bin/sh
echo "mkfs $$" > "$IB_STEP_READY"
cat "$IB_STEP_HOLD" > /dev/null
exit 1
'''


def test_spawn_killed_mid_way_is_listed_and_deletable(ib, tmp_path):
    assert ib('image', 'create-sample', 'img', '--size', '16M')[0] == 0
    shims = tmp_path / 'shims'
    shims.mkdir()
    (shims / 'mkfs').write_text(_BLOCKING_MKFS)
    (shims / 'mkfs').chmod(0o755)
    ready, hold = str(tmp_path / 'ready'), str(tmp_path / 'hold')
    os.mkfifo(ready)
    os.mkfifo(hold)
    env = _env(str(shims))
    env.update(IB_STEP_READY=ready, IB_STEP_HOLD=hold)
    proc = subprocess.Popen(
        ib.argv + ['spawn', '--image', 'img', '--name', 'vm', '--root-gb',
                   '1', '--ephemeral-gb', '1'],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True)
    try:
        # The named step: root disk made, the ephemeral template's mkfs
        # started. Blocks until the shim writes (or the spawn ends).
        with open(ready) as f:
            started = f.read()
        assert started.startswith('mkfs '), proc.communicate()
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        # Let the orphaned shim go.
        try:
            fd = os.open(hold, os.O_WRONLY | os.O_NONBLOCK)
            os.close(fd)
        except OSError:
            pass

    # What it left: the root disk, whole, and the records of the spawn's
    # batch (issue 12), all still creating: created records are written
    # together at the end. The root's pins the image's cache entry.
    code, listed = ib('list')
    assert code == 0 and len(listed) == 1, listed
    assert listed[0]['name'] == 'vm' and listed[0]['status'] == 'building'
    uuid = listed[0]['uuid']
    inst_dir = os.path.join(_host_dir(ib), uuid)
    assert os.path.exists(os.path.join(inst_dir, 'disk'))
    code, shown = ib('show', uuid)
    assert code == 0 and shown['status'] == 'building'
    assert [d['name'] for d in shown['disks']] == ['disk', 'disk.local']
    assert {d['state'] for d in shown['disks']} == {'creating'}
    code, entries = ib('cache', 'list')
    image_entry = hashlib.sha1(b'img').hexdigest()
    assert {e['name']: e['users'] for e in entries}[image_entry] == 1

    # Nothing but delete works on it.
    code, err = ib('resize', 'vm', '--root-gb', '2')
    assert code == 2 and 'building' in err['message']

    code, deleted = ib('delete', 'vm')
    assert code == 0 and deleted['deleted'] == ['disk', 'disk.local'], \
        deleted
    assert not os.path.exists(inst_dir)
    assert ib('list')[1] == []
    code, cleaned = ib('cache', 'clean', '--min-age', '0')
    assert code == 0 and image_entry in cleaned['removed'], cleaned
    # The killed template step's partial file went too.
    assert [n for n in os.listdir(os.path.join(_host_dir(ib), '_base'))
            if n.endswith('.part')] == []


# -- cache clean removes what killed fetches left -----------------------------

def test_cache_clean_removes_stale_part_files(ib):
    assert ib('image', 'create-sample', 'img', '--size', '16M')[0] == 0
    _spawn(ib, '--root-gb', '1')
    base = os.path.join(_host_dir(ib), '_base')
    old = time.time() - 2 * 3600
    names = {
        'stale': 'a' * 40 + '.part',
        'stale_converted': 'b' * 40 + '.converted.part',
        'stale_sidecar': 'c' * 40 + '.part.meta.json',
        'fresh': 'd' * 40 + '.part',
        'live': 'e' * 40 + '.part',
    }
    for key, name in names.items():
        with open(os.path.join(base, name), 'wb') as f:
            f.write(b'x' * 4096)
        if key != 'fresh':
            os.utime(os.path.join(base, name), (old, old))
    entries_before = sorted(n for n in os.listdir(base)
                            if not n.endswith('.part') and
                            not n.endswith('.part.meta.json'))

    code, dry = ib('cache', 'clean', '--min-age', '3600', '--dry-run')
    assert code == 0
    assert len(os.listdir(base)) == len(entries_before) + len(names)

    # A fetch still running holds its entry's lock (here: this process).
    with lockutils.lock('e' * 40, lock_file_prefix=cache_mod.LOCK_PREFIX,
                        external=True,
                        lock_path=os.path.join(_host_dir(ib), 'locks')):
        code, cleaned = ib('cache', 'clean', '--min-age', '3600')
    assert code == 0, cleaned
    stale = {names[k] for k in ('stale', 'stale_converted', 'stale_sidecar')}
    assert set(cleaned['removed']) == stale
    assert stale <= set(dry['removed'])
    left = sorted(os.listdir(base))
    assert left == sorted(entries_before + [names['fresh'], names['live']])
    # The image entry is used by the instance: kept.
    assert hashlib.sha1(b'img').hexdigest() in left
