"""The Lvm backend on real lvm2: volume groups on loop devices.

This kernel has no device-mapper, so LVM runs metadata-only
(``activation = 0``) and tests/functional/lvm_env.py stands in for
device-mapper: each linear LV's block device is a loop device over its
extents at ``/dev/<vg>/<lv>``, where the library looks for it. Every LVM,
qemu-img, mkfs, mkswap and shred command the library runs here is real.

Thin pools and snapshots cannot be created without device-mapper: the thin
path's commands are tested at the process boundary in
tests/unit/test_lvm.py. Everything linear runs here.

One environment per module: three volume groups on sparse files (4 GiB for
single-host tests; 8 GiB each for hosts a and b of the driver flows, whose
flavors grow to 6 GiB of disks), emptied and discarded after every test and
torn down at the end, leaving no loop device attached.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import processes
from imagebackend import qemu
from imagebackend import shim
from imagebackend.backends import lvm as lvm_mod

from driver import flows
from driver import instance as instance_mod
from driver import migration
from driver import templates
from tests.functional import lvm_env as lvm_env_mod
from tests.functional import test_flows
from tests.functional.conftest import (define_and_read, GiB, MiB, Instance, blkid,
                                       guest_bytes, qemu_info, run)

MAPPING = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}


# -- the environment ----------------------------------------------------------

@pytest.fixture(scope='module')
def lvm_env(tmp_path_factory):
    env = lvm_env_mod.LvmEnv(str(tmp_path_factory.mktemp('lvm'))).start()
    made = []
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.environ().items():
            mp.setenv(key, value)
        try:
            env.vg_main = env.add_vg(4 * GiB)
            env.vg_a = env.add_vg(8 * GiB)
            env.vg_b = env.add_vg(8 * GiB)
            made = [v['loop'] for v in env.vgs.values()]
            yield env
        finally:
            pv_files = [v['file'] for v in env.vgs.values()]
            left = env.close()
    # Nothing this module attached is left: no PV file and no PV loop
    # device is the backing of any loop device.
    attached = run('losetup', '-a')
    assert left == []
    for backing in made + pv_files:
        assert f'({backing})' not in attached
    for vg in (env.vg_main, env.vg_a, env.vg_b):
        assert not os.path.exists(os.path.join('/dev', vg))


@pytest.fixture
def lvm(lvm_env):
    """The environment; every volume group is blank again afterwards."""
    yield lvm_env
    for vg in lvm_env.vgs:
        lvm_env.reset(vg)


@pytest.fixture
def lvm_host(host, lvm):
    host.set_override('images_type', 'lvm', group='libvirt')
    host.set_override('images_volume_group', lvm.vg_main, group='libvirt')
    return host


@pytest.fixture
def backend(lvm_host):
    return imagebackend.Backend(conf=lvm_host)


def lv_sizes(env, vg) -> dict[str, int]:
    return {name: info['size'] for name, info in env.lvs(vg).items()}


def read_device(path: str, offset: int = 0, length: int | None = None
                ) -> bytes:
    """A block device's bytes, read with O_DIRECT (the loop devices do
    direct I/O too, so no page cache can hold a stale copy)."""
    cmd = ['dd', f'if={path}', 'bs=4M', 'iflag=direct,skip_bytes,count_bytes',
           f'skip={offset}', 'status=none']
    if length is not None:
        cmd.append(f'count={length}')
    return subprocess.run(cmd, check=True, capture_output=True).stdout


def device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def assert_gone(env, disk):
    assert disk.lv not in env.lvs(disk.vg)
    assert not os.path.lexists(disk.path)
    assert not disk.exists()


def test_legacy_fetch_that_makes_nothing_is_a_typed_error(backend, lvm):
    # Nova's fetch returned without writing the base: the library's error
    # naming it, before any volume is made; no record.
    def makes_nothing(target, *args, **kwargs):
        pass

    instance = Instance()
    disk = backend.by_name(instance, 'disk')
    before = lv_sizes(lvm, lvm.vg_main)
    with pytest.raises(exception.NothingMade) as e:
        disk.cache(makes_nothing, names.image_cache_name('img'), 64 * MiB,
                   context=None, image_id='img')
    assert 'makes_nothing' in str(e.value)
    assert lv_sizes(lvm, lvm.vg_main) == before
    assert_gone(lvm, disk)
    assert backend.records.get(instance.uuid, 'disk') is None


def create(disk, via, kind, **kw):
    """Make ``disk`` through the shim (legacy cache()) or natively."""
    if kind == 'image':
        args = (None, kw.get('image_id', 'img'), kw.get('size'))
        if via == 'shim':
            shim.create_from_image(disk, *args)
        else:
            disk.create_from_image(*args)
    else:
        args = (None, kw['func'], kw['func'].cache_name, kw['size'])
        if via == 'shim':
            shim.create_from_func(disk, *args)
        else:
            disk.create_from_func(*args)


# -- root from an image -------------------------------------------------------

@pytest.mark.parametrize('via', ['native', 'shim'])
@pytest.mark.parametrize('image_format', ['qcow2', 'raw'])
@pytest.mark.parametrize('size', [None, 128 * MiB])
def test_root_from_image(backend, lvm, make_image, tmp_path, via,
                         image_format, size):
    src = make_image('img', image_format, 64 * MiB)
    instance = Instance()
    disk = backend.by_name(instance, 'disk')
    create(disk, via, 'image', size=size)

    final = size or 64 * MiB
    lv = f'{instance.uuid}_disk'
    assert (disk.vg, disk.lv) == (lvm.vg_main, lv)
    assert disk.path == f'/dev/{lvm.vg_main}/{lv}'
    assert lv_sizes(lvm, lvm.vg_main) == {lv: final}
    assert device_size(disk.path) == final
    data = read_device(disk.path)
    assert data[:64 * MiB] == guest_bytes(src, image_format, tmp_path)
    assert data[64 * MiB:] == bytes(final - 64 * MiB)

    record = backend.records.get(instance.uuid, 'disk')
    assert (record.state, record.backend, record.format, record.virtual_size,
            record.location) == ('created', 'lvm', 'raw', final,
                                 f'{lvm.vg_main}/{lv}')
    assert (record.source_type, record.source_id) == ('image', 'img')
    assert (record.backing, record.backing_format) == (None, None)
    assert record.provenance['path'] == via
    # The disk does not depend on the cache: only a file in _base, no
    # instance file (the instance directory holds only the records).
    assert os.listdir(disk.instance_dir) == ['disks.json']
    again = backend.from_metadata(instance, 'disk')
    assert again.exists() and again.virtual_size() == final
    assert again.allocated_bytes() == final  # a thick LV takes all of it
    again.check_backing_from_image(None, 'img')


def test_root_too_small_is_refused(backend, lvm, make_image):
    make_image('img', 'raw', 64 * MiB)
    disk = backend.by_name(Instance(), 'disk')
    with pytest.raises(exception.DiskTooSmall):
        disk.create_from_image(None, 'img', 32 * MiB)
    assert lvm.lvs(lvm.vg_main) == {}
    assert backend.records.get(disk.instance.uuid, 'disk') is None


# -- generated disks ----------------------------------------------------------

@pytest.mark.parametrize('via', ['native', 'shim'])
def test_ephemeral(backend, lvm, lvm_host, via):
    func = templates.ephemeral(lvm_host, 64 * MiB, 'ephemeral0', 'linux')
    disk = backend.by_name(Instance(), 'disk.local')
    create(disk, via, 'func', func=func, size=64 * MiB)
    info = blkid(disk.path)
    assert (info['TYPE'], info['LABEL']) == ('ext4', 'ephemeral0')
    record = backend.records.get(disk.instance.uuid, 'disk.local')
    assert (record.source_type, record.source_id, record.virtual_size,
            record.format) == ('func', func.cache_name, 64 * MiB, 'raw')
    # Made right on the LV: no template in the cache.
    assert not os.path.exists(backend.image_cache.path(func.cache_name))


@pytest.mark.parametrize('via', ['native', 'shim'])
def test_swap(backend, lvm, via):
    func = templates.Swap(32 * MiB)
    disk = backend.by_name(Instance(), 'disk.swap')
    create(disk, via, 'func', func=func, size=32 * MiB)
    assert blkid(disk.path)['TYPE'] == 'swap'
    assert lv_sizes(lvm, lvm.vg_main) == {disk.lv: 32 * MiB}
    # Nova's legacy path (the shim) goes through a swap template in the
    # cache; the native path runs mkswap on the LV.
    cached = os.path.exists(backend.image_cache.path(func.cache_name))
    assert cached == (via == 'shim')


# -- shim and native make the same disks --------------------------------------

SAME = ('backend', 'format', 'virtual_size', 'source_type', 'source_id',
        'backing', 'backing_format', 'state')


def _pair(backend, disk_name, make):
    via_shim = backend.by_name(Instance(), disk_name)
    native = backend.by_name(Instance(), disk_name)
    make(via_shim, 'shim')
    make(native, 'native')
    ra = backend.records.get(via_shim.instance.uuid, disk_name)
    rb = backend.records.get(native.instance.uuid, disk_name)
    assert {f: getattr(ra, f) for f in SAME} == \
        {f: getattr(rb, f) for f in SAME}
    assert (ra.provenance['path'], rb.provenance['path']) == ('shim',
                                                              'native')
    assert device_size(via_shim.path) == device_size(native.path)
    return via_shim, native


@pytest.mark.parametrize('image_format', ['raw', 'qcow2'])
@pytest.mark.parametrize('size', [None, 128 * MiB])
def test_equivalence_root(backend, lvm, make_image, image_format, size):
    make_image('img', image_format, 64 * MiB)
    a, b = _pair(backend, 'disk',
                 lambda d, via: create(d, via, 'image', size=size))
    assert read_device(a.path) == read_device(b.path)


@pytest.mark.parametrize('kind', ['ephemeral', 'swap'])
def test_equivalence_generated(backend, lvm, lvm_host, kind):
    if kind == 'ephemeral':
        name, size = 'disk.local', 64 * MiB
        func = templates.ephemeral(lvm_host, size, 'ephemeral0', 'linux')
    else:
        name, size = 'disk.swap', 32 * MiB
        func = templates.Swap(size)
    a, b = _pair(backend, name,
                 lambda d, via: create(d, via, 'func', func=func, size=size))
    fa, fb = blkid(a.path), blkid(b.path)
    assert (fa['TYPE'], fa.get('LABEL')) == (fb['TYPE'], fb.get('LABEL'))
    assert fa['TYPE'] == ('ext4' if kind == 'ephemeral' else 'swap')


# -- what each native path runs, per disk -------------------------------------

def test_native_commands_per_disk(backend, lvm, lvm_host, make_image):
    make_image('img', 'qcow2', 64 * MiB)
    entry = backend.image_cache.fetch_image(None, 'img')  # cache warm
    vg = lvm.vg_main

    def made(name, create_it):
        disk = backend.by_name(Instance(), name)
        with processes.recording() as commands:
            create_it(disk)
        return disk, commands

    root, cmds = made('disk', lambda d: d.create_from_image(
        None, 'img', 128 * MiB))
    assert cmds == [
        # The extent size, once per Backend; no lvs: lvcreate refuses an
        # LV that exists.
        ('vgs', '--noheadings', '--nosuffix', '--units', 'b', '--separator',
         '|', '-o', 'vg_name,vg_size,vg_free,vg_extent_size', vg),
        ('lvcreate', '-y', '-L', f'{128 * MiB}b', '-n', root.lv, vg),
        ('qemu-img', 'convert', '-q', '-f', 'raw', '-O', 'raw', '-t', 'none',
         '-n', entry.path, root.path)]

    eph = templates.ephemeral(lvm_host, 64 * MiB, 'ephemeral0', 'linux')
    local, cmds = made('disk.local', lambda d: d.create_from_func(
        None, eph, eph.cache_name, 64 * MiB))
    assert [c[0] for c in cmds] == ['lvcreate', 'mkfs']
    assert cmds[0] == ('lvcreate', '-y', '-L', f'{64 * MiB}b', '-n',
                       local.lv, vg)
    assert cmds[1] == tuple(eph.command(local.path))

    swap = templates.Swap(32 * MiB)
    sw, cmds = made('disk.swap', lambda d: d.create_from_func(
        None, swap, swap.cache_name, 32 * MiB))
    assert [c[0] for c in cmds] == ['lvcreate', 'mkswap']
    assert cmds[1] == ('mkswap', sw.path)


# -- size ---------------------------------------------------------------------

def test_resize_grows_and_refuses_to_shrink(backend, lvm, make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    disk = backend.by_name(instance, 'disk')
    disk.create_from_image(None, 'img', 128 * MiB)
    run('qemu-io', '-f', 'raw', '-c', f'write -P 0x77 {100 * MiB} 64k',
        disk.path)

    with processes.recording() as commands:
        disk.resize_image(256 * MiB)
    assert commands[-1] == ('lvextend', '-L', f'{256 * MiB}b',
                            f'{lvm.vg_main}/{disk.lv}')
    assert lv_sizes(lvm, lvm.vg_main) == {disk.lv: 256 * MiB}
    assert device_size(disk.path) == 256 * MiB
    assert backend.records.get(instance.uuid, 'disk').virtual_size == \
        256 * MiB
    assert 'Pattern verification failed' not in run(
        'qemu-io', '-f', 'raw', '-c', f'read -P 0x77 {100 * MiB} 64k',
        disk.path)

    with pytest.raises(exception.CannotShrink):
        disk.resize_image(128 * MiB)
    # Asking for what it has (or a size that rounds to it) changes nothing.
    with processes.recording() as commands:
        disk.resize_image(256 * MiB - 4096)
    assert [c[0] for c in commands] == ['vgs']
    assert lv_sizes(lvm, lvm.vg_main) == {disk.lv: 256 * MiB}


def test_insufficient_space_is_typed_and_touches_nothing(backend, lvm):
    disk = backend.by_name(Instance(), 'disk.local')
    free = int(run('vgs', '--noheadings', '--nosuffix', '--units', 'b', '-o',
                   'vg_free', lvm.vg_main))
    with processes.recording() as commands:
        with pytest.raises(lvm_mod.InsufficientSpace) as e:
            disk.create_from_func(None, templates.Swap(8 * GiB), 'swap_8G',
                                  8 * GiB)
    # lvcreate itself refuses (its figures, in bytes); the undo looks.
    assert [c[0] for c in commands] == ['vgs', 'lvcreate', 'lvs']
    assert (e.value.kwargs['needed'], e.value.kwargs['free']) == (
        8 * GiB, free)
    assert lvm.lvs(lvm.vg_main) == {}
    assert backend.records.list(disk.instance.uuid) == []


def test_existing_lv_is_refused_by_lvcreate_and_kept(backend, lvm,
                                                     make_image):
    """An LV of the disk's name that no record knows (Nova's, say):
    lvm2's own refusal, typed; the LV and its bytes are left alone."""
    make_image('img', 'raw', 16 * MiB)
    disk = backend.by_name(Instance(), 'disk')
    run('lvcreate', '-y', '-L', f'{32 * MiB}b', '-n', disk.lv, lvm.vg_main)
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0x77 0 64k', disk.path)
    with processes.recording() as commands:
        with pytest.raises(exception.DiskExists):
            disk.create_from_image(None, 'img', 32 * MiB)
    assert [c[0] for c in commands if c[0].startswith(('lv', 'vg'))] == [
        'vgs', 'lvcreate']
    assert lv_sizes(lvm, lvm.vg_main) == {disk.lv: 32 * MiB}
    assert 'Pattern verification failed' not in run(
        'qemu-io', '-f', 'raw', '-c', 'read -P 0x77 0 64k', disk.path)
    assert backend.records.list(disk.instance.uuid) == []


