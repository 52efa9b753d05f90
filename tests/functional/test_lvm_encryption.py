"""Encrypted Lvm disks (ephemeral storage encryption, dm-crypt) on real LVM.

This kernel has no device-mapper: LVM runs on loop devices as in
tests/functional/test_lvm.py (tests/functional/lvm_env.py stands in for
device-mapper under each LV), and dm-crypt is tested at the process
boundary. A fake ``cryptsetup`` (tests/fake_cryptsetup.py) is put first on
``PATH`` by the fixture below: the library runs it through its one process
runner as it would run the real tool; the fake records every call's argv
and stdin, and for ``create`` makes ``/dev/mapper/<name>`` a symlink to the
LV's device, so the mapped "device" is usable by everything that follows
(qemu-img, mkfs, blkid, shred). It maps, it does not encrypt: what is
checked is what the library asks of cryptsetup, where the key goes (stdin,
never argv), and that every path creates, undoes, reopens and deletes the
mapping and the LV in the right order. Every LVM, qemu-img and mkfs command
here is real.
"""

from __future__ import annotations

import binascii
import dataclasses
import os
import shutil

import pytest

import imagebackend
from imagebackend import dmcrypt
from imagebackend import exception
from imagebackend import names
from imagebackend import processes
from imagebackend import shim
from imagebackend.backends import lvm as lvm_mod

from driver import templates
from tests import fake_cryptsetup
from tests import hosts
from tests.functional import lvm_env as lvm_env_mod
from tests.functional.conftest import guest_bytes, blkid, MiB, GiB
from tests.functional.test_lvm import device_size, read_device

KEY_UUID = '6b1a7c9e-4f0d-4c55-8a3e-0e2f3b9d7a10'
KEY = bytes(range(64, 96))  # what the key manager's get_encoded() gives
HEX_KEY = binascii.hexlify(KEY).decode()
CONTEXT = object()  # the request context, passed through to the manager
MAPPING = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}


@dataclasses.dataclass
class KeyedInstance(hosts.Instance):
    ephemeral_key_uuid: str | None = KEY_UUID


class KeyManager:
    """castellan's key manager API, as far as the library uses it."""

    def __init__(self, error=None):
        self.error = error
        self.asked = []

    def get(self, context, key_uuid):
        self.asked.append((context, key_uuid))
        if self.error:
            raise self.error
        assert key_uuid == KEY_UUID

        class Key:
            def get_encoded(self):
                return KEY
        return Key()


# -- the environment ----------------------------------------------------------

@pytest.fixture(scope='module')
def env(tmp_path_factory):
    """One volume group, and the fake cryptsetup first on PATH."""
    root = tmp_path_factory.mktemp('lvm-crypt')
    lvm = lvm_env_mod.LvmEnv(str(root)).start()
    fake_bin = str(root / 'fake-bin')
    lvm.crypt_log = fake_cryptsetup.install(fake_bin)
    mapper_existed = os.path.isdir(dmcrypt.MAPPER_ROOT)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in lvm.environ().items():
            mp.setenv(key, value)
        mp.setenv('PATH', fake_bin + os.pathsep + os.environ['PATH'])
        mp.setenv('FAKE_CRYPTSETUP_MAPPER', dmcrypt.MAPPER_ROOT)
        try:
            lvm.vg = lvm.add_vg(1 * GiB, prefix='ibcrypt')
            yield lvm
        finally:
            left = lvm.close()
    assert left == []
    if not mapper_existed:
        shutil.rmtree(dmcrypt.MAPPER_ROOT, ignore_errors=True)


@pytest.fixture
def lvm(env):
    yield env
    # Mappings a failed test left, then the LVs.
    for name in dmcrypt.list_volumes():
        os.unlink(dmcrypt.volume_path(name))
    env.reset(env.vg)
    os.unlink(env.crypt_log) if os.path.exists(env.crypt_log) else None


@pytest.fixture
def lvm_host(host, lvm):
    host.set_override('images_type', 'lvm', group='libvirt')
    host.set_override('images_volume_group', lvm.vg, group='libvirt')
    return host


@pytest.fixture
def key_manager():
    return KeyManager()


@pytest.fixture
def backend(lvm_host, key_manager):
    return imagebackend.Backend(conf=lvm_host, key_manager=key_manager)


def crypt_calls(lvm):
    return fake_cryptsetup.calls(lvm.crypt_log)


