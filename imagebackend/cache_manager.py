"""Which cache entries are in use, verification, and ageing out the rest.

In use means: some disk's record, on any instance under this
instances_path (shared by every host that mounts it), names the entry as
its backing, or as its source while it says ``creating``. Records say
it, so nothing opens a disk to find its backing file (Nova ran qemu-img
info on every instance's root to do this, and missed every other disk).
"""

from __future__ import annotations

import dataclasses
import os
import time

from oslo_concurrency import lockutils

from imagebackend import cache as cache_mod
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import records as records_mod


@dataclasses.dataclass(frozen=True)
class EntryUse:
    """A cache entry, how many disks depend on it, and when it was used."""

    entry: cache_mod.CacheEntry
    users: int
    last_used: float
    allocated: int


def instances(instances_path: str) -> list[str]:
    """Instance uuids that have a records file under ``instances_path``."""
    found = []
    try:
        listing = os.listdir(instances_path)
    except FileNotFoundError:
        return found
    for name in listing:
        if os.path.isfile(os.path.join(instances_path, name,
                                       records_mod.RECORDS_FILE)):
            found.append(name)
    return sorted(found)


def source_entry(record: records_mod.DiskRecord) -> str | None:
    """The cache entry a disk's source names (an image's or a
    template's), or None."""
    try:
        if record.source_type == 'image' and record.source_id:
            return names.image_cache_name(record.source_id)
        if record.source_type == 'func' and record.source_id:
            return names.check_cache_name(record.source_id)
    except exception.InvalidInput:
        pass
    return None


def users(backend) -> dict[str, int]:
    """Cache entry name -> number of disks whose record names it: as its
    backing, or, while the record says ``creating``, as its source."""
    counts: dict[str, int] = {}
    for uuid in instances(backend.conf.instances_path):
        # An unreadable record raises: it must not make a base look unused.
        for record in backend.records.list(uuid):
            name = record.backing
            if name is None and not record.created:
                # A creation under way (a batch's disks stay creating until
                # all are made) may have put a disk on it already, whose
                # record names no backing yet; or one that died, whose disk
                # is made again from it.
                name = source_entry(record)
            if name:
                counts[name] = counts.get(name, 0) + 1
    return counts


def scan(backend) -> list[EntryUse]:
    """Every cache entry with its users and age."""
    counts = users(backend)
    out = []
    for entry in backend.image_cache.entries():
        try:
            st = os.stat(entry.path)
        except FileNotFoundError:
            continue
        out.append(EntryUse(entry=entry, users=counts.get(entry.name, 0),
                            last_used=cache_mod.last_used(st),
                            allocated=st.st_blocks * 512))
    return out


OK = 'ok'


def check(backend, name: str | None = None) -> dict[str, str]:
    """Every cache entry (or only ``name``) and what is wrong with it:
    ``'ok'``, or a problem: a digest mismatch, data missing (a sidecar
    without data, or a base some disk's record names that is not there),
    data without a sidecar, a sidecar unreadable or malformed. Reads every
    entry's data in full (the digest, never the stat shortcut)."""
    cache = backend.image_cache
    result: dict[str, str] = {}
    try:
        listing = os.listdir(cache.base_dir)
    except FileNotFoundError:
        listing = []
    found = set()
    for n in listing:
        if n.endswith(names.META_SUFFIX):
            found.add(n[:-len(names.META_SUFFIX)])
        elif not n.endswith(names.PART_SUFFIX) and not n.startswith('.') \
                and os.path.isfile(os.path.join(cache.base_dir, n)):
            found.add(n)
    for use_name in users(backend):
        found.add(use_name)
    if name is not None:
        found = {name}
    for entry_name in sorted(found):
        result[entry_name] = _check_one(backend, entry_name)
    return result


