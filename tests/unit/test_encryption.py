"""Ephemeral storage encryption: when it is required, which backends refuse
it, what records say, and how the key is fetched (pure logic; dm-crypt on
real LVM is in tests/functional/test_lvm_encryption.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import uuid as uuid_mod

import pytest

import imagebackend
from imagebackend import backend as backend_mod
from imagebackend import encryption
from imagebackend import exception
from imagebackend import records

try:
    from .. import hosts
except ImportError:
    import hosts

KEY_UUID = '3c5a0f2e-1d9b-4e0a-9d65-2a9a4e0f6c11'
NOT_LVM = sorted({t for t in backend_mod.BACKENDS
                  if not backend_mod.backend_class(t).capabilities.encryption})


@dataclasses.dataclass
class KeyedInstance(hosts.Instance):
    ephemeral_key_uuid: str | None = None


class KeyManager:
    """castellan's key manager API, as far as the library uses it."""

    def __init__(self, keys=None, error=None):
        self.keys = keys or {}
        self.error = error
        self.asked = []

    def get(self, context, key_uuid):
        self.asked.append((context, key_uuid))
        if self.error:
            raise self.error
        key = self.keys[key_uuid]

        class Key:
            def get_encoded(self):
                return key
        return Key()


@pytest.fixture
def enabled(host):
    host.set_override('enabled', True, group='ephemeral_storage_encryption')
    return host


# -- capabilities ---------------------------------------------------------

def test_only_lvm_declares_encryption():
    assert NOT_LVM == ['flat', 'ploop', 'qcow2', 'raw', 'rbd']
    assert backend_mod.backend_class('lvm').capabilities.encryption
    # The loophole is data on Flat only, exactly Nova's names.
    for image_type in backend_mod.BACKENDS:
        names_ = backend_mod.backend_class(image_type).capabilities \
            .unencrypted_names
        if image_type in ('flat', 'raw'):
            assert names_ == {'kernel', 'ramdisk', 'disk.config'}
        else:
            assert names_ == frozenset()


# -- when encryption is required ------------------------------------------

class NovaLikeInstance:
    """Nova's Instance object: get(key, default) returns the default for an
    unset field instead of lazy-loading it; getattr would lazy-load."""

    def __init__(self, **fields):
        self._fields = fields
        self.uuid = str(uuid_mod.uuid4())

    def get(self, key, value=None):
        return self._fields.get(key, value)

    def __getattr__(self, name):
        if name == 'ephemeral_key_uuid':
            raise AssertionError(f'lazy-load of {name}')
        raise AttributeError(name)


@pytest.mark.parametrize(('instance', 'expected'), [
    (None, None),
    (hosts.Instance(), None),
    (KeyedInstance(), None),
    (KeyedInstance(ephemeral_key_uuid=KEY_UUID), KEY_UUID),
    ({'uuid': 'x', 'ephemeral_key_uuid': KEY_UUID}, KEY_UUID),
    ({'uuid': 'x'}, None),
    (NovaLikeInstance(), None),
    (NovaLikeInstance(ephemeral_key_uuid=KEY_UUID), KEY_UUID),
    (NovaLikeInstance(ephemeral_key_uuid=None), None),
])
def test_instance_key_uuid(instance, expected):
    assert encryption.instance_key_uuid(instance) == expected


def test_required_by(host):
    assert encryption.required_by(host, hosts.Instance()) is None
    assert KEY_UUID in encryption.required_by(
        host, KeyedInstance(ephemeral_key_uuid=KEY_UUID))
    host.set_override('enabled', True, group='ephemeral_storage_encryption')
    assert 'enabled' in encryption.required_by(host, hosts.Instance())


def test_new_disk_takes_host_cipher_and_instance_key(host):
    host.set_override('cipher', 'aes-cbc-essiv:sha256',
                      group='ephemeral_storage_encryption')
    host.set_override('key_size', 256, group='ephemeral_storage_encryption')
    assert encryption.for_new_disk(host, hosts.Instance()) is None
    enc = encryption.for_new_disk(
        host, KeyedInstance(ephemeral_key_uuid=KEY_UUID))
    assert enc.to_record() == {'cipher': 'aes-cbc-essiv:sha256',
                               'key_size': 256, 'key_uuid': KEY_UUID}
    assert encryption.Encryption.from_record(enc.to_record()) == enc


# -- refusal at construction ----------------------------------------------

@pytest.mark.parametrize('image_type', NOT_LVM)
@pytest.mark.parametrize('why', ['enabled', 'instance key'])
def test_backend_that_cannot_encrypt_refuses(host, image_type, why):
    instance = KeyedInstance()
    if why == 'enabled':
        host.set_override('enabled', True,
                          group='ephemeral_storage_encryption')
    else:
        instance.ephemeral_key_uuid = KEY_UUID
    backend = imagebackend.Backend(conf=host)
    with pytest.raises(exception.EncryptionUnsupported) as e:
        backend.by_name(instance, 'disk.local', image_type)
    assert isinstance(e.value, exception.EncryptionError)
    assert isinstance(e.value, exception.ImageBackendError)
    cls = backend_mod.backend_class(image_type)
    assert f'the {cls.image_type} backend' in str(e.value)
    assert 'disk disk.local' in str(e.value)
    # Straight construction too (what a Nova face does).
    with pytest.raises(exception.EncryptionUnsupported):
        cls(instance, 'disk', backend=backend)
    # Nothing was made.
    assert not os.path.exists(os.path.join(host.instances_path,
                                           instance.uuid))


