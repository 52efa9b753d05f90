"""Tests for imagebackend.backend: the factory, records-first opening of
existing disks, capabilities, libvirt_info and Nova's optional hooks.

Pure logic: no qemu-img runs (``imagebackend.qemu.info`` is faked where a
disk made before records is adopted).
"""

import dataclasses
import json
import os
from unittest import mock

import pytest

import imagebackend
from imagebackend import backend as backend_mod
from imagebackend import exception, libvirt_config, processes, records
from imagebackend import image as image_mod
from imagebackend.backends import flat, qcow2
from tests.hosts import GiB, MiB


def instance_dir(host, instance):
    return os.path.join(host.instances_path, instance.uuid)


def make_disk_file(host, instance, name='disk', data=b'\0' * 4096):
    d = instance_dir(host, instance)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, name)
    with open(path, 'wb') as f:
        f.write(data)
    return path


def put_record(b, instance, name='disk', **overrides):
    """Store a record in ``b``'s store (``overrides`` are record fields)."""
    fields = dict(instance=instance.uuid, name=name, backend='qcow2',
                  format='qcow2',
                  location=os.path.join(b.conf.instances_path,
                                        instance.uuid, name),
                  source_type='image', source_id='image-1',
                  virtual_size=GiB, state=records.CREATED,
                  provenance={'path': 'native'})
    fields.update(overrides)
    record = records.DiskRecord(**fields)
    b.records.put(record)
    return record


# -- the factory --------------------------------------------------------------

@pytest.mark.parametrize('image_type, cls', [
    ('flat', flat.Flat), ('raw', flat.Flat), ('qcow2', qcow2.Qcow2)])
def test_backend_by_type(backend, instance, image_type, cls):
    disk = backend.backend(image_type)(instance=instance, disk_name='disk')
    assert type(disk) is cls
    assert disk.path == os.path.join(instance_dir(backend.conf, instance),
                                     'disk')
    disk = backend.by_name(instance, 'disk', image_type)
    assert type(disk) is cls


@pytest.mark.parametrize('use_cow, cls', [(True, qcow2.Qcow2),
                                          (False, flat.Flat)])
def test_default_follows_use_cow_argument(host, instance, use_cow, cls):
    # The argument wins over the config option.
    host.set_override('use_cow_images', not use_cow)
    b = imagebackend.Backend(use_cow, conf=host)
    assert b.use_cow is use_cow
    assert type(b.by_name(instance, 'disk', 'default')) is cls
    assert type(b.by_name(instance, 'disk')) is cls  # images_type=default


@pytest.mark.parametrize('use_cow, cls', [(True, qcow2.Qcow2),
                                          (False, flat.Flat)])
def test_default_follows_use_cow_images_option(host, instance, use_cow, cls):
    host.set_override('use_cow_images', use_cow)
    b = imagebackend.Backend(conf=host)
    assert type(b.by_name(instance, 'disk', 'default')) is cls
    assert type(b.by_name(instance, 'disk')) is cls


def test_images_type_is_read_at_call_time(host, instance):
    b = imagebackend.Backend(conf=host)
    host.set_override('images_type', 'flat', group='libvirt')
    assert type(b.by_name(instance, 'disk')) is flat.Flat
    host.set_override('images_type', 'qcow2', group='libvirt')
    assert type(b.by_name(instance, 'disk')) is qcow2.Qcow2
    host.set_override('images_type', 'raw', group='libvirt')
    assert type(b.backend()(instance=instance, disk_name='disk')) is \
        flat.Flat
    # An explicit type wins over the option.
    assert type(b.by_name(instance, 'disk', 'qcow2')) is qcow2.Qcow2


@pytest.mark.parametrize('image_type', ['bogus', 'Qcow2', 'abstract',
                                        'flat '])
def test_unknown_backend(backend, image_type):
    with pytest.raises(exception.UnknownBackend) as e:
        backend.backend(image_type)
    message = str(e.value)
    assert repr(image_type) in message
    for known in ('flat', 'raw', 'qcow2', 'lvm', 'rbd', 'ploop', 'default'):
        assert known in message
    assert isinstance(e.value, exception.InvalidInput)


