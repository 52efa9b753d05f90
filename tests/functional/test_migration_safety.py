"""Migrations that lose nothing (issue 9, point 5).

The source of a cold migration never deletes what the destination now
uses (disks on shared storage: Rbd on a real one-node Ceph), and
``finish_migration`` leaves the instance as it was when one of its steps
fails: the old swap in place, no disk grown.
"""

from __future__ import annotations

import json
import os
import resource
import stat

import pytest

from driver import cli
from driver import flows
from driver import instance as instance_mod
from imagebackend import exception
from tests.functional.conftest import GiB, MiB, blkid, qemu_info
from tests.functional.test_flows import Hosts, read_marker, write_marker

MARK_AT = 10 * MiB


def _ib(state: str, capsys, *args: str, ok: bool = True) -> dict:
    code = cli.main(['--state-dir', state, '--json', *args])
    out = json.loads(capsys.readouterr().out)
    assert (code == 0) == ok, out
    return out


# -- the source keeps shared disks -------------------------------------------

@pytest.fixture
def ceph(ceph_cluster):
    from tests.functional.test_rbd import purge
    yield ceph_cluster
    purge(ceph_cluster)


def test_cli_migrate_keeps_disks_on_shared_storage(ceph, tmp_path, capsys):
    from tests.functional.test_rbd import rbd_ls, rbd_read, rbd_write
    state = str(tmp_path / 'state')
    rbd = ['--images-type', 'rbd', '--images-rbd-pool', ceph.pool,
           '--images-rbd-ceph-conf', ceph.conf]
    _ib(state, capsys, 'image', 'create-sample', 'img', '--size', '64M')
    for host in ('host-a', 'host-b'):
        _ib(state, capsys, 'host', 'set', host, *rbd)
    view = _ib(state, capsys, 'spawn', '--image', 'img', '--name', 'vm',
               '--root-gb', '1', '--ephemeral-gb', '1', '--swap-mb', '64')
    uuid = view['uuid']
    images = sorted(f'{uuid}_{n}' for n in ('disk', 'disk.local',
                                            'disk.swap'))
    assert [n for n in rbd_ls(ceph) if n.startswith(uuid)] == images
    rbd_write(ceph, f'{uuid}_disk', MARK_AT, b'\x77' * 65536)

    view = _ib(state, capsys, 'migrate', 'vm', '--to', 'host-b',
               '--root-gb', '2')
    assert view['copied'] == []   # shared storage: only records travel
    # Every disk the destination now uses is still in the pool, whole.
    assert [n for n in rbd_ls(ceph) if n.startswith(uuid)] == images
    assert rbd_read(ceph, f'{uuid}_disk', MARK_AT, 65536) == \
        b'\x77' * 65536
    shown = _ib(state, capsys, 'show', 'vm')
    assert shown['host'] == 'host-b'
    assert {d['name']: (d['backend'], d['state'], d['virtual_size'])
            for d in shown['disks']} == {
        'disk': ('rbd', 'created', 2 * GiB),
        'disk.local': ('rbd', 'created', GiB),
        'disk.swap': ('rbd', 'created', 64 * MiB)}
    # Nothing of the instance is left on the source host.
    assert not os.path.exists(os.path.join(
        state, 'hosts', 'host-a', 'instances', uuid))
    # The destination owns them: deleting there removes them.
    _ib(state, capsys, 'delete', 'vm')
    assert [n for n in rbd_ls(ceph) if n.startswith(uuid)] == []


# -- finish_migration: a failure leaves the old swap, grows nothing ----------

@pytest.fixture
def failing_genisoimage(tmp_path, monkeypatch):
    """A genisoimage first on PATH that fails as a full disk would."""
    bindir = tmp_path / 'failing-bin'
    bindir.mkdir()
    tool = bindir / 'genisoimage'
    tool.write_text('#!/bin/sh\necho "genisoimage: No space left on device"'
                    ' >&2\nexit 1\n')
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv('PATH', f'{bindir}:{os.environ["PATH"]}')
    return bindir