def assert_encrypted(lvm, backend, disk, size):
    """The disk is an LV of ``size`` mapped by cryptsetup as Nova maps it,
    and its record says so."""
    assert disk.lv == lvm_mod.lv_name(disk.instance.uuid, disk.disk_name)
    assert disk.lv_path == f'/dev/{lvm.vg}/{disk.lv}'
    assert disk.path == f'/dev/mapper/{disk.lv}-dmcrypt'
    assert os.path.realpath(disk.path) == os.path.realpath(disk.lv_path)
    assert {n: i['size'] for n, i in lvm.lvs(lvm.vg).items()} == \
        {disk.lv: size}
    assert device_size(disk.path) == size
    [create] = [c for c in crypt_calls(lvm) if c['argv'][0] == 'create']
    # Nova's command (nova.privsep.libvirt.dmcrypt_create_volume), the
    # key hex-encoded on stdin.
    assert create == {
        'argv': ['create', f'{disk.lv}-dmcrypt', disk.lv_path,
                 '--cipher=aes-xts-plain64', '--key-size=512',
                 '--key-file=-'],
        'stdin': HEX_KEY}
    record = backend.records.get(disk.instance.uuid, disk.disk_name)
    assert record.created and record.location == f'{lvm.vg}/{disk.lv}'
    assert record.encryption == {'cipher': 'aes-xts-plain64',
                                 'key_size': 512, 'key_uuid': KEY_UUID}
    assert HEX_KEY not in open(
        os.path.join(disk.instance_dir, names.RECORDS_FILE)).read()


def assert_key_never_in_argv(commands):
    assert any(c[0] == 'cryptsetup' for c in commands)
    for cmd in commands:
        for arg in cmd:
            assert HEX_KEY not in arg and KEY.hex() not in arg


def assert_nothing_left(lvm, backend, instance, name='disk'):
    assert lvm.lvs(lvm.vg) == {}
    assert dmcrypt.list_volumes() == []
    assert backend.records.get(instance.uuid, name) is None


# -- creation -----------------------------------------------------------------

@pytest.mark.parametrize('via', ['native', 'shim'])
def test_root_from_image(backend, lvm, make_image, key_manager, tmp_path,
                         via):
    src = make_image('img', 'qcow2', 16 * MiB)
    instance = KeyedInstance()
    disk = backend.by_name(instance, 'disk', disk_info_mapping=MAPPING)
    assert disk.path == f'/dev/mapper/{disk.lv}-dmcrypt'
    with processes.recording() as commands:
        if via == 'native':
            disk.create_from_image(CONTEXT, 'img', 32 * MiB)
        else:
            shim.create_from_image(disk, CONTEXT, 'img', 32 * MiB)
    assert_encrypted(lvm, backend, disk, 32 * MiB)
    assert_key_never_in_argv(commands)
    assert key_manager.asked == [(CONTEXT, KEY_UUID)]
    # The image was written through the mapping.
    data = read_device(disk.path)
    assert data[:16 * MiB] == guest_bytes(src, 'qcow2', tmp_path)
    # lvcreate, then the mapping, then the write into it.
    steps = [c[0] if c[0] != 'qemu-img' or disk.path not in c else 'write'
             for c in commands]
    steps = [c for c in steps if c in ('lvcreate', 'cryptsetup', 'write')]
    assert steps == ['lvcreate', 'cryptsetup', 'write']
    assert disk.libvirt_info('none', {}).source_path == disk.path
    record = backend.records.get(instance.uuid, 'disk')
    assert record.provenance['path'] == via


@pytest.mark.parametrize('via', ['native', 'shim'])
def test_ephemeral_from_func(backend, lvm, lvm_host, via):
    func = templates.ephemeral(lvm_host, 32 * MiB, 'ephemeral0', 'linux')
    instance = KeyedInstance()
    disk = backend.by_name(instance, 'disk.local')
    with processes.recording() as commands:
        if via == 'native':
            disk.create_from_func(CONTEXT, func, func.cache_name, 32 * MiB)
        else:
            shim.create_from_func(disk, CONTEXT, func, func.cache_name,
                                  32 * MiB)
    assert_encrypted(lvm, backend, disk, 32 * MiB)
    assert_key_never_in_argv(commands)
    # mkfs ran on the mapping, not on the LV under it.
    assert blkid(disk.path)['LABEL'] == 'ephemeral0'
    assert any(disk.path in c for c in commands if c[0].startswith('mkfs'))


