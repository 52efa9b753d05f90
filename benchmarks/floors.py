"""The floor of each backend: the bare commands that make the same disks.

A floor is what an operator would type to get an instance's disks on that
backend with nothing else around it: no records, no locks, no cache
bookkeeping. The spawn suite measures the library against it in the same
run. One entry per backend in :data:`FLOORS`; a suite runs every entry
whose :meth:`Floor.unavailable` says nothing.

A floor's ``scope`` says what it makes: ``'instance'`` (Qcow2, Flat: root,
ephemeral and swap; every suite runs these) or ``'root'`` (Lvm, Rbd,
Ploop: the root disk from the cached image only; the spawn and bytes
suites run these, see :class:`RootFloor`). A backend that needs a host
environment (a volume group, a Ceph cluster) makes it in
:meth:`Floor.environment`; :class:`Environments` enters it the first time
a suite needs it and keeps it for the run's later suites (the command
closes them all at the end, also on errors and signals). The host's
options are set in :meth:`Floor.configure`. The suites do not name
backends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from typing import ClassVar, Iterator

from benchmarks import env
from benchmarks.core import Target


def bare(*cmd: str) -> None:
    """Run one floor command directly (subprocess, no library)."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


class Floor:
    image_type: ClassVar[str]
    #: 'instance' (root, ephemeral, swap) or 'root' (:class:`RootFloor`).
    scope: ClassVar[str] = 'instance'
    tools: ClassVar[tuple[str, ...]] = ()
    # What the bare instance / root disk is, for the report.
    instance_text: ClassVar[str]
    root_text: ClassVar[str]
    # The targets for this backend (None: no target stated).
    instance_target: ClassVar[Target | None] = None
    root_target: ClassVar[Target | None] = None

    def unavailable(self) -> str | None:
        """Why this backend cannot be measured here, or None."""
        missing = [t for t in self.tools if shutil.which(t) is None]
        if missing:
            return f'missing tools: {", ".join(missing)}'
        return None

    @contextlib.contextmanager
    def environment(self, directory: str, sizes: env.Sizes,
                    log) -> Iterator[None]:
        """What the backend needs on the host while suites measure it
        (made under ``directory``, a fresh path; undone on exit, also on
        errors). Nothing for file backends."""
        yield

    def configure(self, conf) -> None:
        """Host options the backend needs (none for file backends)."""

    def prepare(self, maker: env.InstanceMaker) -> dict | None:
        """Before measuring: whatever the floor reuses from the cache (or
        the backend's storage); may return context for the report."""

    def instance(self, maker: env.InstanceMaker, entry,
                 target_dir: str) -> dict[str, float]:
        """Make root, ephemeral and swap in ``target_dir`` (a new directory
        on the same filesystem as the host's disks) with bare commands;
        return seconds per disk and the number of processes run."""
        raise NotImplementedError


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Qcow2Floor(Floor):
    image_type = 'qcow2'
    tools = ('qemu-img',)
    instance_text = ('3 bare `qemu-img create -f qcow2 -F raw -b <base>` '
                     '(root on the image, ephemeral and swap on their '
                     'cached templates)')
    root_text = '1 bare `qemu-img create -f qcow2 -F raw -b <base>`'
    instance_target = Target('<=', 1.0, why='issue 12: a Qcow2 instance '
                             'from a cached base (overlays written '
                             'in-process) beats three bare qemu-img create')

    def prepare(self, maker):
        cache = maker.backend.image_cache
        cache.ensure_template(maker.ephemeral.cache_name, maker.ephemeral)
        cache.ensure_template(maker.swap.cache_name, maker.swap)

    def instance(self, maker, entry, target_dir):
        cache = maker.backend.image_cache
        shape = maker.shape
        disks = (('root', entry.path, entry.format, shape.root),
                 ('ephemeral', cache.path(maker.ephemeral.cache_name), 'raw',
                  shape.ephemeral),
                 ('swap', cache.path(maker.swap.cache_name), 'raw',
                  shape.swap))
        out: dict[str, float] = {'processes': 0}
        for name, base, fmt, size in disks:
            path = os.path.join(target_dir, name)
            out[name] = _timed(lambda: bare(
                'qemu-img', 'create', '-q', '-f', 'qcow2', '-F', fmt,
                '-b', base, path, str(size)))
            out['processes'] += 1
        return out


