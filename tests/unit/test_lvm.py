"""The Lvm backend at the process boundary (processes.execute faked).

What runs for real on lvm2 is in tests/functional/test_lvm.py. Here: names,
config, the commands of the thin-pool path -- which cannot run on a kernel
without device-mapper (``lvcreate --type thin-pool`` and thin snapshots need
it; real-backends.md section 2), so its commands are checked here, against a
fake that keeps LVM's state the way lvm2 reports it -- the volume_clear
commands, and refusals that must happen before anything is created.
"""

from __future__ import annotations

import hashlib
import os
from unittest import mock

import pytest

import imagebackend
from imagebackend import cache as cache_mod
from imagebackend import exception
from imagebackend import processes
from imagebackend.backends import lvm

try:
    from .. import hosts
except ImportError:
    import hosts

MiB = hosts.MiB
GiB = hosts.GiB
VG = 'vg0'
SHA1_IMG = hashlib.sha1(b'img').hexdigest()
REPORT = ('--noheadings', '--nosuffix', '--units', 'b', '--separator', '|')
VGS = ('vgs',) + REPORT + ('-o', 'vg_name,vg_size,vg_free,vg_extent_size',
                           VG)
LVS = ('lvs',) + REPORT + ('-o', 'lv_name,lv_size,segtype', VG)