def test_unconfigured_lvm_is_unavailable(backend, host, instance):
    # Every type is implemented; a host without a volume group cannot
    # make LVs, and says so with a typed error before touching anything.
    with pytest.raises(exception.BackendUnavailable) as e:
        backend.by_name(instance, 'disk', 'lvm')
    assert 'images_volume_group' in str(e.value)
    host.set_override('images_type', 'lvm', group='libvirt')
    with pytest.raises(exception.BackendUnavailable):
        backend.by_name(instance, 'disk')


@pytest.mark.parametrize('name', ['../x', '', 'a/b', '.disk', 'disk\n'])
def test_by_name_validates_names(backend, instance, name):
    with pytest.raises(exception.InvalidDiskName):
        backend.by_name(instance, name, 'qcow2')
    with pytest.raises(exception.InvalidDiskName):
        backend.by_name(instance, name, 'flat')


def test_by_name_passes_disk_info_mapping(backend, instance):
    mapping = {'bus': 'virtio', 'dev': 'vdb', 'type': 'disk'}
    disk = backend.by_name(instance, 'disk.local', 'flat',
                           disk_info_mapping=mapping)
    assert disk.disk_info_mapping == mapping
    assert disk.disk_name == 'disk.local'
    assert disk.instance is instance


@pytest.mark.parametrize('image_type, cls, fmt', [
    ('flat', flat.Flat, 'raw'), ('qcow2', qcow2.Qcow2, 'qcow2')])
def test_by_libvirt_path_in_instance_dir(backend, instance, image_type, cls,
                                         fmt):
    path = os.path.join(instance_dir(backend.conf, instance), 'disk.local')
    disk = backend.by_libvirt_path(instance, path, image_type)
    assert type(disk) is cls
    assert disk.path == path
    assert disk.disk_name == 'disk.local'
    assert disk.driver_format == fmt


@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_by_libvirt_path_elsewhere(backend, instance, tmp_path, image_type):
    path = str(tmp_path / 'elsewhere' / 'disk')
    disk = backend.by_libvirt_path(instance, path, image_type)
    assert disk.path == path
    assert disk.disk_name is None
    # A disk known only by path cannot be created (there is no record name).
    with pytest.raises(exception.InvalidInput):
        with disk._creating('image', 'x', 'native'):
            pass


def test_a_file_disk_needs_instance_and_name_or_path(backend, instance):
    with pytest.raises(exception.InvalidInput):
        backend.backend('flat')(instance=instance)


# -- from_metadata: the record decides ----------------------------------------

def test_from_metadata_uses_the_record_not_the_config(backend, host,
                                                      instance):
    put_record(backend, instance, backend='qcow2', format='qcow2')
    host.set_override('images_type', 'flat', group='libvirt')
    mapping = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}
    with mock.patch.object(imagebackend.qemu, 'info') as info:
        disk = backend.from_metadata(instance, 'disk', mapping)
    info.assert_not_called()
    assert type(disk) is qcow2.Qcow2
    assert disk.driver_format == 'qcow2'
    assert disk.disk_info_mapping == mapping
    assert disk.record.backend == 'qcow2'
    assert disk.virtual_size() == GiB


def test_from_metadata_flat_keeps_recorded_format(backend, host, instance):
    # An unconverted qcow2 image copied as a Flat disk (force_raw_images
    # off): the recorded format, never a sniff, never the config.
    put_record(backend, instance, backend='flat', format='qcow2')
    host.set_override('images_type', 'qcow2', group='libvirt')
    disk = backend.from_metadata(instance, 'disk')
    assert type(disk) is flat.Flat
    assert disk.driver_format == 'qcow2'


def test_from_metadata_raw_record_alias(backend, instance):
    put_record(backend, instance, backend='raw', format='raw')
    assert type(backend.from_metadata(instance, 'disk')) is flat.Flat


def test_from_metadata_incomplete_disk(backend, instance):
    put_record(backend, instance, state=records.CREATING, virtual_size=None)
    make_disk_file(backend.conf, instance)  # a leftover partial disk
    with pytest.raises(exception.IncompleteDisk) as e:
        backend.from_metadata(instance, 'disk')
    assert 'creating' in str(e.value)


