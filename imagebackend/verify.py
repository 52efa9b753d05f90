"""Every record of an instance against what is really there.

A finding names the instance, the disk and a machine-readable ``kind``
(:data:`KINDS`). Nothing is changed: a base's bytes are digested in full
and compared with the sha256 the disk's record and the base's sidecar
hold (never the sidecar's stat shortcut), each base once per
:class:`BaseDigests`.
"""

from __future__ import annotations

import dataclasses
import os

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import instance_dirs
from imagebackend import names
from imagebackend import observe
from imagebackend import records as records_mod

# kind -> what it means.
KINDS = {
    'records-unreadable': "the instance's disks.json cannot be read",
    'disk-info-unreadable': "Nova's disk.info beside the disks cannot be "
                            'read',
    'incomplete': 'a record still says creating (died, or still running)',
    'disk-missing': 'a record whose disk is not there',
    'unrecorded-disk': 'a disk in the instance directory with no record',
    'unreadable': "the disk cannot be read as its record's format",
    'format-drift': "the disk's bytes are not its record's format",
    'size-drift': "the disk's virtual size is not its record's",
    'backing-drift': 'the disk reads through another base than recorded',
    'backing-missing': 'the base the disk reads through is gone',
    'backing-changed': "the base's bytes differ from the recorded sha256",
    'backing-unverified': 'no sha256 says what the base should hold',
}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One way an instance's disks differ from their records."""

    instance: str
    disk: str | None
    kind: str
    message: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class InstanceReport:
    """An instance's records, what is there, and how they differ."""

    instance: str
    records: list[records_mod.DiskRecord]
    states: list[observe.DiskState]
    findings: list[Finding]

    @property
    def clean(self) -> bool:
        return not self.findings


class BaseDigests:
    """Whether a cache entry's data has a given digest, each (entry,
    digest) read once however many disks depend on it."""

    def __init__(self):
        self._seen: dict[tuple[str, str], bool | str] = {}

    def matches(self, path: str, digest: str) -> bool | str:
        """True/False, or why the data could not be read."""
        key = (path, digest)
        if key not in self._seen:
            try:
                self._seen[key] = fileutils.digest_matches(path, digest)
            except OSError as e:
                self._seen[key] = f'cannot read it: {e}'
        return self._seen[key]


def check_instance(backend, uuid: str,
                   digests: BaseDigests | None = None) -> InstanceReport:
    """Compare every record of instance ``uuid`` with its storage."""
    names.check_instance_uuid(uuid)
    digests = digests or BaseDigests()
    findings: list[Finding] = []

    def found(disk, kind, message):
        findings.append(Finding(uuid, disk, kind, message))

    instance_dir = os.path.join(backend.conf.instances_path, uuid)
    try:
        records = backend.records.list(uuid)
    except exception.CorruptRecord as e:
        found(None, 'records-unreadable', e.message)
        return InstanceReport(uuid, [], [], findings)
    if not records and not os.path.isdir(instance_dir):
        raise exception.InvalidInput(
            reason=f'no instance directory {instance_dir} and no records '
                   f'of instance {uuid}')
    states = []
    for record in records:
        if not record.created:
            found(record.name, 'incomplete',
                  f'its record says {record.state}: a creation that died '
                  'or is still running')
            continue
        state = observe.observe(backend, record)
        states.append(state)
        for kind, message in _compare(backend, record, state, digests):
            found(record.name, kind, message)
    recorded = {r.name for r in records}
    try:
        on_disk = instance_dirs.disk_files(instance_dir)
    except exception.CorruptRecord as e:
        # A garbled disk.info: the disks are still found by their names.
        found(None, 'disk-info-unreadable', e.message)
        on_disk = [n for n in os.listdir(instance_dir)
                   if instance_dirs.is_disk_name(n)]
    for name in on_disk:
        if name not in recorded:
            found(name, 'unrecorded-disk',
                  f'{os.path.join(instance_dir, name)} has no record '
                  '(adopt it, or remove it if nothing uses it)')
    return InstanceReport(uuid, records, states, findings)


def _compare(backend, record, state: observe.DiskState, digests):
    """(kind, message) for each way ``state`` differs from ``record``."""
    if not state.exists:
        yield ('unreadable' if state.problem else 'disk-missing',
               state.problem or f'{state.location} is not there')
        return
    if state.problem:
        yield 'unreadable', state.problem
        return
    if state.content_checked:
        if not observe.formats_agree(record.format, state.content_format):
            yield 'format-drift', (
                f'its record says {record.format}, its bytes look like '
                f'{state.content_format or "several formats"}')
    if state.virtual_size != record.virtual_size:
        yield 'size-drift', (
            f'its record says {record.virtual_size} bytes, it is '
            f'{state.virtual_size}')
    if record.backing is None and state.backing is None:
        return
    if record.backing is None:
        yield 'backing-drift', (f'it reads through {state.backing.path}, '
                                'its record names no base')
        return
    if state.backing is not None and (
            state.backing.entry != record.backing or
            (record.backing_format and state.backing.format and
             state.backing.format != record.backing_format)):
        yield 'backing-drift', (
            f'it reads through {state.backing.path} '
            f'({state.backing.format}), its record names '
            f'{record.backing} ({record.backing_format})')
        return
    yield from _check_base(backend, record, digests)


def _check_base(backend, record, digests: BaseDigests):
    cache = backend.image_cache
    path = cache.path(record.backing)
    if not os.path.exists(path):
        yield 'backing-missing', f'its base {path} is gone'
        return
    try:
        entry = cache.get(record.backing)
    except exception.CorruptCacheEntry as e:
        yield 'backing-changed', e.message
        return
    wanted = [d for d in (record.backing_sha256,
                          entry.sha256 if entry else None) if d]
    if not wanted:
        yield 'backing-unverified', (
            f'neither its record nor a sidecar of {path} has a sha256 '
            '(adopt the instance to give its base one)')
        return
    if entry is not None and record.backing_sha256 and \
            entry.sha256 != record.backing_sha256:
        yield 'backing-changed', (
            f'the sidecar of {path} says {entry.sha256}, the disk was made '
            f'on {record.backing_sha256}')
        return
    if entry is not None and record.backing_format and \
            entry.format != record.backing_format:
        yield 'backing-drift', (
            f'the sidecar of {path} says {entry.format}, the record '
            f'{record.backing_format}')
    matches = digests.matches(path, wanted[0])
    if matches is not True:
        yield 'backing-changed', (
            f'{path}: {matches}' if isinstance(matches, str) else
            f'the bytes of {path} no longer have sha256 {wanted[0]}')