def test_missing_volume_group_is_typed(lvm, lvm_host):
    lvm_host.set_override('images_volume_group', 'no-such-vg',
                          group='libvirt')
    disk = imagebackend.Backend(conf=lvm_host).by_name(Instance(), 'disk')
    with pytest.raises(exception.BackendUnavailable):
        disk.exists()


# -- deletion -----------------------------------------------------------------

def _filled_disk(backend, size=16 * MiB):
    """A disk whose every byte is 0x77."""
    def fill(target):
        run('qemu-io', '-f', 'raw', '-c', f'write -P 0x77 0 {size}', target)
    fill.cache_name = 'filled'
    disk = backend.by_name(Instance(), 'disk.local')
    disk.create_from_func(None, fill, 'filled', size)
    return disk


@pytest.mark.parametrize('method, clear_mib', [
    ('zero', 0), ('zero', 4), ('shred', 0), ('none', 0)])
def test_delete_wipes_per_volume_clear(backend, lvm, lvm_host, method,
                                       clear_mib):
    lvm_host.set_override('volume_clear', method, group='libvirt')
    lvm_host.set_override('volume_clear_size', clear_mib, group='libvirt')
    size = 16 * MiB
    disk = _filled_disk(backend, size)
    pv, offset, length = lvm.extent_range(lvm.vg_main, disk.lv)
    assert length == size

    with processes.recording() as commands:
        disk.delete()
    wiped = clear_mib * MiB or size
    expected = {'zero': [('shred', '-n0', '-z', f'-s{wiped}', disk.path)],
                'shred': [('shred', '-n3', f'-s{wiped}', disk.path)],
                'none': []}[method]
    assert [c for c in commands if c[0] == 'shred'] == expected
    assert commands[-1] == ('lvremove', '-f', f'{lvm.vg_main}/{disk.lv}')
    assert_gone(lvm, disk)
    assert backend.records.get(disk.instance.uuid, 'disk.local') is None

    # What the LV's extents on the PV hold now.
    data = read_device(pv, offset, length)
    pattern = b'\x77' * length
    if method == 'none':
        assert data == pattern
    elif method == 'zero':
        assert data[:wiped] == bytes(wiped)
        assert data[wiped:] == pattern[wiped:]
    else:
        assert data != pattern and data != bytes(length)
        assert data.count(0x77) < length // 64

    # Deleting what is gone is not an error and runs only lvs.
    with processes.recording() as commands:
        disk.delete()
    assert [c[0] for c in commands] == ['lvs']


