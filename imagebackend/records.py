"""The per-disk metadata record: the one source of truth about a local disk.

A record says which backend made a disk, its format and virtual size, what
it was made from and where it lives. It is written as ``creating`` before
anything touches storage and flipped to ``created`` only once the disk is
whole, so a disk whose creation died is never taken for a good one.

Stores are an interface (:class:`RecordStore`) so a compute driver can keep
records in its own database; the default, :class:`InstanceDirStore`, keeps
one JSON file in the instance directory so records travel with the disks on
cold migration.

Schema: fields may be added without a new ``schema_version`` when they are
optional (default ``None``) and written only when set, so every record an
older release wrote still loads, and a record that does not use a new field
is byte-for-byte what an older release writes.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import threading
import time
from typing import Any, Protocol, runtime_checkable

from oslo_concurrency import lockutils

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names

SCHEMA_VERSION = 1
CREATING = 'creating'
CREATED = 'created'
STATES = (CREATING, CREATED)
SOURCE_TYPES = ('image', 'func', 'none')
RECORDS_FILE = names.RECORDS_FILE
# Optional fields added after schema version 1: omitted from the stored
# form while None (see the module docstring).
OPTIONAL_FIELDS = ('backing_sha256', 'encryption')
# What an encrypted disk's record says about its encryption (never the key).
ENCRYPTION_KEYS = ('cipher', 'key_size', 'key_uuid')


@dataclasses.dataclass(frozen=True)
class DiskRecord:
    """What one local disk is, validated on construction."""

    instance: str
    name: str
    backend: str
    format: str
    location: str
    source_type: str
    source_id: str | None
    virtual_size: int | None = None
    state: str = CREATING
    # The cache entry a disk depends on (Qcow2's backing file), by name.
    backing: str | None = None
    backing_format: str | None = None
    # The sha256 of that cache entry's bytes when the disk was made on it:
    # restoring the base elsewhere (check_backing) must give these bytes.
    backing_sha256: str | None = None
    # How the disk is encrypted, if it is: {'cipher', 'key_size',
    # 'key_uuid'} (the key manager's reference, never the key). An
    # encrypted disk is reopened encrypted from this alone.
    encryption: dict[str, Any] | None = None
    # How the disk came to be: {'path': 'native'|'shim'|'legacy-cache'|
    # 'adopted', ...} plus backend details such as the copy method.
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    updated_at: float = dataclasses.field(default_factory=time.time)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self):
        def bad(reason):
            return exception.CorruptRecord(
                location=f'{self.instance}/{self.name}', reason=reason)
        names.check_instance_uuid(self.instance)
        names.check_disk_name(self.name)
        if self.schema_version != SCHEMA_VERSION:
            raise bad(f'unsupported schema version {self.schema_version!r}')
        if self.state not in STATES:
            raise bad(f'unknown state {self.state!r}')
        if self.source_type not in SOURCE_TYPES:
            raise bad(f'unknown source type {self.source_type!r}')
        for field in ('backend', 'format', 'location'):
            if not isinstance(getattr(self, field), str) or not getattr(
                    self, field):
                raise bad(f'{field} must be a non-empty string')
        if self.backing is not None and (
                not isinstance(self.backing, str) or not self.backing):
            raise bad(f'bad backing {self.backing!r}')
        if self.backing_sha256 is not None and self.backing is None:
            raise bad('a backing sha256 without a backing')
        if self.backing_format is not None and (
                not isinstance(self.backing_format, str) or
                not self.backing_format):
            raise bad(f'bad backing format {self.backing_format!r}')
        if self.backing_sha256 is not None:
            try:  # the cache entry's digest, as its sidecar labels it
                fileutils.digest_algorithm(self.backing_sha256)
            except ValueError:
                raise bad(f'bad backing sha256 {self.backing_sha256!r}')
        if self.encryption is not None:
            _check_encryption(self.encryption, bad)
        if not isinstance(self.provenance, dict):
            raise bad('provenance must be an object')
        if self.virtual_size is not None and (
                not isinstance(self.virtual_size, int) or
                isinstance(self.virtual_size, bool) or
                self.virtual_size < 0):
            raise bad(f'bad virtual size {self.virtual_size!r}')
        if self.state == CREATED and self.virtual_size is None:
            raise bad('a created disk must record its virtual size')

    @property
    def created(self) -> bool:
        return self.state == CREATED

    def replace(self, **changes) -> 'DiskRecord':
        changes.setdefault('updated_at', time.time())
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for field in OPTIONAL_FIELDS:
            if data[field] is None:
                del data[field]
        return data

    @classmethod
    def from_dict(cls, data: Any, location: str = '?') -> 'DiskRecord':
        if not isinstance(data, dict):
            raise exception.CorruptRecord(location=location,
                                          reason='record is not an object')
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise exception.CorruptRecord(
                location=location,
                reason=f'unknown fields {sorted(unknown)}')
        try:
            return cls(**data)
        except (TypeError, exception.InvalidDiskName) as e:
            # Stored data with a bad name is as corrupt as any bad field.
            raise exception.CorruptRecord(location=location, reason=str(e))


def _check_encryption(encryption: Any, bad) -> None:
    if not isinstance(encryption, dict) or \
            set(encryption) != set(ENCRYPTION_KEYS):
        raise bad(f'encryption must be an object with exactly '
                  f'{", ".join(ENCRYPTION_KEYS)}')
    for field in ('cipher', 'key_uuid'):
        if not isinstance(encryption[field], str) or \
                not encryption[field]:
            raise bad(f'encryption {field} must be a non-empty string')
    size = encryption['key_size']
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise bad(f'bad encryption key size {size!r}')


def document(records) -> dict[str, Any]:
    """The on-disk form of an instance's records (``disks.json``)."""
    return {'schema_version': SCHEMA_VERSION,
            'disks': {r.name: r.to_dict()
                      for r in sorted(records, key=lambda r: r.name)}}


