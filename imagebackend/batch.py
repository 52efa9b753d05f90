"""Several disks of one instance created with two record writes.

One disk's creation (:meth:`imagebackend.image.Image._creating`) writes its
record twice: ``creating`` before it touches storage, ``created`` once the
disk is whole. A driver making an instance's three or four disks would write
the instance's records file (and fsync it) twice per disk. A batch declares
the disks about to be made instead:

* on entry, the ``creating`` records of every declared disk that has no
  record yet are written in one atomic write, before any of them is
  touched;
* each creation inside the batch finds its record written already (one
  that differs, or a disk that was not declared, writes its own first, as
  alone) and, once its disk is whole and durable, keeps its ``created``
  record in memory;
* on exit, every ``created`` record kept is written in one more atomic
  write, then Nova's disk.info once per file; declared records no creation
  took are removed (nothing was made for them).

The crash guarantees are a single creation's: a record says ``created``
only for a disk that was whole (data and directory entries on stable
storage) before that write; from before a disk's first byte until its
``created`` record lands, its record says ``creating``. A SIGKILL or a power
cut anywhere leaves whole disks with ``creating`` records at worst: dead
creations, cleared and made again under the instance lock
(``driver.flows.spawn``), never an unrecorded disk. On an error inside the
batch the ``created`` records of the disks that were finished still land,
so each is recorded as it is, whatever the caller then undoes.

A batch holds the instance's lock from entry to exit (``creating`` records
of a batch are creations in progress, not dead ones), and only creations
in the thread that opened it join it. Batches nest: an inner one declares
more disks and leaves the writing of ``created`` records to the outermost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, Iterable, Iterator

from imagebackend import disk_info
from imagebackend import records as records_mod

LOG = logging.getLogger(__name__)

_active = threading.local()  # per thread: {(id(store), uuid): batch}


def _batches() -> dict:
    batches = getattr(_active, 'batches', None)
    if batches is None:
        batches = _active.batches = {}
    return batches


def active(store: records_mod.RecordStore,
           uuid: str) -> 'CreationBatch | None':
    """The batch this thread has open for ``uuid``'s records in ``store``."""
    return _batches().get((id(store), uuid))


def _same(a: records_mod.DiskRecord, b: records_mod.DiskRecord) -> bool:
    """Equal but for when they were made."""
    return a.replace(updated_at=0) == b.replace(updated_at=0)


class CreationBatch:
    """The record writes of one instance's creations, coalesced."""

    def __init__(self, store: records_mod.RecordStore, uuid: str):
        self.store = store
        self.uuid = uuid
        # Written by this batch; no creation has taken them (yet).
        self._declared: dict[str, records_mod.DiskRecord] = {}
        # Whole disks whose created record is to be written: name -> Image.
        self._pending: dict[str, Any] = {}

    def declare(self, planned: Iterable[records_mod.DiskRecord]) -> None:
        """Write the ``creating`` records of disks about to be made, in one
        write. A disk that has a record is left to its creation (its
        record may be a disk to keep, or a dead creation to clear)."""
        planned = list(planned)
        if not planned:
            return
        # Names taken: recorded (declared ones included), or made already.
        taken = {r.name for r in self.store.list(self.uuid)}
        taken.update(self._pending)
        new = []
        for record in planned:
            if record.instance != self.uuid or \
                    record.state != records_mod.CREATING:
                raise ValueError(f'{record.instance}/{record.name}: only '
                                 f'creating records of {self.uuid} are '
                                 'declared in its batch')
            if record.name not in taken:
                taken.add(record.name)
                new.append(record)
        records_mod.put_many(self.store, new)
        self._declared.update((r.name, r) for r in new)

    def declared(self, name: str) -> records_mod.DiskRecord | None:
        """The ``creating`` record this batch wrote for ``name``, if no
        creation has taken it."""
        return self._declared.get(name)

    def claim(self, record: records_mod.DiskRecord) -> bool:
        """A creation of ``record``'s disk is about to touch storage: True
        if the store already holds ``record`` (declared the same); False
        if the caller must write it."""
        declared = self._declared.pop(record.name, None)
        return declared is not None and _same(declared, record)

    def defer(self, image) -> None:
        """``image`` is whole and durable; its ``created`` record (its
        ``_record``) is written when the batch ends."""
        self._pending[image.disk_name] = image

    def forget(self, name: str) -> None:
        """Disk ``name`` and its record were removed: write nothing of it."""
        self._pending.pop(name, None)
        self._declared.pop(name, None)

    def flush(self) -> None:
        """Write the created records kept, in one write, then disk.info;
        remove the declared records no creation took."""
        pending = list(self._pending.values())
        records_mod.put_many(self.store, [i._record for i in pending])
        self._pending.clear()
        leftover = list(self._declared)
        records_mod.delete_many(self.store, self.uuid, leftover)
        self._declared.clear()
        sync_disk_info(pending)


def sync_disk_info(images, replaces: Iterable[str] = ()) -> None:
    """Nova's disk.info of each image listed as its record says: one
    locked read-modify-write per disk.info file, none where it is in step
    (see :meth:`imagebackend.image.Image._sync_disk_info`). ``replaces``:
    paths whose entries go (where a moved disk was)."""
    replaces = list(replaces)
    files: dict[str, dict[str, str]] = {}
    lock_path = None
    for image in images:
        entry = image.disk_info_entry()
        if entry is None:
            continue
        path, fmt = entry
        files.setdefault(disk_info.path_for(path), {})[path] = fmt
        lock_path = image.lock_path
    for info_path, entries in files.items():
        listed = disk_info.read(info_path)
        changed = bool(replaces)
        for path, fmt in entries.items():
            if listed.get(path) == fmt:
                continue
            changed = True
            if path in listed:
                LOG.warning('disk.info says %s is %s, its record says %s: '
                            'the record wins, disk.info is corrected', path,
                            listed[path], fmt)
        if changed:
            disk_info.update(info_path, lock_path, entries, drop=replaces)


@contextlib.contextmanager
def batch(store: records_mod.RecordStore, uuid: str,
          planned: Iterable[records_mod.DiskRecord],
          instance_dir: str | None = None) -> Iterator[CreationBatch]:
    """Open (or join) this thread's batch for ``uuid``'s records, declaring
    ``planned``. The caller holds the instance's lock throughout.
    ``instance_dir``: removed on failure if the batch made it and it is
    left empty."""
    key = (id(store), uuid)
    batches = _batches()
    outer = batches.get(key)
    if outer is not None:
        outer.declare(planned)
        yield outer
        return
    new_dir = instance_dir is not None and not os.path.isdir(instance_dir)
    current = CreationBatch(store, uuid)
    batches[key] = current
    try:
        current.declare(planned)
        yield current
    except BaseException:
        del batches[key]
        try:
            current.flush()
        except Exception:  # report the original error
            LOG.exception('instance %s: writing the records of a failed '
                          'batch', uuid)
        if new_dir:
            with contextlib.suppress(OSError):
                os.rmdir(instance_dir)
        raise
    del batches[key]
    current.flush()
