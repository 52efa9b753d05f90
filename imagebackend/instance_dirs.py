"""What lives under instances_path: instance directories and their disks.

A host's instances_path holds one directory per instance, named by its
uuid, beside the image cache (``_base``) and the lock directory
(``locks``); during a resize Nova keeps ``<uuid>_resize`` too. Like Nova's
own scans, only directories named by a uuid are instances.

An instance directory holds disks and other files (``console.log``,
Nova's ``disk.info``, the library's ``disks.json``). A file is a disk
when its name is one Nova's driver gives disks (``disk``, ``disk.local``,
``disk.eph0``, ``disk.swap``, ``disk.config``, ``kernel``, ``ramdisk``
and their ``.rescue`` forms) or when Nova's disk.info lists it.
"""

from __future__ import annotations

import os
import re

from oslo_utils import uuidutils

from imagebackend import disk_info
from imagebackend import exception
from imagebackend import names

RESIZE_SUFFIX = '_resize'

# The names Nova's driver gives an instance's local disks.
_DISK_NAME = re.compile(
    r'^(disk(\.local|\.swap|\.config|\.eph\d+)?|kernel|ramdisk)'
    r'(\.rescue)?$')


def instance_uuids(instances_path: str) -> list[str]:
    """The uuids of the instance directories under ``instances_path``
    (``_base``, ``locks``, ``<uuid>_resize`` and anything else not named by
    a uuid are not instances)."""
    try:
        listing = os.listdir(instances_path)
    except FileNotFoundError:
        return []
    return sorted(n for n in listing
                  if uuidutils.is_uuid_like(n) and
                  os.path.isdir(os.path.join(instances_path, n)))


def resize_dirs(instances_path: str) -> list[str]:
    """The ``<uuid>_resize`` directories under ``instances_path``: the old
    disks of a resize under way, kept (with the bases they read) until the
    resize is confirmed or reverted."""
    try:
        listing = os.listdir(instances_path)
    except FileNotFoundError:
        return []
    return sorted(n for n in listing
                  if n.endswith(RESIZE_SUFFIX) and
                  uuidutils.is_uuid_like(n[:-len(RESIZE_SUFFIX)]) and
                  os.path.isdir(os.path.join(instances_path, n)))


def is_disk_name(name: str) -> bool:
    """Whether Nova's driver gives a disk this name."""
    return bool(_DISK_NAME.match(name))


def disk_files(instance_dir: str) -> list[str]:
    """The names of the disks in ``instance_dir``: files (or ploop
    directories) named as Nova names disks, and whatever Nova's disk.info
    lists in this directory that is there."""
    try:
        listing = os.listdir(instance_dir)
    except FileNotFoundError:
        return []
    found = {n for n in listing if is_disk_name(n)}
    for name in listed_in_disk_info(instance_dir):
        if name in listing:
            found.add(name)
    return sorted(found)


def listed_in_disk_info(instance_dir: str) -> dict[str, str]:
    """Disk name -> format, for the entries of the disk.info in
    ``instance_dir`` that name a path in it (Nova keys them by absolute
    path; entries for elsewhere, left by a move, are not this directory's).
    Names that are not safe disk names are left out."""
    entries = disk_info.read(os.path.join(instance_dir, disk_info.FILENAME))
    here = os.path.abspath(instance_dir)
    out = {}
    for path, fmt in entries.items():
        directory, name = os.path.split(path)
        if directory != here:
            continue
        try:
            out[names.check_disk_name(name)] = fmt
        except exception.InvalidDiskName:
            continue  # a name never made into a path here
    return out
