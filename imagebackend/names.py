"""Validation and derivation of the names the library turns into paths."""

from __future__ import annotations

import hashlib
import re

from imagebackend import exception

# Disk names (``disk``, ``disk.local``, ``disk.eph0``, ``disk.config.rescue``)
# and cache names (sha1 hex, ``ephemeral_1_ext4_...``, ``swap_512``) become
# path components and LV/RBD image names, so only a plain alphabet is allowed.
_SAFE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9._+-]{0,199}$')

META_SUFFIX = '.meta.json'
PART_SUFFIX = '.part'
# What the library itself keeps beside disks and instance directories: an
# instance's records file, the lock directory and the image cache (its
# default name; '_base' already fails the alphabet). A disk or instance of
# one of these names would overwrite or be mistaken for library state.
RECORDS_FILE = 'disks.json'
LOCKS_DIR = 'locks'
CACHE_DIR = '_base'
RESERVED_NAMES = frozenset({RECORDS_FILE, LOCKS_DIR, CACHE_DIR})
# Files a fetch or a sidecar write put next to a disk or cache entry.
RESERVED_SUFFIXES = (META_SUFFIX, PART_SUFFIX)


def _check(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise exception.InvalidDiskName(name=name, reason=f'{what} is empty')
    if '/' in name or '\\' in name or '\0' in name:
        raise exception.InvalidDiskName(
            name=name, reason=f'{what} must not contain a path separator')
    if '..' in name:
        raise exception.InvalidDiskName(
            name=name, reason=f'{what} must not contain ".."')
    if not _SAFE.fullmatch(name):
        raise exception.InvalidDiskName(
            name=name,
            reason=f'{what} may only use letters, digits and ._+- and must '
                   'start with a letter or digit')
    if name in RESERVED_NAMES:
        raise exception.InvalidDiskName(
            name=name, reason=f'{what} is reserved for the library\'s own '
                              'files')
    if name.endswith(RESERVED_SUFFIXES):
        raise exception.InvalidDiskName(
            name=name, reason=f'{what} uses a reserved suffix')
    return name


def check_disk_name(name: object) -> str:
    """Return ``name`` if it is a safe disk name, else InvalidDiskName."""
    return _check(name, 'disk name')


def check_cache_name(name: object) -> str:
    """Return ``name`` if it is a safe cache entry name."""
    return _check(name, 'cache name')


def check_instance_uuid(uuid: object) -> str:
    """Return ``uuid`` if it is a safe instance directory name."""
    return _check(uuid, 'instance uuid')


def disk_name_from(storage_name: str, instance_uuid: str) -> str | None:
    """The disk name in ``storage_name`` if it is Nova's name of one of
    ``instance_uuid``'s disks on shared storage (``<uuid>_<disk name>``: an
    LV, an RBD image), else None. Not checked: callers undo their own
    escaping first."""
    prefix = check_instance_uuid(instance_uuid) + '_'
    if storage_name.startswith(prefix):
        return storage_name[len(prefix):]
    return None


def image_cache_name(image_id: str) -> str:
    """Nova's cache file name for an image: sha1 of the image id."""
    if not isinstance(image_id, str) or not image_id:
        raise exception.InvalidInput(reason='image id must be a non-empty '
                                            'string')
    return hashlib.sha1(image_id.encode('utf-8')).hexdigest()


def template_name(kind: str, size: int, **traits: str | None) -> str:
    """A cache name for a generated template, e.g. ``ephemeral_1G_ext4_eph0``.

    Every trait that changes the template's bytes (filesystem, label,
    os_type's mkfs command...) is part of the name, so two different
    templates never share one (Nova hashed only some of them). The
    ``ephemeral``/``swap`` prefixes are kept: legacy code keys off them.
    """
    if size % (1024 ** 3) == 0:
        size_part = f'{size // 1024 ** 3}G'
    elif size % (1024 ** 2) == 0:
        size_part = f'{size // 1024 ** 2}M'
    else:
        size_part = f'{size}B'
    parts = [kind, size_part]
    for key in sorted(traits):
        value = traits[key]
        if not value:
            continue
        value = str(value)
        if not re.fullmatch(r'[A-Za-z0-9.+-]{1,32}', value):
            # e.g. a virt_mkfs command line: name it by its digest.
            value = 'h' + hashlib.sha1(value.encode()).hexdigest()[:10]
        # Keyed, so fs=ext4 and label=ext4 never make the same name.
        parts.append(f'{key}-{value}')
    return check_cache_name('_'.join(parts))

