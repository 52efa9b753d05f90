"""driver.instance_disks and driver.instance: mapping -> creatable disks.

Unit tests: a real ``imagebackend.Backend(conf=host)`` under
``ImageBackendFixture``, so every disk is a recorded fake and nothing is
created by merely describing the instance.
"""

from __future__ import annotations

import pytest

import imagebackend
from imagebackend import disks as disks_mod
from imagebackend import exception
from imagebackend.backends import flat, qcow2
from imagebackend.fixture import ImageBackendFixture

from driver import instance as instance_mod
from driver import instance_disks
from driver import templates

MiB = 1024 ** 2
GiB = 1024 ** 3


@pytest.fixture
def fx(request):
    fixture = ImageBackendFixture()
    fixture.setUp()
    request.addfinalizer(fixture.cleanUp)
    return fixture


@pytest.fixture
def backend(fx, host):
    return imagebackend.Backend(conf=host)


def make_instance(root_gb=1, ephemeral_gb=0, swap=0, os_type='linux',
                  config_drive=False, image_ref='img-1'):
    return instance_mod.Instance(
        image_ref=image_ref, name='vm', os_type=os_type,
        config_drive=config_drive,
        flavor=instance_mod.Flavor(root_gb=root_gb, ephemeral_gb=ephemeral_gb,
                                   swap=swap))


def describe(backend, instance, bdi=None, mapping=None, **kwargs):
    if mapping is None:
        mapping = instance_mod.disk_mapping(instance, bdi)
    return {d.name: d for d in instance_disks.instance_disks(
        backend, instance, mapping, bdi, **kwargs)}


def ordered(backend, instance, bdi=None, mapping=None, **kwargs):
    if mapping is None:
        mapping = instance_mod.disk_mapping(instance, bdi)
    return [d.name for d in instance_disks.instance_disks(
        backend, instance, mapping, bdi, **kwargs)]


BFV = {'block_device_mapping': [{'boot_index': 0, 'mount_device': '/dev/vda',
                                 'connection_info': {}}]}


# -- describing creates nothing -----------------------------------------------

def test_describing_every_kind_of_disk_touches_nothing(fx, backend):
    inst = make_instance(ephemeral_gb=1, swap=64, config_drive=True)
    bdi = {'ephemerals': [{'size': 1}, {'size': 2, 'guest_format': 'xfs'}]}
    assert ordered(backend, inst, bdi) == [
        'disk', 'disk.local', 'disk.eph0', 'disk.eph1', 'disk.swap',
        'disk.config']
    assert fx.created_disks == []
    assert fx.image_calls == []
    assert fx.template_calls == []
    for name in fx.disks:
        # Only construction happened: no method was called on any disk.
        assert fx.calls(name) == [], name


# -- root ---------------------------------------------------------------------

def test_root_from_image_at_flavor_size(fx, backend, host):
    inst = make_instance(root_gb=3)
    mapping = instance_mod.disk_mapping(inst)
    found = describe(backend, inst, mapping=mapping)
    assert list(found) == ['disk']
    root = found['disk']
    assert isinstance(root, disks_mod.DiskFromImage)
    assert root.size == 3 * GiB
    assert root.image_id == 'img-1'
    assert root.source == ('image', 'img-1')
    assert root.disposable is False
    assert root.image is fx.disks['disk']
    assert root.image.disk_info_mapping == mapping['disk']
    assert root.image.path == f'{host.instances_path}/{inst.uuid}/disk'
    # The host's default (use_cow_images=True): qcow2.
    assert root.image.image_type == 'qcow2'


def test_root_size_none_when_flavor_root_is_zero(fx, backend):
    inst = make_instance(root_gb=0)
    root = describe(backend, inst)['disk']
    assert root.size is None
    assert root.image_id == 'img-1'


def test_root_on_the_hosts_configured_type(fx, host):
    host.set_override('use_cow_images', False)
    backend = imagebackend.Backend(conf=host)
    root = describe(backend, make_instance())['disk']
    assert root.image.image_type == 'flat'
    assert root.image.capabilities == flat.Flat.capabilities


def test_boot_from_volume_has_no_root(fx, backend):
    inst = make_instance(ephemeral_gb=1)
    mapping = instance_mod.disk_mapping(inst, BFV)
    assert 'disk' not in mapping
    assert list(describe(backend, inst, BFV, mapping)) == ['disk.local']
    # Even a mapping naming 'disk' gets no local root when a volume is root.
    mapping = instance_mod.disk_mapping(inst)
    assert 'disk' in mapping
    assert list(describe(backend, inst, BFV, mapping)) == ['disk.local']
    assert 'disk' not in fx.disks


