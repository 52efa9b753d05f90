"""The driver's disk flows, each saying per disk exactly what must happen.

No flow asks which backend a disk is on: it asks the disk's record (through
``Backend.from_metadata``) what the disk is, and the backend's declared
capabilities what it can do.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import uuid as uuid_mod
from typing import Any, Iterable

from imagebackend import disks as disks_mod
from imagebackend import exception
from imagebackend import locks
from imagebackend import records as records_mod
from imagebackend import revert

from driver import instance as instance_mod
from driver import instance_disks

LOG = logging.getLogger(__name__)

RESIZE_SNAPSHOT = 'nova-resize'  # Nova's name, for backends with snapshots
RESCUE_SUFFIX = '.rescue'


def instance_lock(backend, instance):
    """The instance's lock on ``backend``'s host (:mod:`imagebackend.locks`).

    Every flow here takes it around its decisions and changes; a driver may
    hold it around several flows (it is re-entrant per thread).
    """
    return locks.instance_lock(backend.conf, instance.uuid)


def spawn(backend, context: Any, instance, mapping: dict,
          block_device_info: dict | None = None) -> list[str]:
    """Create every local disk that does not exist yet.

    Returns the names created. If anything fails, the disks this call
    created are deleted (newest first) and nothing else is touched.
    """
    todo = instance_disks.instance_disks(backend, instance, mapping,
                                         block_device_info)
    with instance_lock(backend, instance):
        return _create_missing(backend, context, instance,
                               _not_recorded(backend, instance, todo))


def _not_recorded(backend, instance, todo):
    """Skip disks whose record says they exist (on whatever backend made
    them: the host's images_type may have changed since); clear what a
    creation that died left behind, so the disk is made again.

    Only a caller holding the instance lock may take a ``creating`` record
    for a dead creation: without it, it may be a creation in progress.
    """
    if not locks.held(backend.conf, instance.uuid):
        raise exception.InvalidInput(
            reason=f'instance {instance.uuid}: creating records are cleared '
                   'only under the instance lock')
    records = {r.name: r for r in backend.records.list(instance.uuid)}
    for disk in todo:
        record = records.get(disk.name)
        if record is not None and record.created:
            continue
        if record is not None:
            backend.by_name(instance, record.name, record.backend).delete()
        yield disk


def _create_missing(backend, context: Any, instance,
                    todo: Iterable[disks_mod.CreatableDisk],
                    fallback: str | None = None) -> list[str]:
    """Create the disks of ``todo`` that do not exist, all or none: their
    records are written as one batch (``creating`` before the first is
    touched, ``created`` once all are whole: ``Backend.batch``)."""
    todo = [disk for disk in todo if not disk.exists()]
    created: list[str] = []
    if not todo:
        return created
    with revert.Reverter() as undo:
        first = todo[0].image
        if first.capabilities.file_in_instance_path:
            # The instance directory too, if this call makes it.
            undo.add(functools.partial(_rmdir_if_new, first.instance_dir,
                                       os.path.isdir(first.instance_dir)))
        # Inside the undo block: should the batch's last writes fail, the
        # disks it made are removed like any other failure's.
        with backend.batch(instance, todo):
            for disk in todo:
                disk.create(context, fallback=fallback)
                undo.add(disk.image.delete)
                created.append(disk.name)
    return created


def _rmdir_if_new(path: str, existed: bool) -> None:
    if not existed:
        try:
            os.rmdir(path)
        except OSError:
            pass


def finish_migration(backend, context: Any, instance, mapping: dict,
                     block_device_info: dict | None = None,
                     source_host: str | None = None) -> dict[str, list[str]]:
    """On a cold-migration/resize destination, disks already copied.

    Creates nothing that exists; restores what existing disks depend on
    (from ``source_host`` when the image is gone upstream); grows root and
    every ephemeral to the instance's (new) flavor; recreates disposable
    disks (swap). A shrink is refused before anything changes. Each disk's
    backend and format come from its record, never from this host's config.

    All or nothing, as far as the storage allows. Steps run from the most
    to the least reversible: existing disks are settled and their backing
    checked (nothing the guest sees changes), missing disks are created
    (undone by deleting them), disposable disks are made afresh (undone by
    deleting the new one and making the old one again, as its record says:
    its contents are disposable by definition), and only then, last, are
    disks grown. A grow cannot be shrunk back on most backends, so it comes
    after every other step has succeeded; where a later step fails, the
    earlier grows are rolled back to a snapshot taken just before them on
    backends that keep snapshots (Rbd), and stay grown (data intact, record
    true to the disk) on the others.

    One exception: a disk that arrived from another host and is to grow is
    settled and checked just before its grow (settling may make its storage,
    an LV from its transit file, which is then grown while it is the newest
    volume). Those are copies: a failed migration is reverted on the
    source, whose originals this never touches.
    """
    with instance_lock(backend, instance):
        plan = _migration_plan(backend, instance, mapping,
                               block_device_info, source_host)
        return _finish(backend, context, instance, mapping, plan,
                       source_host)


@dataclasses.dataclass
class _Plan:
    keep: list = dataclasses.field(default_factory=list)      # disks
    create: list = dataclasses.field(default_factory=list)    # disks
    recreate: list = dataclasses.field(default_factory=list)  # (old, new)
    grow: list = dataclasses.field(default_factory=list)      # (disk, size)


def check_no_shrink(path: str, current: int | None,
                    size: int | None) -> None:
    """Refuse to make the disk at ``path`` (``current`` bytes) smaller
    than it is: CannotShrink. An unknown size or current size is no
    shrink. The one shrink check of a resize, the flow's and the CLI's."""
    if size and current and size < current:
        raise exception.CannotShrink(path=path, current=current, size=size)


def _migration_plan(backend, instance, mapping, block_device_info,
                    source_host) -> _Plan:
    """Decide, from records read under the instance lock, what each disk
    needs; refuse a shrink before anything changes."""
    plan = _Plan()
    arrived = {r.name for r in backend.records.list(instance.uuid)}
    for wanted in instance_disks.instance_disks(backend, instance, mapping,
                                                block_device_info):
        # A disk whose record arrived exists, even if its data is still in
        # transit form (an LV's contents as a file): settle() finishes it.
        if wanted.name not in arrived and not wanted.exists():
            plan.create.append(wanted)
            continue
        # No record for a disk that is here: on a destination that is an
        # error (RecordNotFound); only the host that made it may adopt it.
        existing = backend.from_metadata(instance, wanted.name,
                                         mapping.get(wanted.name),
                                         created_here=source_host is None)
        if wanted.disposable:
            # Made afresh as described today (a resize changes its size and
            # so its template), not as its record says it was first made.
            plan.recreate.append(
                (existing, dataclasses.replace(wanted, image=existing)))
            continue
        disk = _from_record(existing, existing.record, wanted, wanted.size)
        current = existing.virtual_size()
        check_no_shrink(existing.location, current, disk.size)
        plan.keep.append(disk)
        if disk.size and disk.size > current:
            plan.grow.append((disk, disk.size))
    return plan


def _finish(backend, context, instance, mapping, plan: _Plan,
            source_host) -> dict[str, list[str]]:
    done: dict[str, list[str]] = {'created': [], 'grown': [], 'checked': []}
    undo_snaps = []
    # (getattr: an Image made outside this library may not say.)
    late = {id(d) for d, _size in plan.grow
            if getattr(d.image, 'moved_from', None) is not None}
    with revert.Reverter() as undo:
        for disk in plan.keep:
            if id(disk) not in late:
                _settle_and_check(context, disk, source_host)
        # One batch of records (the disks made afresh replace records of
        # their own, which they write as alone).
        with backend.batch(instance, plan.create):
            for disk in plan.create:
                disk.create(context, fallback=source_host)
                undo.add(disk.image.delete)
                done['created'].append(disk.name)
            for old, new in plan.recreate:
                record = old.record
                old.delete()
                # Registered first, so it runs after the new disk is
                # deleted.
                undo.add(functools.partial(_remake, backend, context,
                                           instance, record,
                                           mapping.get(new.name)))
                new.create(context, fallback=source_host)
                undo.add(new.image.delete)
                done['created'].append(new.name)
        for i, (disk, size) in enumerate(plan.grow):
            if id(disk) in late:
                _settle_and_check(context, disk, source_host)
            # Backends with snapshots keep one so a revert can undo it.
            disk.image.create_snap(RESIZE_SNAPSHOT)
            if i < len(plan.grow) - 1:
                # A later grow may fail: a snapshot of this very moment
                # (RESIZE_SNAPSHOT may be older: an unconfirmed resize).
                snap = f'ib-undo-{uuid_mod.uuid4().hex[:12]}'
                disk.image.create_snap(snap)
                undo_snaps.append((disk.image, snap))
                undo.add(functools.partial(_rollback, disk.image, snap))
            disk.image.resize_image(size)
            done['grown'].append(disk.name)
    for image, snap in undo_snaps:
        image.remove_snap(snap, ignore_errors=True)
    done['checked'] = [d.name for d in plan.keep]
    return done


def _settle_and_check(context, disk, source_host) -> None:
    disk.image.settle()
    disk.check_backing(context, fallback=source_host)


def _remake(backend, context, instance, record, disk_info_mapping) -> None:
    """Make a disposable disk again as ``record`` says it was."""
    instance_disks.disposable_as_recorded(
        backend, instance, record, disk_info_mapping).create(context)


def _rollback(image, snap: str) -> None:
    """Undo a grow: back to the snapshot taken just before it (a no-op on
    backends without snapshots)."""
    image.rollback_to_snap(snap)
    image.remove_snap(snap, ignore_errors=True)


def finish_revert_migration(backend, instance) -> None:
    """On the source, after a revert: undo what finish_migration did to
    shared disks (a snapshot rollback where the backend keeps one)."""
    with instance_lock(backend, instance):
        for record in backend.records.list(instance.uuid):
            if not record.created:
                continue
            disk = backend.from_metadata(instance, record.name)
            disk.rollback_to_snap(RESIZE_SNAPSHOT)
            disk.remove_snap(RESIZE_SNAPSHOT, ignore_errors=True)


def confirm_migration(backend, instance) -> None:
    """Drop what a revert would have needed."""
    with instance_lock(backend, instance):
        for record in backend.records.list(instance.uuid):
            if record.created:
                backend.from_metadata(instance, record.name).remove_snap(
                    RESIZE_SNAPSHOT, ignore_errors=True)


def destroy_disks(backend, instance, suffix: str = '') -> list[str]:
    """Delete the instance's local disks (those ending in ``suffix``) and
    their records; returns the names deleted."""
    with instance_lock(backend, instance):
        deleted = []
        for record in backend.records.list(instance.uuid):
            if not record.name.endswith(suffix):
                continue
            _disk_of(backend, instance, record).delete()
            deleted.append(record.name)
        return deleted


def cleanup_migration_source(backend, instance) -> list[str]:
    """On the source of a finished cold migration: delete the disks that
    were copied away, and forget (records only) those on shared storage,
    which the destination now uses. Returns the names whose storage was
    deleted.

    Rescue disks never travel (``migration.migrate_disks``): they are
    deleted wherever they are.
    """
    with instance_lock(backend, instance):
        deleted = []
        for record in backend.records.list(instance.uuid):
            disk = _disk_of(backend, instance, record)
            if disk.capabilities.shared_storage and \
                    not record.name.endswith(RESCUE_SUFFIX):
                backend.records.delete(instance.uuid, record.name)
                continue
            disk.delete()
            deleted.append(record.name)
        return deleted


def _disk_of(backend, instance, record):
    """The disk a record names; a creation that died is opened on the
    backend its record names, to remove whatever it left."""
    if record.created:
        return backend.from_metadata(instance, record.name)
    return backend.by_name(instance, record.name, record.backend)


def pre_live_migration(backend, context: Any, instance, mapping: dict,
                       records: Iterable[records_mod.DiskRecord],
                       block_device_info: dict | None = None,
                       source_host: str | None = None) -> list[str]:
    """On a live-migration destination without shared storage.

    Recreates every disk exactly as it was first created on the source, as
    ``records`` (carried from the source, as Nova carries migrate_data)
    say: the same backend; disks that depend on a cache entry are made again
    from the same image or template (side-loaded from ``source_host`` rather
    than regenerated: a regenerated template is not byte-identical); the
    others are made empty, of the recorded size and format, for the block
    migration to fill. Disks on shared storage are already there.
    """
    by_name = {r.name: r for r in records}
    described = {d.name: d for d in instance_disks.instance_disks(
        backend, instance, mapping, block_device_info)}
    for name in described:
        if name not in by_name:
            raise exception.RecordNotFound(disk_name=name,
                                           instance=instance.uuid)
    with instance_lock(backend, instance):
        todo = []
        for name, record in sorted(by_name.items()):
            if not record.created:
                raise exception.IncompleteDisk(disk_name=name,
                                               instance=instance.uuid,
                                               state=record.state)
            image = backend.by_name(instance, name,
                                    image_type=record.backend,
                                    disk_info_mapping=mapping.get(name))
            if image.capabilities.shared_storage:
                continue
            if image.exists():
                raise exception.DiskExists(location=image.location)
            todo.append(_as_recorded(image, record, described.get(name)))
        return _create_missing(backend, context, instance, todo,
                               fallback=source_host)


def _from_record(image, record, described, size
                 ) -> disks_mod.CreatableDisk:
    """The creatable disk ``record`` says ``image`` was made as.

    An existing disk depends on what it was made from, not on what the
    instance would be given today (a resize changes template names): its
    template may only be remade by the same function, and where a
    function is needed for a different template, none is available.
    """
    disposable = bool(described is not None and described.disposable)
    if record.source_type == 'image':
        return disks_mod.DiskFromImage(image=image, size=size,
                                       disposable=disposable,
                                       image_id=record.source_id)
    if record.source_type == 'func':
        func = getattr(described, 'func', None)
        if getattr(described, 'cache_name', None) != record.source_id:
            func = functools.partial(_no_regeneration, record.source_id)
        return disks_mod.DiskFromFunc(image=image, size=size,
                                      disposable=disposable, func=func,
                                      cache_name=record.source_id)
    # A disk adopted from before records: only the description can say.
    if described is None:
        raise exception.InvalidInput(
            reason=f'disk {record.name} has no recorded source and is not '
                   'in the disk mapping: it cannot be made again here')
    return dataclasses.replace(described, image=image, size=size)


def _as_recorded(image, record, described) -> disks_mod.CreatableDisk:
    """A creatable disk that makes ``record``'s disk again on this host."""
    if not image.capabilities.backing_in_cache:
        return _EmptyLike(image=image, size=record.virtual_size,
                          record=record)
    return _SameBaseAs(_from_record(image, record, described,
                                    record.virtual_size), record)


def _no_regeneration(cache_name: str, target: str) -> None:
    """A template that must be copied, not remade: a remade filesystem is
    not byte-identical to the base a disk was made on."""
    raise exception.ImageNotFound(image_id=cache_name)


class _EmptyLike(disks_mod.CreatableDisk):
    """An empty disk shaped like a record from another host."""

    def __init__(self, image, size, record):
        super().__init__(image=image, size=size)
        self.record = record

    @property
    def source(self):
        return (self.record.source_type, self.record.source_id)

    def planned_record(self):
        # What create_empty writes: the recorded format, path 'empty'.
        return self.image.planned_record(
            *self.source, 'empty', purpose='live-migration').replace(
                format=self.record.format)

    def create(self, context, fallback=None):
        self.image.create_empty(self.record)

    def check_backing(self, context, fallback=None):
        pass


class _SameBaseAs(disks_mod.CreatableDisk):
    """A disk made again on this host over a base that must have the digest
    ``record`` (from the source) keeps: the guest's writes in the disk lie
    over that base's bytes, so an image id whose bytes changed upstream, or
    a template made again rather than copied, would show the guest other
    data. Refused (ImageUnacceptable) and the disk removed again."""

    def __init__(self, disk, record):
        super().__init__(image=disk.image, size=disk.size,
                         disposable=disk.disposable)
        self.disk = disk
        self.record = record

    @property
    def source(self):
        return self.disk.source

    def create(self, context, fallback=None):
        self.disk.create(context, fallback=fallback)
        want = self.record.backing_sha256
        made = self.image.record
        got = made.backing_sha256 if made is not None else None
        if want and got != want:
            self.image.delete()
            raise exception.ImageUnacceptable(
                image_id=self.source[1],
                reason=f'disk {self.name} depends on base '
                       f'{self.record.backing} with digest {want}, but this '
                       f'host has it with digest {got}: its data changed '
                       'since the disk was made')

    def check_backing(self, context, fallback=None):
        self.disk.check_backing(context, fallback=fallback)


def rescue(backend, context: Any, instance, rescue_image_id: str | None = None,
           mapping: dict | None = None) -> list[str]:
    """Create the ``.rescue`` disks: a root from the rescue image (at the
    image's size) and, with a config drive, a rescue config drive."""
    mapping = mapping or instance_mod.rescue_mapping(instance)
    todo = instance_disks.instance_disks(
        backend, instance, mapping, suffix=RESCUE_SUFFIX,
        image_id=rescue_image_id or instance.image_ref)
    with instance_lock(backend, instance):
        return _create_missing(backend, context, instance,
                               _not_recorded(backend, instance, todo))


def unrescue(backend, instance) -> list[str]:
    """Delete every ``.rescue`` disk and its record."""
    return destroy_disks(backend, instance, suffix=RESCUE_SUFFIX)