def _spawned(tmp_path, image_type):
    hosts = Hosts(tmp_path)
    hosts.add_image('img')
    hosts.confs['a'].set_override('images_type', image_type,
                                  group='libvirt')
    a = hosts.backend('a')
    instance = instance_mod.Instance(
        image_ref='img', name='vm',
        flavor=instance_mod.Flavor(root_gb=1, ephemeral_gb=1, swap=64))
    flows.spawn(a, None, instance, instance_mod.disk_mapping(instance))
    return a, instance


def _state(backend, instance) -> dict:
    """What each disk is: its record, its size on storage, and which file
    (inode and last change: a disk made again is another file)."""
    found = {}
    for rec in backend.records.list(instance.uuid):
        disk = backend.from_metadata(instance, rec.name)
        st = os.stat(disk.path)
        found[rec.name] = (rec.state, rec.virtual_size, rec.source_id,
                           qemu_info(disk.path, rec.format)['virtual-size'],
                           (st.st_ino, st.st_mtime_ns))
    return found


@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_failed_finish_migration_keeps_old_swap_grows_nothing(
        tmp_path, image_type, failing_genisoimage, monkeypatch):
    """A resize whose last step fails (the config drive cannot be made):
    the swap is the old one, untouched, and no disk has grown."""
    a, instance = _spawned(tmp_path, image_type)
    root = a.from_metadata(instance, 'disk')
    write_marker(root)
    before = _state(a, instance)
    assert before['disk.swap'][1] == 64 * MiB

    instance.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=2,
                                          swap=128)
    instance.config_drive = True
    mapping = instance_mod.disk_mapping(instance)
    with pytest.raises(exception.ProcessError):
        flows.finish_migration(a, None, instance, mapping)

    assert _state(a, instance) == before
    assert read_marker(root.path, root.driver_format)
    assert not os.path.exists(os.path.join(root.instance_dir,
                                           'disk.config'))
    # Once the tool works, the same resize does it all.
    monkeypatch.setenv('PATH', os.environ['PATH'].split(':', 1)[1])
    done = flows.finish_migration(a, None, instance, mapping)
    assert sorted(done['grown']) == ['disk', 'disk.local']
    assert sorted(done['created']) == ['disk.config', 'disk.swap']
    after = _state(a, instance)
    assert after['disk.swap'][1] == after['disk.swap'][3] == 128 * MiB
    assert after['disk'][1] == after['disk'][3] == 2 * GiB
    assert read_marker(root.path, root.driver_format)


def test_failed_grow_after_swap_remade_leaves_old_swap(tmp_path):
    """A grow that fails for real (the file may not grow past the process's
    file size limit: the truncate fails with EFBIG) comes after the swap
    was made afresh: the old swap is made again as its record says."""
    a, instance = _spawned(tmp_path, 'flat')
    before = _state(a, instance)
    instance.flavor = instance_mod.Flavor(root_gb=8, ephemeral_gb=1,
                                          swap=128)
    mapping = instance_mod.disk_mapping(instance)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4 * GiB, hard))
    try:
        # EFBIG (a typed error once ENOSPC-like errors are typed).
        with pytest.raises((OSError, exception.ImageBackendError)):
            flows.finish_migration(a, None, instance, mapping)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    after = _state(a, instance)
    # The swap is the old one again: its size, its template, a swap
    # signature (made anew: a swap's contents carry nothing).
    assert after['disk.swap'][:4] == before['disk.swap'][:4]
    swap = a.from_metadata(instance, 'disk.swap')
    assert blkid(swap.path)['TYPE'] == 'swap'
    assert os.path.getsize(swap.path) == 64 * MiB
    # Nothing else changed.
    assert {n: v for n, v in after.items() if n != 'disk.swap'} == \
        {n: v for n, v in before.items() if n != 'disk.swap'}