def test_boot_from_volume_by_root_device_name(fx, backend):
    bdi = {'root_device_name': '/dev/vda',
           'block_device_mapping': [{'boot_index': None,
                                     'mount_device': '/dev/vda'}]}
    inst = make_instance()
    assert describe(backend, inst, bdi, {'disk': {}}) == {}


def test_a_volume_that_is_not_root_keeps_the_local_root(fx, backend):
    bdi = {'block_device_mapping': [{'boot_index': 1,
                                     'mount_device': '/dev/vdb'}]}
    inst = make_instance()
    assert list(describe(backend, inst, bdi)) == ['disk']


def test_only_disks_in_the_mapping_are_described(fx, backend):
    inst = make_instance(ephemeral_gb=1, swap=64, config_drive=True)
    assert list(describe(backend, inst, mapping={'disk.swap': {}})) == [
        'disk.swap']
    assert set(fx.disks) == {'disk.swap'}


# -- flavor ephemeral ---------------------------------------------------------

@pytest.mark.parametrize('os_type, fs', [
    ('linux', 'ext4'),
    ('windows', 'ntfs'),
    (None, 'vfat'),
    ('freebsd', 'vfat'),
])
def test_flavor_ephemeral_filesystem_by_os_type(fx, backend, os_type, fs):
    inst = make_instance(ephemeral_gb=2, os_type=os_type)
    local = describe(backend, inst)['disk.local']
    assert isinstance(local, disks_mod.DiskFromFunc)
    assert local.size == 2 * GiB
    assert local.disposable is False
    assert isinstance(local.func, templates.Ephemeral)
    assert local.func.fs == fs
    assert local.func.mkfs_command is None
    assert local.func.label == 'ephemeral0'
    assert local.func.size == 2 * GiB
    assert local.cache_name == f'ephemeral_2G_fs-{fs}_label-ephemeral0'
    assert local.cache_name == local.func.cache_name
    assert local.source == ('func', local.cache_name)
    assert local.image is fx.disks['disk.local']


def test_flavor_ephemeral_default_ephemeral_format(fx, host):
    host.set_override('default_ephemeral_format', 'ext3')
    backend = imagebackend.Backend(conf=host)
    local = describe(backend, make_instance(ephemeral_gb=1))['disk.local']
    assert local.func.fs == 'ext3'
    assert local.cache_name == 'ephemeral_1G_fs-ext3_label-ephemeral0'


def test_flavor_ephemeral_virt_mkfs_command(fx, host):
    host.set_override('virt_mkfs', ['linux=mkfs.ext3 -L %(fs_label)s '
                                    '%(target)s'])
    backend = imagebackend.Backend(conf=host)
    local = describe(backend, make_instance(ephemeral_gb=1))['disk.local']
    assert local.func.fs is None
    assert local.func.mkfs_command == 'mkfs.ext3 -L %(fs_label)s %(target)s'
    assert local.cache_name.startswith('ephemeral_1G_label-ephemeral0_'
                                       'mkfs-h')


def test_no_flavor_ephemeral_no_disk_local(fx, backend):
    inst = make_instance(ephemeral_gb=0)
    assert describe(backend, inst, mapping={'disk': {}, 'disk.local': {}}
                    ).keys() == {'disk'}


# -- BDM ephemerals -----------------------------------------------------------

def test_bdm_ephemerals_with_guest_format_and_label(fx, backend):
    inst = make_instance(ephemeral_gb=0)
    bdi = {'ephemerals': [{'size': 1, 'guest_format': 'xfs'},
                          {'size': 2},
                          {'size': 3, 'guest_format': 'ext2'}]}
    found = describe(backend, inst, bdi)
    assert list(found) == ['disk', 'disk.eph0', 'disk.eph1', 'disk.eph2']
    expected = [('disk.eph0', 1, 'xfs', 'ephemeral0'),
                ('disk.eph1', 2, 'ext4', 'ephemeral1'),
                ('disk.eph2', 3, 'ext2', 'ephemeral2')]
    for name, gib, fs, label in expected:
        eph = found[name]
        assert isinstance(eph, disks_mod.DiskFromFunc)
        assert eph.size == gib * GiB
        assert eph.func.fs == fs
        assert eph.func.label == label
        assert eph.func.size == gib * GiB
        assert eph.cache_name == f'ephemeral_{gib}G_fs-{fs}_label-{label}'
        assert eph.disposable is False
        assert eph.image is fx.disks[name]
    # Different guest formats are different templates (Nova shared one).
    assert len({found[n].cache_name for n, *_ in expected}) == 3


