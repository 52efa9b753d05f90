"""Hosts, images, instances and sizes for the suites.

A *host* is a directory with its own ``instances_path`` and image folder
and a ConfigOpts for them (as in ``tests/hosts.py``); two hosts on one
machine reach each other through a
:class:`imagebackend.transport.LocalTransport`.
Images are written with random data (``os.urandom``) at spread-out
extents, so they are sparse where the sizes say and incompressible where
they hold data.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import time
from typing import Iterable

from oslo_config import cfg

import imagebackend
from imagebackend import disks
from imagebackend import fileutils
from imagebackend import shim

from driver import instance as instance_mod
from driver import templates

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Everything the suites make, full and --quick."""

    # 1, 3: an instance from a cached image.
    image_virtual: int
    image_data: int
    root: int
    ephemeral: int
    swap: int
    # 2: cold cache, N parallel spawns of a root disk.
    cold_image_virtual: int
    cold_image_data: int
    cold_root: int
    parallel: tuple[int, ...]
    # 4: Flat on a loop-mounted XFS, dense images.
    reflink_small: int
    reflink_big: int
    reflink_fs: int
    # 5: migration, a driver flavor (GiB, GiB, MiB).
    migration_flavor: tuple[int, int, int]
    # 6: cache manager.
    cache_entries: int
    cache_instances: int
    # 7: memory, N instances of a tiny flavor in one process.
    memory_instances: int
    memory_image_virtual: int
    memory_flavor: tuple[int, int, int]


FULL = Sizes(
    image_virtual=1 * GiB, image_data=128 * MiB,
    root=10 * GiB, ephemeral=1 * GiB, swap=512 * MiB,
    cold_image_virtual=256 * MiB, cold_image_data=32 * MiB, cold_root=1 * GiB,
    parallel=(1, 4, 16),
    reflink_small=256 * MiB, reflink_big=2 * GiB, reflink_fs=4 * GiB,
    migration_flavor=(10, 1, 512),
    cache_entries=10_000, cache_instances=1_000,
    memory_instances=100, memory_image_virtual=16 * MiB,
    memory_flavor=(1, 1, 16),
)

QUICK = Sizes(
    image_virtual=64 * MiB, image_data=4 * MiB,
    root=128 * MiB, ephemeral=64 * MiB, swap=16 * MiB,
    cold_image_virtual=16 * MiB, cold_image_data=1 * MiB, cold_root=32 * MiB,
    parallel=(1, 4, 16),
    reflink_small=16 * MiB, reflink_big=64 * MiB, reflink_fs=512 * MiB,
    migration_flavor=(1, 1, 16),
    cache_entries=200, cache_instances=20,
    memory_instances=10, memory_image_virtual=4 * MiB,
    memory_flavor=(1, 1, 16),
)


def run(*cmd: str) -> str:
    """Run a command (not through the library); raise on failure."""
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} exited {p.returncode}: '
                           f'{(p.stderr or p.stdout).strip()}')
    return p.stdout


def make_conf(instances_path: str, images_dir: str,
              image_type: str | None = None) -> cfg.ConfigOpts:
    conf = cfg.ConfigOpts()
    imagebackend.config.register_opts(conf)
    conf.set_override('instances_path', instances_path)
    conf.set_override('images_dir', images_dir, group='imagebackend')
    if image_type:
        conf.set_override('images_type', image_type, group='libvirt')
    conf([])
    return conf


class Host:
    """``<root>/instances`` and ``<root>/images`` with a ConfigOpts."""

    def __init__(self, root: str, images_dir: str | None = None,
                 instances_path: str | None = None,
                 image_type: str | None = None):
        self.root = root
        self.instances_path = instances_path or os.path.join(root,
                                                             'instances')
        self.images_dir = images_dir or os.path.join(root, 'images')
        os.makedirs(self.instances_path, exist_ok=True)
        os.makedirs(self.images_dir, exist_ok=True)
        self.conf = make_conf(self.instances_path, self.images_dir,
                              image_type)

    def backend(self, **kwargs) -> imagebackend.Backend:
        return imagebackend.Backend(conf=self.conf, **kwargs)

    def instance_dir(self, uuid: str) -> str:
        return os.path.join(self.instances_path, uuid)

    def forget(self, uuid: str) -> None:
        """Delete an instance's directory (disks and records), untimed."""
        fileutils.remove_path(self.instance_dir(uuid))


# -- images -------------------------------------------------------------------

