"""Nova's disk.info kept in step with the records (issue 10, point 2), and
``resolve_driver_format()`` / ``Flat.correct_format()``: real qemu-img
files, real instance directories, two hosts on one machine.

disks.json is the truth; disk.info is derived from it, written after it,
in Nova's form, for the backends Nova lists there (Flat, Qcow2, Ploop).
"""

from __future__ import annotations

import json
import logging
import os

import pytest

import imagebackend
from imagebackend import disk_info
from imagebackend import exception
from imagebackend import names
from imagebackend import processes
from imagebackend.backends import lvm, rbd

from driver import flows
from driver import instance as instance_mod
from driver import migration
from tests.functional.conftest import make_swap, qemu_info
from tests.functional.test_flows import Hosts
from tests.hosts import GiB, MiB

MAPPING = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}


def listed(host, instance) -> dict:
    """disk.info as Nova's module reads it ({} when there is none)."""
    path = os.path.join(host.instances_path, instance.uuid, 'disk.info')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.loads(f.read().rstrip())


def disk_path(host, instance, name='disk') -> str:
    return os.path.join(host.instances_path, instance.uuid, name)


# -- created, grown, deleted: disk.info follows the record -------------------

@pytest.mark.parametrize('image_type,image_format,force_raw,expected', [
    ('flat', 'qcow2', True, 'raw'),
    ('flat', 'qcow2', False, 'qcow2'),   # Flat keeps the qcow2 image
    ('qcow2', 'raw', True, 'qcow2'),
    ('ploop', 'qcow2', False, 'ploop'),  # expanded: no ploop tool needed
])
def test_native_create_lists_the_recorded_format(
        backend, host, instance, make_image, image_type, image_format,
        force_raw, expected):
    host.set_override('force_raw_images', force_raw)
    make_image('img', image_format)
    b = imagebackend.Backend(conf=host)
    disk = b.by_name(instance, 'disk', image_type)
    disk.create_from_image(None, 'img', GiB)
    record = b.records.get(instance.uuid, 'disk')
    assert record.format == expected
    assert listed(host, instance) == {disk.path: expected}
    # Opened again, it is what both files say.
    again = b.from_metadata(instance, 'disk', MAPPING)
    assert again.driver_format == expected
    assert again.resolve_driver_format() == expected
    assert again.libvirt_info(None, {}).driver_format == expected

    # Grown: the record changes, the format does not; disk.info stays.
    before = os.stat(disk_info.path_for(disk.path)).st_mtime_ns
    again.resize_image(2 * GiB)
    assert b.records.get(instance.uuid, 'disk').virtual_size == 2 * GiB
    assert listed(host, instance) == {disk.path: expected}
    assert os.stat(disk_info.path_for(disk.path)).st_mtime_ns == before

    # Deleted: the entry goes with the record.
    again.delete()
    assert b.records.get(instance.uuid, 'disk') is None
    assert listed(host, instance) == {}


def test_legacy_cache_lists_disks_and_delete_keeps_others(backend, host,
                                                          instance):
    # Nova's driver calls cache(): swap through Flat's legacy path.
    disk = backend.by_name(instance, 'disk.swap', 'flat')
    disk.cache(fetch_func=make_swap(32 * MiB), filename='swap_32',
               size=32 * MiB)
    local = backend.by_name(instance, 'disk.local', 'qcow2')
    local.create_from_func(None, make_swap(32 * MiB), 'swap_32b', 32 * MiB)
    assert listed(host, instance) == {disk.path: 'raw',
                                      local.path: 'qcow2'}
    disk.delete()
    assert listed(host, instance) == {local.path: 'qcow2'}


def test_failed_creation_lists_nothing(backend, host, instance):
    def broken(target):
        with open(target, 'wb') as f:
            f.write(b'x')
        raise RuntimeError('template died')
    disk = backend.by_name(instance, 'disk.local', 'flat')
    with pytest.raises(RuntimeError):
        disk.create_from_func(None, broken, 'ephemeral_1_ext4', GiB)
    assert not disk.exists()
    assert listed(host, instance) == {}


def test_garbled_disk_info_refuses_creation_whole(backend, host, instance):
    # Nova would refuse it too (InvalidDiskInfo): a disk is not made that
    # Nova's module could not find listed.
    inst_dir = os.path.join(host.instances_path, instance.uuid)
    os.makedirs(inst_dir)
    with open(os.path.join(inst_dir, 'disk.info'), 'w') as f:
        f.write('{garbled')
    disk = backend.by_name(instance, 'disk.swap', 'flat')
    with pytest.raises(exception.CorruptRecord):
        disk.create_from_func(None, make_swap(32 * MiB), 'swap_32', 32 * MiB)
    assert not disk.exists()
    assert backend.records.get(instance.uuid, 'disk.swap') is None
    with open(os.path.join(inst_dir, 'disk.info')) as f:
        assert f.read() == '{garbled'


