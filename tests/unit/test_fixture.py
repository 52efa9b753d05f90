"""ImageBackendFixture: a real Backend hands out recorded fakes."""

import os
import unittest
from unittest import mock

import fixtures
import pytest

import imagebackend
from imagebackend import disks as disks_mod
from imagebackend import exception
from imagebackend import libvirt_config
from imagebackend import records as records_mod
from imagebackend.backend import backend_class
from imagebackend.backends import flat, qcow2
from imagebackend.fixture import ImageBackendFixture, ImageCall, TemplateCall

try:
    from .. import hosts
except ImportError:
    import hosts

GiB = 1024 ** 3
MAPPING = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}


@pytest.fixture
def fx(request):
    fixture = ImageBackendFixture()
    fixture.setUp()
    request.addfinalizer(fixture.cleanUp)
    return fixture


@pytest.fixture
def backend(fx, host):
    return imagebackend.Backend(conf=host)


def test_by_name_returns_the_recorded_fake(fx, backend, host, instance):
    disk = backend.by_name(instance, 'disk', disk_info_mapping=MAPPING)
    assert disk is fx.disks['disk']
    assert isinstance(disk, imagebackend.Image)
    assert disk.disk_name == 'disk'
    assert disk.path == os.path.join(host.instances_path, instance.uuid,
                                     'disk')
    assert disk.location == disk.path
    assert disk.instance is instance
    assert disk.disk_info_mapping == MAPPING
    # The host's default config: images_type=default, use_cow_images=True.
    assert disk.image_type == 'qcow2'
    assert disk.capabilities == qcow2.Qcow2.capabilities
    assert disk.driver_format == 'qcow2'
    assert disk.is_file_in_instance_path() is True
    assert disk.is_shared_block_storage() is False
    assert disk.exists() is False
    assert disk.record is None
    assert fx.created_disks == []


def test_same_object_for_every_construction(fx, backend, instance):
    first = backend.by_name(instance, 'disk')
    assert backend.by_name(instance, 'disk') is first
    assert backend.by_libvirt_path(instance, first.path) is first
    assert backend.backend()(instance=instance, disk_name='disk') is first
    assert backend.by_name(instance, 'disk.local') is not first
    assert set(fx.disks) == {'disk', 'disk.local'}
    # A later construction without a mapping keeps the earlier one.
    backend.by_name(instance, 'disk', disk_info_mapping=MAPPING)
    backend.by_name(instance, 'disk')
    assert first.disk_info_mapping == MAPPING
    first.create_from_image(None, 'img')
    assert backend.from_metadata(instance, 'disk') is first


def test_from_metadata_before_creation_is_record_not_found(fx, backend,
                                                          instance):
    with pytest.raises(exception.RecordNotFound):
        backend.from_metadata(instance, 'disk')
    with pytest.raises(exception.InvalidDiskName):
        backend.from_metadata(instance, '../disk')


def test_disk_from_image_is_recorded(fx, backend, instance):
    image = backend.by_name(instance, 'disk')
    disks_mod.DiskFromImage(image=image, size=10 * GiB,
                            image_id='img').create('ctx')
    assert fx.image_calls == [('disk', 'img', 10 * GiB, None)]
    assert fx.image_calls == [ImageCall('disk', 'img', 10 * GiB, None)]
    assert fx.created_disks == ['disk']
    assert fx.template_calls == []
    assert image.exists() is True
    assert image.virtual_size() == 10 * GiB
    image.create_from_image.assert_called_once_with('ctx', 'img',
                                                    10 * GiB, None)
    assert fx.calls('disk') == [
        mock.call.create_from_image('ctx', 'img', 10 * GiB, None),
        mock.call.exists(), mock.call.virtual_size()]
    record = image.record
    assert isinstance(record, records_mod.DiskRecord)
    assert (record.backend, record.format, record.source_type,
            record.source_id, record.virtual_size, record.created) == (
        'qcow2', 'qcow2', 'image', 'img', 10 * GiB, True)


