"""Rbd without a cluster: names, paths, records, libvirt_info fields.

Constructing an Rbd disk never touches Ceph (Nova's constructor neither),
so most of this needs no cluster at all; where libvirt_info needs the
monitors, :meth:`Rbd.mon_addrs` is replaced by a fixed answer (the real one
is exercised against a real cluster in tests/functional/test_rbd.py).
"""

import xml.etree.ElementTree as ET

import pytest

import imagebackend
from imagebackend import backend as backend_mod
from imagebackend import exception, records, sources
from imagebackend.backends import rbd as rbd_mod
from tests.hosts import GiB

MAPPING = {'bus': 'virtio', 'dev': 'vdb', 'type': 'disk'}


@pytest.fixture
def rbd_host(host, tmp_path):
    # A config file nobody could connect with: nothing here may try.
    host.set_override('images_rbd_ceph_conf', str(tmp_path / 'absent.conf'),
                      group='libvirt')
    host.set_override('images_type', 'rbd', group='libvirt')
    return host


@pytest.fixture
def fake_mons(monkeypatch):
    mons = (['10.0.0.1', '10.0.0.2', 'fd00::3'], ['6789', '6789', '3300'])
    monkeypatch.setattr(rbd_mod.Rbd, 'mon_addrs', lambda self: mons)
    return mons


def test_factory_knows_rbd(rbd_host, instance):
    assert backend_mod.backend_class('rbd') is rbd_mod.Rbd
    disk = imagebackend.Backend(conf=rbd_host).by_name(instance, 'disk')
    assert type(disk) is rbd_mod.Rbd and disk.image_type == 'rbd'


def test_capabilities():
    caps = rbd_mod.Rbd.capabilities
    assert (caps.shared_storage, caps.file_in_instance_path,
            caps.backing_in_cache, caps.native_create) == (
        True, False, False, True)
    assert rbd_mod.Rbd.SUPPORTS_CLONE is True
    assert rbd_mod.Rbd.is_shared_block_storage() is True
    assert rbd_mod.Rbd.is_file_in_instance_path() is False


def test_names_and_paths_default(host, instance):
    disk = imagebackend.Backend(conf=host).by_name(instance, 'disk.local',
                                                   'rbd')
    assert disk.pool == 'rbd'   # Nova's default pool
    assert disk.rbd_name == f'{instance.uuid}_disk.local'
    assert disk.location == f'rbd/{instance.uuid}_disk.local'
    assert disk.path == f'rbd:rbd/{instance.uuid}_disk.local'
    assert disk._cli_args() == []
    assert (disk.driver_format, disk.source_type) == ('raw', 'network')


def test_names_and_paths_with_user_and_conf(host, instance):
    host.set_override('images_rbd_pool', 'vms', group='libvirt')
    host.set_override('images_rbd_ceph_conf', '/etc/ceph/c.conf',
                      group='libvirt')
    host.set_override('rbd_user', 'nova', group='libvirt')
    disk = imagebackend.Backend(conf=host).by_name(instance, 'disk', 'rbd')
    assert disk.path == (f'rbd:vms/{instance.uuid}_disk:id=nova'
                         ':conf=/etc/ceph/c.conf')
    assert disk.location == f'vms/{instance.uuid}_disk'
    assert disk._cli_args() == ['--id', 'nova', '--conf', '/etc/ceph/c.conf']


def test_empty_pool_is_refused(host, instance):
    host.set_override('images_rbd_pool', '', group='libvirt')
    with pytest.raises(exception.InvalidInput):
        imagebackend.Backend(conf=host).by_name(instance, 'disk', 'rbd')


@pytest.mark.parametrize('path, pool, name, disk_name', [
    ('rbd:vms/{u}_disk.local:id=nova:conf=/c', 'vms', '{u}_disk.local',
     'disk.local'),
    ('vms/{u}_disk', 'vms', '{u}_disk', 'disk'),
    ('rbd:p/something-else', 'p', 'something-else', None),
])
def test_by_libvirt_path(rbd_host, instance, path, pool, name, disk_name):
    u = instance.uuid
    disk = imagebackend.Backend(conf=rbd_host).by_libvirt_path(
        instance, path.format(u=u))
    assert (disk.pool, disk.rbd_name, disk.disk_name) == (
        pool, name.format(u=u), disk_name)


@pytest.mark.parametrize('path', ['no-slash', 'rbd:/name', 'rbd:pool/',
                                  'pool/a/b', 'pool/img@snap'])
def test_bad_libvirt_path(rbd_host, instance, path):
    with pytest.raises(exception.InvalidInput):
        imagebackend.Backend(conf=rbd_host).by_libvirt_path(instance, path)


