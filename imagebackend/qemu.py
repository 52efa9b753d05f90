"""qemu-img commands, always with explicit formats (``-f``, ``-F``, ``-O``).

qemu-img never guesses a format here: a guessed format on an attacker's file
is how a raw disk gets read as qcow2 with a host file as its backing file.
"""

from __future__ import annotations

import json
import os

from oslo_concurrency import processutils
from oslo_utils import units

from imagebackend import processes


def create_command(path: str, fmt: str, size: int | None = None, *,
                   backing: str | None = None,
                   backing_fmt: str | None = None,
                   options: dict[str, str] | None = None
                   ) -> tuple[str, ...]:
    """The ``qemu-img create`` argv :func:`create` runs (plans show it)."""
    cmd = ['qemu-img', 'create', '-q', '-f', fmt]
    for key, value in (options or {}).items():
        cmd += ['-o', f'{key}={value}']
    if backing is not None:
        if backing_fmt is None:
            raise ValueError('a backing file needs an explicit format')
        cmd += ['-F', backing_fmt, '-b', backing]
    cmd.append(path)
    if size is not None:
        cmd.append(str(int(size)))
    return tuple(cmd)


def create(path: str, fmt: str, size: int | None = None, *,
           backing: str | None = None, backing_fmt: str | None = None,
           options: dict[str, str] | None = None) -> None:
    if fmt == 'raw' and backing is None and size is not None and \
            not options:
        # qemu-img create -f raw is a sparse file of that size; no process.
        with open(path, 'xb') as f:
            f.truncate(int(size))
        return
    processes.execute(*create_command(path, fmt, size, backing=backing,
                                      backing_fmt=backing_fmt,
                                      options=options))


def convert_command(src: str, src_fmt: str, dst: str, dst_fmt: str, *,
                    existing_target: bool = False,
                    target_is_zero: bool = False, cache: str | None = None,
                    src_cache: str | None = None,
                    compress: bool = False) -> tuple[str, ...]:
    """The ``qemu-img convert`` argv :func:`convert` runs (plans show it).

    ``target_is_zero``: ``dst`` exists and reads as zeroes (an image just
    made), so qemu-img skips writing zero blocks; it implies ``-n``.
    """
    cmd = ['qemu-img', 'convert', '-q']
    if src_cache:
        cmd += ['-T', src_cache]
    if target_is_zero:
        cmd += ['-n', '--target-is-zero']
    cmd += ['-f', src_fmt, '-O', dst_fmt]
    if cache:
        cmd += ['-t', cache]
    if compress:
        cmd.append('-c')
    if existing_target and not target_is_zero:
        cmd.append('-n')
    return tuple(cmd + [src, dst])


def convert(src: str, src_fmt: str, dst: str, dst_fmt: str, *,
            existing_target: bool = False, target_is_zero: bool = False,
            cache: str | None = None, src_cache: str | None = None,
            compress: bool = False, root: bool = False) -> None:
    """``qemu-img convert`` with explicit formats; ``root=True`` where
    ``src`` or ``dst`` is a block device (:mod:`imagebackend.privileged`).
    """
    processes.execute(*convert_command(
        src, src_fmt, dst, dst_fmt, existing_target=existing_target,
        target_is_zero=target_is_zero, cache=cache, src_cache=src_cache,
        compress=compress), root=root)


def rebase_unsafe(path: str, fmt: str, backing: str,
                  backing_fmt: str) -> None:
    """Point ``path`` at ``backing`` without copying data (the new backing
    file must hold the same bytes as the old one)."""
    processes.execute('qemu-img', 'rebase', '-q', '-u', '-f', fmt,
                      '-F', backing_fmt, '-b', backing, path)


def resize_command(path: str, fmt: str, size: int) -> tuple[str, ...]:
    """The ``qemu-img resize`` argv :func:`resize` runs (plans show it)."""
    return ('qemu-img', 'resize', '-q', '-f', fmt, path, str(int(size)))


def resize(path: str, fmt: str, size: int) -> None:
    if fmt == 'raw' and os.path.isfile(path):
        # qemu-img resize of a raw file is a truncate; skip the process.
        os.truncate(path, size)
        return
    processes.execute(*resize_command(path, fmt, size))


def info(path: str, fmt: str, *, address_space_gb: int = 2,
         cpu_seconds: int = 30) -> dict:
    """``qemu-img info -f fmt`` under resource limits (for files we did not
    make). The format is mandatory: a caller that does not know it finds
    it from the bytes first (formats.detect), never by qemu-img probing."""
    if not fmt:
        raise ValueError('qemu-img info needs an explicit format')
    limits = processutils.ProcessLimits(
        address_space=address_space_gb * units.Gi, cpu_time=cpu_seconds)
    cmd = ['qemu-img', 'info', '--output=json', '--force-share', '-f', fmt,
           path]
    out, _err = processes.execute(*cmd, prlimit=limits)
    return json.loads(out)


def virtual_size(path: str, fmt: str, **limits) -> int:
    return int(info(path, fmt, **limits)['virtual-size'])