class FlatFloor(Floor):
    image_type = 'flat'
    tools = ('cp', 'truncate', 'mkfs', 'mkswap')
    instance_text = ('bare `cp --sparse=always <base>` + `truncate` (root), '
                     '`truncate` + the same mkfs / mkswap command lines '
                     '(ephemeral, swap)')
    root_text = 'bare `cp --sparse=always <base> <disk>` + `truncate -s`'
    root_target = Target('<=', 1.2, why='issue 4: Flat on ext4 <= 1.2x a '
                         "sparse cp of the base's data")

    def instance(self, maker, entry, target_dir):
        shape = maker.shape
        root = os.path.join(target_dir, 'root')
        eph = os.path.join(target_dir, 'ephemeral')
        swap = os.path.join(target_dir, 'swap')

        def make_root():
            bare('cp', '--sparse=always', entry.path, root)
            bare('truncate', '-s', str(shape.root), root)

        def make_eph():
            bare('truncate', '-s', str(shape.ephemeral), eph)
            bare(*maker.ephemeral.command(eph))

        def make_swap():
            bare('truncate', '-s', str(shape.swap), swap)
            bare(*maker.swap.command(swap))

        return {'root': _timed(make_root), 'ephemeral': _timed(make_eph),
                'swap': _timed(make_swap), 'processes': 6}


class RootFloor(Floor):
    """A floor for the root disk alone (from the cached image, at the
    instance's root size). ``target_dir`` is a new directory under the
    host's instances_path; its basename is a fresh name the floor may use
    for a volume (an LV, an RBD image)."""

    scope = 'root'
    # How allocated bytes are told, for the report.
    bytes_text: ClassVar[str]

    def root(self, maker: env.InstanceMaker, entry,
             target_dir: str) -> dict[str, float]:
        """Make the root disk with bare commands; return its seconds
        ('root') and the number of processes run ('processes')."""
        raise NotImplementedError

    #: What :meth:`durable_root` runs, for floors whose :meth:`root`
    #: leaves the data in the page cache (None: no such floor).
    durable_text: ClassVar[str | None] = None

    def durable_root(self, maker: env.InstanceMaker, entry,
                     target_dir: str) -> dict[str, float]:
        """:meth:`root`, with the data on stable storage when it returns,
        as the library's is (only floors with a :attr:`durable_text`)."""
        raise NotImplementedError

    def drop(self, maker: env.InstanceMaker, target_dir: str) -> None:
        """Remove what :meth:`root` made outside ``target_dir`` (untimed;
        the suite removes the directory)."""

    def allocated(self, maker: env.InstanceMaker, target_dir: str) -> int:
        """Allocated bytes of the floor's root disk."""
        raise NotImplementedError

    def native_allocated(self, disk) -> int:
        """Allocated bytes of the library's root disk, told the same way."""
        return disk.allocated_bytes()


