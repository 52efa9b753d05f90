"""A power cut right after a disk is made: the disk is whole, or no record
says ``created``.

How a power cut is simulated. ``instances_path`` (with its ``_base``) is an
ext4 filesystem on a loop device over a file. Right after the call returns
-- no ``sync``, nothing unmounted -- the loop device's backing file is
copied. The copy holds what had reached the "disk" (the loop device), not
what was still only in the filesystem's page cache, which a power cut
loses. The copy is then mounted (ext4 replays its journal, as on the next
boot) and every record in it that says ``created`` is checked against the
bytes the library wrote.

Only what the library made durable may reach the loop device: the kernel's
periodic writeback (``dirty_expire_centisecs``, 30 s) is held off while a
test runs (the sysctls are restored after it) and the filesystem commits
its journal only when asked (``commit=`` at its maximum).

Lvm: the disk is an LV on a loop device over a PV file (lvm_env). Data
written into the LV's block device sits in the device's page cache until it
is flushed (or the last opener closes the device): the cut copies the LV's
extents from the PV file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess

import pytest

import imagebackend
from imagebackend import disks
from tests.functional import lvm_env as lvm_env_mod
from tests.functional.conftest import MiB, Instance, run
from tests.hosts import make_conf

FS_SIZE = 192 * MiB
IMAGE_SIZE = 16 * MiB
DISK_SIZE = 32 * MiB
# Sysctls that start the kernel's periodic writeback, held off meanwhile.
WRITEBACK = ('/proc/sys/vm/dirty_expire_centisecs',
             '/proc/sys/vm/dirty_writeback_centisecs')
HOLD_OFF = '360000'  # an hour
MAX_COMMIT = 'commit=300'  # ext4's journal commit interval, seconds


# -- the filesystem a power cut is taken of ------------------------------------

@pytest.fixture
def writeback_held():
    saved = {}
    try:
        for path in WRITEBACK:
            with open(path) as f:
                saved[path] = f.read().strip()
            with open(path, 'w') as f:
                f.write(HOLD_OFF)
        yield
    finally:
        for path, value in saved.items():
            with open(path, 'w') as f:
                f.write(value)


class LoopFs:
    """ext4 on a loop device over ``<dir>/fs.img``, mounted at
    ``<dir>/mnt``; :meth:`power_cut` mounts a copy of its backing file."""

    def __init__(self, directory):
        self.dir = str(directory)
        self.image = os.path.join(self.dir, 'fs.img')
        self.mnt = os.path.join(self.dir, 'mnt')
        self._undo: list = []

    def start(self) -> 'LoopFs':
        with open(self.image, 'wb') as f:
            f.truncate(FS_SIZE)
        run('mkfs.ext4', '-q', '-F', self.image)
        self.mnt = self._mount(self.image, self.mnt, MAX_COMMIT)
        return self

    def _mount(self, image: str, mnt: str, options: str) -> str:
        # Buffered loop (no direct I/O): what the filesystem wrote to the
        # device is in the backing file's page cache, so a copy sees it.
        loop = run('losetup', '-f', '--show', '--direct-io=off',
                   image).strip()
        self._undo.append(lambda: run('losetup', '-d', loop))
        os.makedirs(mnt, exist_ok=True)
        run('mount', '-t', 'ext4', '-o', options, loop, mnt)
        self._undo.append(lambda: run('umount', mnt))
        return mnt

    @contextlib.contextmanager
    def power_cut(self):
        """Copy the backing file now, mount the copy (its journal replays
        on mount); yield the copy's mount point."""
        copy = os.path.join(self.dir, 'cut.img')
        run('cp', '--sparse=always', self.image, copy)
        mark = len(self._undo)
        try:
            yield self._mount(copy, os.path.join(self.dir, 'cut'), 'rw')
        finally:
            while len(self._undo) > mark:
                self._undo.pop()()
            os.unlink(copy)

    def close(self) -> None:
        errors = []
        while self._undo:
            try:
                self._undo.pop()()
            except subprocess.CalledProcessError as e:
                errors.append(f'{e.cmd}: {e.stderr}')
        assert not errors, errors


