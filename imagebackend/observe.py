"""What is really there for a recorded disk, measured without changing it.

A disk's record says what it is; this module looks at the storage with the
record's own format (``qemu-img info -f <format>``, never a probe), asks
format_inspector what the bytes look like (a check, never the source of
truth) and reads the backing file a disk with one names in its header.
Comparing the two is :mod:`imagebackend.verify`'s job.
"""

from __future__ import annotations

import dataclasses
import os

from oslo_utils.imageutils import format_inspector

from imagebackend import exception
from imagebackend import formats
from imagebackend import parallels
from imagebackend import qemu
from imagebackend import records as records_mod


@dataclasses.dataclass(frozen=True)
class InstanceRef:
    """The least an instance must be for a disk object: its uuid."""

    uuid: str


@dataclasses.dataclass(frozen=True)
class Backing:
    """The backing file a disk's header names."""

    path: str                 # as the header names it (absolute)
    format: str | None        # the format the header gives it
    exists: bool
    # The image cache entry it is, or None if it is outside the cache.
    entry: str | None


@dataclasses.dataclass(frozen=True)
class DiskState:
    """One disk as its storage shows it (None: not told, see ``problem``)."""

    name: str
    backend: str
    location: str
    exists: bool
    # Whether format_inspector looked at the bytes (regular files only),
    # and what it sees in them (None: several formats at once).
    content_checked: bool = False
    content_format: str | None = None
    # Measured through the record's format.
    virtual_size: int | None = None
    allocated: int | None = None
    backing: Backing | None = None
    # Why something could not be measured (the disk cannot be read as
    # its record's format, its backend cannot be reached...).
    problem: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def content_format(path: str) -> str | None:
    """What the bytes of the file ``path`` look like to format_inspector
    (``ploop`` for a parallels header), or None if it cannot tell (the
    bytes match several formats). Nothing is refused here: a guest may
    write anything into its own raw disk."""
    if parallels.read_parallels_header(path) is not None:
        return 'ploop'
    try:
        detected = format_inspector.detect_file_format(path)
    except format_inspector.ImageFormatError:
        return None
    return str(detected) if detected is not None else None


def formats_agree(declared: str, seen: str | None) -> bool:
    """Whether bytes that look like ``seen`` can be a disk of format
    ``declared``: a raw disk may hold a partition table or an ISO image;
    any other format must be what its header says."""
    if declared in formats.RAW_LIKE:
        return seen in formats.RAW_LIKE or seen == 'gpt'
    return seen is not None and formats.qemu_format(seen) == \
        formats.qemu_format(declared)


def open_disk(backend, record: records_mod.DiskRecord):
    """The disk object of ``record``'s backend, as the record says it is."""
    cls = backend.image_class(record.backend)
    return cls(instance=InstanceRef(record.instance), disk_name=record.name,
               backend=backend, record=record)


def observe(backend, record: records_mod.DiskRecord) -> DiskState:
    """Measure the disk ``record`` describes; nothing is changed."""
    try:
        disk = open_disk(backend, record)
    except exception.ImageBackendError as e:
        return DiskState(name=record.name, backend=record.backend,
                         location=record.location, exists=False,
                         problem=f'cannot open it: {e.message}')
    state = dict(name=record.name, backend=record.backend,
                 location=disk.location)
    try:
        if not disk.exists():
            return DiskState(exists=False, **state)
    except exception.ImageBackendError as e:
        return DiskState(exists=False, problem=e.message, **state)
    state['exists'] = True
    state['allocated'] = disk.allocated_bytes()
    if disk.path and os.path.isfile(disk.path):
        try:
            state['content_format'] = content_format(disk.path)
            state['content_checked'] = True
        except OSError as e:
            return DiskState(problem=f'cannot read it: {e}', **state)
    try:
        if disk.capabilities.backing_in_cache:
            # One read of the header, with the record's format named.
            info = qemu.info(disk.path, record.format)
            state['virtual_size'] = int(info['virtual-size'])
            state['backing'] = _backing(backend, disk.path, info)
        else:
            state['virtual_size'] = disk.get_disk_size(disk.path)
    except exception.ImageBackendError as e:
        reason = getattr(e, 'stderr', '') or e.message
        return DiskState(problem=f'cannot be read as {record.format}: '
                                 f'{reason.strip()}', **state)
    return DiskState(**state)


def _backing(backend, path: str, info: dict) -> Backing | None:
    named = info.get('full-backing-filename') or info.get('backing-filename')
    if not named:
        return None
    if not os.path.isabs(named):
        named = os.path.join(os.path.dirname(path), named)
    real = os.path.realpath(named)
    base_dir = os.path.realpath(backend.image_cache.base_dir)
    entry = os.path.basename(real) if os.path.dirname(real) == base_dir \
        else None
    return Backing(path=named, format=info.get('backing-filename-format'),
                   exists=os.path.exists(named), entry=entry)