def test_disk_from_func_is_recorded_and_func_not_run(fx, backend, instance):
    func = mock.Mock(name='mkfs')
    image = backend.by_name(instance, 'disk.local')
    disks_mod.DiskFromFunc(image=image, size=GiB, func=func,
                           cache_name='ephemeral_1G_fs-ext4').create(
        'ctx', fallback='src-host')
    assert fx.template_calls == [
        TemplateCall('disk.local', 'ephemeral_1G_fs-ext4', GiB, func)]
    assert fx.template_calls[0].func is func
    func.assert_not_called()
    assert fx.created_disks == ['disk.local']
    assert fx.image_calls == []
    assert image.virtual_size() == GiB
    assert image.record.source_type == 'func'


def test_created_disks_in_order_and_calls(fx, backend, instance):
    for name in ('disk', 'disk.local', 'disk.swap'):
        backend.by_name(instance, name).create_from_func(
            None, mock.Mock(), 'swap_1G', GiB)
    backend.by_name(instance, 'disk.config').cache(mock.Mock(), 'cfg')
    assert fx.created_disks == ['disk', 'disk.local', 'disk.swap',
                                'disk.config']
    assert fx.calls('disk.config') == [mock.call.cache(mock.ANY, 'cfg')]
    assert fx.calls('never-opened') == []
    assert 'never-opened' not in fx.disks


def test_create_on_existing_disk_raises_and_delete_forgets(fx, backend,
                                                           instance):
    image = backend.by_name(instance, 'disk')
    image.create_from_image(None, 'img', GiB)
    with pytest.raises(exception.DiskExists):
        image.create_from_image(None, 'img', GiB)
    assert fx.image_calls == [('disk', 'img', GiB, None)]
    image.delete()
    assert image.exists() is False
    with pytest.raises(exception.RecordNotFound):
        backend.from_metadata(instance, 'disk')
    image.create_from_image(None, 'img2', 2 * GiB)
    image.remove_disk()
    assert image.exists() is False
    assert image.virtual_size() == 0
    assert fx.created_disks == ['disk']


def test_cache_keeps_nova_contract_on_existing_disk(fx, backend, instance):
    fetch = mock.Mock()
    image = backend.by_name(instance, 'disk')
    image.cache(fetch, 'base', GiB, image_id='img')
    image.cache(fetch, 'base', 2 * GiB, image_id='img')  # no DiskExists
    fetch.assert_not_called()
    assert image.virtual_size() == 2 * GiB
    assert image.record.source_type == 'image'


def test_existing_disks(host, instance):
    with ImageBackendFixture(existing=['disk']) as fx:
        backend = imagebackend.Backend(conf=host)
        image = backend.by_name(instance, 'disk')
        assert image.exists() is True
        assert image.virtual_size() == 0
        assert backend.from_metadata(instance, 'disk') is image
        assert backend.by_name(instance, 'disk.local').exists() is False
        fx.set_size('disk', 5 * GiB)
        assert image.virtual_size() == 5 * GiB
        assert image.record.source_type == 'none'
        assert fx.created_disks == []
        image.delete()
        assert image.exists() is False


def test_exists_callback(host, instance):
    asked = []

    def exists(name):
        asked.append(name)
        return name.startswith('disk.')

    with ImageBackendFixture(exists=exists):
        backend = imagebackend.Backend(conf=host)
        assert backend.by_name(instance, 'disk').exists() is False
        assert backend.by_name(instance, 'disk.local').exists() is True
        assert backend.from_metadata(instance, 'disk.local') is not None
        image = backend.by_name(instance, 'disk')
        image.create_from_image(None, 'img')
        assert image.exists() is True
    assert 'disk' in asked and 'disk.local' in asked


def test_set_backend_overrides_host_config(fx, backend, instance):
    # This host would make qcow2 disks; the record says flat.
    fx.set_backend('disk', 'flat')
    image = backend.by_name(instance, 'disk')
    assert image.image_type == 'qcow2'
    image.create_from_image(None, 'img', GiB)
    opened = backend.from_metadata(instance, 'disk', MAPPING)
    assert opened.image_type == 'flat'
    assert opened.capabilities == flat.Flat.capabilities
    assert opened.capabilities == backend_class('flat').capabilities
    assert opened.driver_format == 'raw'
    assert opened.record.backend == 'flat'
    with pytest.raises(exception.UnknownBackend):
        fx.set_backend('disk', 'floppy')