def spread_extents(virtual: int, data: int, chunk: int = 8 * MiB
                   ) -> list[tuple[int, int]]:
    """``data`` bytes in ``chunk``-sized extents spread over ``virtual``."""
    chunk = min(chunk, data)
    n = max(1, data // chunk)
    stride = virtual // n
    return [(i * stride, chunk) for i in range(n)]


def write_random(path: str, virtual: int,
                 extents: Iterable[tuple[int, int]],
                 chunk: int = 4 * MiB) -> int:
    """A raw file of ``virtual`` bytes with random data at ``extents``;
    the rest are holes. Returns the bytes of data written."""
    written = 0
    with open(path, 'xb') as f:
        f.truncate(virtual)
        for offset, length in extents:
            f.seek(offset)
            done = 0
            while done < length:
                n = min(chunk, length - done)
                f.write(os.urandom(n))
                done += n
            written += length
        f.flush()
        os.fsync(f.fileno())
    return written


def make_image(images_dir: str, image_id: str, virtual: int, data: int,
               fmt: str = 'qcow2', dense: bool = False) -> tuple[str, int]:
    """Image ``image_id`` in ``images_dir`` as the image source serves it
    (``<id>.<fmt>``): random data, sparse unless ``dense``. Returns the
    path and the bytes of data written."""
    extents = [(0, virtual)] if dense else spread_extents(virtual, data)
    target = os.path.join(images_dir, f'{image_id}.{fmt}')
    if fmt == 'raw':
        return target, write_random(target, virtual, extents)
    raw = target + '.src.raw'
    try:
        written = write_random(raw, virtual, extents)
        run('qemu-img', 'convert', '-q', '-f', 'raw', '-O', fmt, raw, target)
    finally:
        fileutils.remove_path(raw)
    return target, written


def allocated(path: str) -> int:
    """du-style bytes (st_blocks) of a file or a directory's files."""
    return fileutils.allocated_bytes(path)


def apparent(path: str) -> int:
    """Apparent size (st_size) of a file or of a directory's files."""
    if os.path.isdir(path):
        return sum(apparent(os.path.join(path, n)) for n in os.listdir(path))
    return os.stat(path).st_size


def fs_type(path: str) -> str:
    """The filesystem type of the mount holding ``path`` (/proc/mounts;
    ``stat -f`` cannot tell ext4 from ext2)."""
    path = os.path.realpath(path)
    best, found = '', 'unknown'
    try:
        with open('/proc/mounts') as f:
            for line in f:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mnt = fields[1].replace('\\040', ' ')
                inside = path == mnt or path.startswith(
                    mnt.rstrip('/') + '/')
                if inside and len(mnt) >= len(best):
                    best, found = mnt, fields[2]
    except OSError:
        pass
    return found


def free_bytes(path: str) -> int:
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return shutil.disk_usage(path).free


# -- instances ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Shape:
    """An instance's local disks: root from an image, ephemeral ext4, swap
    (bytes)."""

    root: int
    ephemeral: int
    swap: int

    def describe(self) -> str:
        def g(n):
            return (f'{n // GiB} GiB' if n % GiB == 0 else f'{n // MiB} MiB')
        return (f'root {g(self.root)} + ephemeral {g(self.ephemeral)} ext4 '
                f'+ swap {g(self.swap)}')


class InstanceMaker:
    """Creates an instance's three disks on one backend, natively or
    through the legacy ``cache()`` path (:mod:`imagebackend.shim`), using
    the driver's own template functions (mkfs ext4, mkswap)."""

    def __init__(self, backend: imagebackend.Backend, image_type: str,
                 image_id: str, shape: Shape):
        self.backend = backend
        self.image_type = image_type
        self.image_id = image_id
        self.shape = shape
        self.ephemeral = templates.ephemeral(backend.conf, shape.ephemeral,
                                             'ephemeral0', 'linux')
        self.swap = templates.Swap(shape.swap)

    def new_instance(self) -> instance_mod.Instance:
        return instance_mod.Instance(image_ref=self.image_id, name='bench')

    def create(self, instance, path: str = 'native') -> dict[str, float]:
        """Create root, ephemeral and swap; return seconds per disk."""
        b, t = self.backend, self.image_type
        root = b.by_name(instance, 'disk', t)
        eph = b.by_name(instance, 'disk.local', t)
        swap = b.by_name(instance, 'disk.swap', t)
        eph_tpl, swap_tpl = self.ephemeral, self.swap
        times = {}
        t0 = time.perf_counter()
        if path == 'native':
            # One batch of records, as the driver's spawn flow makes them
            # (the root's time includes the creating write, the swap's the
            # created one).
            todo = [disks.DiskFromImage(image=root, size=self.shape.root,
                                        image_id=self.image_id),
                    disks.DiskFromFunc(image=eph, size=self.shape.ephemeral,
                                       func=eph_tpl,
                                       cache_name=eph_tpl.cache_name),
                    disks.DiskFromFunc(image=swap, size=self.shape.swap,
                                       func=swap_tpl,
                                       cache_name=swap_tpl.cache_name)]
            with b.batch(instance, todo):
                root.create_from_image(None, self.image_id, self.shape.root)
                t1 = time.perf_counter()
                eph.create_from_func(None, eph_tpl, eph_tpl.cache_name,
                                     self.shape.ephemeral)
                t2 = time.perf_counter()
                swap.create_from_func(None, swap_tpl, swap_tpl.cache_name,
                                      self.shape.swap)
        else:
            shim.create_from_image(root, None, self.image_id,
                                   self.shape.root)
            t1 = time.perf_counter()
            shim.create_from_func(eph, None, eph_tpl, eph_tpl.cache_name,
                                  self.shape.ephemeral)
            t2 = time.perf_counter()
            shim.create_from_func(swap, None, swap_tpl, swap_tpl.cache_name,
                                  self.shape.swap)
        t3 = time.perf_counter()
        times.update(root=t1 - t0, ephemeral=t2 - t1, swap=t3 - t2)
        return times


def is_qemu_img_info(cmd: tuple[str, ...]) -> bool:
    return len(cmd) > 1 and os.path.basename(cmd[0]) == 'qemu-img' and \
        cmd[1] == 'info'


def command_names(cmds: Iterable[tuple[str, ...]]) -> dict[str, int]:
    """``{'qemu-img info': 4, 'mkfs': 1, ...}``."""
    out: dict[str, int] = {}
    for c in cmds:
        name = os.path.basename(c[0])
        if name == 'qemu-img' and len(c) > 1:
            name += ' ' + c[1]
        out[name] = out.get(name, 0) + 1
    return out