def test_the_record_says_where_the_disk_is(rbd_host, instance):
    """A disk made when this host's pool option was another (or by a host
    configured differently) is opened where its record says."""
    backend = imagebackend.Backend(conf=rbd_host)
    backend.records.put(records.DiskRecord(
        instance=instance.uuid, name='disk', backend='rbd', format='raw',
        location=f'oldpool/{instance.uuid}_disk', source_type='image',
        source_id='img', virtual_size=GiB, state=records.CREATED))
    disk = backend.from_metadata(instance, 'disk')
    assert disk.location == f'oldpool/{instance.uuid}_disk'
    assert disk.moved_from is None
    assert backend.by_name(instance, 'disk').pool == 'oldpool'
    assert disk.virtual_size() == GiB   # from the record, no Ceph call


@pytest.mark.parametrize('url', [
    'rbd://fsid/pool/image/snap',
    # Glance quotes each piece; Nova's parse_url unquotes them.
    'rbd://fs%69d/pool/im%61ge/snap',
])
def test_parse_location(url):
    assert rbd_mod.parse_location(url) == ('fsid', 'pool', 'image', 'snap')


@pytest.mark.parametrize('url', [
    'rbd://fsid/pool/image', 'rbd://fsid/pool/image/snap/x',
    'rbd://fsid//image/snap', 'http://fsid/pool/image/snap', None])
def test_parse_bad_location(url):
    with pytest.raises(exception.InvalidInput):
        rbd_mod.parse_location(url)


def test_monitors_from_a_monmap():
    monmap = {'mons': [
        {'name': 'a', 'addr': '127.0.0.1:6789/0', 'public_addrs': {
            'addrvec': [{'type': 'v2', 'addr': '127.0.0.1:3300'},
                        {'type': 'v1', 'addr': '127.0.0.1:6789'}]}},
        {'name': 'b', 'addr': '[fd00::2]:6790/0'},
        {'name': 'c', 'public_addrs': {
            'addrvec': [{'type': 'v2', 'addr': '10.1.1.1:3300'},
                        {'type': 'v1', 'addr': '10.1.1.1:6789'}]}},
        {'name': 'd', 'public_addrs': {
            'addrvec': [{'type': 'v2', 'addr': '10.1.1.2:3300'}]}},
    ]}
    assert rbd_mod.monitors(monmap) == (
        ['127.0.0.1', 'fd00::2', '10.1.1.1', '10.1.1.2'],
        ['6789', '6790', '6789', '3300'])
    assert rbd_mod.monitors({}) == ([], [])


@pytest.mark.parametrize('user, secret, auth', [
    (None, None, None),
    ('nova', None, None),   # libvirt needs a secret to authenticate
    (None, 'a-uuid', (None, 'ceph', 'a-uuid')),
    ('nova', 'a-uuid', ('nova', 'ceph', 'a-uuid')),
])
def test_libvirt_info(rbd_host, instance, fake_mons, user, secret, auth):
    rbd_host.set_override('images_rbd_pool', 'vms', group='libvirt')
    rbd_host.set_override('hw_disk_discard', 'unmap', group='libvirt')
    if user:
        rbd_host.set_override('rbd_user', user, group='libvirt')
    if secret:
        rbd_host.set_override('rbd_secret_uuid', secret, group='libvirt')
    disk = imagebackend.Backend(conf=rbd_host).by_name(
        instance, 'disk', disk_info_mapping=MAPPING)
    info = disk.libvirt_info('writeback', {'quota:disk_write_bytes_sec': '7',
                                           'quota:bogus': '1'}, boot_order=2)
    assert (info.source_type, info.source_protocol, info.source_name) == (
        'network', 'rbd', f'vms/{instance.uuid}_disk')
    assert (info.source_hosts, info.source_ports) == fake_mons
    assert (info.driver_format, info.driver_cache, info.driver_discard,
            info.driver_name, info.driver_io) == ('raw', 'writeback',
                                                  'unmap', None, None)
    assert (info.target_bus, info.target_dev, info.source_device) == (
        'virtio', 'vdb', 'disk')
    assert info.boot_order == 2 and info.disk_write_bytes_sec == 7
    assert (info.auth_username, info.auth_secret_type,
            info.auth_secret_uuid) == (auth or (None, None, None))
    xml = ET.fromstring(info.to_xml())
    assert xml.get('type') == 'network'
    assert [h.get('name') for h in xml.findall('source/host')] == \
        fake_mons[0]
    assert (xml.find('auth') is None) == (auth is None)


def test_libvirt_info_scsi_unit_and_needs_mapping(rbd_host, instance,
                                                  fake_mons):
    backend = imagebackend.Backend(conf=rbd_host)
    disk = backend.by_name(instance, 'disk', disk_info_mapping={
        'bus': 'scsi', 'dev': 'sda', 'type': 'disk'})
    info = disk.libvirt_info('none', {}, disk_unit=3)
    assert (info.device_addr.controller, info.device_addr.unit) == (0, 3)
    with pytest.raises(exception.InvalidInput):
        backend.by_name(instance, 'disk').libvirt_info('none', {})


