"""Rbd disks' snapshots, raw export and direct snapshots.

Nova's hooks: ``create_snap``, ``remove_snap`` and ``rollback_to_snap``
(the ``nova-resize`` snapshot the migration flows keep); ``flatten``;
``direct_snapshot``, a snapshot straight into the pool of the disk's
parent as a flattened image, and ``cleanup_direct_snapshot``.
``export_raw`` writes what the guest sees into a sparse raw file: how
``snapshot_extract`` reads a disk when qemu-img has no rbd driver.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from imagebackend import exception
from imagebackend import revert
from imagebackend.backends.ceph_connection import RbdError, typed
from imagebackend.backends.rbd_locations import BASE_SNAP, parse_location

# The optional bindings (None where not installed), imported once.
from imagebackend.backends.ceph_connection import librbd, rados

LOG = logging.getLogger(__name__)

READ_CHUNK = 4 * 1024 * 1024


class RbdSnapshots:
    """An Rbd disk's snapshots, its export as a raw file, and Nova's
    direct snapshot hooks (a part of :class:`~imagebackend.backends.rbd.
    Rbd`)."""

    def export_raw(self, target: str) -> None:
        """Write what the guest sees into the file ``target`` (raw, holes
        where nothing is allocated in the disk or its parents)."""
        extents = []

        def collect(offset, length, exists):
            if exists:
                extents.append((offset, length))

        with self._connect() as conn, self._open(conn, read_only=True) as img:
            size = img.size()
            img.diff_iterate(0, size, None, collect, include_parent=True,
                             whole_object=False)
            with open(target, 'wb') as f:
                for offset, length in extents:
                    done = 0
                    while done < length:
                        n = min(READ_CHUNK, length - done)
                        data = img.read(offset + done, n)
                        if data.count(0) != len(data):
                            f.seek(offset + done)
                            f.write(data)
                        done += n
                f.truncate(size)
                f.flush()
                os.fsync(f.fileno())

    def create_snap(self, name: str) -> None:
        """Snapshot the disk. An existing snapshot of that name is kept: it
        is the older, so the right point to go back to."""
        with self._connect() as conn, self._open(conn) as img:
            if name in {s['name'] for s in img.list_snaps()}:
                LOG.info('%s@%s exists; keeping it', self.location, name)
                return
            img.create_snap(name)

    def remove_snap(self, name: str, ignore_errors: bool = False) -> None:
        try:
            with self._connect() as conn, self._open(conn) as img:
                if name not in {s['name'] for s in img.list_snaps()}:
                    return
                self._remove_snap(img, self.location, name)
        except (exception.ImageBackendError, rados.Error,
                librbd.Error) as e:
            if not ignore_errors:
                if isinstance(e, exception.ImageBackendError):
                    raise
                raise RbdError(operation='snapshot removal',
                               target=f'{self.location}@{name}',
                               reason=str(e))
            LOG.warning('could not remove %s@%s: %s', self.location, name, e)

    def rollback_to_snap(self, name: str) -> None:
        """Go back to snapshot ``name`` (its data and size). A disk without
        that snapshot (one that was never grown) is left as it is."""
        with self._connect() as conn, self._open(conn) as img:
            if name not in {s['name'] for s in img.list_snaps()}:
                LOG.debug('%s has no snapshot %s', self.location, name)
                return
            img.rollback_to_snap(name)
            size = img.size()
        self._update_record(virtual_size=size)

    def flatten(self) -> None:
        """Copy the parent's data into the disk so it stands alone."""
        with self._connect() as conn, self._open(conn) as img:
            try:
                parent = '%s/%s@%s' % img.parent_info()
            except librbd.ImageNotFound:
                return  # no parent
            img.flatten()
        record = self.record
        if record is not None and record.created:
            self._update_record(provenance=dict(record.provenance,
                                                flattened_from=parent))

    def direct_snapshot(self, context: Any, snapshot_name: str,
                        image_format: str, image_id: str,
                        base_image_id: str) -> str:
        """Snapshot the disk straight into the pool of its parent (Glance's,
        when it was cloned from a location; else this pool) as a flattened
        image ``<image_id>`` with a protected ``snap``. Returns its
        ``rbd://fsid/pool/image/snap`` URL."""
        if image_format != 'raw':
            raise NotImplementedError(
                f'direct snapshots are raw; {image_format} was asked for')
        with self._connect() as conn:
            with self._open(conn) as img:
                try:
                    dest_pool = img.parent_info()[0]
                except librbd.ImageNotFound:
                    dest_pool = self.pool
                img.create_snap(snapshot_name)
                img.protect_snap(snapshot_name)
            fsid = conn.fsid
            source = (f'rbd://{fsid}/{self.pool}/{self.rbd_name}/'
                      f'{snapshot_name}')
            dest_ioctx = conn.ioctx(dest_pool)
            with typed('direct snapshot', f'{dest_pool}/{image_id}'), \
                    revert.Reverter() as undo:
                # Undone newest first: the copy, then the disk's snapshot
                # (which cannot go while the unflattened copy depends on it).
                undo.add(lambda: self.cleanup_direct_snapshot(
                    source, ignore_errors=True))
                librbd.RBD().clone(conn.ioctx(self.pool), self.rbd_name,
                                   snapshot_name, dest_ioctx, image_id)
                undo.add(lambda: self._remove_image(conn, dest_pool,
                                                    image_id))
                with librbd.Image(dest_ioctx, image_id) as dest:
                    dest.flatten()
                self.cleanup_direct_snapshot(source)
                with librbd.Image(dest_ioctx, image_id) as dest:
                    dest.create_snap(BASE_SNAP)
                    dest.protect_snap(BASE_SNAP)
        return f'rbd://{fsid}/{dest_pool}/{image_id}/{BASE_SNAP}'

    def cleanup_direct_snapshot(self, location, also_destroy_volume=False,
                                ignore_errors=False) -> None:
        """Remove a direct snapshot (and with ``also_destroy_volume`` its
        image); ``location`` is its URL or Nova's ``{'url': ...}``."""
        url = location.get('url') if isinstance(location, dict) else location
        try:
            fsid, pool, name, snap = parse_location(url)
        except exception.InvalidInput:
            return
        try:
            with self._connect() as conn:
                if fsid != conn.fsid:
                    return
                ioctx = conn.ioctx(pool)
                try:
                    img = librbd.Image(ioctx, name)
                except librbd.ImageNotFound:
                    return
                with img:
                    if snap in {s['name'] for s in img.list_snaps()}:
                        self._remove_snap(img, f'{pool}/{name}', snap)
                if also_destroy_volume:
                    self._remove_image(conn, pool, name)
        except (exception.ImageBackendError, rados.Error,
                librbd.Error) as e:
            if not ignore_errors:
                raise
            LOG.warning('could not clean up %s: %s', url, e)