def test_legacy_cache(backend, lvm, make_image, tmp_path):
    """Nova's own call: cache(fetch_func, filename, size, context=...,
    image_id=...), the fetch function writing the base."""
    src = make_image('legacy', 'raw', 16 * MiB)
    instance = KeyedInstance()
    disk = backend.by_name(instance, 'disk')

    def fetch_func(target, context, image_id, *args, **kwargs):
        assert context is CONTEXT
        shutil.copyfile(src, target)

    with processes.recording() as commands:
        disk.cache(fetch_func, 'legacy-base', 24 * MiB, context=CONTEXT,
                   image_id='legacy')
    assert_encrypted(lvm, backend, disk, 24 * MiB)
    assert_key_never_in_argv(commands)
    assert read_device(disk.path)[:16 * MiB] == open(src, 'rb').read()


def test_legacy_create_image_without_context(backend, lvm, make_image):
    """Nova raises InternalError "Instance disk to be encrypted but no
    context provided": a typed error here, and nothing made."""
    src = make_image('legacy', 'raw', 16 * MiB)
    instance = KeyedInstance()
    disk = backend.by_name(instance, 'disk')

    def fetch_func(target, *args, **kwargs):
        shutil.copyfile(src, target)

    with pytest.raises(exception.EncryptionKeyUnavailable) as e:
        disk.create_image(fetch_func, backend.image_cache.path('legacy'),
                          16 * MiB)
    assert 'no context' in str(e.value)
    with pytest.raises(exception.EncryptionKeyUnavailable):
        disk.cache(fetch_func, 'legacy', 16 * MiB, image_id='legacy')
    assert_nothing_left(lvm, backend, instance)
    assert [c for c in crypt_calls(lvm) if c['argv'][0] != 'remove'] == []


# -- failures leave nothing ---------------------------------------------------

@pytest.mark.parametrize('error', [None, RuntimeError('barbican is down')])
def test_key_unavailable_makes_nothing(lvm_host, lvm, make_image, error):
    make_image('img', 'raw', 16 * MiB)
    km = None if error is None else KeyManager(error)
    backend = imagebackend.Backend(conf=lvm_host, key_manager=km)
    instance = KeyedInstance()
    disk = backend.by_name(instance, 'disk')
    with processes.recording() as commands:
        with pytest.raises(exception.EncryptionKeyUnavailable) as e:
            disk.create_from_image(CONTEXT, 'img')
        with pytest.raises(exception.EncryptionKeyUnavailable):
            disk.create_from_image(None, 'img')  # no context
    assert ('barbican is down' if error else 'no key manager') in \
        str(e.value)
    assert not any(c[0] in ('lvcreate', 'cryptsetup') for c in commands)
    assert_nothing_left(lvm, backend, instance)


def test_required_without_instance_key_makes_nothing(lvm_host, lvm,
                                                     make_image):
    """[ephemeral_storage_encryption] enabled, an instance with no key:
    Nova's Lvm made a plain LV; here nothing is made."""
    make_image('img', 'raw', 16 * MiB)
    lvm_host.set_override('enabled', True,
                          group='ephemeral_storage_encryption')
    backend = imagebackend.Backend(conf=lvm_host, key_manager=KeyManager())
    instance = hosts.Instance()
    disk = backend.by_name(instance, 'disk')
    func = templates.Swap(16 * MiB)
    with pytest.raises(exception.EncryptionKeyUnavailable) as e:
        disk.create_from_image(CONTEXT, 'img')
    assert 'no ephemeral_key_uuid' in str(e.value)
    with pytest.raises(exception.EncryptionKeyUnavailable):
        shim.create_from_func(disk, CONTEXT, func, func.cache_name,
                              16 * MiB)
    assert_nothing_left(lvm, backend, instance)


def test_cryptsetup_failure_removes_the_lv(backend, lvm, make_image,
                                           monkeypatch):
    make_image('img', 'raw', 16 * MiB)
    instance = KeyedInstance()
    monkeypatch.setenv('FAKE_CRYPTSETUP_FAIL', 'create')
    for via in ('native', 'shim'):
        disk = backend.by_name(instance, 'disk')
        with processes.recording() as commands:
            with pytest.raises(exception.ProcessError):
                if via == 'native':
                    disk.create_from_image(CONTEXT, 'img')
                else:
                    shim.create_from_image(disk, CONTEXT, 'img')
        steps = [c[:2] for c in commands if c[0] in (
            'lvcreate', 'cryptsetup', 'lvremove')]
        assert steps[:4] == [
            ('lvcreate', '-y'), ('cryptsetup', 'create'),
            ('cryptsetup', 'remove'), ('lvremove', '-f')]
        # Through cache(), the record keeping's undo asks once more (as
        # Nova, remove is asked even of a mapping that is not there).
        assert set(steps[4:]) <= {('cryptsetup', 'remove')}
        assert_nothing_left(lvm, backend, instance)


