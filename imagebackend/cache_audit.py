"""Audit and clean a real host's image cache against its records.

Nothing in ``_base`` is trusted because it is there (OSSA-2024-002: an
image planted or changed in the cache after its fetch was checked is used
again by Nova without a second look). :func:`audit` re-inspects every
entry as if it had just been downloaded -- format_inspector's safety
checks (a qcow2 backing file or data-file, VMDK extents...), the
sidecar's digest, the declared format and size against the bytes -- and
names the disks that depend on each entry, from their records. It only
reads.

:func:`clean` removes entries no record uses, unused for a grace period,
under each entry's lock (as :func:`cache_manager.clean`). It refuses to
run, removing nothing, while any instance directory holds a disk that no
record describes (a host Nova's own module made, not yet adopted): the
cache cannot tell whether such a disk depends on a base, and a base deleted
under a live overlay is an instance lost (the Operations Guide's
"disappearing images").
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from oslo_utils.imageutils import format_inspector

from imagebackend import cache as cache_mod
from imagebackend import cache_manager
from imagebackend import disk_info
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import formats
from imagebackend import instance_dirs
from imagebackend import names
from imagebackend import qemu
from imagebackend import records as records_mod

# How bad a problem is, worst first: an entry's status is its worst one.
HOSTILE = 'hostile'        # the bytes are unsafe or not what was declared
MODIFIED = 'modified'      # the bytes changed since they were cached
MISSING = 'missing'        # data gone (while disks depend on it)
CORRUPT = 'corrupt'        # the sidecar cannot be read
UNVERIFIED = 'unverified'  # no sidecar: nothing says what the bytes were
OK = 'ok'
LEVELS = (HOSTILE, MODIFIED, MISSING, CORRUPT, UNVERIFIED, OK)

@dataclasses.dataclass(frozen=True)
class Problem:
    level: str
    kind: str
    detail: str


@dataclasses.dataclass
class EntryAudit:
    """One cache entry: what its sidecar says, what its bytes are, who
    depends on it."""

    name: str
    path: str
    sidecar: dict[str, Any] | None = None
    detected: dict[str, Any] | None = None
    problems: list[Problem] = dataclasses.field(default_factory=list)
    # Disks whose record names the entry as their backing (or, for a
    # creation under way, as their source): they read it.
    users: list[dict[str, str]] = dataclasses.field(default_factory=list)
    # Disks whose record says they were copied from it (no backing): they
    # hold what it held when they were made.
    made_from: list[dict[str, str]] = dataclasses.field(default_factory=list)
    # Disks no record describes whose qcow2 header (disk.info says qcow2)
    # names the entry: users until adopted.
    unrecorded_users: list[dict[str, str]] = dataclasses.field(
        default_factory=list)

    @property
    def status(self) -> str:
        for level in LEVELS:
            if any(p.level == level for p in self.problems):
                return level
        return OK

    @property
    def flagged(self) -> bool:
        return self.status != OK

    def to_dict(self) -> dict[str, Any]:
        return {'name': self.name, 'path': self.path, 'status': self.status,
                'problems': [dataclasses.asdict(p) for p in self.problems],
                'sidecar': self.sidecar, 'detected': self.detected,
                'users': self.users, 'made_from': self.made_from,
                'unrecorded_users': self.unrecorded_users}


@dataclasses.dataclass
class HostRecords:
    """What the records under an instances_path say about the cache."""

    # entry name -> [{'instance', 'disk', 'state'}]
    users: dict[str, list[dict[str, str]]]
    made_from: dict[str, list[dict[str, str]]]
    # instance directory -> disks in it that no record describes
    unrecorded: dict[str, list[str]]
    # instance directory -> why its records cannot be read
    errors: dict[str, str]


def _instance_dirs(backend) -> list[str]:
    """Instance directories, and the ``<uuid>_resize`` ones: their disks
    read bases too."""
    root = backend.conf.instances_path
    return (instance_dirs.instance_uuids(root) +
            instance_dirs.resize_dirs(root))


def host_records(backend) -> HostRecords:
    """Read every instance directory's records (read-only)."""
    result = HostRecords(users={}, made_from={}, unrecorded={}, errors={})
    for dirname in _instance_dirs(backend):
        directory = os.path.join(backend.conf.instances_path, dirname)
        try:
            disks = instance_dirs.disk_files(directory)
        except exception.ImageBackendError as e:
            # A garbled disk.info: which files are disks is not known, so
            # the directory counts as unrecorded (clean refuses) and the
            # audit goes on with the other instances.
            result.errors[dirname] = str(e)
            result.unrecorded[dirname] = [disk_info.FILENAME]
            continue
        records_file = os.path.join(directory, records_mod.RECORDS_FILE)
        records: list[records_mod.DiskRecord] = []
        if os.path.exists(records_file):
            try:
                records = backend.records.list(dirname)
            except exception.ImageBackendError as e:
                # Unreadable records (or a directory name no record store
                # takes, e.g. Nova's ``<uuid>_resize``): every disk there
                # is one nothing describes.
                result.errors[dirname] = str(e)
                if disks:
                    result.unrecorded[dirname] = disks
                continue
        recorded = {r.name for r in records}
        missing = [d for d in disks if d not in recorded]
        if missing:
            result.unrecorded[dirname] = missing
        for r in records:
            who = {'instance': r.instance, 'disk': r.name, 'state': r.state}
            if r.backing:
                if r.backing_sha256:
                    who['backing_sha256'] = r.backing_sha256
                result.users.setdefault(r.backing, []).append(who)
                continue
            source = cache_manager.source_entry(r)
            if source is None:
                continue
            if r.created:
                result.made_from.setdefault(source, []).append(who)
            else:
                # A creation under way may be about to put a disk on it.
                result.users.setdefault(source, []).append(who)
    return result