# -- libvirt ------------------------------------------------------------------

def test_libvirt_info_block_disk_on_test_driver(backend, lvm, make_image):
    make_image('img', 'raw', 64 * MiB)
    instance = Instance()
    disk = backend.by_name(instance, 'disk', disk_info_mapping=MAPPING)
    disk.create_from_image(None, 'img')
    disk = backend.from_metadata(instance, 'disk', MAPPING)
    info = disk.libvirt_info('none', {'quota:disk_read_iops_sec': '500'})
    assert (info.source_type, info.driver_format, info.driver_io,
            info.source_path) == ('block', 'raw', 'native', disk.path)
    fs = disk.libvirt_fs_info('/')
    assert (fs.source_type, fs.source_dev) == ('block', disk.path)

    back, = define_and_read([info.to_xml()], f'lvm-{instance.uuid}')
    assert back.get('type') == 'block'
    assert back.find('source').get('dev') == disk.path
    driver = back.find('driver')
    assert (driver.get('type'), driver.get('io'), driver.get('cache')) == (
        'raw', 'native', 'none')
    assert back.find('target').get('dev') == 'vda'
    assert back.find('iotune/read_iops_sec').text == '500'


def test_snapshot_extract(backend, lvm, make_image, tmp_path):
    src = make_image('img', 'qcow2', 64 * MiB)
    disk = backend.by_name(Instance(), 'disk')
    disk.create_from_image(None, 'img')
    target = str(tmp_path / 'snap.qcow2')
    with processes.recording() as commands:
        disk.snapshot_extract(target, 'qcow2')
    assert commands == [('qemu-img', 'convert', '-q', '-f', 'raw', '-O',
                         'qcow2', disk.path, target)]
    assert qemu_info(target, 'qcow2')['virtual-size'] == 64 * MiB
    assert guest_bytes(target, 'qcow2', tmp_path) == \
        guest_bytes(src, 'qcow2', tmp_path)