@pytest.fixture
def loop_fs(tmp_path, writeback_held):
    fs = LoopFs(tmp_path / 'fs')
    os.makedirs(fs.dir)
    try:
        yield fs.start()
    finally:
        fs.close()


@pytest.fixture
def conf(loop_fs, tmp_path):
    """A host whose instances_path (and _base) is on the loop filesystem;
    images come from outside it."""
    images = tmp_path / 'images'
    images.mkdir()
    instances = os.path.join(loop_fs.mnt, 'instances')
    os.mkdir(instances)
    return make_conf(instances, str(images))


@pytest.fixture
def make_random_image(conf):
    """A raw image with random bytes at its start and near its end."""
    def make(image_id: str = 'img') -> bytes:
        data = bytearray(IMAGE_SIZE)
        data[:3 * MiB] = os.urandom(3 * MiB)
        data[12 * MiB:13 * MiB] = os.urandom(MiB)
        with open(os.path.join(conf.imagebackend.images_dir,
                               f'{image_id}.raw'), 'wb') as f:
            f.write(data)
        return bytes(data)
    return make


def random_template(size: int = 6 * MiB):
    """A template function writing random bytes into its target (plain
    buffered writes, as a function made elsewhere would)."""
    def func(target: str) -> None:
        with open(target, 'r+b' if os.path.exists(target) else 'wb') as f:
            f.write(os.urandom(size))
    return func


# -- what the cut copy holds ---------------------------------------------------