def _cache_files(cache: cache_mod.ImageCache) -> set[str]:
    """Entry names in ``_base``: data files and sidecars, less partial
    files and what is no cache name."""
    try:
        listing = os.listdir(cache.base_dir)
    except FileNotFoundError:
        return set()
    found = set()
    for n in listing:
        if n.startswith('.') or n.endswith(names.PART_SUFFIX) or \
                n.endswith(names.PART_SUFFIX + names.META_SUFFIX):
            continue
        if n.endswith(names.META_SUFFIX):
            n = n[:-len(names.META_SUFFIX)]
        elif not os.path.isfile(os.path.join(cache.base_dir, n)):
            continue
        try:
            found.add(names.check_cache_name(n))
        except exception.InvalidDiskName:
            continue
    return found


def _unrecorded_users(backend, unrecorded: dict[str, list[str]]
                      ) -> dict[str, list[dict[str, str]]]:
    """Entry name -> disks without a record that name it as their backing.

    Read only from disks Nova's disk.info says are qcow2 (a file nothing
    describes may be a raw disk whose guest wrote a qcow2 header), with
    ``-f qcow2``, and only a backing file inside this cache counts.
    """
    base_dir = os.path.realpath(backend.image_cache.base_dir)
    found: dict[str, list[dict[str, str]]] = {}
    for dirname, disks in unrecorded.items():
        for disk in disks:
            path = os.path.join(backend.conf.instances_path, dirname, disk)
            try:
                if disk_info.format_of(path) != 'qcow2':
                    continue
                info = qemu.info(path, 'qcow2')
            except (exception.ImageBackendError, OSError, ValueError):
                continue
            backing = info.get('full-backing-filename') or info.get(
                'backing-filename')
            if not backing:
                continue
            if not os.path.isabs(backing):
                backing = os.path.join(os.path.dirname(path), backing)
            real = os.path.realpath(backing)
            if os.path.dirname(real) == base_dir:
                found.setdefault(os.path.basename(real), []).append(
                    {'instance': dirname, 'disk': disk})
    return found


def audit(backend) -> tuple[list[EntryAudit], HostRecords]:
    """Every cache entry re-inspected, with the disks that use it."""
    cache = backend.image_cache
    recs = host_records(backend)
    unrecorded_users = _unrecorded_users(backend, recs.unrecorded)
    wanted = _cache_files(cache) | set(recs.users) | set(unrecorded_users)
    allowed = tuple(backend.conf.compute.vmdk_allowed_types)
    out = []
    for name in sorted(wanted):
        entry = keeping_atime(cache.path(name), _audit_one, cache, name,
                              allowed)
        entry.users = recs.users.get(name, [])
        entry.made_from = recs.made_from.get(name, [])
        entry.unrecorded_users = unrecorded_users.get(name, [])
        keeping_atime(entry.path, _check_users_digest, entry)
        if entry.detected is None and not os.path.exists(entry.path):
            users = len(entry.users) + len(entry.unrecorded_users)
            entry.problems.append(Problem(
                MISSING, 'missing',
                f'no data; {users} disk(s) depend on it' if users else
                'a sidecar without data'))
        out.append(entry)
    return out, recs


