"""``get_model``: what each backend's disk is for a tool outside the guest,
as the library's own value types (imagebackend.models), which mirror
``nova.virt.image.model`` field for field.

Nothing here touches storage: the models are built from what the disk
object knows. Rbd's monitors are a fixed answer here (the real monmap is
read in tests/functional/test_get_model.py) and its libvirt connection is
a stand-in with the one call get_model makes (libvirt's test driver has no
secrets).
"""

import base64

import pytest

import imagebackend
from imagebackend import exception, models
from imagebackend.backends import rbd as rbd_mod

SECRET_UUID = '3306a5c4-8378-4b3c-aa1f-7b48d3a26172'
KEY = b'AQBzZWNyZXQga2V5IGZvciB0ZXN0cw=='


class Secret:
    def value(self):
        return KEY


class Connection:
    """The libvirt connection's one call get_model makes."""

    def __init__(self):
        self.looked_up = []

    def secretLookupByUUIDString(self, uuid):
        self.looked_up.append(uuid)
        return Secret()


def test_models_mirror_novas_fields():
    assert models.ALL_FORMATS == ('raw', 'qcow2', 'ploop')
    f = models.LocalFileImage('/x/disk', models.FORMAT_QCOW2)
    assert f.fields() == {'path': '/x/disk', 'format': 'qcow2'}
    b = models.LocalBlockImage('/dev/vg/lv')
    assert b.fields() == {'path': '/dev/vg/lv', 'format': 'raw'}
    r = models.RBDImage('n', 'p', 'u', b'pw', ['h:1'])
    assert r.fields() == {'name': 'n', 'pool': 'p', 'user': 'u',
                          'password': b'pw', 'servers': ['h:1'],
                          'format': 'raw'}
    assert isinstance(f, models.LocalImage) and isinstance(
        b, models.LocalImage) and not isinstance(r, models.LocalImage)


def test_models_compare_by_class_and_fields():
    a = models.LocalFileImage('/x', 'raw')
    assert a == models.LocalFileImage('/x', 'raw')
    assert hash(a) == hash(models.LocalFileImage('/x', 'raw'))
    assert a != models.LocalFileImage('/x', 'qcow2')
    # Same fields, other kind of disk: not equal.
    assert models.LocalBlockImage('/x') != models.LocalImage('/x', 'raw')


def test_unknown_format_is_refused():
    with pytest.raises(exception.InvalidInput) as e:
        models.LocalFileImage('/x', 'vmdk')
    assert 'vmdk' in str(e.value)


def test_repr_hides_the_ceph_key():
    text = repr(models.RBDImage('n', 'p', 'u', KEY, []))
    assert KEY.decode() not in text and "'password': '***'" in text
    assert 'RBDImage' in text


@pytest.mark.parametrize('image_type,fmt', [
    ('flat', 'raw'), ('qcow2', 'qcow2'), ('ploop', 'ploop')])
def test_file_backends(backend, instance, host, image_type, fmt):
    disk = backend.by_name(instance, 'disk', image_type)
    model = disk.get_model(Connection())
    assert model == models.LocalFileImage(
        f'{host.instances_path}/{instance.uuid}/disk', fmt)
    assert type(model) is models.LocalFileImage


def test_flat_gives_its_real_format(backend, instance):
    """Nova's Flat said raw even for a qcow2 file (force_raw_images off):
    a tool would then write into the container. The recorded format is
    given instead."""
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.driver_format = 'qcow2'   # as its record says, when it is qcow2
    assert disk.get_model(None).format == 'qcow2'


def test_lvm_is_a_block_device(host, instance):
    host.set_override('images_volume_group', 'vg0', group='libvirt')
    disk = imagebackend.Backend(conf=host).by_name(instance, 'disk', 'lvm')
    model = disk.get_model(Connection())
    assert model == models.LocalBlockImage(f'/dev/vg0/{instance.uuid}_disk')
    assert model.format == 'raw'


@pytest.fixture
def rbd_host(host, tmp_path, monkeypatch):
    host.set_override('images_rbd_ceph_conf', str(tmp_path / 'absent.conf'),
                      group='libvirt')
    host.set_override('images_rbd_pool', 'vms', group='libvirt')
    monkeypatch.setattr(rbd_mod.Rbd, 'mon_addrs', lambda self: (
        ['10.0.0.1', 'fd00::3'], ['6789', '3300']))
    return host


def test_rbd_with_secret(rbd_host, instance):
    rbd_host.set_override('rbd_user', 'nova', group='libvirt')
    rbd_host.set_override('rbd_secret_uuid', SECRET_UUID, group='libvirt')
    disk = imagebackend.Backend(conf=rbd_host).by_name(instance, 'disk.local',
                                                       'rbd')
    conn = Connection()
    model = disk.get_model(conn)
    assert conn.looked_up == [SECRET_UUID]
    # IPv6 hosts in brackets: libguestfs parses the joined host:port.
    assert model == models.RBDImage(
        f'{instance.uuid}_disk.local', 'vms', 'nova',
        base64.b64encode(KEY), ['10.0.0.1:6789', '[fd00::3]:3300'])


def test_rbd_without_secret_reads_none(rbd_host, instance):
    disk = imagebackend.Backend(conf=rbd_host).by_name(instance, 'disk',
                                                       'rbd')
    conn = Connection()
    model = disk.get_model(conn)
    assert conn.looked_up == []
    assert (model.user, model.password) == (None, None)