@pytest.mark.parametrize('via', ['native', 'shim'])
def test_failure_after_mapping_removes_mapping_then_lv(backend, lvm, via):
    instance = KeyedInstance()
    disk = backend.by_name(instance, 'disk.local')

    def func(target):
        assert os.path.realpath(target) == os.path.realpath(disk.lv_path)
        raise OSError('mkfs died')

    with processes.recording() as commands:
        with pytest.raises(OSError):
            if via == 'native':
                disk.create_from_func(CONTEXT, func, 'ephemeral_x',
                                      16 * MiB)
            else:
                shim.create_from_func(disk, CONTEXT, func, 'ephemeral_x',
                                      16 * MiB)
    steps = [c[:2] for c in commands
             if c[0] in ('lvcreate', 'cryptsetup', 'shred', 'lvremove')]
    assert steps == [('lvcreate', '-y'), ('cryptsetup', 'create'),
                     ('cryptsetup', 'remove'), ('shred', '-n0'),
                     ('lvremove', '-f')]
    # The wipe is of the LV (the mapping is gone by then).
    [shred] = [c for c in commands if c[0] == 'shred']
    assert shred[-1] == disk.lv_path
    assert_nothing_left(lvm, backend, instance, 'disk.local')


# -- existing disks -----------------------------------------------------------

def test_delete_removes_mapping_then_lv(backend, lvm, make_image):
    make_image('img', 'raw', 16 * MiB)
    instance = KeyedInstance()
    backend.by_name(instance, 'disk').create_from_image(CONTEXT, 'img')
    disk = backend.from_metadata(instance, 'disk')
    with processes.recording() as commands:
        disk.delete()
    assert [c[:2] for c in commands if c[0] in (
        'cryptsetup', 'shred', 'lvremove')] == [
        ('cryptsetup', 'remove'), ('shred', '-n0'), ('lvremove', '-f')]
    assert crypt_calls(lvm)[-1] == {
        'argv': ['remove', f'{disk.lv}-dmcrypt'], 'stdin': None}
    assert_nothing_left(lvm, backend, instance)


def test_reopened_from_record(lvm_host, backend, lvm, make_image):
    """The record, not the host's config or the instance, says the disk
    is encrypted: it is reopened encrypted, and its mapping, gone after a
    host reboot, is opened again by check_backing (the key fetched)."""
    make_image('img', 'raw', 16 * MiB)
    instance = KeyedInstance()
    backend.by_name(instance, 'disk').create_from_image(CONTEXT, 'img')
    # Another host process; the instance object without the key field.
    km = KeyManager()
    other = imagebackend.Backend(conf=lvm_host, key_manager=km)
    plain = hosts.Instance(uuid=instance.uuid)
    disk = other.from_metadata(plain, 'disk', MAPPING)
    assert disk.path == f'/dev/mapper/{disk.lv}-dmcrypt'
    assert disk.lv_path == f'/dev/{lvm.vg}/{disk.lv}'
    assert disk.encryption.key_uuid == KEY_UUID
    assert disk.exists() and disk.virtual_size() == 16 * MiB
    assert disk.libvirt_info('none', {}).source_path == disk.path
    assert other.by_libvirt_path(plain, disk.path).lv_path == disk.lv_path
    # A reboot drops every mapping.
    dmcrypt.delete_volume(f'{disk.lv}-dmcrypt')
    disk.check_backing_from_image(CONTEXT, 'img')
    assert os.path.realpath(disk.path) == os.path.realpath(disk.lv_path)
    assert km.asked == [(CONTEXT, KEY_UUID)]
    assert crypt_calls(lvm)[-1]['stdin'] == HEX_KEY
    # Present mapping: nothing to do, no key fetched.
    disk.check_backing_from_image(CONTEXT, 'img')
    assert len(km.asked) == 1


def test_grow_resizes_the_mapping(backend, lvm, make_image):
    make_image('img', 'raw', 16 * MiB)
    instance = KeyedInstance()
    backend.by_name(instance, 'disk').create_from_image(CONTEXT, 'img')
    disk = backend.from_metadata(instance, 'disk')
    with processes.recording() as commands:
        disk.resize_image(32 * MiB)
    assert [c[:2] for c in commands if c[0] in ('lvextend', 'cryptsetup')] \
        == [('lvextend', '-L'), ('cryptsetup', 'resize')]
    assert device_size(disk.path) == 32 * MiB
    assert backend.records.get(instance.uuid, 'disk').virtual_size == \
        32 * MiB