class LvmFloor(RootFloor):
    image_type = 'lvm'
    tools = ('lvcreate', 'lvremove', 'losetup', 'qemu-img')
    root_text = ('bare `lvcreate -y -L <bytes>b -n <lv> <vg>` + `qemu-img '
                 'convert -f raw -O raw -n <base> <LV device>`')
    bytes_text = 'LV size (lvs), both sides'
    root_target = Target('<=', 1.1, why='issue 12: no vgs / lvs round trip '
                         'per disk (lvcreate reports what they checked)')

    def unavailable(self):
        if os.geteuid() != 0 or not os.path.exists('/dev/loop-control'):
            return 'needs root and loop devices (a volume group on a loop ' \
                   'device)'
        return super().unavailable()

    @contextlib.contextmanager
    def environment(self, directory, sizes, log):
        from benchmarks import lvmenv
        # Thick LVs: the native and the floor root of one repetition, and
        # room for extent rounding.
        size = 2 * sizes.root + 2 * sizes.image_virtual + 256 * env.MiB
        with lvmenv.volume_group(directory, size) as (self.lvm, self.vg):
            log(f'lvm: volume group {self.vg} ({size // env.MiB} MiB, '
                'loop devices, activation=0)')
            try:
                yield
            finally:
                self.lvm = self.vg = None

    def configure(self, conf):
        conf.set_override('images_volume_group', self.vg, group='libvirt')
        # Removing a disk between repetitions must not shred it (untimed,
        # but a full run's root is 10 GiB).
        conf.set_override('volume_clear', 'none', group='libvirt')

    # qemu-img convert's default cache mode is 'unsafe': the floor's data
    # is still in the page cache when it returns; the library's is not.
    durable_text = ('bare `lvcreate` + `qemu-img convert -f raw -O raw -t '
                    'none -n <base> <LV device>` (O_DIRECT and a flush: the '
                    'data on stable storage, as the library leaves it)')

    def root(self, maker, entry, target_dir, cache=()):
        lv = os.path.basename(target_dir)
        dev = os.path.join('/dev', self.vg, lv)

        def make():
            bare('lvcreate', '-y', '-L', f'{maker.shape.root}b', '-n', lv,
                 self.vg)
            bare('qemu-img', 'convert', '-f', 'raw', '-O', 'raw', *cache,
                 '-n', entry.path, dev)
        return {'root': _timed(make), 'processes': 2}

    def durable_root(self, maker, entry, target_dir):
        return self.root(maker, entry, target_dir, cache=('-t', 'none'))

    def drop(self, maker, target_dir):
        lv = os.path.basename(target_dir)
        if lv in self.lvm.lvs(self.vg):
            bare('lvremove', '-f', f'{self.vg}/{lv}')   # the wrapper: sync

    def allocated(self, maker, target_dir):
        return self.lvm.lvs(self.vg)[os.path.basename(target_dir)]['size']


