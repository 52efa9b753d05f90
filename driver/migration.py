"""The source side of a cold migration: send disks and their records.

The destination then runs ``flows.finish_migration``. Which disks travel
is data: not disposable ones (swap is recreated), not ones on shared
storage (every host sees them), and each backend knows how to send its own
(``Image.send_to``). The records go along, so the destination knows what
each disk is without asking its own config.
"""

from __future__ import annotations

import os
import tempfile

from imagebackend import fileutils
from imagebackend import locks
from imagebackend import records as records_mod

from driver import instance_disks


def migrate_disks(backend, instance, mapping: dict, dest_host: str,
                  transport, block_device_info: dict | None = None,
                  progress=None) -> list[str]:
    """Send the instance's disks and records to ``dest_host``; return the
    names of the disks whose data was copied. ``progress(disk name)``, if
    given, returns the progress callback for that disk's copy.

    Runs under the instance's lock on this host: no disk changes (a resize,
    a rescue) while it is being copied, and the records sent are the ones
    the copies were made from."""
    described = {d.name: d for d in instance_disks.instance_disks(
        backend, instance, mapping, block_device_info)}
    with locks.instance_lock(backend.conf, instance.uuid):
        travelling, copied = [], []
        for record in backend.records.list(instance.uuid):
            if not record.created or record.name.endswith('.rescue'):
                continue
            wanted = described.get(record.name)
            disk = backend.from_metadata(instance, record.name)
            shared = disk.capabilities.shared_storage
            # A disposable disk (swap) is recreated on the destination,
            # unless it is on shared storage: then it is already there,
            # record and all.
            if wanted is not None and wanted.disposable and not shared:
                continue
            if not shared:
                disk.send_to(transport, dest_host,
                             progress=progress(record.name) if progress
                             else None)
                copied.append(record.name)
            travelling.append(record)
        _send_records(transport, dest_host, instance.uuid, travelling)
        return copied


def _send_records(transport, host: str, uuid: str, records) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, records_mod.RECORDS_FILE)
        fileutils.atomic_write_json(path, records_mod.document(records))
        transport.put(host, path, os.path.join(uuid,
                                               records_mod.RECORDS_FILE))