def test_bdm_ephemeral_guest_format_differs_from_flavor_one(fx, backend):
    inst = make_instance(ephemeral_gb=1)
    bdi = {'ephemerals': [{'size': 1, 'guest_format': 'ext3'}]}
    found = describe(backend, inst, bdi)
    assert found['disk.local'].cache_name != found['disk.eph0'].cache_name
    assert found['disk.eph0'].func.fs == 'ext3'


@pytest.mark.parametrize('guest_format', ['ntfs', 'vfat', 'swap', 'bogus'])
def test_bdm_ephemeral_invalid_guest_format(fx, backend, guest_format):
    inst = make_instance()
    bdi = {'ephemerals': [{'size': 1, 'guest_format': guest_format}]}
    with pytest.raises(exception.InvalidInput):
        describe(backend, inst, bdi)
    assert fx.created_disks == []


def test_bdm_ephemeral_not_in_mapping_is_skipped(fx, backend):
    inst = make_instance()
    bdi = {'ephemerals': [{'size': 1}, {'size': 2}]}
    mapping = instance_mod.disk_mapping(inst, bdi)
    del mapping['disk.eph0']
    assert list(describe(backend, inst, bdi, mapping)) == ['disk',
                                                           'disk.eph1']


# -- swap ---------------------------------------------------------------------

def test_swap_from_flavor(fx, backend):
    inst = make_instance(swap=512)
    swap = describe(backend, inst)['disk.swap']
    assert isinstance(swap, disks_mod.DiskFromFunc)
    assert swap.size == 512 * MiB
    assert swap.disposable is True
    assert isinstance(swap.func, templates.Swap)
    assert swap.func.size == 512 * MiB
    assert swap.cache_name == 'swap_512M'
    assert swap.image is fx.disks['disk.swap']


def test_swap_bdm_wins_over_flavor(fx, backend):
    inst = make_instance(swap=512)
    bdi = {'swap': {'swap_size': 128, 'device_name': '/dev/vdb'}}
    swap = describe(backend, inst, bdi)['disk.swap']
    assert swap.size == 128 * MiB
    assert swap.func.size == 128 * MiB
    assert swap.cache_name == 'swap_128M'
    assert swap.disposable is True


def test_swap_bdm_of_size_zero_falls_back_to_flavor(fx, backend):
    inst = make_instance(swap=256)
    swap = describe(backend, inst, {'swap': {'swap_size': 0}})['disk.swap']
    assert swap.size == 256 * MiB


def test_no_swap_no_disk_swap(fx, backend):
    inst = make_instance(swap=0)
    assert 'disk.swap' not in describe(backend, inst,
                                       mapping={'disk': {}, 'disk.swap': {}})


# -- config drive -------------------------------------------------------------

def test_config_drive_is_flat_even_on_a_qcow2_host(fx, host):
    host.set_override('images_type', 'qcow2', group='libvirt')
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(config_drive=True)
    mapping = instance_mod.disk_mapping(inst)
    found = describe(backend, inst, mapping=mapping)
    assert list(found) == ['disk', 'disk.config']
    assert found['disk'].image.image_type == 'qcow2'
    config = found['disk.config']
    assert isinstance(config, disks_mod.DiskFromFunc)
    assert config.image.image_type == 'flat'
    assert config.image.capabilities == flat.Flat.capabilities
    assert config.image.disk_info_mapping == mapping['disk.config']
    assert config.size is None
    assert config.disposable is False
    assert isinstance(config.func, templates.ConfigDrive)
    assert config.func.instance is inst
    assert config.cache_name == f'configdrive_{inst.uuid}'
    assert config.keep_template is False


@pytest.mark.parametrize('host_type, expected', [
    ('rbd', 'rbd'), ('qcow2', 'flat'), ('flat', 'flat'), ('lvm', 'flat'),
    ('ploop', 'flat')])
