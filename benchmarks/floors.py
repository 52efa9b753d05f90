"""The floor of each backend: the bare commands that make the same disks.

A floor is what an operator would type to get an instance's disks on that
backend with nothing else around it: no records, no locks, no cache
bookkeeping. The spawn suite measures the library against it in the same
run. One entry per backend in :data:`FLOORS`; a suite runs every entry
whose :meth:`Floor.unavailable` says nothing.

Adding a backend (Lvm, Rbd, Ploop) is adding one subclass here: its
``image_type`` (the name ``Backend.backend()`` takes), the tools it needs,
``configure()`` for host options (a volume group, a Ceph pool), and
``instance()`` running its bare commands, e.g. Lvm: ``lvcreate -L <size>
-n <uuid>_disk <vg>`` + ``qemu-img convert -n -O raw <base> /dev/<vg>/..``
per disk; Rbd: one ``rbd clone <pool>/<image>@snap <pool>/<uuid>_disk``;
Ploop: ``ploop init`` + ``ploop restore-descriptor``. The suites do not
change.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from typing import ClassVar

from benchmarks import env
from benchmarks.core import Target


def bare(*cmd: str) -> None:
    """Run one floor command directly (subprocess, no library)."""
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


class Floor:
    image_type: ClassVar[str]
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

    def configure(self, conf) -> None:
        """Host options the backend needs (none for file backends)."""

    def prepare(self, maker: env.InstanceMaker) -> None:
        """Before measuring: whatever the floor reuses from the cache."""

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
    instance_target = Target('<=', 2.0, why='issue 4: a Qcow2 instance from '
                             'a cached base <= 2x three bare qemu-img create')

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


#: image type -> floor, in report order.
FLOORS: dict[str, Floor] = {f.image_type: f for f in (Qcow2Floor(),
                                                       FlatFloor())}


def available() -> list[Floor]:
    return [f for f in FLOORS.values() if f.unavailable() is None]


def unavailable() -> dict[str, str]:
    return {name: why for name, f in FLOORS.items()
            if (why := f.unavailable()) is not None}
