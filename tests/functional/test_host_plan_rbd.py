"""``plan spawn`` on a host whose disks are in a real Ceph (issue 11,
point 1): the plan reads the cluster (is the disk, the pool base there)
and changes nothing in it or on disk; the real spawn then runs exactly the
commands planned, and its in-process librbd steps (pool base, clone,
resize) left what the plan said."""

from __future__ import annotations

import re
import uuid as uuid_mod

import pytest
import rbd as librbd

from imagebackend import names
from imagebackend.backends import rbd as rbd_mod

from driver import templates
from tests.functional.conftest import run, tree
from tests.functional.test_host_plan_cli import cli, commands, spawn
from tests.functional.test_rbd import (  # noqa: F401 (the ceph fixture)
    ceph, ioctx, rbd_ls, rbd_parent, rbd_size)
from tests.hosts import GiB, MiB


@pytest.fixture
def rbd_site(tmp_path, ceph):  # noqa: F811
    inst = tmp_path / 'instances'
    images = tmp_path / 'images'
    inst.mkdir()
    images.mkdir()
    (tmp_path / 'nova.conf').write_text(
        f'[DEFAULT]\ninstances_path = {inst}\n'
        '[libvirt]\nimages_type = rbd\n'
        f'images_rbd_pool = {ceph.pool}\n'
        f'images_rbd_ceph_conf = {ceph.conf}\nrbd_user = admin\n'
        f'[imagebackend]\nimages_dir = {images}\n')
    return tmp_path


def state(site, ceph):  # noqa: F811
    """Everything a plan must leave alone: files and the pool's images."""
    return tree(site), rbd_ls(ceph)


def planned_names(cmd):
    """A command spawn ran, with the random parts of names as a plan
    names them (a pool base's ``.part-<random>``, the config drive's
    temporary directory)."""
    return tuple(
        re.sub(r'(/\.[^/]+-)[a-z0-9_]{8}(\.part/)',
               rf'\g<1>{rbd_mod.RANDOM}\g<2>',
               re.sub(r'(\.part-)[0-9a-f]{8}$', rf'\g<1>{rbd_mod.RANDOM}',
                      arg)) for arg in cmd)


def steps(disk) -> list[str]:
    return [s['what'] for s in disk['steps']]


def test_plan_rbd_spawn_then_the_spawn_runs_what_it_said(rbd_site, ceph,
                                                         repo_root):  # noqa
    image = rbd_site / 'images' / 'img.qcow2'
    run('qemu-img', 'create', '-q', '-f', 'qcow2', str(image), '64M')
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M', str(image))
    uuid = str(uuid_mod.uuid4())
    args = ('--image', 'img', '--root-gb', '1', '--swap-mb', '16',
            '--config-drive', '--uuid', uuid)
    before = state(rbd_site, ceph)
    code, plan = cli(repo_root, rbd_site, *args)
    assert state(rbd_site, ceph) == before   # nothing made, here or in Ceph
    assert code == 0, plan
    disks = {d['disk']: d for d in plan['disks']}
    assert list(disks) == ['disk', 'disk.swap', 'disk.config']
    # Shared storage: the config drive is in the pool too.
    assert {d['backend'] for d in disks.values()} == {'rbd'}
    assert [d['location'] for d in disks.values()] == [
        f'{ceph.pool}/{uuid}_{n}' for n in disks]
    root, swap = disks['disk'], disks['disk.swap']
    assert root['fetch_bytes'] == image.stat().st_size
    base = names.image_cache_name('img')
    swap_base = templates.Swap(16 * MiB).cache_name
    # force_raw_images (on by default): converted in the cache, imported
    # raw, then cloned and grown in-process.
    assert [tuple(s['command'][:2]) for s in root['steps'] if
            s['command']] == [('qemu-img', 'convert'), ('rbd', 'import')]
    assert steps(root)[-2].startswith(
        f'clone {ceph.pool}/{base}@snap as {ceph.pool}/{uuid}_disk')
    assert steps(root)[-1] == (f'resize {ceph.pool}/{uuid}_disk to {GiB} '
                               'bytes; in-process (librbd)')
    assert swap['write_bytes'] == 2 * 16 * MiB   # mkswap, then the import

    ran = [planned_names(c) for c in spawn(rbd_site, uuid, None, 'img', 1,
                                           swap_mb=16, config_drive=True)]
    assert ran == commands(plan)
    # The in-process steps planned happened: the pool bases (snapshot
    # protected), the clones of them, the root grown to the planned size.
    assert rbd_parent(ceph, f'{uuid}_disk') == (ceph.pool, base, 'snap')
    assert rbd_size(ceph, f'{uuid}_disk') == GiB
    assert rbd_parent(ceph, f'{uuid}_disk.swap') == (ceph.pool, swap_base,
                                                     'snap')
    assert rbd_size(ceph, f'{uuid}_disk.swap') == 16 * MiB
    assert rbd_parent(ceph, f'{uuid}_disk.config') is None   # its own copy
    with ioctx(ceph) as io, librbd.Image(io, base, read_only=True) as img:
        assert img.is_protected_snap('snap')
        assert dict(img.metadata_list())[rbd_mod.META_SOURCE] == 'image:img'

    # Another instance: the pool bases are there, so it is clones only --
    # nothing fetched, no command, as the spawn then shows.
    other = str(uuid_mod.uuid4())
    code, plan = cli(repo_root, rbd_site, *args[:6], '--uuid', other)
    assert code == 0, plan
    assert plan['fetch_bytes'] == plan['write_bytes'] == 0
    assert commands(plan) == []
    assert steps(plan['disks'][0])[0].startswith(
        f'clone {ceph.pool}/{base}@snap as {ceph.pool}/{other}_disk '
        '(clone-of-pool-base')
    assert spawn(rbd_site, other, None, 'img', 1, swap_mb=16) == []
    assert rbd_parent(ceph, f'{other}_disk') == (ceph.pool, base, 'snap')
    assert rbd_size(ceph, f'{other}_disk') == GiB


def pool_base(ceph, image_id, size, source):  # noqa: F811
    """A pool base as an import leaves it (made here, not by the library)."""
    with ioctx(ceph) as io:
        name = names.image_cache_name(image_id)
        librbd.RBD().create(io, name, size, old_format=False)
        with librbd.Image(io, name) as img:
            img.metadata_set(rbd_mod.META_SOURCE, source)
            img.create_snap('snap')
            img.protect_snap('snap')


def test_plan_rbd_refusals_read_from_the_pool(rbd_site, ceph,
                                              repo_root):  # noqa: F811
    # Neither image is in the image source: the pool base alone decides.
    pool_base(ceph, 'big', 2 * GiB, 'image:big')
    pool_base(ceph, 'taken', 64 * MiB, 'image:another')
    before = state(rbd_site, ceph)
    code, plan = cli(repo_root, rbd_site, '--image', 'big', '--root-gb', '1')
    assert code == 1 and plan['would_fail'] == ['disk']
    assert plan['disks'][0]['error'].startswith('DiskTooSmall')
    code, plan = cli(repo_root, rbd_site, '--image', 'taken')
    assert code == 1
    assert plan['disks'][0]['error'].startswith('RbdError')
    assert 'image:another' in plan['disks'][0]['error']
    assert state(rbd_site, ceph) == before
    # And spawn does fail there, leaving nothing.
    with pytest.raises(Exception, match='image:another'):
        spawn(rbd_site, str(uuid_mod.uuid4()), None, 'taken', 1)
    assert rbd_ls(ceph) == before[1]