@pytest.mark.parametrize('name', ['kernel', 'ramdisk', 'disk.config'])
def test_flat_loophole_names_allowed(enabled, instance, name):
    backend = imagebackend.Backend(conf=enabled)
    disk = backend.by_name(instance, name, 'flat')
    assert disk.encryption is None
    assert disk.path == os.path.join(enabled.instances_path, instance.uuid,
                                     name)


@pytest.mark.parametrize('image_type', sorted(set(NOT_LVM) - {'flat', 'raw'}))
@pytest.mark.parametrize('name', ['kernel', 'disk.config'])
def test_loophole_is_flat_only(enabled, instance, image_type, name):
    with pytest.raises(exception.EncryptionUnsupported):
        imagebackend.Backend(conf=enabled).by_name(instance, name,
                                                   image_type)


def test_not_required_constructs_as_before(host, instance):
    backend = imagebackend.Backend(conf=host)
    for image_type in NOT_LVM:
        backend.by_name(instance, 'disk', image_type)


def _put_flat_record(host, instance, name):
    path = os.path.join(host.instances_path, instance.uuid, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, 'wb') as f:
        f.truncate(1024)
    backend = imagebackend.Backend(conf=host)
    backend.records.put(records.DiskRecord(
        instance=instance.uuid, name=name, backend='flat', format='raw',
        location=path, source_type='none', source_id=None,
        virtual_size=1024, state=records.CREATED))
    return backend


def test_existing_disk_opened_by_record_refused(host, instance):
    # A disk made before the host required encryption: its record says
    # flat, and opening it now is refused, never used unencrypted.
    backend = _put_flat_record(host, instance, 'disk')
    assert backend.from_metadata(instance, 'disk').image_type == 'flat'
    host.set_override('enabled', True, group='ephemeral_storage_encryption')
    with pytest.raises(exception.EncryptionUnsupported):
        backend.from_metadata(instance, 'disk')
    # The config drive stays usable (the loophole).
    _put_flat_record(host, instance, 'disk.config')
    assert backend.from_metadata(instance, 'disk.config').exists()


def test_adoption_refused_too(enabled, instance):
    # A Nova-era file disk (no record) on a host requiring encryption.
    path = os.path.join(enabled.instances_path, instance.uuid, 'disk')
    os.makedirs(os.path.dirname(path))
    with open(path, 'wb') as f:
        f.truncate(1024)
    with open(os.path.join(os.path.dirname(path), 'disk.info'), 'w') as f:
        json.dump({path: 'raw'}, f)
    backend = imagebackend.Backend(conf=enabled)
    with pytest.raises(exception.EncryptionUnsupported):
        backend.from_metadata(instance, 'disk')
    assert backend.records.get(instance.uuid, 'disk') is None


# -- the key --------------------------------------------------------------

def test_get_key():
    km = KeyManager({KEY_UUID: b'k' * 32})
    assert encryption.get_key(km, 'ctx', KEY_UUID, 'vg/lv') == b'k' * 32
    assert km.asked == [('ctx', KEY_UUID)]


@pytest.mark.parametrize(('km', 'context', 'reason'), [
    (KeyManager({KEY_UUID: b'k'}), None, 'no context'),
    (None, 'ctx', 'no key manager'),
    (KeyManager(error=RuntimeError('barbican is down')), 'ctx',
     'RuntimeError: barbican is down'),
    (KeyManager({KEY_UUID: b''}), 'ctx', 'no key bytes'),
])
def test_get_key_failures_are_typed(km, context, reason):
    with pytest.raises(exception.EncryptionKeyUnavailable) as e:
        encryption.get_key(km, context, KEY_UUID, 'vg/lv')
    assert reason in str(e.value)
    assert KEY_UUID in str(e.value) and 'vg/lv' in str(e.value)


# -- the record -----------------------------------------------------------

def _record(**fields):
    base = dict(instance=str(uuid_mod.uuid4()), name='disk', backend='lvm',
                format='raw', location='vg/lv', source_type='none',
                source_id=None, virtual_size=1, state=records.CREATED)
    base.update(fields)
    return records.DiskRecord(**base)


def test_record_encryption_round_trip():
    enc = {'cipher': 'aes-xts-plain64', 'key_size': 512,
           'key_uuid': KEY_UUID}
    r = _record(encryption=enc)
    assert records.DiskRecord.from_dict(
        json.loads(json.dumps(r.to_dict()))) == r
    # Unencrypted records are stored exactly as before the field existed.
    assert 'encryption' not in _record().to_dict()


@pytest.mark.parametrize('enc', [
    'aes', [], {}, {'cipher': 'aes', 'key_size': 512},
    {'cipher': 'aes', 'key_size': 512, 'key_uuid': KEY_UUID, 'key': 'x'},
    {'cipher': '', 'key_size': 512, 'key_uuid': KEY_UUID},
    {'cipher': 'aes', 'key_size': 0, 'key_uuid': KEY_UUID},
    {'cipher': 'aes', 'key_size': True, 'key_uuid': KEY_UUID},
    {'cipher': 'aes', 'key_size': '512', 'key_uuid': KEY_UUID},
    {'cipher': 'aes', 'key_size': 512, 'key_uuid': None},
])
def test_bad_record_encryption(enc):
    with pytest.raises(exception.CorruptRecord):
        _record(encryption=enc)
