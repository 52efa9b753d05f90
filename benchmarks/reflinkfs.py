"""A loop-mounted XFS with reflink, made for one suite and always removed.

``truncate`` + ``mkfs.xfs -q -m reflink=1`` + ``mount -o loop`` (the loop
device is released by ``umount``: mount sets autoclear). The image file is
created only after checking free space, and the mount and the file are
removed when the block ends, also on failure or interruption (the command
turns SIGTERM into SystemExit, so ``finally`` runs).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from typing import Iterator

from imagebackend import fileutils

from benchmarks import env

TOOLS = ('mkfs.xfs', 'mount', 'umount', 'truncate')


def unavailable() -> str | None:
    """Why a loop-mounted XFS cannot be made here, or None."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (f'missing tools: {", ".join(missing)} (Debian: xfsprogs, '
                'mount, coreutils)')
    if os.geteuid() != 0:
        return 'mounting a loop device needs root'
    try:
        with open('/proc/filesystems') as f:
            if 'xfs' not in f.read().split():
                return 'the kernel has no xfs'
    except OSError as e:
        return f'cannot read /proc/filesystems: {e}'
    if not os.path.exists('/dev/loop-control') and not os.path.exists(
            '/dev/loop0'):
        return 'no loop devices (/dev/loop-control)'
    return None


@contextlib.contextmanager
def loop_xfs(workdir: str, size: int, log=print) -> Iterator[str]:
    """Yield the mount point of a fresh ``size``-byte reflink XFS."""
    why = unavailable()
    if why:
        raise RuntimeError(f'cannot make a loop-mounted XFS: {why}')
    free = env.free_bytes(workdir)
    if free < size + 256 * env.MiB:
        raise RuntimeError(
            f'not enough free space under {workdir} for a '
            f'{size / env.GiB:.1f} GiB XFS image: {free / env.GiB:.1f} GiB '
            'free')
    image = os.path.join(workdir, 'xfs.img')
    mnt = os.path.join(workdir, 'xfs-mnt')
    mounted = False
    try:
        env.run('truncate', '-s', str(size), image)
        env.run('mkfs.xfs', '-q', '-m', 'reflink=1', image)
        os.makedirs(mnt)
        env.run('mount', '-o', 'loop', image, mnt)
        mounted = True
        log(f'mounted {size / env.GiB:.1f} GiB XFS (reflink=1) at {mnt}')
        yield mnt
    finally:
        if mounted:
            _umount(mnt, log)
        if os.path.isdir(mnt) and not os.path.ismount(mnt):
            fileutils.remove_path(mnt)
        if not os.path.ismount(mnt):
            fileutils.remove_path(image)


def _umount(mnt: str, log) -> None:
    for args in (('umount', mnt), ('umount', '-l', mnt)):
        p = subprocess.run(args, capture_output=True, text=True)
        if p.returncode == 0:
            return
        log(f'{" ".join(args)} failed: {p.stderr.strip()}')
    raise RuntimeError(f'could not unmount {mnt}')
