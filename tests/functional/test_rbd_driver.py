"""``Rbd.driver``: Nova's RBDDriver names on the project's real Ceph.

Nova's code and tests reach ``image.driver`` of an Rbd image (an
``nova.storage.rbd_utils.RBDDriver``); the library's disk offers the same
names over its own Ceph access. One walk through every method, checked
through python3-rbd directly.
"""

from __future__ import annotations

import pytest

import imagebackend
from imagebackend import exception
from imagebackend.backends import rbd_driver

from tests.functional.conftest import Instance, MiB
from tests.functional.test_rbd import (  # noqa: F401 (ceph is a fixture)
    SNAP, ceph, glance_image, rbd_ls, rbd_parent, rbd_read, rbd_size,
    rbd_snaps, rbd_write, use_rbd)
from tests.functional.test_rbd_clone import OTHER_FSID, url_of


def test_driver_names_over_the_disks_ceph_access(host, ceph, tmp_path):
    use_rbd(host, ceph)
    glance_image(ceph, 'glance-img', size=8 * MiB)
    url = url_of(ceph, 'glance-img')
    disk = imagebackend.Backend(conf=host).by_name(Instance(), 'disk')
    d = disk.driver
    assert d is disk.driver
    name = disk.rbd_name

    # Configuration and the cluster.
    assert (d.pool, d.rbd_user, d.ceph_conf, d.rbd_connect_timeout) == (
        ceph.pool, None, ceph.conf, 5)
    assert d.ceph_args() == ['--conf', ceph.conf]
    assert d.get_fsid() == ceph.fsid
    v1 = str(ceph.mon_ports[1])
    assert d.get_mon_addrs() == d.get_mon_addrs(strip_brackets=False) == (
        ['127.0.0.1'], [v1])
    assert d.parse_url(url) == [ceph.fsid, ceph.images_pool, 'glance-img',
                                SNAP]
    with pytest.raises(exception.ImageUnacceptable):
        d.parse_url('http://glance/file')

    # is_cloneable: Nova's rules.
    raw = {'id': 'img', 'disk_format': 'raw'}
    assert d.is_cloneable({'url': url}, raw) is True
    assert d.is_cloneable({'url': url}, dict(raw, disk_format='qcow2')) \
        is False
    assert d.is_cloneable({'url': url_of(ceph, 'glance-img', OTHER_FSID)},
                          raw) is False
    assert d.is_cloneable({'url': url_of(ceph, 'glance-img', snap='x')},
                          raw) is False
    assert d.is_cloneable({'url': 'http://glance/file'}, raw) is False

    # clone, exists, size, parent_info, resize.
    assert not d.exists(name) and not disk.exists()
    d.clone({'url': url}, name)
    assert disk.exists() and d.exists(name)
    with pytest.raises(exception.DiskExists):   # taken: left as it is
        d.clone({'url': url}, name)
    assert 'another cluster' in d.why_not_cloneable(
        url_of(ceph, 'glance-img', OTHER_FSID), raw)
    assert d.exists('glance-img', pool=ceph.images_pool, snapshot=SNAP)
    assert not d.exists('glance-img', pool=ceph.images_pool, snapshot='x')
    assert d.size(name) == disk.get_disk_size('/not/a/file') == 8 * MiB
    with pytest.raises(exception.DiskNotFound):
        d.size('absent')
    assert d.parent_info(name) == (ceph.images_pool, 'glance-img', SNAP)
    with pytest.raises(exception.ImageUnacceptable):
        d.parent_info('glance-img', pool=ceph.images_pool)
    d.resize(name, 16 * MiB)
    assert rbd_size(ceph, name) == 16 * MiB
    with pytest.raises(exception.CannotShrink):
        d.resize(name, 4 * MiB)
    assert rbd_size(ceph, name) == 16 * MiB

    # Snapshots: protected ones are kept without force; rollback.
    rbd_write(ceph, name, 0, b'\x11' * 4096)
    d.create_snap(name, 'keep', protect=True)
    d.create_snap(name, 'plain')
    rbd_write(ceph, name, 0, b'\x22' * 4096)
    d.rollback_to_snap(name, 'plain')
    assert rbd_read(ceph, name, 0, 4096) == b'\x11' * 4096
    with pytest.raises(rbd_driver.SnapshotNotFound):
        d.rollback_to_snap(name, 'absent')
    d.remove_snap(name, 'keep')
    d.remove_snap(name, 'absent')
    assert rbd_snaps(ceph, name) == ['keep', 'plain']
    d.remove_snap(name, 'keep', force=True)
    d.remove_snap(name, 'plain', ignore_errors=True)
    assert rbd_snaps(ceph, name) == []

    # flatten, import_image, cleanup_volumes, remove_image.
    d.flatten(name)
    assert rbd_parent(ceph, name) is None
    local = tmp_path / 'local.raw'
    local.write_bytes(b'\x33' * MiB)
    d.import_image(str(local), 'imported')
    assert rbd_read(ceph, 'imported', 0, 4) == b'\x33' * 4
    d.clone({'url': url}, 'other-clone')
    d.cleanup_volumes(lambda n: n in ('imported', 'other-clone'))
    assert rbd_ls(ceph) == [name]
    d.remove_image(name)
    d.remove_image(name)    # gone: nothing to do
    assert rbd_ls(ceph) == [] and not disk.exists()
    d.destroy_volume('glance-img', pool=ceph.images_pool)
    assert rbd_ls(ceph, ceph.images_pool) == []