def _check_one(backend, name: str) -> str:
    cache = backend.image_cache
    path = cache.path(name)
    has_sidecar = os.path.exists(path + names.META_SUFFIX)
    if not os.path.exists(path):
        used = users(backend).get(name, 0)
        if used:
            return f'missing: data not found, {used} disk(s) depend on it'
        return 'missing: sidecar without data'
    if not has_sidecar:
        return 'no sidecar: data whose digest is unknown'
    try:
        entry = cache.get(name)
    except exception.CorruptCacheEntry as e:
        return f'sidecar unreadable: {e.kwargs["reason"]}'
    if entry is None:
        return 'missing: data not found'
    try:
        if not fileutils.digest_matches(path, entry.sha256):
            return 'mismatch: data does not match its digest'
    except OSError as e:
        return f'unreadable data: {e}'
    return OK


def verify(backend, name: str | None = None) -> dict[str, bool]:
    """Entry name -> whether it is whole (see :func:`check` for why not)."""
    return {n: status == OK for n, status in check(backend, name).items()}


def clean(backend, min_age: float | None = None,
          dry_run: bool = False) -> list[str]:
    """Remove entries no disk uses and unused for ``min_age`` seconds
    (default ``[image_cache] remove_unused_original_minimum_age_seconds``).
    The age is checked again under the entry's lock."""
    if min_age is None:
        min_age = backend.conf.image_cache.\
            remove_unused_original_minimum_age_seconds
    # Partial files first: a leftover side-load sidecar would otherwise
    # stop the scan below.
    removed = clean_parts(backend, min_age, dry_run)
    now = time.time()
    for use in scan(backend):
        if use.users or now - use.last_used < min_age:
            continue
        if dry_run:
            removed.append(use.entry.name)
            continue
        cache = backend.image_cache
        with cache.lock(use.entry.name):
            path = cache.path(use.entry.name)
            try:
                if time.time() - cache_mod.last_used(os.stat(path)) < \
                        min_age:
                    continue  # used while we looked
            except FileNotFoundError:
                continue
            fileutils.remove_path(path)
            fileutils.remove_path(path + names.META_SUFFIX)
        removed.append(use.entry.name)
    return removed


# What a fetch, conversion or side-load leaves in _base when it is killed,
# all named after the entry X being made: ``X.part``, ``X.converted.part``,
# ``X.part.meta.json``, and the transport's staging directories
# ``.<one of those>.<random>.part``.
_PART_TAILS = (names.PART_SUFFIX + names.META_SUFFIX,
               '.converted' + names.PART_SUFFIX, names.PART_SUFFIX)


def _part_owner(filename: str) -> str | None:
    """The entry whose creation wrote ``filename``, or None if it is not a
    partial file of the cache."""
    if filename.startswith('.'):
        if not filename.endswith(names.PART_SUFFIX):
            return None
        final = filename[1:-len(names.PART_SUFFIX)].rpartition('.')[0]
        return _part_owner(final) if final else None
    for tail in _PART_TAILS:
        if filename.endswith(tail):
            try:
                return names.check_cache_name(filename[:-len(tail)])
            except exception.InvalidDiskName:
                return None
    return None


def clean_parts(backend, min_age: float, dry_run: bool) -> list[str]:
    """Remove partial files in _base unchanged for ``min_age`` seconds.

    Each is removed under its entry's lock, taken without waiting: a fetch
    still running holds it, and its file is never touched.
    """
    cache = backend.image_cache
    try:
        listing = sorted(os.listdir(cache.base_dir))
    except FileNotFoundError:
        return []
    removed = []
    for filename in listing:
        owner = _part_owner(filename)
        if owner is None:
            continue
        path = os.path.join(cache.base_dir, filename)
        if not _older_than(path, min_age):
            continue
        if dry_run:
            removed.append(filename)
            continue
        try:
            with lockutils.lock(owner, lock_file_prefix=cache_mod.LOCK_PREFIX,
                                external=True, lock_path=cache.lock_path,
                                blocking=False):
                if not _older_than(path, min_age):
                    continue  # written to while we looked
                fileutils.remove_path(path)
        except lockutils.AcquireLockFailedException:
            continue  # its creation is running
        removed.append(filename)
    return removed


def _older_than(path: str, age: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime >= age
    except FileNotFoundError:
        return False