# -- half-created disks leave nothing -----------------------------------------

def _killed_midway(pidfile):
    """A template function whose command writes to the device, then is
    killed by another thread while it is still running."""
    def func(target):
        killer = threading.Thread(target=_kill_when_started, args=(pidfile,))
        killer.start()
        try:
            # Writes to the device, then blocks (same pid) until killed.
            processes.execute(
                'sh', '-c', 'dd if=/dev/urandom of="$2" bs=1M count=2 '
                'oflag=direct status=none && echo $$ > "$1.tmp" && '
                'mv "$1.tmp" "$1" && exec sleep 600', 'sh', pidfile, target)
        finally:
            killer.join()
    return func


def _kill_when_started(pidfile):
    for _ in range(6000):  # no timing assertion: just don't wait forever
        if os.path.exists(pidfile):
            with open(pidfile) as f:
                os.kill(int(f.read()), signal.SIGKILL)
            return
        time.sleep(0.01)


@pytest.mark.parametrize('via', ['native', 'shim'])
def test_killed_template_command_leaves_nothing(backend, lvm, tmp_path, via):
    func = _killed_midway(str(tmp_path / 'pid'))
    func.cache_name = 'ephemeral_64M_killed'
    instance = Instance()
    disk = backend.by_name(instance, 'disk.local')
    with pytest.raises(exception.ProcessError) as e:
        create(disk, via, 'func', func=func, size=64 * MiB)
    assert e.value.exit_code == -signal.SIGKILL
    assert_gone(lvm, disk)
    assert lvm.lvs(lvm.vg_main) == {}
    assert backend.records.get(instance.uuid, 'disk.local') is None
    assert not os.path.exists(disk.instance_dir)