def keeping_atime(path: str, func, *args):
    """``func(*args)``, then the access time of ``path`` put back if only
    reading it moved it (its mtime and inode unchanged): the cache ages
    entries by it (``last_used``), and looking at an entry (a plan, an
    audit) is no use of it; it would keep every unused entry from a clean
    for another grace period. A ``touch`` at the same moment would be put
    back too; what keeps a base in use is its disks' records (a creation
    under way has a ``creating`` one), not its age."""
    try:
        before = os.stat(path)
    except OSError:
        return func(*args)
    result = func(*args)
    try:
        after = os.stat(path)
        if after.st_atime_ns != before.st_atime_ns and \
                after.st_mtime_ns == before.st_mtime_ns and \
                after.st_ino == before.st_ino:
            os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    except OSError:
        pass  # gone, or not ours to change: nothing to put back
    return result


def _check_users_digest(entry: EntryAudit) -> None:
    """Flag an entry whose bytes are not those its disks were made on
    (their records keep that digest): a base fetched again after the image
    changed upstream, or replaced along with its sidecar. The guest reads
    what it never wrote wherever it did not write."""
    expected = {u['backing_sha256'] for u in entry.users
                if u.get('backing_sha256')}
    if not expected or not os.path.isfile(entry.path):
        return
    if entry.sidecar is not None:
        current = entry.sidecar['sha256']
        wrong = {d for d in expected if d != current}
    else:
        wrong = set()
        for digest in expected:
            try:
                if not fileutils.digest_matches(entry.path, digest):
                    wrong.add(digest)
            except (OSError, ValueError):
                wrong.add(digest)
    if wrong:
        disks = [f'{u["instance"]}/{u["disk"]}' for u in entry.users
                 if u.get('backing_sha256') in wrong]
        entry.problems.append(Problem(
            MODIFIED, 'not-their-base',
            f'{", ".join(disks)} were made on other bytes (digest '
            f'{", ".join(sorted(wrong))}) than the entry holds now'))


def _audit_one(cache: cache_mod.ImageCache, name: str,
               vmdk_allowed_types: tuple[str, ...]) -> EntryAudit:
    path = cache.path(name)
    result = EntryAudit(name=name, path=path)
    problems = result.problems
    sidecar = None
    try:
        sidecar = cache.get(name)
    except exception.CorruptCacheEntry as e:
        problems.append(Problem(CORRUPT, 'bad-sidecar', e.kwargs['reason']))
    if sidecar is not None:
        result.sidecar = {k: v for k, v in sidecar.to_dict().items()
                          if k in ('format', 'virtual_size', 'kind', 'source',
                                   'provenance', 'sha256')}
    if not os.path.isfile(path):
        return result
    if sidecar is None and not problems:
        problems.append(Problem(
            UNVERIFIED, 'no-sidecar',
            'no sidecar: nothing says what these bytes should be (a base '
            'cached before sidecars, or planted)'))

    # The bytes, inspected as a fresh download is: safety first, then what
    # format they are (without the safety checks, to name it anyway).
    detected = None
    try:
        detected = formats.detect(path, image_id=name,
                                  vmdk_allowed_types=vmdk_allowed_types)
    except exception.ImageUnacceptable as e:
        problems.append(Problem(HOSTILE, 'unsafe', e.kwargs['reason']))
        try:
            detected = formats.detect(path, image_id=name,
                                      check_safety=False)
        except (exception.ImageUnacceptable, OSError):
            # Not even a size to tell (a VMDK descriptor alone): the
            # inspector's name for it, to say what it claims to be.
            result.detected = {'format': _format_name(path),
                               'inspector': None, 'virtual_size': None}
    except OSError as e:
        problems.append(Problem(MODIFIED, 'unreadable', str(e)))
    if detected is not None:
        result.detected = {'format': formats.cache_format(detected.format),
                           'inspector': detected.format,
                           'virtual_size': detected.virtual_size}
    if sidecar is None:
        return result

    if detected is not None:
        found = formats.cache_format(detected.format)
        if found != sidecar.format:
            problems.append(Problem(
                HOSTILE, 'format-mismatch',
                f'the sidecar says {sidecar.format}, the bytes are {found}'))
        elif detected.virtual_size != sidecar.virtual_size:
            problems.append(Problem(
                MODIFIED, 'size-mismatch',
                f'the sidecar says {sidecar.virtual_size} bytes, the bytes '
                f'say {detected.virtual_size}'))
    try:
        if not fileutils.digest_matches(path, sidecar.sha256):
            problems.append(Problem(
                MODIFIED, 'digest-mismatch',
                'the data no longer matches the digest in its sidecar '
                '(changed since it was cached)'))
    except OSError as e:
        problems.append(Problem(MODIFIED, 'unreadable', str(e)))
    return result