class FakeLvm:
    """processes.execute for lvm2 commands, keeping LVs as lvs reports
    them; every other command succeeds (or raises ``fail[cmd[0]]``)."""

    def __init__(self, free=16 * GiB, extent=4 * MiB):
        self.size = 32 * GiB
        self.free = free
        self.extent = extent
        self.volumes: dict[str, tuple[int, str]] = {}
        self.calls: list[tuple[str, ...]] = []
        self.fail: dict[str, Exception] = {}
        self.not_root: list[tuple[str, ...]] = []

    @staticmethod
    def _bytes(arg: str) -> int:
        assert arg.endswith('b'), arg
        return int(arg[:-1])

    def _refuse(self, cmd, name, args) -> None:
        """lvcreate's refusals, in lvm2's words."""
        if name in self.volumes:
            raise exception.ProcessError(
                cmd=' '.join(cmd), exit_code=5, stderr=f'  Logical Volume '
                f'"{name}" already exists in volume group "{VG}"\n')
        if '-T' in args or '-s' in args:   # thin: overcommitted
            return
        needed = -(-self._bytes(args[args.index('-L') + 1]) // self.extent)
        if needed * self.extent > self.free:
            raise exception.ProcessError(
                cmd=' '.join(cmd), exit_code=5, stderr=f'  Volume group '
                f'"{VG}" has insufficient free space ({self.free // self.extent}'
                f' extents): {needed} required.\n')

    def __call__(self, *cmd, **kwargs):
        cmd = tuple(str(c) for c in cmd)
        self.calls.append(cmd)
        if not kwargs.get('root'):
            self.not_root.append(cmd)
        if cmd[0] in self.fail:
            raise self.fail[cmd[0]]
        args = list(cmd[1:])
        if cmd[0] == 'vgs':
            return (f'  {VG}|{self.size}|{self.free}|{self.extent}\n', '')
        if cmd[0] == 'lvs':
            return (''.join(f'  {n}|{s}|{t}\n'
                            for n, (s, t) in self.volumes.items()), '')
        if cmd[0] == 'lvcreate':
            name = args[args.index('-n') + 1]
            self._refuse(cmd, name, args)
            if '-s' in args:  # thin snapshot: origin's size, thin
                origin = args[-1].split('/')[1]
                self.volumes[name] = (self.volumes[origin][0], 'thin')
            elif '-T' in args:
                self.volumes[name] = (self._bytes(args[args.index('-V') + 1]),
                                      'thin')
            elif '--virtualsize' in args:
                self.volumes[name] = (
                    self._bytes(args[args.index('--virtualsize') + 1]),
                    'snapshot')
            else:
                asked = self._bytes(args[args.index('-L') + 1])
                size = -(-asked // self.extent) * self.extent
                self.volumes[name] = (size, 'linear')
                self.free -= size
                if size != asked:
                    return ('', '  Rounding up size to full physical extent '
                            f'{size / MiB:.2f} MiB\n')
        elif cmd[0] == 'lvextend':
            name = args[-1].split('/')[1]
            size, kind = self.volumes[name]
            new = self._bytes(args[args.index('-L') + 1])
            self.volumes[name] = (new, kind)
            if kind == 'linear':
                self.free -= new - size
        elif cmd[0] == 'lvremove':
            size, kind = self.volumes.pop(args[-1].split('/')[1])
            if kind == 'linear':
                self.free += size
        return ('', '')


@pytest.fixture
def fake():
    fake = FakeLvm()
    with mock.patch.object(processes, 'execute', side_effect=fake):
        yield fake


@pytest.fixture
def conf(host):
    host.set_override('images_type', 'lvm', group='libvirt')
    host.set_override('images_volume_group', VG, group='libvirt')
    host.set_override('volume_clear', 'none', group='libvirt')
    return host


@pytest.fixture
def backend(conf):
    backend = imagebackend.Backend(conf=conf)
    backend.image_cache.ensure_dirs()
    return backend


def entry(backend, fmt='qcow2', size=64 * MiB):
    return cache_mod.CacheEntry(
        name=SHA1_IMG, path=backend.image_cache.path(SHA1_IMG), format=fmt,
        virtual_size=size, sha256='0' * 64, kind='image', source='img')


@pytest.fixture
def cached(backend):
    """fetch_image answers from a cache entry (64 MiB, qcow2)."""
    e = entry(backend)
    with mock.patch.object(backend.image_cache, 'fetch_image',
                           return_value=e):
        yield e


def names_of(calls):
    return [c[0] for c in calls]


# -- names --------------------------------------------------------------------

def test_lv_name_is_novas():
    assert lvm.lv_name('u-1', 'disk.local') == 'u-1_disk.local'
    assert lvm.escape('disk_x') == 'disk__x'
    assert lvm.lv_name('u-1', 'a_b') == 'u-1_a__b'
    assert lvm.unescape(lvm.escape('a__b_c')) == 'a__b_c'


@pytest.mark.parametrize('name', ['', '-x', '.', '..', 'a/b', 'a b',
                                  'snapshot1', 'pvmove0', 'x_tmeta',
                                  'u_rimage_0', 'x' * 128])
def test_names_lvm_refuses_are_refused(name):
    with pytest.raises(exception.InvalidDiskName):
        lvm.check_lvm_name(name)


def test_base_lv_names():
    assert lvm.base_lv_name(SHA1_IMG) == '_base_' + SHA1_IMG
    long = lvm.base_lv_name('ephemeral_1G_' + 'x' * 150)
    assert long.startswith('_base_h') and len(long) <= 127
    assert lvm.base_lv_name('swap_tmeta') != '_base_swap_tmeta'


def test_disk_identity(backend, instance):
    disk = backend.by_name(instance, 'disk.local')
    assert isinstance(disk, lvm.Lvm)
    assert disk.lv == f'{instance.uuid}_disk.local'
    assert disk.path == f'/dev/{VG}/{instance.uuid}_disk.local'
    assert disk.location == f'{VG}/{instance.uuid}_disk.local'
    assert (disk.source_type, disk.driver_format, disk.is_block_dev,
            disk.driver_io) == ('block', 'raw', True, 'native')
    caps = disk.capabilities
    assert (caps.block_device, caps.native_create, caps.shared_storage,
            caps.file_in_instance_path, caps.backing_in_cache) == (
                True, True, False, False, False)
    assert disk.is_shared_block_storage() is False
    assert disk.is_file_in_instance_path() is False
    assert disk.thin_snapshots is False and lvm.Lvm.SUPPORTS_THIN_SNAPSHOTS


def test_thin_snapshots_follow_config(conf, instance):
    conf.set_override('thin_pool', 'pool0', group='imagebackend')
    disk = imagebackend.Backend(conf=conf).by_name(instance, 'disk')
    assert disk.thin_snapshots is True
    assert disk.capabilities == lvm.Lvm.capabilities  # data, per host


def test_sparse_volumes_are_not_native_io(conf, instance):
    conf.set_override('sparse_logical_volumes', True, group='libvirt')
    disk = imagebackend.Backend(conf=conf).by_name(instance, 'disk')
    assert disk.driver_io is None and disk.preallocate is False


def test_volume_group_must_be_configured(host, instance):
    host.set_override('images_type', 'lvm', group='libvirt')
    backend = imagebackend.Backend(conf=host)
    with pytest.raises(exception.BackendUnavailable) as e:
        backend.by_name(instance, 'disk')
    assert 'images_volume_group' in str(e.value)
    host.set_override('images_volume_group', 'bad/vg', group='libvirt')
    with pytest.raises(exception.InvalidDiskName):
        backend.by_name(instance, 'disk')


def test_by_libvirt_path(backend, instance):
    disk = backend.by_libvirt_path(instance,
                                   f'/dev/other/{instance.uuid}_disk.eph0')
    assert (disk.vg, disk.lv, disk.disk_name) == (
        'other', f'{instance.uuid}_disk.eph0', 'disk.eph0')
    for bad in ('/dev/vg0', '/var/lib/x/y', '/dev/vg0/a/b'):
        with pytest.raises(exception.InvalidInput):
            backend.by_libvirt_path(instance, bad)


def test_missing_volume_group_on_the_host_is_typed(backend, instance):
    error = exception.ProcessError(
        cmd='lvs', exit_code=5, stderr='Volume group "vg0" not found')
    with mock.patch.object(processes, 'execute', side_effect=error):
        with pytest.raises(exception.BackendUnavailable):
            backend.by_name(instance, 'disk').exists()


# -- linear commands ----------------------------------------------------------

def test_native_image_commands(fake, backend, cached, instance):
    disk = backend.by_name(instance, 'disk')
    disk.create_from_image(None, 'img', GiB)
    assert fake.calls == [
        VGS,  # the extent size, once per Backend
        ('lvcreate', '-y', '-L', f'{GiB}b', '-n', disk.lv, VG),
        ('qemu-img', 'convert', '-q', '-f', 'qcow2', '-O', 'raw', '-t',
         'none', '-n', cached.path, disk.path)]
    record = backend.records.get(instance.uuid, 'disk')
    assert (record.format, record.virtual_size, record.location) == (
        'raw', GiB, disk.location)
    assert record.provenance['copy'] == 'qemu-img convert'
    # The next disk: no vgs, no lvs (lvcreate refuses what it must).
    fake.calls.clear()
    other = backend.by_name(hosts.Instance(), 'disk')
    other.create_from_image(None, 'img', GiB)
    assert names_of(fake.calls) == ['lvcreate', 'qemu-img']


def test_existing_lv_is_refused_by_lvcreate_and_left_alone(fake, backend,
                                                           cached, instance):
    """An LV of the disk's name made without a record (Nova's, another
    process's): lvcreate refuses it, typed; nothing removes it."""
    disk = backend.by_name(instance, 'disk')
    fake.volumes[disk.lv] = (GiB, 'linear')
    with pytest.raises(exception.DiskExists):
        disk.create_from_image(None, 'img', GiB)
    assert names_of(fake.calls) == ['vgs', 'lvcreate']
    assert fake.volumes == {disk.lv: (GiB, 'linear')}
    assert backend.records.list(instance.uuid) == []


def test_recorded_disk_is_asked_for_before_creating(fake, backend, cached,
                                                    instance):
    """A disk with a record (a creation that died, say) is looked for
    first: what the record names is not lvcreate's to judge."""
    disk = backend.by_name(instance, 'disk')
    fake.volumes[disk.lv] = (GiB, 'linear')
    backend.records.put(imagebackend.DiskRecord(
        instance=instance.uuid, name='disk', backend='lvm', format='raw',
        location=disk.location, source_type='image', source_id='img',
        state='creating'))
    disk = backend.by_name(instance, 'disk')
    with pytest.raises(exception.DiskExists):
        disk.create_from_image(None, 'img', GiB)
    assert names_of(fake.calls) == ['vgs', 'lvs']
    assert fake.volumes == {disk.lv: (GiB, 'linear')}
    assert backend.records.get(instance.uuid, 'disk').state == 'creating'


def test_every_command_is_asked_as_root(fake, conf, backend, cached,
                                        instance):
    """LVM commands, writing, growing and wiping the LV need root: each
    goes through the runner's root path (imagebackend.privileged)."""
    conf.set_override('volume_clear', 'zero', group='libvirt')
    disk = backend.by_name(instance, 'disk')
    disk.create_from_image(None, 'img', GiB)
    disk.resize_image(2 * GiB)
    disk.remove_disk()
    assert {c[0] for c in fake.calls} == {
        'vgs', 'lvs', 'lvcreate', 'qemu-img', 'lvextend', 'shred',
        'lvremove'}
    assert fake.not_root == []


def test_sizes_round_up_to_whole_extents(fake, backend, cached, instance):
    disk = backend.by_name(instance, 'disk')
    disk.create_from_image(None, 'img', 100 * MiB + 1)
    assert ('lvcreate', '-y', '-L', f'{104 * MiB}b', '-n', disk.lv,
            VG) in fake.calls
    assert disk.virtual_size() == 104 * MiB
    fake.calls.clear()
    disk.resize_image(200 * MiB + 512)
    assert fake.calls == [VGS, ('lvextend', '-L', f'{204 * MiB}b',
                                f'{VG}/{disk.lv}')]
    assert backend.records.get(instance.uuid, 'disk').virtual_size == \
        204 * MiB
    with pytest.raises(exception.CannotShrink):
        disk.resize_image(100 * MiB)


def test_a_changed_extent_size_is_noticed(fake, backend, cached, instance):
    """The extent size is read once per Backend; lvcreate rounding up a
    size of whole extents says it changed (vgchange -s): read again."""
    backend.by_name(instance, 'disk').create_from_image(None, 'img', GiB)
    fake.extent = 32 * MiB
    fake.calls.clear()
    disk = backend.by_name(hosts.Instance(), 'disk')
    disk.create_from_image(None, 'img', 100 * MiB)
    assert names_of(fake.calls) == ['lvcreate', 'vgs', 'qemu-img']
    assert backend.records.get(disk.instance.uuid, 'disk').virtual_size == \
        128 * MiB
    assert fake.volumes[disk.lv] == (128 * MiB, 'linear')


def test_func_commands(fake, backend, instance):
    func = mock.Mock()
    disk = backend.by_name(instance, 'disk.swap')
    disk.create_from_func(None, func, 'swap_64M', 64 * MiB)
    func.assert_called_once_with(disk.path)
    assert fake.calls == [VGS, ('lvcreate', '-y', '-L', f'{64 * MiB}b',
                                '-n', disk.lv, VG)]
    record = backend.records.get(instance.uuid, 'disk.swap')
    assert (record.source_type, record.source_id) == ('func', 'swap_64M')


def test_func_needs_a_size(fake, backend, instance):
    with pytest.raises(exception.InvalidInput):
        backend.by_name(instance, 'disk.local').create_from_func(
            None, mock.Mock(), 'ephemeral_x', None)
    assert fake.calls == []


def test_sparse_volume_command(fake, conf, instance):
    conf.set_override('sparse_logical_volumes', True, group='libvirt')
    disk = imagebackend.Backend(conf=conf).by_name(instance, 'disk.local')
    disk.create_from_func(None, mock.Mock(), 'ephemeral_x', 20 * GiB)
    assert fake.calls[-1] == ('lvcreate', '-y', '-L', f'{64 * MiB}b',
                              '--virtualsize', f'{20 * GiB}b', '-n',
                              disk.lv, VG)


def test_create_empty_is_an_lv_of_the_recorded_size(fake, backend, instance):
    like = imagebackend.DiskRecord(
        instance=instance.uuid, name='disk', backend='lvm', format='raw',
        location='vgA/x', source_type='image', source_id='img',
        virtual_size=3 * GiB, state='created')
    disk = backend.by_name(instance, 'disk')
    disk.create_empty(like)
    assert fake.calls[-1] == ('lvcreate', '-y', '-L', f'{3 * GiB}b', '-n',
                              disk.lv, VG)
    mine = backend.records.get(instance.uuid, 'disk')
    assert (mine.virtual_size, mine.location, mine.source_id,
            mine.provenance['path']) == (3 * GiB, disk.location, 'img',
                                         'empty')


# -- refusing before anything is made -----------------------------------------

def test_free_space_refusal(fake, backend, cached, instance):
    fake.free = 512 * MiB
    disk = backend.by_name(instance, 'disk')
    with pytest.raises(lvm.InsufficientSpace) as e:
        disk.create_from_image(None, 'img', GiB)
    assert 'insufficient free space' in str(e.value).lower()
    # lvcreate's own figures, in bytes.
    assert (e.value.kwargs['needed'], e.value.kwargs['free']) == (
        GiB, 512 * MiB)
    with pytest.raises(lvm.InsufficientSpace):
        disk.create_from_func(None, mock.Mock(), 'swap_1G', GiB)
    # lvcreate refuses (no vgs per disk); the undo's look finds nothing.
    assert names_of(fake.calls) == ['vgs', 'lvcreate', 'lvs', 'lvcreate',
                                    'lvs']
    assert fake.volumes == {}
    assert backend.records.list(instance.uuid) == []
    assert isinstance(e.value, exception.ImageBackendError)


def test_grow_refused_without_space(fake, backend, instance):
    disk = backend.by_name(instance, 'disk.local')
    disk.create_from_func(None, mock.Mock(), 'ephemeral_x', GiB)
    fake.free = 100 * MiB
    fake.calls.clear()
    with pytest.raises(lvm.InsufficientSpace):
        disk.resize_image(2 * GiB)
    assert names_of(fake.calls) == ['vgs']
    assert disk.virtual_size() == GiB


def test_image_smaller_than_requested_size_is_refused(fake, backend, cached,
                                                      instance):
    with pytest.raises(exception.DiskTooSmall):
        backend.by_name(instance, 'disk').create_from_image(None, 'img',
                                                            32 * MiB)
    assert fake.calls == []


# -- volume_clear -------------------------------------------------------------

@pytest.mark.parametrize('method, clear_mib, shred', [
    ('none', 0, None),
    ('zero', 0, ('shred', '-n0', '-z', f'-s{GiB}')),
    ('zero', 100, ('shred', '-n0', '-z', f'-s{100 * MiB}')),
    ('zero', 4096, ('shred', '-n0', '-z', f'-s{GiB}')),  # bounded by size
    ('shred', 0, ('shred', '-n3', f'-s{GiB}')),
    ('shred', 10, ('shred', '-n3', f'-s{10 * MiB}')),
])
def test_volume_clear_commands(fake, conf, instance, method, clear_mib,
                               shred):
    conf.set_override('volume_clear', method, group='libvirt')
    conf.set_override('volume_clear_size', clear_mib, group='libvirt')
    backend = imagebackend.Backend(conf=conf)
    disk = backend.by_name(instance, 'disk.local')
    disk.create_from_func(None, mock.Mock(), 'ephemeral_x', GiB)
    fake.calls.clear()
    disk.delete()
    expected = [LVS]
    if shred:
        expected.append(shred + (disk.path,))
    expected.append(('lvremove', '-f', f'{VG}/{disk.lv}'))
    assert fake.calls == expected
    assert backend.records.get(instance.uuid, 'disk.local') is None
    # Gone already: nothing but the question.
    fake.calls.clear()
    disk.delete()
    assert fake.calls == [LVS]


def test_failed_creation_removes_the_volume(fake, backend, cached, instance):
    fake.fail['qemu-img'] = exception.ProcessError(cmd='qemu-img',
                                                   exit_code=1)
    disk = backend.by_name(instance, 'disk')
    with pytest.raises(exception.ProcessError):
        disk.create_from_image(None, 'img')
    assert names_of(fake.calls) == ['vgs', 'lvcreate', 'qemu-img', 'lvs',
                                    'lvremove']
    assert fake.volumes == {}
    assert backend.records.list(instance.uuid) == []


# -- thin pools: commands only (no device-mapper here) ------------------------

@pytest.fixture
def thin(conf, backend):
    conf.set_override('thin_pool', 'pool0', group='imagebackend')
    return backend


def test_thin_image_disks_are_snapshots_of_one_base(fake, thin, cached):
    base = '_base_' + SHA1_IMG
    first = thin.by_name(hosts.Instance(), 'disk')
    first.create_from_image(None, 'img', GiB)
    assert fake.calls == [
        VGS,
        LVS,  # is the base there?
        ('lvcreate', '-y', '-T', f'{VG}/pool0', '-V', f'{64 * MiB}b', '-n',
         base),
        ('qemu-img', 'convert', '-q', '-f', 'qcow2', '-O', 'raw', '-t',
         'none', '-n', cached.path, f'/dev/{VG}/{base}'),
        ('lvcreate', '-y', '-s', '-kn', '-n', first.lv, f'{VG}/{base}'),
        ('lvextend', '-L', f'{GiB}b', f'{VG}/{first.lv}')]
    record = thin.records.get(first.instance.uuid, 'disk')
    assert (record.virtual_size, record.format, record.backing) == (
        GiB, 'raw', None)
    assert record.provenance['copy'] == 'thin-snapshot'
    assert record.provenance['base_lv'] == base

    # The next disk of the same image copies nothing.
    fake.calls.clear()
    second = thin.by_name(hosts.Instance(), 'disk')
    second.create_from_image(None, 'img')
    assert fake.calls == [LVS,  # is the base there?
                          ('lvcreate', '-y', '-s', '-kn', '-n', second.lv,
                           f'{VG}/{base}')]
    assert second.virtual_size() == 64 * MiB


def test_thin_base_that_fails_is_removed(fake, thin, cached):
    fake.fail['qemu-img'] = exception.ProcessError(cmd='qemu-img',
                                                   exit_code=1)
    disk = thin.by_name(hosts.Instance(), 'disk')
    with pytest.raises(exception.ProcessError):
        disk.create_from_image(None, 'img')
    assert fake.calls[-1] == ('lvremove', '-f', f'{VG}/_base_{SHA1_IMG}')
    assert fake.volumes == {}
    assert thin.records.list(disk.instance.uuid) == []


def test_thin_generated_disks_and_overcommit(fake, thin):
    fake.free = 0  # a thin pool is overcommitted on purpose
    func = mock.Mock()
    disk = thin.by_name(hosts.Instance(), 'disk.local')
    disk.create_from_func(None, func, 'ephemeral_x', 20 * GiB)
    assert fake.calls == [VGS, ('lvcreate', '-y', '-T', f'{VG}/pool0',
                                '-V', f'{20 * GiB}b', '-n', disk.lv)]
    func.assert_called_once_with(disk.path)
    fake.calls.clear()
    disk.resize_image(30 * GiB)
    assert fake.calls == [VGS, ('lvextend', '-L', f'{30 * GiB}b',
                                f'{VG}/{disk.lv}')]


def test_thin_volumes_are_not_wiped(fake, conf, thin):
    conf.set_override('volume_clear', 'zero', group='libvirt')
    disk = thin.by_name(hosts.Instance(), 'disk.local')
    disk.create_from_func(None, mock.Mock(), 'ephemeral_x', GiB)
    fake.calls.clear()
    disk.delete()
    assert fake.calls == [LVS, ('lvremove', '-f', f'{VG}/{disk.lv}')]


# -- migration at the process boundary ----------------------------------------

def test_send_to_sends_a_sparse_copy(fake, backend, instance, tmp_path):
    disk = backend.by_name(instance, 'disk.local')
    disk.create_from_func(None, mock.Mock(), 'ephemeral_x', GiB)
    transport = mock.Mock()
    progress = mock.Mock()
    fake.calls.clear()
    disk.send_to(transport, 'b', progress)
    tmp = fake.calls[-1][-1]
    assert fake.calls == [LVS, ('qemu-img', 'convert', '-q', '-T', 'none',
                                '-f', 'raw', '-O', 'raw', disk.path, tmp)]
    transport.put.assert_called_once_with(
        'b', tmp, f'{instance.uuid}/disk.local.lv-transfer',
        progress=progress)


def test_settle_without_transfer_does_nothing(fake, backend, instance):
    disk = backend.by_name(instance, 'disk')
    disk.settle()
    assert fake.calls == []


def test_missing_volume_group_for_vgs_is_typed(backend, instance):
    error = exception.ProcessError(
        cmd='vgs', exit_code=5, stderr='Volume group "vg0" not found')
    disk = backend.by_name(instance, 'disk.local')
    with mock.patch.object(processes, 'execute', side_effect=error):
        with pytest.raises(exception.BackendUnavailable):
            disk.create_from_func(None, mock.Mock(), 'ephemeral_x', GiB)


def test_space_taken_between_vgs_and_lvcreate(fake, backend, instance):
    fake.fail['lvcreate'] = exception.ProcessError(
        cmd='lvcreate', exit_code=5,
        stderr='Volume group "vg0" has insufficient free space (10 extents)'
               ': 256 required.')
    disk = backend.by_name(instance, 'disk.local')
    with pytest.raises(lvm.InsufficientSpace):
        disk.create_from_func(None, mock.Mock(), 'ephemeral_x', GiB)
    assert backend.records.list(instance.uuid) == []


@pytest.mark.parametrize('vg', ['snapshots', 'nova_tmeta', 'vg.1+x'])
def test_volume_group_names_are_not_lv_names(conf, instance, vg):
    conf.set_override('images_volume_group', vg, group='libvirt')
    disk = imagebackend.Backend(conf=conf).by_name(instance, 'disk')
    assert disk.vg == vg


def test_allocated_bytes(backend, instance):
    disk = backend.by_name(instance, 'disk')
    answers = {'linear': ('  1073741824|linear|\n', ''),
               'thin': ('  1073741824|thin|25.00\n', '')}
    for kind, expected in (('linear', GiB), ('thin', GiB // 4)):
        with mock.patch.object(processes, 'execute',
                               return_value=answers[kind]) as execute:
            assert disk.allocated_bytes() == expected
        execute.assert_called_once_with(
            'lvs', *REPORT, '-o', 'lv_size,segtype,data_percent',
            f'{VG}/{disk.lv}', root=True)
    gone = exception.ProcessError(cmd='lvs', exit_code=5,
                                  stderr='Failed to find logical volume')
    with mock.patch.object(processes, 'execute', side_effect=gone):
        assert disk.allocated_bytes() is None


def test_settle_makes_the_lv_from_the_transfer_file(fake, backend, instance):
    fake.extent = 32 * MiB  # this VG's extents are larger than the source's
    record = imagebackend.DiskRecord(
        instance=instance.uuid, name='disk', backend='lvm', format='raw',
        location='vgA/x', source_type='image', source_id='img',
        virtual_size=100 * MiB, state='created')
    backend.records.put(record)
    # The data arrives before the record (migrate_disks sends it first),
    # so the record's VG (the source's) is not where the disk is made.
    transfer = os.path.join(backend.conf.instances_path, instance.uuid,
                            'disk.lv-transfer')
    with open(transfer, 'wb') as f:
        f.truncate(100 * MiB)
    disk = backend.from_metadata(instance, 'disk')
    assert disk.moved_from == 'vgA/x'
    disk.settle()
    assert fake.calls == [
        LVS, VGS, ('lvcreate', '-y', '-L', f'{128 * MiB}b', '-n', disk.lv,
                   VG),
        ('qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'raw', '-t', 'none',
         '-n', transfer, disk.path)]
    mine = backend.records.get(instance.uuid, 'disk')
    assert (mine.location, mine.virtual_size) == (disk.location, 128 * MiB)
    assert not os.path.exists(transfer)


# -- durability ---------------------------------------------------------------

@pytest.fixture(autouse=True)
def flushed():
    """Block devices are flushed in-process (fsync); none exists here, so
    the paths flushed are recorded instead."""
    paths: list[str] = []
    with mock.patch.object(lvm, 'flush_device',
                           side_effect=lambda path, location=None:
                           paths.append(path)):
        yield paths


def _puts(backend, flushed):
    """(record state, devices flushed so far) at each record write."""
    seen = []
    real_put = backend.records.put

    def put(record):
        seen.append((record.state, list(flushed)))
        real_put(record)
    return seen, mock.patch.object(backend.records, 'put', side_effect=put)


def test_device_flushed_before_the_record_says_created(fake, backend,
                                                       instance, flushed):
    disk = backend.by_name(instance, 'disk.local')
    seen, patch = _puts(backend, flushed)
    with patch:
        disk.create_from_func(None, mock.Mock(), 'ephemeral_x', 64 * MiB)
    assert seen == [('creating', []), ('created', [disk.path])]


def test_thin_base_and_disk_flushed_before_created(fake, thin, cached,
                                                   flushed):
    disk = thin.by_name(hosts.Instance(), 'disk')
    seen, patch = _puts(thin, flushed)
    with patch:
        disk.create_from_image(None, 'img', GiB)
    base = f'/dev/{VG}/_base_{SHA1_IMG}'
    assert seen == [('creating', [base]), ('created', [base, disk.path])]


def test_settled_lv_flushed_before_its_record(fake, backend, instance,
                                              flushed):
    backend.records.put(imagebackend.DiskRecord(
        instance=instance.uuid, name='disk', backend='lvm', format='raw',
        location='vgA/x', source_type='image', source_id='img',
        virtual_size=100 * MiB, state='created'))
    # The data arrives before the disk is opened (as in a migration), so
    # the disk is made here, not in the record's VG.
    transfer = os.path.join(backend.conf.instances_path, instance.uuid,
                            'disk.lv-transfer')
    os.makedirs(os.path.dirname(transfer), exist_ok=True)
    with open(transfer, 'wb') as f:
        f.truncate(100 * MiB)
    disk = backend.from_metadata(instance, 'disk')
    seen, patch = _puts(backend, flushed)
    with patch:
        disk.settle()
    assert seen and all(paths[:1] == [disk.path] for _s, paths in seen)


def test_encrypted_path_without_encryption_info_refused(tmp_path):
    # A /dev/mapper/<lv>-dmcrypt path, but no record and no instance key:
    # how it is encrypted is unknown, so it is not opened as a plain LV.
    conf = hosts.make_conf(str(tmp_path / 'i'), str(tmp_path / 'img'))
    conf.set_override('images_volume_group', VG, group='libvirt')
    backend = imagebackend.Backend(conf=conf)
    with pytest.raises(exception.InvalidInput) as e:
        backend.by_libvirt_path(hosts.Instance(),
                                '/dev/mapper/u_disk-dmcrypt', 'lvm')
    assert 'encrypted' in str(e.value)