@runtime_checkable
class RecordStore(Protocol):
    """Where records are kept. Implementations must make ``put`` atomic.

    A store may also offer ``put_many(records)`` and ``delete_many(instance,
    names)``, each one atomic write of several records (a batch of
    creations writes its records with them: :mod:`imagebackend.batch`).
    They are optional: :func:`put_many` and :func:`delete_many` fall back
    to one ``put`` / ``delete`` per record, which keeps every crash
    guarantee (each record alone is a true state) at more writes.
    """

    def get(self, instance: str, disk_name: str) -> DiskRecord | None:
        ...

    def put(self, record: DiskRecord) -> None:
        ...

    def delete(self, instance: str, disk_name: str) -> None:
        ...

    def list(self, instance: str) -> list[DiskRecord]:
        ...


def put_many(store: RecordStore, records) -> None:
    """Put several records: in one atomic write per instance where
    ``store`` can (its ``put_many``), else one ``put`` each."""
    _many_or_each(getattr(store, 'put_many', None), store.put, records)


def delete_many(store: RecordStore, instance: str, names) -> None:
    """Delete several records of ``instance``: in one atomic write where
    ``store`` can (its ``delete_many``), else one ``delete`` each."""
    many = getattr(store, 'delete_many', None)
    _many_or_each(many and functools.partial(many, instance),
                  functools.partial(store.delete, instance), names)


def _many_or_each(many, each, items) -> None:
    items = list(items)
    if not items:
        return
    if many is not None:
        many(items)
        return
    for item in items:
        each(item)


def _by_instance(records) -> dict[str, list[DiskRecord]]:
    grouped: dict[str, list[DiskRecord]] = {}
    for record in records:
        grouped.setdefault(record.instance, []).append(record)
    return grouped


class MemoryStore:
    """Records in a dict: for tests, and the shape of a database store."""

    def __init__(self):
        self._records: dict[tuple[str, str], DiskRecord] = {}
        self._lock = threading.Lock()

    def get(self, instance, disk_name):
        with self._lock:
            return self._records.get((instance, disk_name))

    def put(self, record):
        with self._lock:
            self._records[(record.instance, record.name)] = record

    def put_many(self, records):
        with self._lock:
            for record in records:
                self._records[(record.instance, record.name)] = record

    def delete(self, instance, disk_name):
        with self._lock:
            self._records.pop((instance, disk_name), None)

    def delete_many(self, instance, disk_names):
        with self._lock:
            for name in disk_names:
                self._records.pop((instance, name), None)

    def list(self, instance):
        with self._lock:
            return [r for (i, _n), r in sorted(self._records.items())
                    if i == instance]


class InstanceDirStore:
    """Records in ``<instances_path>/<uuid>/disks.json``.

    Read-modify-write runs under an external lock per instance, and every
    write is atomic (temp + fsync + rename), so concurrent processes never
    see a torn file.
    """

    def __init__(self, instances_path: str, lock_path: str):
        self.instances_path = instances_path
        self.lock_path = lock_path

    def path(self, instance: str) -> str:
        names.check_instance_uuid(instance)
        return os.path.join(self.instances_path, instance, RECORDS_FILE)

    def _lock(self, instance: str):
        return lockutils.lock(f'records-{instance}', lock_file_prefix='ib-',
                              external=True, lock_path=self.lock_path)

    def _read(self, instance: str) -> dict[str, DiskRecord]:
        path = self.path(instance)
        try:
            raw = fileutils.read_state_file(path)
        except FileNotFoundError:
            return {}
        except fileutils.NotRegularFile as e:
            raise exception.CorruptRecord(location=path, reason=e.strerror)
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise exception.CorruptRecord(location=path,
                                          reason=f'not valid JSON: {e}')
        if not isinstance(data, dict) or not isinstance(
                data.get('disks'), dict):
            raise exception.CorruptRecord(location=path,
                                          reason='no "disks" object')
        if data.get('schema_version') != SCHEMA_VERSION:
            raise exception.CorruptRecord(
                location=path, reason='unsupported schema version %r' %
                data.get('schema_version'))
        found = {}
        for name, rec in data['disks'].items():
            record = DiskRecord.from_dict(rec, f'{path}:{name}')
            if (record.instance, record.name) != (instance, name):
                raise exception.CorruptRecord(
                    location=f'{path}:{name}',
                    reason=f'record is for {record.instance}/{record.name}')
            found[name] = record
        return found

    def _write(self, instance: str, records: dict[str, DiskRecord]) -> None:
        path = self.path(instance)
        if not records:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fileutils.atomic_write_json(path, document(records.values()))

    def get(self, instance, disk_name):
        return self._read(instance).get(disk_name)

    def put(self, record):
        with self._lock(record.instance):
            records = self._read(record.instance)
            records[record.name] = record
            self._write(record.instance, records)

    def put_many(self, records):
        """Put several records, one read-modify-write (one atomic write)
        per instance."""
        for instance, batch in _by_instance(records).items():
            with self._lock(instance):
                current = self._read(instance)
                current.update((r.name, r) for r in batch)
                self._write(instance, current)

    def delete(self, instance, disk_name):
        self.delete_many(instance, [disk_name])

    def delete_many(self, instance, disk_names):
        """Delete several records of ``instance`` in one atomic write (none
        if none of them is there)."""
        with self._lock(instance):
            records = self._read(instance)
            gone = [records.pop(n, None) for n in disk_names]
            if any(r is not None for r in gone):
                self._write(instance, records)

    def list(self, instance):
        return [r for _n, r in sorted(self._read(instance).items())]