def test_encrypted_disk_is_not_migrated(backend, lvm, make_image):
    make_image('img', 'raw', 16 * MiB)
    instance = KeyedInstance()
    backend.by_name(instance, 'disk').create_from_image(CONTEXT, 'img')
    disk = backend.from_metadata(instance, 'disk')
    with pytest.raises(exception.NotSupported):
        disk.send_to(None, 'elsewhere')
    with pytest.raises(exception.NotSupported):
        backend.by_name(KeyedInstance(), 'disk').create_empty(disk.record)


def test_unencrypted_record_refused_where_required(lvm_host, backend, lvm,
                                                  make_image):
    """A plain LV made before encryption was required is not used as an
    encrypted disk's stand-in."""
    make_image('img', 'raw', 16 * MiB)
    instance = hosts.Instance()
    backend.by_name(instance, 'disk').create_from_image(CONTEXT, 'img')
    assert backend.from_metadata(instance, 'disk').encryption is None
    keyed = KeyedInstance(uuid=instance.uuid)
    with pytest.raises(exception.UnencryptedDisk):
        backend.from_metadata(keyed, 'disk')
    lvm_host.set_override('enabled', True,
                          group='ephemeral_storage_encryption')
    with pytest.raises(exception.UnencryptedDisk):
        backend.from_metadata(instance, 'disk')
    assert crypt_calls(lvm) == []


def test_other_backends_refuse_where_required(lvm_host, lvm, make_image):
    """With encryption enabled every backend but Lvm refuses a disk (Flat's
    kernel, ramdisk and config drive excepted), before anything is made."""
    make_image('img', 'raw', 16 * MiB)
    lvm_host.set_override('enabled', True,
                          group='ephemeral_storage_encryption')
    backend = imagebackend.Backend(conf=lvm_host, key_manager=KeyManager())
    instance = KeyedInstance()
    for image_type in ('flat', 'qcow2', 'ploop', 'rbd'):
        with pytest.raises(exception.EncryptionUnsupported):
            backend.by_name(instance, 'disk', image_type)
    config = backend.by_name(instance, 'disk.config', 'flat')
    config.create_from_image(CONTEXT, 'img')
    assert os.path.getsize(config.path) == 16 * MiB
    assert backend.records.get(instance.uuid, 'disk.config').encryption \
        is None
    assert lvm.lvs(lvm.vg) == {}


@pytest.mark.parametrize('generated', [True, False])
def test_legacy_create_image_failure_removes_mapping_then_lv(
        backend, lvm, make_image, generated):
    """Nova's create_image called directly (as Nova's own tests do):
    remove_volume_on_error's contract, the mapping first."""
    instance = KeyedInstance()
    disk = backend.by_name(instance, 'disk')
    make_image('img', 'raw', 16 * MiB)
    entry = backend.image_cache.fetch_image(None, 'img')
    # The sidecar claims qcow2: qemu-img convert -f qcow2 fails after the
    # LV and its mapping were made.
    sidecar = entry.path + names.META_SUFFIX
    doc = open(sidecar).read().replace('"raw"', '"qcow2"')
    with open(sidecar, 'w') as f:
        f.write(doc)

    def mkfs(target, *args, **kwargs):
        raise OSError('mkfs died')

    extra = {'ephemeral_size': None} if generated else {}
    with processes.recording() as commands:
        with pytest.raises((OSError, exception.ProcessError)):
            disk.create_image(mkfs, entry.path, 16 * MiB, context=CONTEXT,
                              **extra)
    steps = [c[:2] for c in commands
             if c[0] in ('lvcreate', 'cryptsetup', 'qemu-img', 'lvremove')]
    assert steps == [('lvcreate', '-y'), ('cryptsetup', 'create')] + (
        [] if generated else [('qemu-img', 'convert')]) + [
        ('cryptsetup', 'remove'), ('lvremove', '-f')]
    assert_nothing_left(lvm, backend, instance)


def test_nova_era_encrypted_lv_adopted_encrypted(backend, lvm):
    """An LV Nova's own Lvm made for an instance with a key (no record)
    is adopted as encrypted, with the host's cipher and the instance's
    key reference."""
    instance = KeyedInstance()
    lv = lvm_mod.lv_name(instance.uuid, 'disk')
    processes.execute('lvcreate', '-y', '-L', f'{16 * MiB}b', '-n', lv,
                      lvm.vg)
    disk = backend.from_metadata(instance, 'disk')
    assert disk.path == f'/dev/mapper/{lv}-dmcrypt'
    record = backend.records.get(instance.uuid, 'disk')
    assert record.provenance['path'] == 'adopted'
    assert record.encryption == {'cipher': 'aes-xts-plain64',
                                 'key_size': 512, 'key_uuid': KEY_UUID}
    assert record.virtual_size == 16 * MiB