def test_template_raising_after_writing_leaves_nothing(backend, lvm):
    def func(target):
        run('qemu-io', '-f', 'raw', '-c', 'write -P 0x11 0 1M', target)
        raise RuntimeError('mkfs died half way')
    disk = backend.by_name(Instance(), 'disk.local')
    with pytest.raises(RuntimeError):
        disk.create_from_func(None, func, 'ephemeral_x', 64 * MiB)
    assert_gone(lvm, disk)
    assert backend.records.list(disk.instance.uuid) == []


@pytest.mark.parametrize('via', ['native', 'shim'])
def test_failed_copy_into_lv_leaves_nothing(backend, lvm, make_image, via):
    make_image('img', 'raw', 64 * MiB)
    entry = backend.image_cache.fetch_image(None, 'img')
    # The sidecar now claims qcow2: qemu-img convert -f qcow2 fails after
    # the LV was created.
    sidecar = entry.path + names.META_SUFFIX
    doc = open(sidecar).read().replace('"raw"', '"qcow2"')
    with open(sidecar, 'w') as f:
        f.write(doc)
    disk = backend.by_name(Instance(), 'disk')
    with processes.recording() as commands:
        with pytest.raises(exception.ProcessError):
            create(disk, via, 'image', size=128 * MiB)
    assert ('lvcreate', '-y', '-L', f'{128 * MiB}b', '-n', disk.lv,
            lvm.vg_main) in commands
    assert commands[-1] == ('lvremove', '-f', f'{lvm.vg_main}/{disk.lv}')
    assert_gone(lvm, disk)
    assert backend.records.list(disk.instance.uuid) == []