def test_send_to_sends_nothing(rbd_host, instance):
    class NoTransport:
        def __getattr__(self, name):
            raise AssertionError(f'transport.{name} used')

    disk = imagebackend.Backend(conf=rbd_host).by_name(instance, 'disk')
    disk.send_to(NoTransport(), 'b')


def test_missing_bindings_are_typed(rbd_host, instance, monkeypatch):
    monkeypatch.setattr(rbd_mod, 'librbd', None)
    disk = imagebackend.Backend(conf=rbd_host).by_name(instance, 'disk')
    with pytest.raises(exception.BackendUnavailable):
        disk.exists()


def test_unreadable_config_is_typed(rbd_host, instance):
    disk = imagebackend.Backend(conf=rbd_host).by_name(instance, 'disk')
    with pytest.raises(exception.BackendUnavailable) as e:
        disk.exists()
    assert 'absent.conf' in str(e.value)


def test_rbd_error_is_an_imagebackend_error():
    err = rbd_mod.RbdError(operation='clone', target='p/i@s', reason='x')
    assert isinstance(err, exception.ImageBackendError)
    assert 'clone of p/i@s failed: x' in str(err)


def _recorded(host, instance, location):
    backend = imagebackend.Backend(conf=host)
    backend.records.put(records.DiskRecord(
        instance=instance.uuid, name='disk', backend='rbd', format='raw',
        location=location, source_type='image', source_id='img',
        virtual_size=GiB, state='created'))
    return backend


def test_existing_disk_is_in_the_pool_its_record_names(rbd_host, instance):
    rbd_host.set_override('images_rbd_pool', 'today', group='libvirt')
    backend = _recorded(rbd_host, instance, f'then/{instance.uuid}_disk')
    disk = backend.by_name(instance, 'disk')
    assert disk.location == f'then/{instance.uuid}_disk'


def test_record_naming_another_image_is_refused(rbd_host, instance):
    # disks.json travels with an instance: it must not point this disk's
    # resize or delete at another instance's image.
    other = '0' * 8 + '-0000-4000-8000-' + '0' * 12
    backend = _recorded(rbd_host, instance, f'rbd/{other}_disk')
    with pytest.raises(exception.CorruptRecord):
        backend.by_name(instance, 'disk')


# -- Rbd.driver: Nova's RBDDriver names ---------------------------------------

def test_driver_names_without_a_cluster(host, instance, fake_mons,
                                        monkeypatch):
    host.set_override('rbd_user', 'nova', group='libvirt')
    host.set_override('images_rbd_ceph_conf', '/etc/ceph/x.conf',
                      group='libvirt')
    disk = imagebackend.Backend(conf=host).by_name(instance, 'disk', 'rbd')
    d = disk.driver
    assert (d.pool, d.rbd_user, d.ceph_conf, d.rbd_connect_timeout) == (
        'rbd', 'nova', '/etc/ceph/x.conf', 5)
    assert d.ceph_args() == ['--id', 'nova', '--conf', '/etc/ceph/x.conf']
    assert d.get_mon_addrs() == fake_mons
    # libguestfs wants IPv6 hosts in brackets (Nova's get_model).
    assert d.get_mon_addrs(strip_brackets=False) == (
        ['10.0.0.1', '10.0.0.2', '[fd00::3]'], fake_mons[1])
    assert d.parse_url('rbd://f/p/i%2Fx/s') == ['f', 'p', 'i/x', 's']
    for bad in ('http://x', 'rbd://f/p/i', 'rbd://f//i/s'):
        with pytest.raises(exception.ImageUnacceptable):
            d.parse_url(bad)
    assert d.is_cloneable({'url': 'http://x'}, {'disk_format': 'raw'}) \
        is False
    # Nova's tests patch image.driver.size: the disk's size goes through it.
    calls = []
    monkeypatch.setattr(d, 'size', lambda name: calls.append(name) or 42)
    monkeypatch.setattr(d, 'exists', lambda name: calls.append(name) or 1)
    assert disk.get_disk_size('/any/path') == 42 and disk.exists() == 1
    assert calls == [disk.rbd_name, disk.rbd_name]