def test_record_backend_is_the_type_created_as(fx, host, instance):
    host.set_override('images_type', 'flat', group='libvirt')
    backend = imagebackend.Backend(conf=host)
    backend.by_name(instance, 'disk').create_from_image(None, 'img')
    host.set_override('images_type', 'qcow2', group='libvirt')
    opened = backend.from_metadata(instance, 'disk')
    assert opened.image_type == 'flat'
    assert backend.by_name(instance, 'disk').image_type == 'qcow2'


def test_existing_disk_without_record_backend_is_host_type(host, instance):
    with ImageBackendFixture(existing=['disk']):
        backend = imagebackend.Backend(use_cow=False, conf=host)
        assert backend.from_metadata(instance, 'disk').image_type == 'flat'


def test_record_backend_gives_its_capabilities(fx, backend, instance):
    # A record naming lvm on a qcow2 host: the fake is an Lvm disk, with the
    # real class's capabilities (block device, no cache dependency).
    fx.set_backend('disk', 'lvm')
    backend.by_name(instance, 'disk').create_from_image(None, 'img')
    disk = backend.from_metadata(instance, 'disk')
    assert disk.image_type == 'lvm'
    assert disk.capabilities.block_device
    assert not disk.capabilities.backing_in_cache


@pytest.mark.parametrize('use_cow, image_type, expected', [
    (True, 'default', 'qcow2'),
    (False, 'default', 'flat'),
    (True, None, 'qcow2'),
    (False, None, 'flat'),
    (True, 'raw', 'flat'),
    (False, 'qcow2', 'qcow2'),
])
def test_default_follows_use_cow(fx, host, instance, use_cow, image_type,
                                 expected):
    backend = imagebackend.Backend(use_cow=use_cow, conf=host)
    image = backend.by_name(instance, 'disk', image_type=image_type)
    assert image.image_type == expected
    assert image.capabilities == backend_class(expected).capabilities
    assert image.driver_format == ('qcow2' if expected == 'qcow2' else 'raw')


def test_virtual_size_and_resize(fx, backend, instance):
    image = backend.by_name(instance, 'disk')
    with pytest.raises(exception.DiskNotFound):
        image.resize_image(GiB)
    image.create_from_image(None, 'img')
    assert image.virtual_size() == 0
    fx.set_size('disk', GiB)
    assert image.virtual_size() == GiB
    image.resize_image(3 * GiB)
    assert image.virtual_size() == 3 * GiB
    with pytest.raises(exception.CannotShrink):
        image.resize_image(GiB)
    assert image.virtual_size() == 3 * GiB


def test_check_backing_needs_the_disk(fx, backend, instance):
    image = backend.by_name(instance, 'disk')
    with pytest.raises(exception.DiskNotFound):
        disks_mod.DiskFromImage(image=image, size=None,
                                image_id='img').check_backing(None)
    image.create_from_image(None, 'img')
    disks_mod.DiskFromImage(image=image, size=None,
                            image_id='img').check_backing(None, 'src')
    # Both calls are recorded, the refused one too.
    assert image.check_backing_from_image.call_count == 2
    image.check_backing_from_image.assert_called_with(None, 'img', 'src')


def test_create_empty(fx, host, instance):
    like = records_mod.DiskRecord(
        instance=instance.uuid, name='disk', backend='flat', format='qcow2',
        location='/elsewhere/disk', source_type='image', source_id='img',
        virtual_size=4 * GiB, state=records_mod.CREATED)
    backend = imagebackend.Backend(conf=host)
    with pytest.raises(exception.NotSupported):
        backend.by_name(instance, 'disk', 'qcow2').create_empty(like)
    image = backend.by_name(instance, 'disk', 'flat')
    image.create_empty(like)
    assert image.virtual_size() == 4 * GiB
    assert image.driver_format == 'qcow2'
    assert fx.created_disks == ['disk']
    assert backend.from_metadata(instance, 'disk').driver_format == 'qcow2'