# -- driver flows on two hosts, each with its own volume group ----------------

class LvmHosts(test_flows.Hosts):
    """Hosts a and b of test_flows, each with a volume group."""

    def __init__(self, tmp_path, env):
        super().__init__(tmp_path)
        self.vgs = {'a': env.vg_a, 'b': env.vg_b}
        for h, conf in self.confs.items():
            conf.set_override('images_volume_group', self.vgs[h],
                              group='libvirt')
            # GiB disks: wiping each on delete is tested above, not here.
            conf.set_override('volume_clear', 'none', group='libvirt')


@pytest.fixture
def hosts(tmp_path, lvm):
    return LvmHosts(tmp_path, lvm)


def _fs(path):
    info = blkid(path)
    return info.get('TYPE'), info.get('LABEL')


def test_spawn_makes_logical_volumes(hosts, lvm):
    hosts.add_image('img')
    instance = test_flows.new_instance()
    a, mapping, created = test_flows.spawn_on_a(hosts, 'lvm', instance)
    assert created == ['disk', 'disk.local', 'disk.eph0', 'disk.swap']
    u = instance.uuid
    assert lv_sizes(lvm, lvm.vg_a) == {
        f'{u}_disk': GiB, f'{u}_disk.local': GiB, f'{u}_disk.eph0': GiB,
        f'{u}_disk.swap': 64 * MiB}
    assert _fs(a.from_metadata(instance, 'disk.local').path) == \
        ('ext4', 'ephemeral0')
    assert _fs(a.from_metadata(instance, 'disk.eph0').path) == \
        ('ext3', 'ephemeral0')
    assert _fs(a.from_metadata(instance, 'disk.swap').path)[0] == 'swap'
    assert flows.spawn(a, None, instance, mapping, test_flows.BDI) == []
    assert sorted(flows.destroy_disks(a, instance)) == [
        'disk', 'disk.eph0', 'disk.local', 'disk.swap']
    assert lvm.lvs(lvm.vg_a) == {}


