"""What creating a disk would do, said without doing it.

A plan is a list of :class:`Step`: each names a command line where one
would run (``command``), or says what happens in-process (a download, a
copy, a truncate) with the bytes it moves. Backends that can say what
their ``create_from_*`` would do implement ``Image.plan_create`` with the
helpers here, which read the image cache (never write it) as
``fetch_image`` and ``ensure_template`` would find it.

A plan is advisory: it reads the cache and the image source at one
moment, takes no lock, and a step whose need depends on bytes not yet
fetched says so (``when``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from imagebackend import cache as cache_mod
from imagebackend import exception
from imagebackend import formats
from imagebackend import names
from imagebackend import qemu


# Stands for a temporary directory a step would make (its name is random).
TEMPORARY = '<temporary directory>'


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing creation would do."""

    what: str
    command: tuple[str, ...] | None = None
    # Bytes downloaded from the image source / written on this host (an
    # upper bound where the exact figure depends on the data).
    fetch_bytes: int = 0
    write_bytes: int = 0
    # The condition under which it happens, when not always.
    when: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['command'] = list(self.command) if self.command else None
        return d


@dataclasses.dataclass(frozen=True)
class Base:
    """The cache entry a disk would be made from, as it would be."""

    name: str
    path: str
    format: str
    virtual_size: int | None    # None: known only once fetched
    cached: bool


class Refused(Exception):
    """Creation would stop here (the error it would raise)."""

    def __init__(self, error: exception.ImageBackendError, steps: list[Step]):
        super().__init__(str(error))
        self.error = error
        self.steps = steps


def _check_size(size: int | None, base: Base) -> None:
    if size and base.virtual_size and size < base.virtual_size:
        raise exception.DiskTooSmall(size=size, image_size=base.virtual_size)


def _cached(cache: cache_mod.ImageCache, name: str) -> list[Step] | None:
    """Steps to use entry ``name`` as ``check`` would (None: no entry).
    Raises what ``check`` raises on an entry it would refuse, except a
    digest it has not recomputed yet: then the re-hash is a step."""
    path = cache.path(name)
    entry = cache.get(name)  # CorruptCacheEntry for a broken sidecar
    if entry is None:
        if os.path.exists(path):
            raise exception.CorruptCacheEntry(
                name=name, path=path, reason='its data has no sidecar')
        return None
    steps = [Step(f'use cache entry {path} ({entry.format}, '
                  f'{entry.virtual_size} bytes)')]
    if entry.data_stat != cache_mod.data_stat(os.stat(path)):
        steps.insert(0, Step(
            f're-hash {path}: its data changed (size, mtime or inode) since '
            'its digest was checked; refused if it no longer matches'))
    return steps


def plan_image(cache: cache_mod.ImageCache, image_id: str,
               size: int | None) -> tuple[Base, list[Step]]:
    """The base ``fetch_image`` would give, and how it would get it.
    Raises :class:`Refused` where creation would fail."""
    name = names.image_cache_name(image_id)
    path = cache.path(name)
    steps: list[Step] = []
    try:
        cached = _cached(cache, name)
        if cached is not None:
            entry = cache.get(name)
            base = Base(name, path, entry.format, entry.virtual_size, True)
            _check_size(size, base)
            return base, cached
        if cache.source is None:
            raise exception.ImageNotFound(image_id=image_id)
        meta = cache.source.get_meta(None, image_id)
        declared = cache_mod.declared_format(meta.disk_format)  # as fetch_into
        fmt = formats.qemu_format(declared)
        raw_like = declared in formats.RAW_LIKE
        vsize = meta.virtual_size or (meta.size if raw_like else None)
        part = path + names.PART_SUFFIX
        steps.append(Step(
            f'download image {image_id} ({meta.disk_format}) to {part}, '
            'inspect it (format_inspector: declared format, safety) and '
            'record its digest', fetch_bytes=meta.size or 0,
            write_bytes=meta.size or 0))
        if not raw_like and cache.conf.force_raw_images:
            converted = path + '.converted' + names.PART_SUFFIX
            steps.append(Step(
                'convert it to raw (force_raw_images)',
                command=qemu.convert_command(part, fmt, converted, 'raw'),
                write_bytes=vsize or 0))
            fmt = 'raw'
        steps.append(Step(f'publish {path} with its sidecar'))
        base = Base(name, path, fmt, vsize, False)
        _check_size(size, base)
        return base, steps
    except exception.ImageBackendError as e:
        raise Refused(e, steps)


def plan_template(cache: cache_mod.ImageCache, cache_name: str,
                  func: Callable[[str], None]) -> tuple[Base, list[Step]]:
    """The base ``ensure_template`` would give, and how it would make it."""
    path = cache.path(cache_name)
    try:
        cached = _cached(cache, cache_name)
    except exception.ImageBackendError as e:
        raise Refused(e, [])
    size = getattr(func, 'size', None)
    if cached is not None:
        entry = cache.get(cache_name)
        return Base(cache_name, path, entry.format, entry.virtual_size,
                    True), cached
    part = path + names.PART_SUFFIX
    steps = write_with(func, part, size) + [
        Step(f'publish {path} with its sidecar')]
    return Base(cache_name, path, 'raw', size, False), steps


def write_with(func: Callable[[str], None], target: str,
               size: int | None) -> list[Step]:
    """The steps of a template function writing ``target``: its command
    lines where the function says them (the driver's templates do:
    ``command(target)``, or ``commands(target, root)`` for content built
    in a temporary directory ``root``)."""
    what = f'write {type(func).__name__} into {target}'
    command = getattr(func, 'command', None)
    if callable(command):
        return [Step(what, command=tuple(command(target)),
                     write_bytes=size or 0)]
    commands = getattr(func, 'commands', None)
    if callable(commands):
        argvs = [tuple(c) for c in commands(target, TEMPORARY)]
        return [Step(what if i == 0 else f'... (step {i + 1})', command=argv,
                     write_bytes=(size or 0) if i == 0 else 0)
                for i, argv in enumerate(argvs)]
    return [Step(what, write_bytes=size or 0)]


def preallocate(path: str, size: int | None) -> list[Step]:
    """The step ``Image._preallocate`` adds with preallocate_images=space."""
    if not size:
        return []
    return [Step(f'reserve {size} bytes for {path}',
                 command=('fallocate', '-n', '-l', str(size), path),
                 when='preallocate_images=space, where the filesystem can')]