def test_from_metadata_no_record_no_disk(backend, instance):
    with pytest.raises(exception.RecordNotFound):
        backend.from_metadata(instance, 'disk')
    assert backend.records.list(instance.uuid) == []


@pytest.mark.parametrize('name', ['../x', 'a/b'])
def test_from_metadata_validates_names(backend, instance, name):
    with pytest.raises(exception.InvalidDiskName):
        backend.from_metadata(instance, name)


def test_from_metadata_backend_this_host_lacks(backend, instance):
    put_record(backend, instance, backend='someday', format='raw',
               location='vg/disk')
    with pytest.raises(exception.UnknownBackend):
        backend.from_metadata(instance, 'disk')


def test_from_metadata_lvm_disk_is_in_its_recorded_vg(backend, instance):
    # No images_volume_group here (any more): the disk is still where its
    # record says, not refused and not looked for elsewhere.
    lv = f'{instance.uuid}_disk'
    put_record(backend, instance, backend='lvm', format='raw',
               location=f'vg0/{lv}')
    disk = backend.from_metadata(instance, 'disk')
    assert (disk.vg, disk.lv, disk.path) == ('vg0', lv, f'/dev/vg0/{lv}')
    assert disk.moved_from is None


@pytest.mark.parametrize('location', ['vg/disk', 'vg0', 'bad vg/{lv}',
                                      'vg0/{lv}x'])
def test_from_metadata_lvm_record_naming_another_lv(backend, instance,
                                                    location):
    put_record(backend, instance, backend='lvm', format='raw',
               location=location.format(lv=f'{instance.uuid}_disk'))
    with pytest.raises(exception.CorruptRecord):
        backend.from_metadata(instance, 'disk')


# -- legacy adoption ----------------------------------------------------------

def write_disk_info(host, instance, data):
    d = instance_dir(host, instance)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, 'disk.info'), 'w') as f:
        f.write(data if isinstance(data, str) else json.dumps(data))


def test_adopt_with_disk_info(backend, host, instance):
    path = make_disk_file(host, instance)
    write_disk_info(host, instance, {path: 'raw'})
    # The host now defaults to qcow2: disk.info must win.
    host.set_override('images_type', 'qcow2', group='libvirt')
    with mock.patch.object(imagebackend.qemu, 'info',
                           return_value={'virtual-size': 3 * GiB}) as info:
        disk = backend.from_metadata(instance, 'disk')
    info.assert_called_once_with(path, 'raw')
    assert type(disk) is flat.Flat
    assert disk.driver_format == 'raw'
    record = backend.records.get(instance.uuid, 'disk')
    assert record == disk.record
    assert record.backend == 'flat'
    assert record.format == 'raw'
    assert record.state == records.CREATED
    assert record.virtual_size == 3 * GiB
    assert record.location == path
    assert record.source_type == 'none'
    assert record.source_id is None
    assert record.backing is None
    assert record.provenance == {'path': 'adopted', 'from': 'disk.info'}
    # Next time the record is read; nothing is inspected again.
    with mock.patch.object(imagebackend.qemu, 'info') as info:
        again = backend.from_metadata(instance, 'disk')
    info.assert_not_called()
    assert type(again) is flat.Flat
    assert again.record == record


def test_adopt_qcow2_from_disk_info(backend, host, instance):
    path = make_disk_file(host, instance, 'disk.local')
    write_disk_info(host, instance, {path: 'qcow2'})
    host.set_override('images_type', 'flat', group='libvirt')
    base = os.path.join(host.instances_path, '_base', 'ephemeral_1_40d1d2c')
    with mock.patch.object(imagebackend.qemu, 'info', return_value={
            'virtual-size': GiB, 'backing-filename': base,
            'full-backing-filename': base,
            'backing-filename-format': 'raw'}) as info:
        disk = backend.from_metadata(instance, 'disk.local')
    info.assert_called_once_with(path, 'qcow2')
    assert type(disk) is qcow2.Qcow2
    record = disk.record
    assert (record.backend, record.format) == ('qcow2', 'qcow2')
    assert record.backing == 'ephemeral_1_40d1d2c'
    assert record.backing_format == 'raw'
    assert record.provenance == {'path': 'adopted', 'from': 'disk.info'}