@pytest.mark.parametrize('dest_type', ['lvm', 'qcow2'])
def test_cold_migration_with_bigger_flavor(hosts, lvm, dest_type):
    hosts.add_image('img')
    instance = test_flows.new_instance()
    a, mapping, _ = test_flows.spawn_on_a(hosts, 'lvm', instance)
    test_flows.write_marker(a.from_metadata(instance, 'disk'))
    # The destination's own images_type does not matter: records decide.
    hosts.confs['b'].set_override('images_type', dest_type, group='libvirt')

    copied = migration.migrate_disks(a, instance, mapping, 'b',
                                     hosts.transport, test_flows.BDI)
    assert sorted(copied) == ['disk', 'disk.eph0', 'disk.local']
    dest_dir = os.path.join(hosts.paths['b'], instance.uuid)
    assert sorted(os.listdir(dest_dir)) == [
        'disk.eph0.lv-transfer', 'disk.local.lv-transfer',
        'disk.lv-transfer', 'disks.json']
    # Sent sparse: the holes of the LV stay holes.
    assert fileutils.allocated_bytes(
        os.path.join(dest_dir, 'disk.lv-transfer')) < 64 * MiB
    assert lvm.lvs(lvm.vg_b) == {}

    instance.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=2, swap=128)
    bdi = {'ephemerals': [{'size': 2, 'guest_format': 'ext3'}]}
    new_mapping = instance_mod.disk_mapping(instance, bdi)
    b = hosts.backend('b')
    done = flows.finish_migration(b, None, instance, new_mapping, bdi,
                                  source_host='a')
    assert sorted(done['grown']) == ['disk', 'disk.eph0', 'disk.local']
    assert done['created'] == ['disk.swap']

    # Logical volumes of the new sizes on b, not files. Swap is never
    # sent: it is made afresh, as this host makes new disks.
    u = instance.uuid
    expected = {f'{u}_disk': 2 * GiB, f'{u}_disk.local': 2 * GiB,
                f'{u}_disk.eph0': 2 * GiB}
    if dest_type == 'lvm':
        expected[f'{u}_disk.swap'] = 128 * MiB
    assert lv_sizes(lvm, lvm.vg_b) == expected
    records = {r.name: r for r in b.records.list(instance.uuid)}
    assert records.pop('disk.swap').backend == dest_type
    # A file disk is listed in Nova's disk.info too; LVs never are.
    assert sorted(os.listdir(dest_dir)) == sorted(
        ['disks.json'] + (['disk.info', 'disk.swap'] if dest_type == 'qcow2'
                          else []))
    for name, r in records.items():
        assert (r.backend, r.format, r.location) == (
            'lvm', 'raw', f'{lvm.vg_b}/{u}_{name}')
        disk = b.from_metadata(instance, name)
        assert disk.moved_from is None
        assert device_size(disk.path) == r.virtual_size
    assert test_flows.read_marker(b.from_metadata(instance, 'disk').path,
                                  'raw')
    assert _fs(b.from_metadata(instance, 'disk.local').path) == \
        ('ext4', 'ephemeral0')
    assert _fs(b.from_metadata(instance, 'disk.eph0').path) == \
        ('ext3', 'ephemeral0')
    # The source keeps its disks until the migration is confirmed.
    assert len(lvm.lvs(lvm.vg_a)) == 4


def test_failed_settle_leaves_no_volume(hosts, lvm, monkeypatch):
    hosts.add_image('img')
    instance = test_flows.new_instance(ephemeral_gb=0, swap=0)
    a, mapping, _ = test_flows.spawn_on_a(hosts, 'lvm', instance, bdi={})
    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, {})
    real_convert = qemu.convert

    def broken(src, src_fmt, dst, dst_fmt, **kw):
        if dst.startswith(f'/dev/{lvm.vg_b}/'):
            raise exception.ProcessError(cmd='qemu-img convert', exit_code=1)
        return real_convert(src, src_fmt, dst, dst_fmt, **kw)

    b = hosts.backend('b')
    monkeypatch.setattr(qemu, 'convert', broken)
    with processes.recording() as commands:
        with pytest.raises(exception.ProcessError):
            flows.finish_migration(b, None, instance, mapping, {},
                                   source_host='a')
    assert [c[0] for c in commands if c[0].startswith('lv')] == [
        'lvs', 'lvcreate', 'lvs', 'lvremove']
    assert lvm.lvs(lvm.vg_b) == {}
    transfer = os.path.join(hosts.paths['b'], instance.uuid,
                            'disk.lv-transfer')
    assert os.path.exists(transfer)  # kept: a retry can settle it
    monkeypatch.setattr(qemu, 'convert', real_convert)
    flows.finish_migration(b, None, instance, mapping, {}, source_host='a')
    assert lv_sizes(lvm, lvm.vg_b) == {f'{instance.uuid}_disk': GiB}
    assert not os.path.exists(transfer)