def test_block_backends_are_never_listed():
    # As in Nova: Lvm and Rbd disks are no files beside a disk.info.
    assert not lvm.Lvm.capabilities.nova_disk_info
    assert not rbd.Rbd.capabilities.nova_disk_info


def test_disk_info_path(backend, instance):
    flat = backend.by_name(instance, 'disk', 'flat')
    assert flat.disk_info_path == os.path.join(
        os.path.dirname(flat.path), 'disk.info')
    assert backend.by_name(instance, 'disk', 'qcow2').disk_info_path == \
        flat.disk_info_path


# -- a crash between the two writes; a disk.info that disagrees --------------

def test_record_wins_over_disk_info_and_a_later_write_fixes_it(
        backend, host, instance, make_image, caplog):
    host.set_override('force_raw_images', False)
    make_image('img', 'qcow2')
    b = imagebackend.Backend(conf=host)
    b.by_name(instance, 'disk', 'flat').create_from_image(None, 'img', GiB)
    path = disk_path(host, instance)
    # As a crash between the record and disk.info leaves it (the entry of
    # a disk deleted before), or a writer that lost a race wrote it.
    with open(disk_info.path_for(path), 'w') as f:
        f.write(json.dumps({path: 'raw'}))
    disk = b.from_metadata(instance, 'disk', MAPPING)
    assert disk.driver_format == 'qcow2'
    assert disk.libvirt_info(None, {}).driver_format == 'qcow2'
    assert listed(host, instance) == {path: 'raw'}  # opening writes nothing
    with caplog.at_level(logging.WARNING, logger='imagebackend.image'):
        disk.resize_image(2 * GiB)
    assert 'the record wins' in caplog.text
    assert listed(host, instance) == {path: 'qcow2'}


def test_missing_entry_is_restored_by_resolve_driver_format(
        backend, host, instance, make_image):
    host.set_override('force_raw_images', False)
    make_image('img', 'qcow2')
    b = imagebackend.Backend(conf=host)
    b.by_name(instance, 'disk', 'flat').create_from_image(None, 'img', GiB)
    path = disk_path(host, instance)
    os.unlink(disk_info.path_for(path))  # the crash came before it
    disk = b.by_name(instance, 'disk', 'flat')
    with processes.recording() as commands:
        disk.correct_format()
    assert commands == []  # never probed
    assert disk.driver_format == 'qcow2'
    assert listed(host, instance) == {path: 'qcow2'}


# -- resolve_driver_format / correct_format without a record -----------------

def test_resolve_without_record(backend, host, instance):
    path = disk_path(host, instance)
    os.makedirs(os.path.dirname(path))
    flat = backend.by_name(instance, 'disk', 'flat')
    # No disk: the backend's format, and nothing written (no instance
    # directory made by asking, unlike Nova's Qcow2).
    assert flat.resolve_driver_format() == 'raw'
    qcow2 = backend.by_name(instance, 'disk', 'qcow2')
    assert qcow2.resolve_driver_format() == 'qcow2'
    assert os.listdir(os.path.dirname(path)) == []

    processes.execute('qemu-img', 'create', '-q', '-f', 'qcow2', path,
                      str(GiB))
    # An existing file nothing describes: Qcow2 asserts no qcow2 for it
    # (its header may be a guest's), Flat lists it raw, never probing.
    with processes.recording() as commands:
        assert backend.by_name(instance, 'disk',
                               'qcow2').resolve_driver_format() == 'qcow2'
        assert listed(host, instance) == {}
        flat = backend.by_name(instance, 'disk', 'flat')
        assert flat.driver_format == 'raw'
        flat.correct_format()
    assert commands == []
    assert flat.driver_format == 'raw'
    assert listed(host, instance) == {path: 'raw'}