# A host whose backend reads a backing file from a disk (Qcow2) adopts a
# file disk missing from disk.info as raw: Nova's Qcow2 always wrote
# disk.info, and a qcow2 header in such a file may be the guest's.
@pytest.mark.parametrize('images_type, use_cow, how', [
    ('default', True, 'raw: not in disk.info'),
    ('default', False, 'host config'),
    ('qcow2', False, 'raw: not in disk.info'),
    ('flat', True, 'host config'),
])
def test_adopt_without_disk_info_is_raw(host, instance, images_type,
                                        use_cow, how):
    host.set_override('images_type', images_type, group='libvirt')
    host.set_override('use_cow_images', use_cow)
    b = imagebackend.Backend(conf=host)
    path = make_disk_file(host, instance)
    with mock.patch.object(imagebackend.qemu, 'info',
                           return_value={'virtual-size': 5 * MiB}) as info:
        disk = b.from_metadata(instance, 'disk')
    info.assert_called_once_with(path, 'raw')  # an explicit format, no probe
    assert type(disk) is flat.Flat
    record = b.records.get(instance.uuid, 'disk')
    assert (record.backend, record.format) == ('flat', 'raw')
    assert (record.backing, record.backing_format) == (None, None)
    assert record.virtual_size == 5 * MiB
    assert record.provenance == {'path': 'adopted', 'from': how}


def test_adopt_disk_info_without_this_disk(backend, host, instance):
    path = make_disk_file(host, instance)
    other = os.path.join(instance_dir(host, instance), 'disk.config')
    write_disk_info(host, instance, {other: 'raw'})
    host.set_override('images_type', 'qcow2', group='libvirt')
    with mock.patch.object(imagebackend.qemu, 'info',
                           return_value={'virtual-size': GiB}) as info:
        disk = backend.from_metadata(instance, 'disk')
    info.assert_called_once_with(path, 'raw')
    assert disk.record.provenance['from'] == 'raw: not in disk.info'


def test_adopt_disk_info_but_no_disk(backend, host, instance):
    path = os.path.join(instance_dir(host, instance), 'disk')
    write_disk_info(host, instance, {path: 'raw'})
    with mock.patch.object(imagebackend.qemu, 'info') as info:
        with pytest.raises(exception.RecordNotFound):
            backend.from_metadata(instance, 'disk')
    info.assert_not_called()
    assert backend.records.list(instance.uuid) == []


def test_adopt_when_host_config_names_unavailable_backend(host, instance):
    make_disk_file(host, instance)
    host.set_override('images_type', 'lvm', group='libvirt')
    b = imagebackend.Backend(conf=host)
    with pytest.raises(exception.BackendUnavailable):
        b.from_metadata(instance, 'disk')
    assert b.records.list(instance.uuid) == []


def test_adopt_ploop_disk_info(backend, host, instance):
    # A Nova-era ploop disk (a directory) named by disk.info is adopted as
    # Ploop, its size asked of the backend (qemu-img cannot open the dir).
    d = os.path.join(instance_dir(host, instance), 'disk')
    os.makedirs(d)
    write_disk_info(host, instance, {d: 'ploop'})
    with mock.patch('imagebackend.backends.ploop.Ploop.exists',
                    return_value=True), \
            mock.patch('imagebackend.backends.ploop.Ploop.get_disk_size',
                       return_value=GiB), \
            mock.patch.object(imagebackend.qemu, 'info') as info:
        disk = backend.from_metadata(instance, 'disk')
    info.assert_not_called()
    assert (disk.image_type, disk.record.virtual_size) == ('ploop', GiB)
    assert disk.record.provenance == {'path': 'adopted', 'from': 'disk.info'}


@pytest.mark.parametrize('content', [
    'not json {', '', '["raw"]', '"raw"', 'null'])
def test_corrupted_disk_info(backend, host, instance, content):
    make_disk_file(host, instance)
    write_disk_info(host, instance, content)
    with mock.patch.object(imagebackend.qemu, 'info') as info:
        with pytest.raises(exception.CorruptRecord) as e:
            backend.from_metadata(instance, 'disk')
    info.assert_not_called()
    assert 'disk.info' in str(e.value)
    assert backend.records.list(instance.uuid) == []
    # Left for a human to look at.
    with open(os.path.join(instance_dir(host, instance), 'disk.info')) as f:
        assert f.read() == content