def _format_name(path: str) -> str | None:
    """format_inspector's name for what ``path`` looks like, or None;
    for a report only (never a decision)."""
    try:
        return str(format_inspector.detect_file_format(path))
    except Exception:  # noqa: BLE001 - hostile bytes, any parser bug
        return None


# -- clean --------------------------------------------------------------------

@dataclasses.dataclass
class CleanResult:
    removed: list[str]
    kept: dict[str, str]      # entry -> why it stays
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def clean(backend, grace: float | None = None,
          dry_run: bool = False) -> CleanResult:
    """Remove cache entries no record uses and unused for ``grace``
    seconds (default ``[image_cache]
    remove_unused_original_minimum_age_seconds``), and partial files as
    old. Entries without a sidecar (Nova's) are entries too.

    Refuses (:class:`exception.CacheCleanRefused`, nothing removed) while
    any instance directory holds disks no record describes, or records that
    cannot be read: what those disks depend on is not known.
    """
    if grace is None:
        grace = backend.conf.image_cache.\
            remove_unused_original_minimum_age_seconds
    recs = host_records(backend)
    if recs.unrecorded or recs.errors:
        listed = sorted(f'{d}/{n}' for d, disks in recs.unrecorded.items()
                        for n in disks) + sorted(
            f'{d} ({why})' for d, why in recs.errors.items()
            if d not in recs.unrecorded)
        raise exception.CacheCleanRefused(disks=', '.join(listed))
    cache = backend.image_cache
    # Partial files first, each under its entry's lock taken without
    # waiting (a fetch still running holds it).
    removed = cache_manager.clean_parts(backend, grace, dry_run)
    kept: dict[str, str] = {}
    now = time.time()
    for name in sorted(_cache_files(cache)):
        path = cache.path(name)
        users = recs.users.get(name)
        if users:
            kept[name] = f'used by {len(users)} disk(s)'
            continue
        try:
            age = now - cache_mod.last_used(os.stat(path))
        except FileNotFoundError:
            # A sidecar whose data is gone (a removal cut short): nothing
            # to keep it for once it is as old as an unused entry.
            if _older_than(path + names.META_SUFFIX, grace):
                if not dry_run:
                    with cache.lock(name):
                        if not os.path.exists(path):
                            fileutils.remove_path(path + names.META_SUFFIX)
                removed.append(name + names.META_SUFFIX)
            continue
        if age < grace:
            kept[name] = f'used {int(age)} s ago (grace {int(grace)} s)'
            continue
        if dry_run:
            removed.append(name)
            continue
        with cache.lock(name):
            try:
                if time.time() - cache_mod.last_used(os.stat(path)) < grace:
                    kept[name] = 'used while the cache was being cleaned'
                    continue
            except FileNotFoundError:
                continue
            # Data first: no half entry is ever "present".
            fileutils.remove_path(path)
            fileutils.remove_path(path + names.META_SUFFIX)
        removed.append(name)
    return CleanResult(removed=removed, kept=kept, dry_run=dry_run)


def _older_than(path: str, age: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime >= age
    except FileNotFoundError:
        return False