def digest(path: str) -> str:
    """sha256 of a file, or of every file of a directory (by name)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            h.update(name.encode() + b'\0' + digest(
                os.path.join(path, name)).encode())
        return h.hexdigest()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(MiB), b''):
            h.update(chunk)
    return h.hexdigest()


def created_records(root: str, instance: str) -> dict[str, dict]:
    path = os.path.join(root, 'instances', instance, 'disks.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        disks = json.load(f)['disks']
    return {name: rec for name, rec in disks.items()
            if rec['state'] == 'created'}


def assert_whole_or_not_created(loop_fs, disks) -> None:
    """After a power cut: each disk whose record says ``created`` has the
    bytes the library wrote (and the cache entry it depends on is whole)."""
    expected = {}
    with loop_fs.power_cut() as cut:
        found = {}
        for disk in disks:
            records = created_records(cut, disk.instance_uuid)
            if disk.disk_name not in records:
                continue
            rel = os.path.relpath(disk.path, loop_fs.mnt)
            paths = [rel]
            backing = records[disk.disk_name].get('backing')
            if backing:
                paths.append(os.path.relpath(disk.image_cache.path(backing),
                                             loop_fs.mnt))
            for p in paths:
                found[(disk.disk_name, p)] = digest(os.path.join(cut, p))
                expected[(disk.disk_name, p)] = digest(
                    os.path.join(loop_fs.mnt, p))
    lost = sorted(k for k in found if found[k] != expected[k])
    assert not lost, ('record says created, but after a power cut these '
                      f'are not what was written: {lost}')


# -- file backends ---------------------------------------------------------------

def _backend(conf, image_type: str):
    conf.set_override('images_type', image_type, group='libvirt')
    return imagebackend.Backend(conf=conf)


@pytest.mark.parametrize('image_type', ['flat', 'qcow2', 'ploop'])
def test_power_cut_after_create_from_image(conf, loop_fs, make_random_image,
                                           image_type):
    data = make_random_image()
    backend = _backend(conf, image_type)
    disk = backend.by_name(Instance(), 'disk', image_type)
    disk.create_from_image(None, 'img', DISK_SIZE)
    # Not vacuous: the disk holds the image (read back before the cut from
    # the live filesystem, which reads the page cache and flushes nothing).
    path = disk.data_path if image_type == 'ploop' else disk.path
    if image_type != 'qcow2':
        with open(path, 'rb') as f:
            assert f.read(IMAGE_SIZE) == data
    assert_whole_or_not_created(loop_fs, [disk])


@pytest.mark.parametrize('image_type', ['flat', 'qcow2', 'ploop'])
def test_power_cut_after_create_from_func(conf, loop_fs, image_type):
    backend = _backend(conf, image_type)
    disk = backend.by_name(Instance(), 'disk.local', image_type)
    disk.create_from_func(None, random_template(), 'ephemeral_rand',
                          DISK_SIZE)
    assert_whole_or_not_created(loop_fs, [disk])


@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_power_cut_after_legacy_cache(conf, loop_fs, make_random_image,
                                      image_type):
    make_random_image()
    backend = _backend(conf, image_type)
    disk = backend.by_name(Instance(), 'disk', image_type)

    def fetch_image(target, context, image_id, **kwargs):
        disk.image_cache.fetch_into(context, image_id, target)

    disk.cache(fetch_func=fetch_image, context=None,
               filename=hashlib.sha1(b'img').hexdigest(), image_id='img',
               size=DISK_SIZE)
    assert_whole_or_not_created(loop_fs, [disk])


@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_power_cut_after_a_batch_of_creations(conf, loop_fs,
                                              make_random_image, image_type):
    # Three disks, their created records in one write at the end: each
    # disk was made durable before it, so each is whole after a cut.
    make_random_image()
    backend = _backend(conf, image_type)
    instance = Instance()

    def image(name):
        return backend.by_name(instance, name, image_type)

    todo = [disks.DiskFromImage(image=image('disk'), size=DISK_SIZE,
                                image_id='img'),
            disks.DiskFromFunc(image=image('disk.local'), size=DISK_SIZE,
                               func=random_template(),
                               cache_name='ephemeral_rand'),
            disks.DiskFromFunc(image=image('disk.swap'), size=DISK_SIZE,
                               func=random_template(2 * MiB),
                               cache_name='swap_rand')]
    with backend.batch(instance, todo):
        for disk in todo:
            disk.create(None)
    # Not vacuous: all three say created on the live filesystem.
    assert sorted(created_records(loop_fs.mnt, instance.uuid)) == [
        'disk', 'disk.local', 'disk.swap']
    assert_whole_or_not_created(loop_fs, [d.image for d in todo])


# -- Lvm -------------------------------------------------------------------------

@pytest.fixture
def lvm_host(conf, tmp_path):
    """(conf, LvmEnv): a host whose disks are LVs of a fresh VG."""
    env = lvm_env_mod.LvmEnv(str(tmp_path / 'lvm')).start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.environ().items():
            mp.setenv(key, value)
        try:
            env.vg = env.add_vg(256 * MiB)
            conf.set_override('images_type', 'lvm', group='libvirt')
            conf.set_override('images_volume_group', env.vg,
                              group='libvirt')
            yield conf, env
        finally:
            left = env.close()
    assert left == []


def lv_bytes(env, disk, size: int) -> bytes:
    """The LV's first ``size`` bytes as they are in the PV's file (what
    reached the disk), read from the file, not the device."""
    _pv, offset, _size = env.extent_range(disk.vg, disk.lv)
    with open(env.vgs[disk.vg]['file'], 'rb') as f:
        f.seek(offset)
        return f.read(size)


def test_power_cut_after_lvm_create_from_func(lvm_host, loop_fs):
    conf, env = lvm_host
    backend = imagebackend.Backend(conf=conf)
    disk = backend.by_name(Instance(), 'disk.local', 'lvm')
    written = os.urandom(6 * MiB)
    held = []

    def template(target: str) -> None:
        # Something else has the device open meanwhile (udev's probe, a
        # monitoring agent): closing ours does not flush the device.
        held.append(os.open(target, os.O_RDONLY))
        with open(target, 'r+b') as f:
            f.write(written)

    try:
        disk.create_from_func(None, template, 'ephemeral_rand', DISK_SIZE)
        with loop_fs.power_cut() as cut:
            records = created_records(cut, disk.instance_uuid)
            on_disk = lv_bytes(env, disk, len(written))
    finally:
        for fd in held:
            os.close(fd)
    assert 'disk.local' not in records or on_disk == written, (
        'record says created, but after a power cut the LV does not hold '
        'what was written')