class RbdFloor(RootFloor):
    image_type = 'rbd'
    tools = ('rbd', 'ceph', 'ceph-mon', 'ceph-osd', 'ceph-authtool',
             'monmaptool')
    root_text = ('bare `rbd clone <pool>/<base>@snap <pool>/<name>` (the '
                 'base already in the pool)')
    bytes_text = 'Rbd.allocated_bytes() (whole RADOS objects the image ' \
                 'itself holds; the parent not counted), both sides'
    root_target = Target('<=', 1.1, why='issue 12: one cluster connection '
                         'per Backend, reused (not one per disk)')

    def unavailable(self):
        try:
            from benchmarks import cephenv  # noqa: F401 (imports pytest)
            from imagebackend.backends import rbd
        except ImportError as e:
            return f'cannot import the Ceph test environment: {e}'
        if rbd.librbd is None or rbd.rados is None:
            return 'python3-rados/python3-rbd bindings not importable'
        return super().unavailable()

    @contextlib.contextmanager
    def environment(self, directory, sizes, log):
        from benchmarks import cephenv
        with cephenv.cluster(directory) as self.ceph:
            log(f'rbd: Ceph cluster up in {self.ceph.start_seconds:.1f} s '
                f'(one mon, one memstore OSD, pool {self.ceph.pool})')
            try:
                yield
            finally:
                self.ceph = None

    def configure(self, conf):
        conf.set_override('images_rbd_pool', self.ceph.pool, group='libvirt')
        conf.set_override('images_rbd_ceph_conf', self.ceph.conf,
                          group='libvirt')

    def _rbd(self, *args: str) -> None:
        bare('rbd', '--conf', self.ceph.conf, *args)

    def prepare(self, maker):
        """Put the base in the pool the library's way (one throwaway disk),
        and time one bare ``rbd import`` of the cached base (context)."""
        from imagebackend import names
        from imagebackend.backends import rbd
        base = names.image_cache_name(maker.image_id)
        # A base an earlier suite of this run left in the pool holds that
        # suite's image (same id, other data): remove it (no clones left).
        image = f'{self.ceph.pool}/{base}'
        for args in (('snap', 'unprotect', f'{image}@{rbd.BASE_SNAP}'),
                     ('snap', 'purge', '--no-progress', image),
                     ('rm', '--no-progress', image)):
            subprocess.run(('rbd', '--conf', self.ceph.conf) + args,
                           stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        inst = maker.new_instance()
        disk = maker.backend.by_name(inst, 'disk', 'rbd')
        native_import = _timed(lambda: disk.create_from_image(
            None, maker.image_id, maker.shape.root))
        disk.delete()
        self.base = f'{image}@{rbd.BASE_SNAP}'
        entry = maker.backend.image_cache.get(base)
        seconds = _timed(lambda: self._rbd(
            'import', '--no-progress', '--image-format', '2', '--dest-pool',
            self.ceph.pool, entry.path, 'floor-import'))
        self._rbd('rm', '--no-progress', f'{self.ceph.pool}/floor-import')
        return {'bare_rbd_import_of_base_s': seconds,
                'native_first_disk_with_import_s': native_import,
                'base': self.base,
                'cluster_start_s': round(self.ceph.start_seconds, 2)}

    def root(self, maker, entry, target_dir):
        name = os.path.basename(target_dir)
        return {'root': _timed(lambda: self._rbd(
            'clone', self.base, f'{self.ceph.pool}/{name}')),
                'processes': 1}

    def drop(self, maker, target_dir):
        self._rbd('rm', '--no-progress',
                  f'{self.ceph.pool}/{os.path.basename(target_dir)}')

    def allocated(self, maker, target_dir):
        name = os.path.basename(target_dir)
        disk = maker.backend.by_libvirt_path(
            None, f'rbd:{self.ceph.pool}/{name}', 'rbd')
        return disk.allocated_bytes()


class PloopFloor(RootFloor):
    image_type = 'ploop'
    tools = ('ploop', 'cp')
    root_text = ('bare `cp --sparse=always <base> <dir>/root.hds` + `ploop '
                 'restore-descriptor -f raw <dir> <dir>/root.hds`')
    bytes_text = 'du (st_blocks) of the disk directory, both sides'

    def root(self, maker, entry, target_dir):
        data = os.path.join(target_dir, 'root.hds')

        def make():
            bare('cp', '--sparse=always', entry.path, data)
            bare('ploop', 'restore-descriptor', '-f', 'raw', target_dir,
                 data)
        return {'root': _timed(make), 'processes': 2}

    def allocated(self, maker, target_dir):
        return env.allocated(target_dir)

    def native_allocated(self, disk):
        return env.allocated(disk.path)


class Environments:
    """The backends' environments for one run, under ``directory``: each
    made on first use (:meth:`enter`), all undone by :meth:`close`."""

    def __init__(self, directory: str, sizes: env.Sizes):
        self.directory = directory
        self.sizes = sizes
        self._stack = contextlib.ExitStack()
        self._entered: set[str] = set()

    def enter(self, floor: Floor, log) -> None:
        if floor.image_type not in self._entered:
            self._stack.enter_context(floor.environment(
                os.path.join(self.directory, floor.image_type), self.sizes,
                log))
            self._entered.add(floor.image_type)

    def close(self) -> None:
        self._entered.clear()
        self._stack.close()


#: image type -> floor, in report order.
FLOORS: dict[str, Floor] = {f.image_type: f for f in (
    Qcow2Floor(), FlatFloor(), LvmFloor(), RbdFloor(), PloopFloor())}
#: The scopes every suite can run; the spawn and bytes suites run both.
INSTANCE = ('instance',)
ALL = ('instance', 'root')


def available(scopes: tuple[str, ...] = INSTANCE) -> list[Floor]:
    return [f for f in FLOORS.values()
            if f.scope in scopes and f.unavailable() is None]


def unavailable(scopes: tuple[str, ...] = INSTANCE) -> dict[str, str]:
    return {name: why for name, f in FLOORS.items() if f.scope in scopes
            and (why := f.unavailable()) is not None}