def test_config_drive_on_shared_storage_is_in_the_hosts_backend(
        fx, host, host_type, expected):
    """A live migration with shared storage copies nothing: there the
    drive is made in the backend every host sees, elsewhere a file."""
    host.set_override('images_type', host_type, group='libvirt')
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(config_drive=True)
    for suffix, mapping in (('', instance_mod.disk_mapping(inst)),
                            ('.rescue', instance_mod.rescue_mapping(inst))):
        found = describe(backend, inst, mapping=mapping, suffix=suffix)
        config = found['disk.config' + suffix]
        assert config.image.image_type == expected
        assert config.keep_template is False
        assert isinstance(config.func, templates.ConfigDrive)
    # Described only: the host's backend was asked its capabilities.
    assert fx.created_disks == []


def test_no_template_disk_is_made_from_its_content(fx, backend):
    """keep_template=False goes to create_from_content; the default to
    create_from_func."""
    inst = make_instance(config_drive=True)
    config = describe(backend, inst)['disk.config']
    config.create('ctx')
    assert [c[0] for c in fx.calls('disk.config')] == ['create_from_content']
    local = disks_mod.DiskFromFunc(
        image=backend.by_name(inst, 'disk.local'), size=GiB,
        func=config.func, cache_name='ephemeral_1G_fs-ext4')
    local.create('ctx')
    assert [c[0] for c in fx.calls('disk.local')] == ['create_from_func']


def test_config_drive_only_when_mapped(fx, backend):
    inst = make_instance(config_drive=False)
    assert 'disk.config' not in instance_mod.disk_mapping(inst)
    assert list(describe(backend, inst)) == ['disk']


# -- rescue -------------------------------------------------------------------

def test_rescue_suffix_root_from_rescue_image_at_its_size(fx, host):
    host.set_override('images_type', 'qcow2', group='libvirt')
    backend = imagebackend.Backend(conf=host)
    inst = make_instance(root_gb=5, ephemeral_gb=1, swap=64,
                         config_drive=True)
    mapping = instance_mod.rescue_mapping(inst)
    found = describe(backend, inst, mapping=mapping, suffix='.rescue',
                     image_id='rescue-img')
    assert list(found) == ['disk.rescue', 'disk.config.rescue']
    root = found['disk.rescue']
    assert isinstance(root, disks_mod.DiskFromImage)
    assert root.size is None
    assert root.image_id == 'rescue-img'
    assert root.image is fx.disks['disk.rescue']
    assert root.image.disk_info_mapping == mapping['disk.rescue']
    assert root.image.image_type == 'qcow2'
    config = found['disk.config.rescue']
    assert config.image.image_type == 'flat'
    assert config.cache_name == f'configdrive_{inst.uuid}'
    # The original root is in the mapping but is never described.
    assert 'disk' not in fx.disks


def test_rescue_suffix_without_image_id_uses_image_ref(fx, backend):
    inst = make_instance()
    root = describe(backend, inst, mapping=instance_mod.rescue_mapping(inst),
                    suffix='.rescue')['disk.rescue']
    assert root.image_id == 'img-1'
    assert root.size is None


def test_rescue_root_even_when_booted_from_volume(fx, backend):
    inst = make_instance()
    found = describe(backend, inst, BFV,
                     mapping=instance_mod.rescue_mapping(inst),
                     suffix='.rescue', image_id='rescue-img')
    assert list(found) == ['disk.rescue']


# -- unknown names ------------------------------------------------------------

@pytest.mark.parametrize('bad', ['disk.bogus', 'kernel', 'disk.eph0',
                                 'disk.eph1.rescue', 'disk.rescue.rescue'])
def test_unknown_disk_names_before_anything_is_yielded(fx, backend, bad):
    inst = make_instance(ephemeral_gb=1)
    mapping = instance_mod.disk_mapping(inst)
    mapping[bad] = {'bus': 'virtio', 'dev': 'vdz', 'type': 'disk'}
    gen = instance_disks.instance_disks(backend, inst, mapping)
    with pytest.raises(exception.InvalidInput) as err:
        next(gen)
    assert bad in str(err.value)
    # Not even the root (first in the mapping) was opened.
    assert dict(fx.disks) == {}
    assert fx.created_disks == []


def test_bdm_ephemeral_names_are_known_up_to_their_count(fx, backend):
    inst = make_instance()
    bdi = {'ephemerals': [{'size': 1}, {'size': 1}]}
    mapping = instance_mod.disk_mapping(inst, bdi)
    assert list(describe(backend, inst, bdi, mapping)) == [
        'disk', 'disk.eph0', 'disk.eph1']
    mapping['disk.eph2'] = {'bus': 'virtio', 'dev': 'vdz'}
    with pytest.raises(exception.InvalidInput):
        describe(backend, inst, bdi, mapping)