def test_libvirt_info_is_a_real_guest_disk(fx, backend, instance):
    image = backend.by_name(instance, 'disk', disk_info_mapping=MAPPING)
    info = image.libvirt_info('none', {'quota:disk_read_iops_sec': '5'},
                              boot_order=1)
    assert isinstance(info, libvirt_config.GuestDisk)
    assert (info.source_type, info.source_path, info.driver_format,
            info.target_dev, info.target_bus, info.driver_cache,
            info.boot_order, info.disk_read_iops_sec) == (
        'file', image.path, 'qcow2', 'vda', 'virtio', 'none', 1, 5)
    assert 'vda' in info.to_xml()
    fs = image.libvirt_fs_info('/mnt')
    assert isinstance(fs, libvirt_config.GuestFilesys)
    assert fs.source_file == image.path
    bare = backend.by_name(instance, 'disk.local')
    with pytest.raises(exception.InvalidInput):
        bare.libvirt_info('none', {})


def test_snapshot_hooks(fx, backend, instance):
    image = backend.by_name(instance, 'disk')
    with pytest.raises(NotImplementedError):
        image.direct_snapshot(None, 'snap', 'raw', 'id', 'base')
    assert image.create_snap('nova-resize') is None
    image.rollback_to_snap('nova-resize')
    image.remove_snap('nova-resize', ignore_errors=True)
    image.create_snap.assert_called_once_with('nova-resize')
    image.rollback_to_snap.assert_called_once_with('nova-resize')
    image.remove_snap.assert_called_once_with('nova-resize',
                                              ignore_errors=True)


def test_autospec_rejects_bad_calls(fx, backend, instance):
    image = backend.by_name(instance, 'disk')
    with pytest.raises(TypeError):
        image.create_from_image()
    with pytest.raises(AttributeError):
        image.no_such_method()


def test_instances_path_fallback(fx, instance):
    class ConflessBackend(imagebackend.Backend):
        def __init__(self, use_cow=True):
            self.use_cow = use_cow

        def _type(self, image_type):
            return 'qcow2' if image_type in (None, 'default') else image_type

    image = ConflessBackend().by_name(instance, 'disk')
    assert image.path == f'/fake/{instance.uuid}/disk'


def test_cleanup_restores_the_real_backend(host, instance):
    backend = imagebackend.Backend(conf=host)
    with ImageBackendFixture() as fx:
        fake = backend.by_name(instance, 'disk')
        assert fake is fx.disks['disk']
    real = backend.by_name(instance, 'disk')
    assert type(real) is qcow2.Qcow2
    with pytest.raises(exception.RecordNotFound):
        backend.from_metadata(instance, 'disk')
    # State survives cleanUp for inspection; a new setUp starts afresh.
    fake.create_from_image(None, 'img')
    assert fx.created_disks == ['disk']
    with fx:
        assert fx.created_disks == []
        assert backend.by_name(instance, 'disk') is not fake


def test_setup_cleanup_by_hand(host, instance):
    fx = ImageBackendFixture()
    fx.setUp()
    try:
        assert isinstance(imagebackend.Backend(conf=host).by_name(
            instance, 'disk'), mock.NonCallableMock)
    finally:
        fx.cleanUp()
    assert type(imagebackend.Backend(conf=host).by_name(
        instance, 'disk')) is qcow2.Qcow2


class NovaStyleTest(fixtures.TestWithFixtures, unittest.TestCase):
    """The fixture through useFixture, as Nova's tests use it."""

    def setUp(self):
        super().setUp()
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.conf = hosts.make_conf(os.path.join(self.tmp, 'instances'),
                                    os.path.join(self.tmp, 'images'))
        self.fx = self.useFixture(ImageBackendFixture(existing=['disk']))
        self.instance = hosts.Instance()

    def test_flow_sees_fakes(self):
        backend = imagebackend.Backend(conf=self.conf)
        root = backend.from_metadata(self.instance, 'disk')
        root.resize_image(20 * GiB)
        swap = backend.by_name(self.instance, 'disk.swap')
        if not swap.exists():
            swap.create_from_func(None, mock.sentinel.mkswap, 'swap_1G', GiB)
        self.assertEqual(['disk.swap'], self.fx.created_disks)
        self.assertEqual(20 * GiB, self.fx.disks['disk'].virtual_size())
        self.assertEqual([('disk.swap', 'swap_1G', GiB,
                           mock.sentinel.mkswap)], self.fx.template_calls)
        self.fx.disks['disk'].resize_image.assert_called_once_with(20 * GiB)