def test_disk_info_with_unknown_format(backend, host, instance):
    path = make_disk_file(host, instance)
    write_disk_info(host, instance, {path: 'vmdk'})
    with pytest.raises(exception.CorruptRecord) as e:
        backend.from_metadata(instance, 'disk')
    assert 'vmdk' in str(e.value)


# -- capabilities -------------------------------------------------------------

@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_file_backend_capabilities(backend, instance, image_type):
    disk = backend.by_name(instance, 'disk', image_type)
    cls = type(disk)
    assert cls.is_file_in_instance_path() is True
    assert disk.is_file_in_instance_path() is True
    assert cls.is_shared_block_storage() is False
    assert disk.is_shared_block_storage() is False
    caps = cls.capabilities
    assert isinstance(caps, image_mod.Capabilities)
    assert caps.file_in_instance_path and not caps.shared_storage
    assert not caps.block_device
    assert caps.native_create
    assert cls.SUPPORTS_CLONE is False
    assert cls.SUPPORTS_LUKS is False
    assert disk.source_type == 'file'
    assert disk.is_block_dev is False


def test_is_block_dev_is_the_block_device_capability(backend, instance):
    # Nova's driver reads a disk's is_block_dev; a backend declares it once,
    # as its block_device capability.
    class BlockFlat(flat.Flat):
        capabilities = dataclasses.replace(flat.Flat.capabilities,
                                           block_device=True)

    assert BlockFlat(instance=instance, disk_name='disk',
                     backend=backend).is_block_dev is True
    assert backend.by_name(instance, 'disk', 'flat').is_block_dev is False


def test_backing_in_cache(backend, instance):
    assert qcow2.Qcow2.capabilities.backing_in_cache is True
    assert flat.Flat.capabilities.backing_in_cache is False
    assert backend.by_name(instance, 'disk', 'qcow2').capabilities \
        .backing_in_cache is True


def test_capabilities_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        qcow2.Qcow2.capabilities.shared_storage = True


# -- libvirt_info -------------------------------------------------------------

MAPPING = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}


def test_libvirt_info_qcow2(backend, instance):
    disk = backend.by_name(instance, 'disk', 'qcow2',
                           disk_info_mapping=MAPPING)
    info = disk.libvirt_info('none', {
        'quota:disk_read_bytes_sec': '10240',
        'quota:disk_total_iops_sec': 500,
        'quota:cpu_period': '100',
        'quota:unknown': '1',
        'hw:disk_write_iops_sec': '7',
        'disk_write_bytes_sec': '9',
    }, boot_order=1)
    assert isinstance(info, libvirt_config.GuestDisk)
    assert info.driver_format == 'qcow2'
    assert info.driver_name == 'qemu'
    assert info.driver_cache == 'none'
    assert info.driver_discard is None
    assert info.driver_io is None
    assert info.source_type == 'file'
    assert info.source_device == 'disk'
    assert info.source_path == disk.path
    assert info.target_bus == 'virtio'
    assert info.target_dev == 'vda'
    assert info.boot_order == 1
    assert info.device_addr is None
    assert info.disk_read_bytes_sec == 10240
    assert info.disk_total_iops_sec == 500
    assert info.disk_write_iops_sec is None
    assert info.disk_write_bytes_sec is None
    assert info.disk_read_iops_sec is None
    assert info.disk_total_bytes_sec is None


def test_libvirt_info_flat_and_options(host, instance):
    host.set_override('hw_disk_discard', 'unmap', group='libvirt')
    host.set_override('preallocate_images', 'space')
    b = imagebackend.Backend(conf=host)
    disk = b.by_name(instance, 'disk.config', 'flat', disk_info_mapping={
        'bus': 'ide', 'dev': 'hdd', 'type': 'cdrom'})
    info = disk.libvirt_info('writeback', {})
    assert info.driver_format == 'raw'
    assert info.driver_discard == 'unmap'
    assert info.driver_io == 'native'
    assert info.source_device == 'cdrom'
    assert info.boot_order is None


