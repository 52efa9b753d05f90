"""Rbd on a real Ceph: one mon, one memstore OSD on 127.0.0.1.

The cluster is started once per session by :func:`ceph_env.ceph_cluster`
and stopped by PID at the end. Every test talks to it through the library
(librbd in-process, ``rbd`` commands through the process runner) and checks
what it did through python3-rbd directly -- never a mock of librbd. After
each test the pools are emptied, so pool bases never leak between tests.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import stat
import sys

import pytest

from tests.functional.test_equivalence import assert_same_record
import rados
import rbd as librbd

import imagebackend
from imagebackend import exception
from imagebackend import names
from imagebackend import processes
from imagebackend import shim
from imagebackend import sources
from imagebackend.backends import rbd as rbd_mod

from driver import flows
from driver import instance as instance_mod
from driver import migration
from tests.functional.ceph_env import free_port
from tests.functional.conftest import (define_and_read, GiB, MiB, Instance, blkid,
                                       guest_bytes, make_ephemeral,
                                       make_swap)
from tests.functional.test_flows import BDI, Hosts, new_instance

HERE = os.path.dirname(os.path.abspath(__file__))
MARK_AT = 10 * MiB
SNAP = 'snap'


# -- the cluster, seen directly -----------------------------------------------

@contextlib.contextmanager
def ioctx(ceph, pool=None):
    with rados.Rados(conffile=ceph.conf) as cluster:
        with cluster.open_ioctx(pool or ceph.pool) as io:
            yield io


def rbd_ls(ceph, pool=None) -> list[str]:
    with ioctx(ceph, pool) as io:
        return sorted(librbd.RBD().list(io))


def rbd_size(ceph, name, pool=None) -> int:
    with ioctx(ceph, pool) as io, librbd.Image(io, name,
                                               read_only=True) as img:
        return img.size()


def rbd_parent(ceph, name, pool=None):
    with ioctx(ceph, pool) as io, librbd.Image(io, name,
                                               read_only=True) as img:
        try:
            return img.parent_info()
        except librbd.ImageNotFound:
            return None


def rbd_children(ceph, name, pool=None) -> list[tuple[str, str]]:
    with ioctx(ceph, pool) as io, librbd.Image(io, name, snapshot=SNAP,
                                               read_only=True) as img:
        return sorted(img.list_children())


def rbd_snaps(ceph, name, pool=None) -> list[str]:
    with ioctx(ceph, pool) as io, librbd.Image(io, name,
                                               read_only=True) as img:
        return [s['name'] for s in img.list_snaps()]


def rbd_read(ceph, name, offset, length, pool=None) -> bytes:
    with ioctx(ceph, pool) as io, librbd.Image(io, name,
                                               read_only=True) as img:
        return img.read(offset, length)


def rbd_write(ceph, name, offset, data, pool=None) -> None:
    with ioctx(ceph, pool) as io, librbd.Image(io, name) as img:
        img.write(data, offset)


def rbd_sha256(ceph, name, pool=None) -> tuple[int, str]:
    """(size, sha256) of what a guest reads from the whole image."""
    digest = hashlib.sha256()
    with ioctx(ceph, pool) as io, librbd.Image(io, name,
                                               read_only=True) as img:
        size = img.size()
        for off in range(0, size, 4 * MiB):
            digest.update(img.read(off, min(4 * MiB, size - off)))
    return size, digest.hexdigest()


def rbd_export(ceph, name, path, pool=None, length=64 * MiB) -> str:
    """Copy the start of an RBD image into a local raw file (for blkid,
    which needs only the filesystem's first blocks)."""
    with ioctx(ceph, pool) as io, librbd.Image(io, name,
                                               read_only=True) as img, \
            open(path, 'wb') as f:
        size = min(img.size(), length)
        for off in range(0, size, 4 * MiB):
            f.write(img.read(off, min(4 * MiB, size - off)))
    return path


def padded_sha256(data: bytes, size: int) -> tuple[int, str]:
    digest = hashlib.sha256(data)
    digest.update(bytes(size - len(data)))
    return size, digest.hexdigest()


def purge(ceph) -> None:
    """Remove every image (clones before parents) from the test pools."""
    for pool in (ceph.pool, ceph.images_pool):
        with ioctx(ceph, pool) as io:
            for _round in range(10):
                left = librbd.RBD().list(io)
                if not left:
                    break
                for name in left:
                    with contextlib.suppress(librbd.ImageBusy,
                                             librbd.ImageHasSnapshots,
                                             librbd.ImageNotFound):
                        with librbd.Image(io, name) as img:
                            for s in list(img.list_snaps()):
                                if img.is_protected_snap(s['name']):
                                    img.unprotect_snap(s['name'])
                                img.remove_snap(s['name'])
                        librbd.RBD().remove(io, name)
            assert librbd.RBD().list(io) == [], f'{pool} not emptied'


@pytest.fixture
def ceph(ceph_cluster):
    yield ceph_cluster
    purge(ceph_cluster)


def use_rbd(conf, ceph, **extra) -> None:
    conf.set_override('images_type', 'rbd', group='libvirt')
    conf.set_override('images_rbd_pool', ceph.pool, group='libvirt')
    conf.set_override('images_rbd_ceph_conf', ceph.conf, group='libvirt')
    for key, value in extra.items():
        conf.set_override(key, value, group='libvirt')


@pytest.fixture
def rbd_backend(host, ceph):
    use_rbd(host, ceph)
    return imagebackend.Backend(conf=host)


def disk_name_in_pool(instance, name):
    return f'{instance.uuid}_{name}'


SHA1_IMG = names.image_cache_name('img')


def image_bytes(path, fmt, tmp_path) -> bytes:
    return guest_bytes(path, fmt, tmp_path)


# -- root from an image: native and shim --------------------------------------

@pytest.mark.parametrize('image_format', ['raw', 'qcow2'])
@pytest.mark.parametrize('size', [None, 128 * MiB])
def test_root_native_imports_once_then_clones(rbd_backend, ceph, make_image,
                                              tmp_path, image_format, size):
    src = make_image('img', image_format, 64 * MiB)
    want = padded_sha256(image_bytes(src, image_format, tmp_path),
                         size or 64 * MiB)
    first, second = Instance(), Instance()
    with processes.recording() as cmds:
        rbd_backend.by_name(first, 'disk').create_from_image(None, 'img',
                                                             size)
    # Fetched into the cache (converted once if qcow2), imported once.
    expected = [('rbd', 'import')]
    if image_format == 'qcow2':
        expected.insert(0, ('qemu-img', 'convert'))
    assert [c[:2] for c in cmds] == expected
    imp = cmds[-1]
    assert imp[:9] == ('rbd', 'import', '--no-progress', '--image-format',
                       '2', '--dest-pool', ceph.pool, '--conf', ceph.conf)
    assert imp[-2] == rbd_backend.image_cache.path(SHA1_IMG)
    assert imp[-1].startswith(SHA1_IMG + '.part-')

    with processes.recording() as cmds:
        rbd_backend.by_name(second, 'disk').create_from_image(None, 'img',
                                                              size)
    assert cmds == []   # a base in the pool: no command per disk

    names_ = [disk_name_in_pool(i, 'disk') for i in (first, second)]
    assert rbd_ls(ceph) == sorted([SHA1_IMG] + names_)
    assert rbd_snaps(ceph, SHA1_IMG) == [SNAP]
    assert rbd_children(ceph, SHA1_IMG) == sorted(
        (ceph.pool, n) for n in names_)
    for inst, name in zip((first, second), names_):
        assert rbd_parent(ceph, name) == (ceph.pool, SHA1_IMG, SNAP)
        assert rbd_sha256(ceph, name) == want
        rec = rbd_backend.records.get(inst.uuid, 'disk')
        assert (rec.state, rec.backend, rec.format, rec.virtual_size,
                rec.location) == ('created', 'rbd', 'raw', size or 64 * MiB,
                                  f'{ceph.pool}/{name}')
        assert (rec.source_type, rec.source_id) == ('image', 'img')
        assert rec.backing is None   # nothing on a host's _base
        assert rec.provenance['path'] == 'native'
        assert rec.provenance['parent'] == f'{ceph.pool}/{SHA1_IMG}@snap'
        assert rec.provenance['cluster'] == ceph.fsid
    how = [rbd_backend.records.get(i.uuid, 'disk').provenance
           for i in (first, second)]
    assert [h['how'] for h in how] == ['import', 'clone-of-pool-base']
    assert 'no rbd:// location' in how[0]['why']
    assert how[0]['source_sha256'] == how[1]['source_sha256'] == \
        rbd_backend.image_cache.get(SHA1_IMG).sha256


def test_root_shim_imports_the_disk(rbd_backend, ceph, make_image, tmp_path):
    src = make_image('img', 'qcow2', 64 * MiB)
    instance = Instance()
    disk = rbd_backend.by_name(instance, 'disk')
    with processes.recording() as cmds:
        shim.create_from_image(disk, None, 'img', 128 * MiB)
    name = disk_name_in_pool(instance, 'disk')
    # Nova's create_image: the template in _base, imported as the disk.
    assert [c[:2] for c in cmds] == [('qemu-img', 'convert'),
                                     ('rbd', 'import')]
    assert cmds[-1][-2:] == (rbd_backend.image_cache.path(SHA1_IMG), name)
    assert rbd_ls(ceph) == [name]
    assert rbd_parent(ceph, name) is None
    assert rbd_sha256(ceph, name) == padded_sha256(
        image_bytes(src, 'qcow2', tmp_path), 128 * MiB)
    rec = rbd_backend.records.get(instance.uuid, 'disk')
    assert (rec.state, rec.format, rec.virtual_size) == ('created', 'raw',
                                                         128 * MiB)
    assert rec.provenance['path'] == 'shim'
    assert rec.provenance['how'] == 'import'


def test_legacy_cache_on_existing_disk_grows_it(rbd_backend, ceph,
                                                make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    disk = rbd_backend.by_name(instance, 'disk')
    shim.create_from_image(disk, None, 'img', 64 * MiB)
    # cache() again with a bigger size (Nova's finish_migration) grows it;
    # the record follows.
    disk.cache(shim._image_fetcher(disk, None), SHA1_IMG, 96 * MiB,
               context=None, image_id='img')
    assert rbd_size(ceph, disk_name_in_pool(instance, 'disk')) == 96 * MiB
    assert disk.virtual_size() == 96 * MiB


def test_legacy_fetch_that_makes_nothing_is_a_typed_error(rbd_backend, ceph):
    # Nova's fetch returned without writing the base, and cloned nothing:
    # the library's error naming it; no image in the pool, no record.
    def makes_nothing(target, *args, **kwargs):
        pass

    instance = Instance()
    disk = rbd_backend.by_name(instance, 'disk')
    with pytest.raises(exception.NothingMade) as e:
        disk.cache(makes_nothing, SHA1_IMG, 64 * MiB, context=None,
                   image_id='img')
    assert 'makes_nothing' in str(e.value)
    assert disk_name_in_pool(instance, 'disk') not in rbd_ls(ceph)
    assert rbd_backend.records.get(instance.uuid, 'disk') is None
    assert not os.path.exists(rbd_backend.image_cache.path(SHA1_IMG))


# -- ephemeral and swap -------------------------------------------------------

def test_ephemeral_template_made_once_imported_once_cloned_twice(
        rbd_backend, ceph, tmp_path):
    made = []
    mkfs = make_ephemeral('ephemeral0', 'ext4', 64 * MiB)

    def func(target):
        made.append(target)
        mkfs(target)

    cache_name = 'ephemeral_64M_ext4_ephemeral0'
    first, second = Instance(), Instance()
    with processes.recording() as cmds:
        for inst in (first, second):
            rbd_backend.by_name(inst, 'disk.local').create_from_func(
                None, func, cache_name, 64 * MiB)
    assert len(made) == 1
    assert [c[:2] for c in cmds if c[0] == 'rbd'] == [('rbd', 'import')]
    children = [disk_name_in_pool(i, 'disk.local') for i in (first, second)]
    assert rbd_children(ceph, cache_name) == sorted(
        (ceph.pool, c) for c in children)
    for inst, name in zip((first, second), children):
        assert rbd_parent(ceph, name) == (ceph.pool, cache_name, SNAP)
        fs = blkid(rbd_export(ceph, name, str(tmp_path / f'{name}.raw')))
        assert (fs['TYPE'], fs['LABEL']) == ('ext4', 'ephemeral0')
        rec = rbd_backend.records.get(inst.uuid, 'disk.local')
        assert (rec.source_type, rec.source_id, rec.virtual_size) == (
            'func', cache_name, 64 * MiB)
    assert [rbd_backend.records.get(i.uuid, 'disk.local').provenance['how']
            for i in (first, second)] == ['import', 'clone-of-pool-base']


def test_swap_native(rbd_backend, ceph, tmp_path):
    instance = Instance()
    rbd_backend.by_name(instance, 'disk.swap').create_from_func(
        None, make_swap(32 * MiB), 'swap_32M', 64 * MiB)
    name = disk_name_in_pool(instance, 'disk.swap')
    assert rbd_parent(ceph, name) == (ceph.pool, 'swap_32M', SNAP)
    assert rbd_size(ceph, name) == 64 * MiB   # grown past the template
    assert blkid(rbd_export(ceph, name, str(tmp_path / 'swap.raw')))[
        'TYPE'] == 'swap'


def test_template_of_another_host_is_cloned_not_remade(ceph, tmp_path):
    """Two hosts on one pool: the second finds the first's pool base."""
    hosts = Hosts(tmp_path)
    for conf in hosts.confs.values():
        use_rbd(conf, ceph)
    made = []

    def func(target):
        made.append(target)
        make_ephemeral('ephemeral0', 'ext4', 64 * MiB)(target)

    for h in 'ab':
        hosts.backend(h).by_name(Instance(), 'disk.local').create_from_func(
            None, func, 'ephemeral_64M_shared', 64 * MiB)
    assert len(made) == 1
    assert not os.path.exists(os.path.join(hosts.paths['b'], '_base',
                                           'ephemeral_64M_shared'))


# -- equivalence: shim vs native ----------------------------------------------

def _same_record(backend, a, b):
    assert_same_record(backend, a, b)


@pytest.mark.parametrize('image_format', ['raw', 'qcow2'])
@pytest.mark.parametrize('size', [None, 128 * MiB])
def test_equivalence_root(rbd_backend, ceph, make_image, image_format, size):
    make_image('img', image_format, 64 * MiB)
    via_shim = rbd_backend.by_name(Instance(), 'disk')
    native = rbd_backend.by_name(Instance(), 'disk')
    shim.create_from_image(via_shim, None, 'img', size)
    native.create_from_image(None, 'img', size)
    _same_record(rbd_backend, via_shim, native)
    assert rbd_sha256(ceph, via_shim.rbd_name) == \
        rbd_sha256(ceph, native.rbd_name)


@pytest.mark.parametrize('kind', ['ephemeral', 'swap'])
def test_equivalence_generated(rbd_backend, ceph, tmp_path, kind):
    if kind == 'ephemeral':
        disk_name, func = 'disk.local', make_ephemeral('ephemeral0', 'ext4',
                                                       64 * MiB)
        cache_name, size = 'ephemeral_64M_ext4_ephemeral0', 64 * MiB
    else:
        disk_name, func = 'disk.swap', make_swap(32 * MiB)
        cache_name, size = 'swap_32M', 32 * MiB
    via_shim = rbd_backend.by_name(Instance(), disk_name)
    native = rbd_backend.by_name(Instance(), disk_name)
    shim.create_from_func(via_shim, None, func, cache_name, size)
    native.create_from_func(None, func, cache_name, size)
    _same_record(rbd_backend, via_shim, native)
    fs = [blkid(rbd_export(ceph, d.rbd_name, str(tmp_path / f'{i}.raw')))
          for i, d in enumerate((via_shim, native))]
    for key in ('TYPE', 'LABEL'):
        assert fs[0].get(key) == fs[1].get(key)
    assert fs[0]['TYPE'] == ('ext4' if kind == 'ephemeral' else 'swap')
    assert rbd_size(ceph, via_shim.rbd_name) == rbd_size(
        ceph, native.rbd_name) == size


# -- clone from an rbd:// location --------------------------------------------

class LocatedSource(sources.DirectoryImageSource):
    """An image source that also says where images live in Ceph (Glance
    with an rbd store), and counts the downloads it serves."""

    def __init__(self, directory, locations, disk_format='raw'):
        super().__init__(directory)
        self.locations = locations
        self.disk_format = disk_format
        self.opened = []

    def get_meta(self, context, image_id):
        if image_id in self.locations:
            return sources.ImageMeta(id=image_id,
                                     disk_format=self.disk_format,
                                     locations=self.locations[image_id])
        return super().get_meta(context, image_id)

    def open(self, context, image_id):
        self.opened.append(image_id)
        return super().open(context, image_id)


def glance_image(ceph, name, size=64 * MiB, pattern=b'\xc7') -> bytes:
    """An image in the 'images' pool as Glance's rbd store leaves it."""
    data = pattern * MiB
    with ioctx(ceph, ceph.images_pool) as io:
        librbd.RBD().create(io, name, size, old_format=False,
                            features=librbd.RBD_FEATURE_LAYERING)
        with librbd.Image(io, name) as img:
            img.write(data, 0)
            img.create_snap(SNAP)
            img.protect_snap(SNAP)
    return data


def test_clone_from_location_fetches_nothing(host, ceph, tmp_path):
    use_rbd(host, ceph)
    data = glance_image(ceph, 'glance-img')
    url = f'rbd://{ceph.fsid}/{ceph.images_pool}/glance-img/{SNAP}'
    source = LocatedSource(host.imagebackend.images_dir,
                           {'gimg': ('file:///elsewhere', url)})
    backend = imagebackend.Backend(conf=host, source=source)
    instance = Instance()
    with processes.recording() as cmds:
        backend.by_name(instance, 'disk').create_from_image(None, 'gimg',
                                                            128 * MiB)
    assert cmds == [] and source.opened == []
    assert backend.image_cache.entries() == []   # nothing fetched
    name = disk_name_in_pool(instance, 'disk')
    assert rbd_ls(ceph) == [name]   # no pool base either
    assert rbd_parent(ceph, name) == (ceph.images_pool, 'glance-img', SNAP)
    assert rbd_sha256(ceph, name) == padded_sha256(data, 128 * MiB)
    prov = backend.records.get(instance.uuid, 'disk').provenance
    assert prov['how'] == 'clone-from-location'
    assert prov['location'] == url and url in prov['why']
    assert prov['parent'] == f'{ceph.images_pool}/glance-img@{SNAP}'


@pytest.mark.parametrize('case', ['other-cluster', 'not-raw', 'no-snap'])
def test_unusable_location_falls_back_to_import(host, ceph, make_image,
                                                case):
    use_rbd(host, ceph)
    glance_image(ceph, 'glance-img')
    fsid = ceph.fsid
    snap = SNAP
    fmt = 'raw'
    if case == 'other-cluster':
        fsid = '00000000-0000-0000-0000-000000000000'
    elif case == 'not-raw':
        fmt = 'qcow2'
    else:
        snap = 'gone'
    make_image('img', fmt, 64 * MiB)
    url = f'rbd://{fsid}/{ceph.images_pool}/glance-img/{snap}'
    source = LocatedSource(host.imagebackend.images_dir, {'img': (url,)},
                           disk_format=fmt)
    backend = imagebackend.Backend(conf=host, source=source)
    instance = Instance()
    backend.by_name(instance, 'disk').create_from_image(None, 'img')
    assert source.opened == ['img']
    prov = backend.records.get(instance.uuid, 'disk').provenance
    assert prov['how'] == 'import'
    assert {'other-cluster': 'another cluster', 'not-raw': 'not raw',
            'no-snap': 'no such image or snapshot'}[case] in prov['why']
    assert rbd_parent(ceph, disk_name_in_pool(instance, 'disk')) == (
        ceph.pool, SHA1_IMG, SNAP)


# -- resize -------------------------------------------------------------------

def test_resize_grows_and_refuses_to_shrink(rbd_backend, ceph, make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    rbd_backend.by_name(instance, 'disk').create_from_image(None, 'img')
    disk = rbd_backend.from_metadata(instance, 'disk')
    with processes.recording() as cmds:
        disk.resize_image(256 * MiB)
    assert cmds == []   # librbd
    assert rbd_size(ceph, disk.rbd_name) == 256 * MiB
    assert rbd_backend.records.get(instance.uuid, 'disk').virtual_size == \
        256 * MiB
    assert disk.get_disk_size('anything') == 256 * MiB   # Nova's semantics
    with pytest.raises(exception.CannotShrink):
        disk.resize_image(128 * MiB)
    assert rbd_size(ceph, disk.rbd_name) == 256 * MiB
    with pytest.raises(exception.DiskTooSmall):
        rbd_backend.by_name(Instance(), 'disk').create_from_image(
            None, 'img', 32 * MiB)
    assert rbd_ls(ceph) == sorted([SHA1_IMG, disk.rbd_name])


# -- existence, removal -------------------------------------------------------

def test_exists_and_delete_are_idempotent(rbd_backend, ceph, make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    disk = rbd_backend.by_name(instance, 'disk')
    assert not disk.exists()
    disk.create_from_image(None, 'img')
    assert disk.exists()
    with pytest.raises(exception.DiskExists):
        rbd_backend.by_name(instance, 'disk').create_from_image(None, 'img')
    disk.create_snap('nova-resize')
    disk.delete()      # with its snapshot
    assert not disk.exists()
    assert rbd_backend.records.get(instance.uuid, 'disk') is None
    disk.delete()
    disk.remove_disk()
    assert rbd_ls(ceph) == [SHA1_IMG]


def test_remove_refuses_a_disk_whose_snapshot_has_clones(rbd_backend, ceph,
                                                         make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    disk = rbd_backend.by_name(instance, 'disk')
    disk.create_from_image(None, 'img')
    with ioctx(ceph) as io:
        with librbd.Image(io, disk.rbd_name) as img:
            img.create_snap('keep')
            img.protect_snap('keep')
        librbd.RBD().clone(io, disk.rbd_name, 'keep', io, 'someone-else')
    with pytest.raises(rbd_mod.RbdError) as e:
        disk.remove_disk()
    assert 'someone-else' in str(e.value)
    assert disk.exists()


# -- libvirt ------------------------------------------------------------------

def test_libvirt_info_defines_a_network_disk(host, ceph, make_image):
    secret = '11111111-2222-3333-4444-555555555555'
    use_rbd(host, ceph, rbd_user='admin', rbd_secret_uuid=secret)
    backend = imagebackend.Backend(conf=host)
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    mapping = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}
    backend.by_name(instance, 'disk').create_from_image(None, 'img')
    disk = backend.from_metadata(instance, 'disk', mapping)
    assert disk.path == (f'rbd:{ceph.pool}/{disk.rbd_name}:id=admin'
                         f':conf={ceph.conf}')
    with processes.recording() as cmds:
        info = disk.libvirt_info('none', {'quota:disk_read_iops_sec': '5'},
                                 boot_order=1)
    assert cmds == []   # the monmap is read in-process
    (back,) = define_and_read([info.to_xml()], f'vm-{instance.uuid}')
    assert back.get('type') == 'network'
    assert back.find('driver').get('type') == 'raw'
    assert back.find('driver').get('cache') == 'none'
    src = back.find('source')
    assert (src.get('protocol'), src.get('name')) == (
        'rbd', f'{ceph.pool}/{instance.uuid}_disk')
    assert [(h.get('name'), h.get('port')) for h in src.findall('host')] == [
        ('127.0.0.1', str(ceph.mon_ports[1]))]
    auth = back.find('auth')
    if auth is None:
        auth = src.find('auth')   # libvirt >= 3.9 moves it into <source>
    assert auth.get('username') == 'admin'
    assert (auth.find('secret').get('type'),
            auth.find('secret').get('uuid')) == ('ceph', secret)
    assert back.find('target').get('dev') == 'vda'
    assert back.find('iotune/read_iops_sec').text == '5'
    # The user in the path is real: the disk is usable as that client.
    assert disk.exists()


def test_domain_from_an_rbd_instance(tmp_path, ceph):
    hosts = Hosts(tmp_path)
    use_rbd(hosts.confs['a'], ceph)
    hosts.add_image('img')
    instance = new_instance()
    instance.config_drive = True
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance, BDI)
    flows.spawn(a, None, instance, mapping, BDI)
    elements = [a.from_metadata(instance, n, m).libvirt_info('none', {})
                .to_xml() for n, m in mapping.items()]
    back = {d.find('target').get('dev'): d
            for d in define_and_read(elements, f'vm-{instance.uuid}')}
    for name, m in mapping.items():
        rec = a.records.get(instance.uuid, name)
        d = back[m['dev']]
        # Every disk, the config drive too (shared storage: in the pool).
        assert rec.backend == 'rbd'
        assert (d.get('type'), d.get('device')) == ('network', m['type'])
        assert d.find('source').get('name') == rec.location


# -- snapshots out ------------------------------------------------------------

@pytest.mark.parametrize('out_format', ['qcow2', 'raw'])
def test_snapshot_extract(rbd_backend, ceph, make_image, tmp_path,
                          monkeypatch, out_format):
    src = make_image('img', 'qcow2', 64 * MiB)
    instance = Instance()
    rbd_backend.by_name(instance, 'disk').create_from_image(None, 'img',
                                                            96 * MiB)
    disk = rbd_backend.from_metadata(instance, 'disk')
    rbd_write(ceph, disk.rbd_name, MARK_AT, b'\x77' * 65536)
    monkeypatch.setattr(rbd_mod.Rbd, '_qemu_has_rbd', None)
    target = str(tmp_path / f'snap.{out_format}')
    with processes.recording() as cmds:
        disk.snapshot_extract(target, out_format)
    # qemu-img straight from the rbd: path first; where qemu-img has no rbd
    # driver (Debian without qemu-block-extra) through a librbd export.
    assert cmds[0] == ('qemu-img', 'convert', '-q', '-f', 'raw', '-O',
                       out_format, disk.path, target)
    if rbd_mod.Rbd._qemu_has_rbd is False:
        assert len(cmds) == (1 if out_format == 'raw' else 2)
    assert not os.path.exists(target + '.part')
    got = guest_bytes(target, out_format, tmp_path)
    want = bytearray(guest_bytes(src, 'qcow2', tmp_path) + bytes(32 * MiB))
    want[MARK_AT:MARK_AT + 65536] = b'\x77' * 65536
    assert got == bytes(want)


# -- Nova's hooks -------------------------------------------------------------

def test_snap_rollback_and_remove(rbd_backend, ceph, make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    rbd_backend.by_name(instance, 'disk').create_from_image(None, 'img')
    disk = rbd_backend.from_metadata(instance, 'disk')
    rbd_write(ceph, disk.rbd_name, MARK_AT, b'\x11' * 4096)
    disk.create_snap('nova-resize')
    disk.create_snap('nova-resize')   # kept, not an error
    disk.resize_image(128 * MiB)
    rbd_write(ceph, disk.rbd_name, MARK_AT, b'\x22' * 4096)
    disk.rollback_to_snap('nova-resize')
    assert rbd_read(ceph, disk.rbd_name, MARK_AT, 4096) == b'\x11' * 4096
    assert rbd_size(ceph, disk.rbd_name) == 64 * MiB
    assert disk.virtual_size() == 64 * MiB   # the record follows
    disk.remove_snap('nova-resize')
    assert rbd_snaps(ceph, disk.rbd_name) == []
    disk.remove_snap('nova-resize')            # gone: nothing to do
    disk.rollback_to_snap('nova-resize')       # never grown: nothing to do


def test_clone_hook_flatten_direct_snapshot(rbd_backend, ceph, make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    rbd_backend.by_name(instance, 'disk').create_from_image(None, 'img')
    disk = rbd_backend.from_metadata(instance, 'disk')
    rbd_write(ceph, disk.rbd_name, MARK_AT, b'\x33' * 4096)

    # direct_snapshot: a flattened image in the parent's pool with Glance's
    # protected 'snap'; the disk keeps no snapshot.
    url = disk.direct_snapshot(None, 'snap-1', 'raw', 'snapimg', 'img')
    assert url == f'rbd://{ceph.fsid}/{ceph.pool}/snapimg/{SNAP}'
    assert rbd_snaps(ceph, disk.rbd_name) == []
    assert rbd_parent(ceph, 'snapimg') is None
    assert rbd_read(ceph, 'snapimg', MARK_AT, 4096) == b'\x33' * 4096
    with pytest.raises(NotImplementedError):
        disk.direct_snapshot(None, 'snap-2', 'qcow2', 'x', 'img')
    # A name already taken: typed error, the disk keeps no snapshot and the
    # existing image is left alone.
    with pytest.raises(rbd_mod.RbdError):
        disk.direct_snapshot(None, 'snap-3', 'raw', 'snapimg', 'img')
    assert rbd_snaps(ceph, disk.rbd_name) == []
    assert rbd_snaps(ceph, 'snapimg') == [SNAP]

    # clone(): Nova's hook, here from that URL.
    other = rbd_backend.by_name(Instance(), 'disk')
    other.clone(None, url)
    assert rbd_parent(ceph, other.rbd_name) == (ceph.pool, 'snapimg', SNAP)
    with pytest.raises(exception.ImageUnacceptable):
        rbd_backend.by_name(Instance(), 'disk').clone(None, 'img')

    # flatten(): the disk stands alone, and its record says so.
    assert rbd_parent(ceph, disk.rbd_name) is not None
    disk.flatten()
    assert rbd_parent(ceph, disk.rbd_name) is None
    assert rbd_read(ceph, disk.rbd_name, 0, 4096) == b'\xab' * 4096
    assert rbd_backend.records.get(instance.uuid, 'disk').provenance[
        'flattened_from'] == f'{ceph.pool}/{SHA1_IMG}@{SNAP}'
    disk.flatten()   # no parent: nothing to do

    other.remove_disk()
    disk.cleanup_direct_snapshot({'url': url}, also_destroy_volume=True)
    assert 'snapimg' not in rbd_ls(ceph)
    disk.cleanup_direct_snapshot('not a url')


def test_allocated_bytes_and_create_empty(rbd_backend, ceph, make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    rbd_backend.by_name(instance, 'disk').create_from_image(None, 'img')
    disk = rbd_backend.from_metadata(instance, 'disk')
    assert disk.allocated_bytes() == 0   # a clone owns nothing yet
    rbd_write(ceph, disk.rbd_name, MARK_AT, b'\x01' * 4096)
    assert disk.allocated_bytes() == 4 * MiB   # one RADOS object
    like = rbd_backend.records.get(instance.uuid, 'disk')
    other = Instance()
    empty = rbd_backend.by_name(other, 'disk')
    empty.create_empty(like)
    assert rbd_size(ceph, empty.rbd_name) == 64 * MiB
    assert rbd_parent(ceph, empty.rbd_name) is None
    assert empty.allocated_bytes() == 0
    rec = rbd_backend.records.get(other.uuid, 'disk')
    assert (rec.state, rec.virtual_size, rec.source_id,
            rec.provenance['path']) == ('created', 64 * MiB, 'img', 'empty')
    empty.delete()
    assert empty.allocated_bytes() is None   # no such image: cannot tell


def test_import_file(rbd_backend, ceph, tmp_path):
    instance = Instance()
    local = tmp_path / 'config.iso'
    local.write_bytes(b'\x44' * MiB)
    disk = rbd_backend.by_name(instance, 'disk.config')
    disk.import_file(instance, str(local), 'disk.config')
    assert rbd_read(ceph, disk.rbd_name, 0, 4) == b'\x44' * 4
    local.write_bytes(b'\x55' * MiB)
    disk.import_file(instance, str(local), 'disk.config')   # replaced
    assert rbd_read(ceph, disk.rbd_name, 0, 4) == b'\x55' * 4


# -- driver flows: two hosts on one pool --------------------------------------

@pytest.fixture
def two_hosts(tmp_path, ceph):
    hosts = Hosts(tmp_path)
    for conf in hosts.confs.values():
        use_rbd(conf, ceph)
    hosts.add_image('img')
    return hosts


def _spawn(hosts, instance, bdi=BDI):
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance, bdi)
    created = flows.spawn(a, None, instance, mapping, bdi)
    return a, mapping, created


def test_spawn_on_rbd(two_hosts, ceph, tmp_path):
    instance = new_instance()
    a, mapping, created = _spawn(two_hosts, instance)
    assert created == ['disk', 'disk.local', 'disk.eph0', 'disk.swap']
    recs = {r.name: r for r in a.records.list(instance.uuid)}
    assert {n: (r.backend, r.virtual_size) for n, r in recs.items()} == {
        'disk': ('rbd', GiB), 'disk.local': ('rbd', GiB),
        'disk.eph0': ('rbd', GiB), 'disk.swap': ('rbd', 64 * MiB)}
    for name in created:
        assert rbd_size(ceph, f'{instance.uuid}_{name}') == \
            recs[name].virtual_size
    fs = blkid(rbd_export(ceph, f'{instance.uuid}_disk.eph0',
                          str(tmp_path / 'eph0.raw')))
    assert (fs['TYPE'], fs['LABEL']) == ('ext3', 'ephemeral0')
    # Nothing of the instance's disks is in its directory but the records.
    assert os.listdir(os.path.join(two_hosts.paths['a'], instance.uuid)) \
        == ['disks.json']
    assert flows.spawn(a, None, instance, mapping, BDI) == []


@pytest.mark.parametrize('outcome', ['revert', 'confirm'])
def test_cold_migration_copies_nothing_and_grows_in_the_pool(two_hosts,
                                                             ceph, outcome):
    # No swap: see test_cold_migration_recreates_shared_swap.
    instance = new_instance(swap=0)
    a, mapping, _ = _spawn(two_hosts, instance)
    root = f'{instance.uuid}_disk'
    rbd_write(ceph, root, MARK_AT, b'\x77' * 65536)
    pool_before = rbd_ls(ceph)

    copied = migration.migrate_disks(a, instance, mapping, 'b',
                                     two_hosts.transport, BDI)
    assert copied == []   # shared storage: only the records travel
    dest_dir = os.path.join(two_hosts.paths['b'], instance.uuid)
    assert os.listdir(dest_dir) == ['disks.json']

    instance.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=2)
    bdi = {'ephemerals': [{'size': 2, 'guest_format': 'ext3'}]}
    new_mapping = instance_mod.disk_mapping(instance, bdi)
    b = two_hosts.backend('b')
    with processes.recording() as cmds:
        done = flows.finish_migration(b, None, instance, new_mapping, bdi,
                                      source_host='a')
    assert sorted(done['grown']) == ['disk', 'disk.eph0', 'disk.local']
    assert done['created'] == []
    assert cmds == []   # growing is librbd: no command at all
    recs = {r.name: r for r in b.records.list(instance.uuid)}
    for name in ('disk', 'disk.local', 'disk.eph0'):
        assert rbd_size(ceph, f'{instance.uuid}_{name}') == 2 * GiB
        assert recs[name].virtual_size == 2 * GiB
        assert rbd_snaps(ceph, f'{instance.uuid}_{name}') == ['nova-resize']
    assert rbd_read(ceph, root, MARK_AT, 65536) == b'\x77' * 65536
    # Both hosts see the same disks.
    for h in (a, b):
        assert h.from_metadata(instance, 'disk').exists()
    assert set(pool_before) <= set(rbd_ls(ceph))

    rbd_write(ceph, root, MARK_AT, b'\x88' * 65536)
    grown = [f'{instance.uuid}_{n}' for n in ('disk', 'disk.local',
                                              'disk.eph0')]
    if outcome == 'revert':
        # On the source: the grow (and what the guest wrote since) is
        # undone from the snapshot; the destination destroys nothing (the
        # disks are shared), as Nova's revert on shared storage.
        flows.finish_revert_migration(a, instance)
        assert rbd_read(ceph, root, MARK_AT, 65536) == b'\x77' * 65536
        for name in grown:
            assert rbd_size(ceph, name) == GiB
        assert {r.name: r.virtual_size for r in a.records.list(
            instance.uuid)} == {'disk': GiB, 'disk.local': GiB,
                                'disk.eph0': GiB}
    else:
        flows.confirm_migration(b, instance)
        assert rbd_read(ceph, root, MARK_AT, 65536) == b'\x88' * 65536
        for name in grown:
            assert rbd_size(ceph, name) == 2 * GiB
    for name in grown:
        assert rbd_snaps(ceph, name) == []


def test_cold_migration_recreates_shared_swap(two_hosts, ceph):
    instance = new_instance()
    a, mapping, _ = _spawn(two_hosts, instance, bdi={})
    assert migration.migrate_disks(a, instance, mapping, 'b',
                                   two_hosts.transport, {}) == []
    instance.flavor = instance_mod.Flavor(root_gb=1, ephemeral_gb=1,
                                          swap=128)
    b = two_hosts.backend('b')
    done = flows.finish_migration(b, None, instance, mapping, {},
                                  source_host='a')
    assert done['created'] == ['disk.swap']
    assert rbd_size(ceph, f'{instance.uuid}_disk.swap') == 128 * MiB
    assert b.records.get(instance.uuid, 'disk.swap').virtual_size == \
        128 * MiB


def test_pre_live_migration_creates_nothing(two_hosts, ceph):
    instance = new_instance()
    a, mapping, _ = _spawn(two_hosts, instance)
    before = rbd_ls(ceph)
    records = a.records.list(instance.uuid)
    with processes.recording() as cmds:
        created = flows.pre_live_migration(two_hosts.backend('b'), None,
                                           instance, mapping, records, BDI,
                                           source_host='a')
    assert created == [] and cmds == []
    assert rbd_ls(ceph) == before
    assert not os.path.exists(os.path.join(two_hosts.paths['b'],
                                           instance.uuid))


def test_rescue_and_unrescue(two_hosts, ceph):
    two_hosts.add_image('rescue-img', pattern=0xcd)
    instance = new_instance()
    a, mapping, _ = _spawn(two_hosts, instance, bdi={})
    root = f'{instance.uuid}_disk'
    before = rbd_sha256(ceph, root)
    created = flows.rescue(a, None, instance, 'rescue-img')
    assert created == ['disk.rescue']
    rescue = f'{instance.uuid}_disk.rescue'
    assert rbd_size(ceph, rescue) == 256 * MiB   # the image's size
    assert rbd_read(ceph, rescue, 0, 4) == b'\xcd' * 4
    assert rbd_parent(ceph, rescue)[1] == names.image_cache_name(
        'rescue-img')
    assert flows.unrescue(a, instance) == ['disk.rescue']
    assert rescue not in rbd_ls(ceph)
    assert rbd_sha256(ceph, root) == before


def _qcow2_instance_then_rbd_host(tmp_path, ceph):
    hosts = Hosts(tmp_path)
    hosts.add_image('img')
    conf = hosts.confs['a']
    conf.set_override('images_type', 'qcow2', group='libvirt')
    old = new_instance()
    _a, mapping, _ = _spawn(hosts, old)
    use_rbd(conf, ceph)   # the host now makes new disks on Ceph
    return hosts, hosts.backend('a'), old, mapping


def test_mixed_backends_on_one_host(tmp_path, ceph):
    hosts, a, old, mapping = _qcow2_instance_then_rbd_host(tmp_path, ceph)
    # The old instance keeps working as the Qcow2 instance it is.
    for name, m in mapping.items():
        disk = a.from_metadata(old, name, m)
        assert disk.image_type == 'qcow2' and disk.exists()
        assert disk.libvirt_info('none', {}).source_type == 'file'
    # A resize on the same host: grown as qcow2, swap made afresh as the
    # record says it is (qcow2), nothing on Ceph.
    old.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=1, swap=64)
    done = flows.finish_migration(a, None, old, mapping, BDI)
    assert done['grown'] == ['disk'] and done['created'] == ['disk.swap']
    assert {r.backend for r in a.records.list(old.uuid)} == {'qcow2'}
    # New instances use the new type.
    new = new_instance()
    _, _, created = _spawn(hosts, new)
    assert {a.records.get(new.uuid, n).backend for n in created} == {'rbd'}
    assert not any(n.startswith(old.uuid) for n in rbd_ls(ceph))
    assert sorted(flows.destroy_disks(a, old)) == [
        'disk', 'disk.eph0', 'disk.local', 'disk.swap']
    assert sorted(flows.destroy_disks(a, new)) == sorted(created)
    assert not any(n.startswith(new.uuid) for n in rbd_ls(ceph))


def test_mixed_backends_spawn_again_creates_nothing(tmp_path, ceph):
    """Spawn on the instance again (a hard reboot): its records, not the
    host's images_type, say its disks exist."""
    hosts, a, old, mapping = _qcow2_instance_then_rbd_host(tmp_path, ceph)
    assert flows.spawn(a, None, old, mapping, BDI) == []
    assert {r.backend for r in a.records.list(old.uuid)} == {'qcow2'}
    assert not any(n.startswith(old.uuid) for n in rbd_ls(ceph))
    # A new disk of that name on Ceph would shadow the qcow2 one: refused.
    with pytest.raises(exception.DiskExists):
        a.by_name(old, 'disk').create_from_image(None, 'img')
    assert {r.backend for r in a.records.list(old.uuid)} == {'qcow2'}


# -- cleanup on failure -------------------------------------------------------

@pytest.fixture
def killing_rbd(tmp_path, monkeypatch):
    """Put the import killer first on PATH as ``rbd``; returns its log."""
    real = shutil.which('rbd')
    bindir = tmp_path / 'killer-bin'
    bindir.mkdir()
    wrapper = bindir / 'rbd'
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} '
                       f'{os.path.join(HERE, "rbd_import_killer.py")} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / 'killer.log'
    monkeypatch.setenv('REAL_RBD', real)
    monkeypatch.setenv('KILLER_LOG', str(log))
    monkeypatch.setenv('PATH', f'{bindir}{os.pathsep}{os.environ["PATH"]}')
    return log


def _nothing_left(backend, ceph, instance, base):
    assert not any(n.startswith(base) or n.startswith(instance.uuid)
                   for n in rbd_ls(ceph))
    assert backend.records.get(instance.uuid, 'disk') is None
    assert not os.path.exists(os.path.join(
        backend.conf.instances_path, instance.uuid))


def test_import_killed_midway_native(rbd_backend, ceph, host, killing_rbd):
    img = os.path.join(host.imagebackend.images_dir, 'img.raw')
    with open(img, 'wb') as f:   # data all the way, so the import is long
        for i in range(32):
            f.write(bytes([i + 1]) * MiB)
    instance = Instance()
    with pytest.raises(exception.ProcessError) as e:
        rbd_backend.by_name(instance, 'disk').create_from_image(None, 'img')
    assert e.value.exit_code in (137, -9)
    line = killing_rbd.read_text()
    assert f'{SHA1_IMG}.part-' in line and 'appeared=True' in line
    _nothing_left(rbd_backend, ceph, instance, SHA1_IMG)
    # The local cache entry survives: it is good, and the next try uses it.
    assert rbd_backend.image_cache.get(SHA1_IMG) is not None


def test_import_killed_midway_legacy(rbd_backend, ceph, host, killing_rbd):
    img = os.path.join(host.imagebackend.images_dir, 'img.raw')
    with open(img, 'wb') as f:
        for i in range(32):
            f.write(bytes([i + 1]) * MiB)
    instance = Instance()
    disk = rbd_backend.by_name(instance, 'disk')
    with pytest.raises(exception.ProcessError):
        shim.create_from_image(disk, None, 'img', 64 * MiB)
    assert f'{instance.uuid}_disk ' in killing_rbd.read_text()
    _nothing_left(rbd_backend, ceph, instance, SHA1_IMG)


class TemplateBroke(Exception):
    pass


def test_template_failure_leaves_nothing(rbd_backend, ceph):
    def func(target):
        make_ephemeral('ephemeral0', 'ext4', 64 * MiB)(target)
        raise TemplateBroke('mkfs died half way')

    instance = Instance()
    with pytest.raises(TemplateBroke):
        rbd_backend.by_name(instance, 'disk.local').create_from_func(
            None, func, 'ephemeral_64M_broke', 64 * MiB)
    assert rbd_ls(ceph) == []
    assert rbd_backend.records.list(instance.uuid) == []
    assert rbd_backend.image_cache.get('ephemeral_64M_broke') is None


def test_failure_after_the_clone_removes_it(rbd_backend, ceph, make_image):
    make_image('img', 'raw', 64 * MiB)
    first = Instance()
    rbd_backend.by_name(first, 'disk').create_from_image(None, 'img')
    instance = Instance()
    # Ceph refuses to grow an image this far: the resize after the clone
    # fails, and the clone goes.
    with pytest.raises(rbd_mod.RbdError):
        rbd_backend.by_name(instance, 'disk').create_from_image(
            None, 'img', 2 ** 63)
    assert rbd_ls(ceph) == sorted([SHA1_IMG, f'{first.uuid}_disk'])
    assert rbd_children(ceph, SHA1_IMG) == [(ceph.pool, f'{first.uuid}_disk')]
    assert rbd_backend.records.get(instance.uuid, 'disk') is None
    assert not os.path.exists(os.path.join(
        rbd_backend.conf.instances_path, instance.uuid))


def test_unreachable_cluster_is_typed(host, tmp_path):
    conf = tmp_path / 'nowhere.conf'
    conf.write_text(f'[global]\nmon host = 127.0.0.1:{free_port()}\n'
                    f'auth client required = none\n')
    host.set_override('images_rbd_ceph_conf', str(conf), group='libvirt')
    host.set_override('rbd_connect_timeout', 1, group='libvirt')
    disk = imagebackend.Backend(conf=host).by_name(Instance(), 'disk', 'rbd')
    with pytest.raises(exception.BackendUnavailable):
        disk.exists()


def test_cli_backend_rbd(ceph, tmp_path, capsys):
    from tests.functional.test_cli import run_backend_scenario
    disks = run_backend_scenario(
        str(tmp_path / 'state'), capsys,
        ['--images-rbd-pool', ceph.pool, '--images-rbd-ceph-conf',
         ceph.conf], 'rbd')
    # A clone allocates only what differs from its base (rbd du).
    assert disks['disk']['allocated'] < disks['disk']['virtual_size']