def test_pre_live_migration_creates_volumes_of_recorded_size(hosts, lvm):
    hosts.add_image('img')
    instance = test_flows.new_instance()
    a, mapping, _ = test_flows.spawn_on_a(hosts, 'lvm', instance)
    source = {r.name: r for r in a.records.list(instance.uuid)}
    hosts.confs['b'].set_override('images_type', 'qcow2', group='libvirt')
    b = hosts.backend('b')
    created = flows.pre_live_migration(b, None, instance, mapping,
                                       list(source.values()),
                                       test_flows.BDI, source_host='a')
    assert sorted(created) == sorted(source)
    u = instance.uuid
    assert lv_sizes(lvm, lvm.vg_b) == {
        f'{u}_{n}': r.virtual_size for n, r in source.items()}
    for name, rec in source.items():
        mine = b.records.get(u, name)
        assert (mine.backend, mine.format, mine.virtual_size,
                mine.source_type, mine.source_id) == (
            'lvm', 'raw', rec.virtual_size, rec.source_type, rec.source_id)
        assert mine.location == f'{lvm.vg_b}/{u}_{name}'
        assert mine.provenance['path'] == 'empty'
    # Nothing in b's instance directory but the records: no plain files.
    assert os.listdir(os.path.join(hosts.paths['b'], u)) == ['disks.json']


def test_rescue_and_unrescue(hosts, lvm):
    hosts.add_image('img')
    hosts.add_image('rescue-img', pattern=0xcd)
    instance = test_flows.new_instance()
    instance.config_drive = True
    a, mapping, _ = test_flows.spawn_on_a(hosts, 'lvm', instance, bdi={})
    root = a.from_metadata(instance, 'disk')
    before = read_device(root.path)
    created = flows.rescue(a, None, instance, 'rescue-img')
    assert sorted(created) == ['disk.config.rescue', 'disk.rescue']
    rescue = a.from_metadata(instance, 'disk.rescue')
    assert rescue.image_type == 'lvm'
    assert lv_sizes(lvm, lvm.vg_a)[rescue.lv] == 256 * MiB  # image's size
    # The config drive is a file on every backend.
    config = a.from_metadata(instance, 'disk.config.rescue')
    assert config.image_type == 'flat' and os.path.isfile(config.path)
    assert sorted(flows.unrescue(a, instance)) == ['disk.config.rescue',
                                                   'disk.rescue']
    assert rescue.lv not in lvm.lvs(lvm.vg_a)
    assert read_device(root.path) == before


def test_mixed_backends_after_images_type_changes(hosts, lvm):
    hosts.add_image('img')
    old = test_flows.new_instance()
    a, mapping, _ = test_flows.spawn_on_a(hosts, 'qcow2', old)
    # The host moves to LVM; the old instance's records say Qcow2.
    hosts.confs['a'].set_override('images_type', 'lvm', group='libvirt')
    a = hosts.backend('a')
    old.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=2, swap=128)
    bdi = {'ephemerals': [{'size': 2, 'guest_format': 'ext3'}]}
    done = flows.finish_migration(a, None, old,
                                  instance_mod.disk_mapping(old, bdi), bdi)
    assert sorted(done['grown']) == ['disk', 'disk.eph0', 'disk.local']
    for r in a.records.list(old.uuid):
        assert (r.backend, r.format) == ('qcow2', 'qcow2')
        assert qemu_info(r.location, 'qcow2')['virtual-size'] == \
            r.virtual_size
    assert lvm.lvs(lvm.vg_a) == {}

    new = test_flows.new_instance()
    new_mapping = instance_mod.disk_mapping(new, test_flows.BDI)
    flows.spawn(a, None, new, new_mapping, test_flows.BDI)
    assert {r.backend for r in a.records.list(new.uuid)} == {'lvm'}
    assert len(lvm.lvs(lvm.vg_a)) == 4
    # Both describe themselves to libvirt as what they are.
    old_root = a.from_metadata(old, 'disk', MAPPING).libvirt_info('none', {})
    new_root = a.from_metadata(new, 'disk', MAPPING).libvirt_info('none', {})
    assert (old_root.source_type, old_root.driver_format) == ('file',
                                                              'qcow2')
    assert (new_root.source_type, new_root.driver_format) == ('block', 'raw')


def test_cli_backend_lvm(lvm, tmp_path, capsys):
    from tests.functional.test_cli import run_backend_scenario
    # Root only: the test's stand-in for device-mapper (a loop device over
    # an LV's extents) can grow only the last LV of a volume group; the
    # flows tests grow every disk kind on LVM.
    disks = run_backend_scenario(
        str(tmp_path / 'state'), capsys,
        ['--images-volume-group', lvm.vg_main], 'lvm', extra_disks=False)
    # Thick LVs: allocated is the LV size, as lvs reports it.
    assert disks['disk']['allocated'] == disks['disk']['virtual_size']
    assert lv_sizes(lvm, lvm.vg_main) == {}