@pytest.mark.parametrize('virt_type, name', [
    ('kvm', 'qemu'), ('qemu', 'qemu'), ('lxc', None), ('parallels', None)])
def test_libvirt_info_driver_name(host, instance, virt_type, name):
    host.set_override('virt_type', virt_type, group='libvirt')
    b = imagebackend.Backend(conf=host)
    disk = b.by_name(instance, 'disk', 'qcow2', disk_info_mapping=MAPPING)
    assert disk.libvirt_info(None, {}).driver_name == name


def test_libvirt_info_scsi_unit(backend, instance):
    disk = backend.by_name(instance, 'disk', 'qcow2', disk_info_mapping={
        'bus': 'scsi', 'dev': 'sda', 'type': 'disk'})
    info = disk.libvirt_info('none', {}, disk_unit=3)
    assert info.device_addr == libvirt_config.DriveAddress(controller=0,
                                                           unit=3)
    assert disk.libvirt_info('none', {}, disk_unit=0).device_addr.unit == 0
    assert disk.libvirt_info('none', {}).device_addr is None


def test_libvirt_info_unit_ignored_off_scsi(backend, instance):
    disk = backend.by_name(instance, 'disk', 'qcow2',
                           disk_info_mapping=MAPPING)
    assert disk.libvirt_info('none', {}, disk_unit=3).device_addr is None


def test_libvirt_info_mapping_without_type(backend, instance):
    disk = backend.by_name(instance, 'disk', 'qcow2',
                           disk_info_mapping={'bus': 'virtio', 'dev': 'vda'})
    assert disk.libvirt_info(None, {}).source_device == 'disk'


@pytest.mark.parametrize('mapping', [None, {}])
def test_libvirt_info_without_mapping(backend, instance, mapping):
    disk = backend.by_name(instance, 'disk', 'qcow2',
                           disk_info_mapping=mapping)
    with pytest.raises(exception.InvalidInput):
        disk.libvirt_info('none', {})


def test_libvirt_info_from_record(backend, instance):
    put_record(backend, instance, backend='flat', format='qcow2')
    disk = backend.from_metadata(instance, 'disk', MAPPING)
    assert disk.libvirt_info('none', None).driver_format == 'qcow2'


def test_libvirt_fs_info(backend, instance):
    fs = backend.by_name(instance, 'disk', 'flat').libvirt_fs_info('/')
    assert (fs.source_type, fs.driver_format, fs.driver_type) == (
        'file', 'raw', 'loop')
    fs = backend.by_name(instance, 'disk', 'qcow2').libvirt_fs_info('/')
    assert (fs.driver_format, fs.driver_type) == ('qcow2', 'nbd')


# -- Nova's optional hooks ----------------------------------------------------

@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_nova_default_hooks(backend, host, instance, image_type):
    disk = backend.by_name(instance, 'disk', image_type)
    with processes.recording() as commands:
        with pytest.raises(exception.ImageUnacceptable) as e:
            disk.clone(None, 'image-1')
        assert 'image-1' in str(e.value)
        with pytest.raises(NotImplementedError):
            disk.flatten()
        with pytest.raises(NotImplementedError):
            disk.direct_snapshot(None, 'snap', 'raw', 'image-2', 'image-1')
        assert disk.create_snap('snap') is None
        assert disk.remove_snap('snap') is None
        assert disk.remove_snap('snap', ignore_errors=True) is None
        assert disk.rollback_to_snap('snap') is None
        assert disk.cleanup_direct_snapshot('loc') is None
        assert disk.cleanup_direct_snapshot(
            'loc', also_destroy_volume=True, ignore_errors=True) is None
        assert disk.import_file(instance, '/tmp/x', 'disk') is None
    assert commands == []
    assert not os.path.exists(instance_dir(host, instance))


def test_backend_module_tables():
    # Every known type is either implemented or 'default'.
    assert set(backend_mod.KNOWN_TYPES) == (
        set(backend_mod.BACKENDS) | {'default'})
    for image_type in backend_mod.BACKENDS:
        assert issubclass(backend_mod.backend_class(image_type),
                          imagebackend.Image)
