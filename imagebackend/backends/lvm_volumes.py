"""The lvm2 side of the Lvm backend (:mod:`imagebackend.backends.lvm`).

Names as LVM accepts them (a disk's LV ``<instance uuid>_<disk name>``, a
thin pool's base LV ``_base_<cache name>``), what ``vgs`` and ``lvs``
report about a volume group and its LVs, the typed error of a volume group
without the space, and the fsync of a block device. Module-level: none of
it depends on a disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from imagebackend import exception
from imagebackend import privileged
from imagebackend import processes

#: Where LVM puts ``<vg>/<lv>`` device nodes.
DEVICE_ROOT = '/dev'

#: Prefix of a thin pool's base LV, one per cached image.
BASE_PREFIX = '_base_'

# LVM limits (lvm2 lib/misc/lvm-string.c): at most 127 characters, these
# characters, not '.'/'..', no reserved prefix and no reserved substring.
_MAX_NAME = 127
_NAME_CHARS = re.compile(r'^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$')
_RESERVED_PREFIXES = ('snapshot', 'pvmove')
_RESERVED_PARTS = ('_cdata', '_cmeta', '_corig', '_cpool', '_cvol', '_iorig',
                   '_mimage', '_mlog', '_pmspare', '_rimage', '_rmeta',
                   '_tdata', '_tmeta', '_vdata', '_vorigin', '_wcorig')

#: lvs/vgs answers are parsed, so always ask for the same plain shape.
REPORT = ('--noheadings', '--nosuffix', '--units', 'b', '--separator', '|')
VGS = ('vgs', *REPORT, '-o', 'vg_name,vg_size,vg_free,vg_extent_size')
LVS = ('lvs', *REPORT, '-o', 'lv_name,lv_size,segtype')


class InsufficientSpace(exception.ImageBackendError):
    """The volume group cannot hold a new or grown logical volume."""

    msg_fmt = ("Insufficient free space in volume group %(vg)s: "
               "%(needed)d bytes needed, %(free)d bytes free.")


def escape(disk_name: str) -> str:
    """Nova's escaping of a disk name inside an LV name."""
    return disk_name.replace('_', '__')


def unescape(escaped: str) -> str:
    return escaped.replace('__', '_')


def check_lvm_name(name: str, what: str = 'logical volume name', *,
                   lv: bool = True) -> str:
    """``name`` if LVM accepts it as an LV (or, ``lv=False``, a VG) name,
    else InvalidDiskName."""
    reason = None
    if not isinstance(name, str) or not name:
        reason = f'{what} is empty'
    elif len(name) > _MAX_NAME:
        reason = f'{what} is longer than {_MAX_NAME} characters'
    elif name in ('.', '..') or not _NAME_CHARS.fullmatch(name):
        reason = f'{what} may only use letters, digits and +_.- and must ' \
                 'not start with -'
    elif lv and (name.startswith(_RESERVED_PREFIXES) or any(
            p in name for p in _RESERVED_PARTS)):
        reason = f'{what} uses a name LVM reserves'
    if reason:
        raise exception.InvalidDiskName(name=name, reason=reason)
    return name


def lv_name(instance_uuid: str, disk_name: str) -> str:
    """``<instance uuid>_<disk name, '_' doubled>``, as Nova names it."""
    return check_lvm_name(f'{instance_uuid}_{escape(disk_name)}')


def base_lv_name(cache_name: str) -> str:
    """The thin base LV of a cache entry (hashed if the name is too long)."""
    name = BASE_PREFIX + cache_name
    if len(name) > _MAX_NAME or any(p in name for p in _RESERVED_PARTS):
        name = BASE_PREFIX + 'h' + hashlib.sha1(
            cache_name.encode()).hexdigest()
    return check_lvm_name(name)


def flush_device(path: str, location: str | None = None) -> None:
    """fsync the block device ``path`` (DiskNotFound if it is not there)."""
    try:
        privileged.fsync(path)
    except FileNotFoundError:
        raise exception.DiskNotFound(location=location or path)


def _round_up(size: int, step: int) -> int:
    return -(-int(size) // step) * step


@dataclasses.dataclass(frozen=True)
class VolumeGroup:
    """What ``vgs`` says about a volume group."""

    name: str
    size: int
    free: int
    extent_size: int

    def round(self, size: int) -> int:
        return _round_up(size, self.extent_size)


@dataclasses.dataclass(frozen=True)
class LogicalVolume:
    """What ``lvs`` says about a logical volume."""

    name: str
    size: int
    segtype: str

    @property
    def thin(self) -> bool:
        return self.segtype == 'thin'


def report(vg: str, *cmd: str) -> str:
    """Run an lvs/vgs report on ``vg``; a missing VG is a typed error."""
    try:
        out, _err = processes.execute(*cmd, vg, root=True)
    except exception.ProcessError as e:
        if 'not found' in e.stderr:
            raise exception.BackendUnavailable(
                image_type='lvm', reason=f'volume group {vg} not found')
        raise
    return out


def volume_group(vg: str) -> VolumeGroup:
    out = report(vg, *VGS)
    for line in out.splitlines():
        fields = [f.strip() for f in line.split('|')]
        if len(fields) == 4 and fields[0] == vg:
            return VolumeGroup(vg, int(fields[1]), int(fields[2]),
                               int(fields[3]))
    raise exception.BackendUnavailable(
        image_type='lvm', reason=f'vgs does not report volume group {vg}')


def logical_volumes(vg: str) -> dict[str, LogicalVolume]:
    """Every LV of ``vg`` now (never cached: LVs come and go)."""
    out = report(vg, *LVS)
    found: dict[str, LogicalVolume] = {}
    for line in out.splitlines():
        fields = [f.strip() for f in line.split('|')]
        if len(fields) == 3 and fields[0] and fields[0] not in found:
            # A multi-segment LV has one row per segment: the first counts.
            found[fields[0]] = LogicalVolume(fields[0], int(fields[1]),
                                             fields[2])
    return found