# -- driver.instance helpers --------------------------------------------------

def test_disk_mapping_order_and_devices():
    inst = make_instance(ephemeral_gb=1, swap=64, config_drive=True)
    bdi = {'ephemerals': [{'size': 1}, {'size': 2}]}
    assert instance_mod.disk_mapping(inst, bdi) == {
        'disk': {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'},
        'disk.local': {'bus': 'virtio', 'dev': 'vdb', 'type': 'disk'},
        'disk.eph0': {'bus': 'virtio', 'dev': 'vdc', 'type': 'disk'},
        'disk.eph1': {'bus': 'virtio', 'dev': 'vdd', 'type': 'disk'},
        'disk.swap': {'bus': 'virtio', 'dev': 'vde', 'type': 'disk'},
        'disk.config': {'bus': 'sata', 'dev': 'sda', 'type': 'cdrom'},
    }
    assert list(instance_mod.disk_mapping(inst, bdi)) == [
        'disk', 'disk.local', 'disk.eph0', 'disk.eph1', 'disk.swap',
        'disk.config']


def test_disk_mapping_minimal_and_bus():
    inst = make_instance()
    assert instance_mod.disk_mapping(inst, bus='scsi') == {
        'disk': {'bus': 'scsi', 'dev': 'vda', 'type': 'disk'}}


def test_disk_mapping_boot_from_volume_and_bdm_swap():
    inst = make_instance(ephemeral_gb=1, swap=0)
    bdi = dict(BFV, swap={'swap_size': 32})
    assert instance_mod.disk_mapping(inst, bdi) == {
        'disk.local': {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'},
        'disk.swap': {'bus': 'virtio', 'dev': 'vdb', 'type': 'disk'},
    }


def test_rescue_mapping():
    inst = make_instance()
    assert instance_mod.rescue_mapping(inst) == {
        'disk.rescue': {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'},
        'disk': {'bus': 'virtio', 'dev': 'vdb', 'type': 'disk'},
    }
    inst.config_drive = True
    assert instance_mod.rescue_mapping(inst, bus='scsi') == {
        'disk.rescue': {'bus': 'scsi', 'dev': 'vda', 'type': 'disk'},
        'disk': {'bus': 'scsi', 'dev': 'vdb', 'type': 'disk'},
        'disk.config.rescue': {'bus': 'sata', 'dev': 'sda',
                               'type': 'cdrom'},
    }
    assert list(instance_mod.rescue_mapping(inst))[0] == 'disk.rescue'


@pytest.mark.parametrize('flavor_swap, bdi, expected', [
    (0, None, 0),
    (512, None, 512),
    (512, {}, 512),
    (512, {'swap': None}, 512),
    (512, {'swap': {'swap_size': 0}}, 512),
    (512, {'swap': {'swap_size': 128}}, 128),
    (0, {'swap': {'swap_size': 64}}, 64),
    (None, None, 0),
])
def test_swap_mb(flavor_swap, bdi, expected):
    inst = make_instance(swap=flavor_swap)
    assert instance_mod.swap_mb(inst, bdi) == expected


@pytest.mark.parametrize('bdi, expected', [
    (None, False),
    ({}, False),
    ({'block_device_mapping': []}, False),
    (BFV, True),
    ({'block_device_mapping': [{'boot_index': 1,
                                'mount_device': '/dev/vdb'}]}, False),
    ({'block_device_mapping': [{'boot_index': -1,
                                'mount_device': '/dev/vdb'}],
      'root_device_name': '/dev/vda'}, False),
    ({'block_device_mapping': [{'mount_device': '/dev/vda'}],
      'root_device_name': '/dev/vda'}, True),
    ({'block_device_mapping': [{'mount_device': '/dev/vda'}]}, False),
])
def test_root_is_volume(bdi, expected):
    assert instance_mod.root_is_volume(bdi) is expected


def test_instance_defaults():
    inst = instance_mod.Instance()
    other = instance_mod.Instance()
    assert inst.uuid != other.uuid
    assert inst.flavor == instance_mod.Flavor(root_gb=1, ephemeral_gb=0,
                                              swap=0)
    assert inst.flavor is not other.flavor
    assert inst.hostname == inst.name
    assert inst.config_drive is False


def test_qcow2_capabilities_seen_on_described_disks(fx, backend):
    root = describe(backend, make_instance())['disk']
    assert root.image.capabilities == qcow2.Qcow2.capabilities
    assert root.image.capabilities.backing_in_cache is True
