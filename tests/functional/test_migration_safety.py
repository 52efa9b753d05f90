"""Migrations that lose nothing (issue 9, point 5).

The source of a cold migration never deletes what the destination now
uses (disks on shared storage: Rbd on a real one-node Ceph), and
``finish_migration`` leaves the instance as it was when one of its steps
fails: the old swap in place, no disk grown.
"""

from __future__ import annotations

import json
import os

import pytest

from driver import cli
from tests.functional.ceph_env import ceph_cluster  # noqa: F401 (fixture)
from tests.functional.conftest import GiB, MiB

MARK_AT = 10 * MiB


def _ib(state: str, capsys, *args: str, ok: bool = True) -> dict:
    code = cli.main(['--state-dir', state, '--json', *args])
    out = json.loads(capsys.readouterr().out)
    assert (code == 0) == ok, out
    return out


# -- the source keeps shared disks ---------------------------------------------

@pytest.fixture
def ceph(ceph_cluster):  # noqa: F811
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