class NovaLikeDriver:
    """A stand-in for Nova's RBDDriver (what Nova's tests mock): clone
    asks it, in Nova's call shapes, whether and how to clone."""

    def __init__(self, answers):
        self.answers = list(answers)
        self.calls = []

    def exists(self, name):
        # Nova's clone does not look first (its driver's clone fails on a
        # taken name); Nova's tests' mocked driver answers a truthy mock.
        raise AssertionError('clone() must not ask exists()')

    def get_mon_addrs(self, strip_brackets=True):
        return ['192.0.2.9'], ['6789']

    def is_cloneable(self, location, image_meta):
        self.calls.append(('is_cloneable', location, image_meta))
        return self.answers.pop(0)

    def clone(self, location, dest_name):
        self.calls.append(('clone', location, dest_name))


class OneImageSource:
    def __init__(self, meta):
        self.meta = meta

    def get_meta(self, context, image_id):
        return self.meta

    def open(self, context, image_id):
        raise AssertionError('nothing is downloaded here')


@pytest.mark.parametrize('store', ['store', ''])
def test_clone_asks_the_driver_in_novas_shapes(rbd_host, instance,
                                               monkeypatch, store):
    rbd_host.set_override('images_rbd_glance_store_name', store,
                          group='libvirt')
    again = sources.ImageMeta(id='foo', disk_format='raw',
                              locations=('fake',))
    backend = imagebackend.Backend(conf=rbd_host,
                                   source=OneImageSource(again))
    disk = backend.by_name(instance, 'disk')
    disk.driver = driver = NovaLikeDriver([False, True])
    copies = []
    monkeypatch.setattr(disk, 'copy_to_store',
                        lambda context, meta: copies.append(meta))
    meta = {'id': 'foo', 'disk_format': 'raw', 'locations': ['fake']}
    if not store:
        # Not configured: no copy, no second look; Nova's fallback signal.
        with pytest.raises(rbd_mod.CloneNotPossible):
            disk.clone('ctx', 'foo', image_meta=meta)
        assert copies == []
        assert driver.calls == [('is_cloneable', 'fake', meta)]
        return
    disk.clone('ctx', 'foo', image_meta=meta)
    # Not cloneable: copied to the store, looked at once more (metadata
    # read again), then cloned.
    assert copies == [meta]
    assert driver.calls == [('is_cloneable', 'fake', meta),
                            ('is_cloneable', 'fake', again),
                            ('clone', 'fake', disk.rbd_name)]
    # A non-raw image is refused before the driver is asked.
    driver.calls.clear()
    with pytest.raises(rbd_mod.CloneNotPossible):
        disk.clone('ctx', 'foo', image_meta=dict(meta, disk_format='qcow2'))
    assert driver.calls == []


class CopyingSource(OneImageSource):
    def __init__(self, meta, refuse=False):
        super().__init__(meta)
        self.copies = []
        self.refuse = refuse

    def copy_to_store(self, context, image_id, store):
        self.copies.append((context, image_id, store))
        if self.refuse:
            raise exception.ImageUnacceptable(image_id=image_id,
                                              reason='not active')


def test_copy_to_store_asks_the_source_and_waits_its_way(rbd_host,
                                                         instance):
    """Nova's copy_to_store(context, image_meta): the source copies, the
    wait (replaceable) reads its metadata; no Ceph until a location."""
    rbd_host.set_override('images_rbd_glance_store_name', 'store',
                          group='libvirt')
    rbd_host.set_override('images_rbd_glance_copy_poll_interval', 7,
                          group='libvirt')
    glance = sources.ImageMeta(id='foo', disk_format='raw',
                               properties={'stores': 'other,store'})
    source = CopyingSource(glance)
    disk = imagebackend.Backend(conf=rbd_host, source=source).by_name(
        instance, 'disk')
    waits = []

    def wait(read, store, cloneable, interval, timeout):
        view = read()
        waits.append((view.stores, store, cloneable(view), interval,
                      timeout))
        return view

    disk.wait_for_store_copy = wait
    assert disk.copy_to_store('ctx', {'id': 'foo'}) is None
    assert source.copies == [('ctx', 'foo', 'store')]
    assert waits == [(('other', 'store'), 'store', False, 7, 600)]
    # With the library's own wait: done at once (Glance lists the store).
    del disk.wait_for_store_copy
    disk.copy_to_store('ctx', {'id': 'foo'})
    # Refused by the source: Nova's fallback signal, typed.
    source.refuse = True
    with pytest.raises(rbd_mod.StoreCopyFailed) as e:
        disk.copy_to_store('ctx', {'id': 'foo'})
    assert isinstance(e.value, exception.ImageUnacceptable)
    assert 'unsuccessful because' in str(e.value)


def test_libvirt_info_asks_the_driver_for_monitors(rbd_host, instance):
    disk = imagebackend.Backend(conf=rbd_host).by_name(
        instance, 'disk', disk_info_mapping=MAPPING)
    disk.driver = NovaLikeDriver([])
    info = disk.libvirt_info('none', {})
    assert (info.source_hosts, info.source_ports) == (['192.0.2.9'],
                                                      ['6789'])