def test_flat_opened_by_name_takes_novas_format(backend, host, instance):
    # A qcow2 image Nova's Flat kept (force_raw_images off), listed by
    # Nova; no record. Opened by name (as Nova's driver does), it is
    # described as qcow2, not raw.
    path = disk_path(host, instance)
    os.makedirs(os.path.dirname(path))
    processes.execute('qemu-img', 'create', '-q', '-f', 'qcow2', path,
                      str(GiB))
    with open(disk_info.path_for(path), 'w') as f:
        f.write(json.dumps({path: 'qcow2'}) + '\n')
    disk = backend.by_name(instance, 'disk', 'flat', disk_info_mapping=MAPPING)
    assert disk.disk_info_path == disk_info.path_for(path)
    assert disk.driver_format == 'qcow2'
    assert disk.resolve_driver_format() == 'qcow2'
    assert disk.libvirt_info(None, {}).driver_format == 'qcow2'
    # Grown as Nova's driver grows it (cache() -> resize_image): as qcow2,
    # not as a raw file (which would only lengthen the container).
    disk.resize_image(2 * GiB)
    assert qemu_info(path, 'qcow2')['virtual-size'] == 2 * GiB
    # And adopted from it on first touch, opened as qcow2.
    adopted = backend.from_metadata(instance, 'disk', MAPPING)
    assert adopted.driver_format == 'qcow2'
    assert adopted.record.format == 'qcow2'
    assert adopted.record.backing is None
    assert adopted.libvirt_info(None, {}).driver_format == 'qcow2'
    assert adopted.record.virtual_size == 2 * GiB
    adopted.resize_image(3 * GiB)
    assert qemu_info(path, 'qcow2')['virtual-size'] == 3 * GiB
    assert listed(host, instance) == {path: 'qcow2'}


def test_ploop_listed_by_the_library_is_adopted_from_disk_info(
        backend, host, instance, make_image):
    # Nova's Ploop never lists its disks (its driver does, on
    # pre-live-migration); the library does, so a host that has lost
    # disks.json (or never had it) opens it as ploop on first touch.
    host.set_override('force_raw_images', False)
    make_image('img', 'qcow2')
    b = imagebackend.Backend(conf=host)
    b.by_name(instance, 'disk', 'ploop').create_from_image(None, 'img', GiB)
    os.unlink(os.path.join(host.instances_path, instance.uuid,
                           names.RECORDS_FILE))
    host.set_override('images_type', 'flat', group='libvirt')
    disk = imagebackend.Backend(conf=host).from_metadata(instance, 'disk')
    assert (disk.image_type, disk.driver_format) == ('ploop', 'ploop')
    assert disk.record.provenance == {'path': 'adopted', 'from': 'disk.info'}
    assert disk.record.virtual_size == GiB


def test_adoption_from_host_config_lists_the_disk(backend, host, instance):
    # A Nova-era raw disk that disk.info does not name, adopted on the
    # host that made it: listed raw from now on, so a host on Nova's
    # module never probes it.
    path = disk_path(host, instance)
    os.makedirs(os.path.dirname(path))
    processes.execute('qemu-img', 'create', '-q', '-f', 'raw', path,
                      str(GiB))
    host.set_override('images_type', 'flat', group='libvirt')
    b = imagebackend.Backend(conf=host)
    disk = b.from_metadata(instance, 'disk')
    assert disk.record.provenance['from'] == 'host config'
    assert listed(host, instance) == {path: 'raw'}


# -- cold migration: the path changes with instances_path --------------------

@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_cold_migration_lists_the_new_path(tmp_path, image_type):
    hosts = Hosts(tmp_path)
    hosts.add_image('img')
    for conf in hosts.confs.values():
        conf.set_override('images_type', image_type, group='libvirt')
        conf.set_override('force_raw_images', False)
    a = hosts.backend('a')
    instance = instance_mod.Instance(image_ref='img', name='vm',
                                     flavor=instance_mod.Flavor(root_gb=1))
    mapping = instance_mod.disk_mapping(instance, {})
    flows.spawn(a, None, instance, mapping, {})
    src = os.path.join(hosts.paths['a'], instance.uuid, 'disk')
    fmt = 'qcow2'  # flat keeps the qcow2 image; qcow2 is an overlay
    with open(disk_info.path_for(src)) as f:
        assert json.loads(f.read()) == {src: fmt}

    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, {})
    # What Nova's driver does on a cold migration: disk.info travels too,
    # naming the source's paths.
    dst_dir = os.path.join(hosts.paths['b'], instance.uuid)
    with open(os.path.join(dst_dir, 'disk.info'), 'w') as f:
        f.write(json.dumps({src: fmt}))
    b = hosts.backend('b')
    flows.finish_migration(b, None, instance, mapping, {}, source_host='a')
    dst = os.path.join(dst_dir, 'disk')
    assert b.records.get(instance.uuid, 'disk').location == dst
    with open(os.path.join(dst_dir, 'disk.info')) as f:
        assert json.loads(f.read()) == {dst: fmt}
    assert b.from_metadata(instance, 'disk').driver_format == fmt
