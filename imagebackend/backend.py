"""The factory: image type -> backend class; disks by name, path or record.

``Backend(use_cow)`` is Nova's entry point and keeps Nova's meaning for
*new* disks (``by_name`` uses ``[libvirt] images_type``). An *existing* disk
is opened with :meth:`Backend.from_metadata`, from its record, never from
today's config; a disk made before records gets one on first touch.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import threading
from typing import Any, Callable, Iterable, Iterator

from imagebackend import backend_types
from imagebackend import batch as batch_mod
from imagebackend import cache as cache_mod
from imagebackend import config
from imagebackend import disk_info
from imagebackend import disks as disks_mod
from imagebackend import exception
from imagebackend import image as image_mod
from imagebackend import locks
from imagebackend import names
from imagebackend import qemu
from imagebackend import records as records_mod
from imagebackend import sources as sources_mod

# The names are declared once, in backend_types (re-exported here).
BACKENDS = backend_types.BACKENDS
KNOWN_TYPES = backend_types.KNOWN_TYPES

# The backend a legacy disk.info format implies (Nova wrote only these).
_DISK_INFO_BACKENDS = {'raw': 'flat', 'qcow2': 'qcow2', 'ploop': 'ploop'}
# What a file disk without record or disk.info entry is adopted as, when
# this host's backend would read a backing file from it: a raw file.
RAW_FILE_BACKEND = 'flat'


def backend_class(image_type: str) -> type[image_mod.Image]:
    """The class for a concrete image type (not 'default')."""
    try:
        module, cls = BACKENDS[image_type].split(':')
    except (KeyError, AttributeError):
        raise exception.UnknownBackend(image_type=image_type,
                                       known=', '.join(KNOWN_TYPES))
    return getattr(importlib.import_module(module), cls)


class Backend:
    """Makes :class:`Image` objects for one host's configuration.

    ``key_manager``: where the keys of encrypted disks come from, an object
    with castellan's key manager API (``get(context, key_uuid)
    .get_encoded()``; Nova passes ``castellan.key_manager.API(CONF)``).
    Used only when a disk is encrypted (an instance with an
    ``ephemeral_key_uuid``): see :mod:`imagebackend.encryption`.
    """

    def __init__(self, use_cow: bool | None = None, *, conf=None,
                 source: sources_mod.ImageSource | None = None,
                 records: records_mod.RecordStore | None = None,
                 transport=None, key_manager=None):
        self.conf = config.register_opts(conf)
        self.use_cow = (self.conf.use_cow_images if use_cow is None
                        else use_cow)
        if source is None:
            source = sources_mod.DirectoryImageSource(
                self.conf.imagebackend.images_dir)
        self.source = source
        self.image_cache = cache_mod.ImageCache(self.conf, source, transport)
        if records is None:
            records = records_mod.InstanceDirStore(
                self.conf.instances_path, self.image_cache.lock_path)
        self.records = records
        # Where encrypted disks' keys come from (castellan's key_manager
        # API: get(context, key_uuid).get_encoded()); used only for them.
        self.key_manager = key_manager
        # What backends keep for this Backend's life (see shared()).
        self._shared: dict[Any, Any] = {}
        self._shared_lock = threading.Lock()

    def shared(self, key: Any, make: Callable[[], Any]) -> Any:
        """The object ``make()`` returned for ``key`` on this Backend,
        made on first use (once, under a lock: ``make`` must be quick).

        Where a backend keeps what its disks share instead of asking for
        it per disk (a volume group's extent size, a cluster connection);
        objects with a ``close()`` are closed by :meth:`close`.
        """
        with self._shared_lock:
            try:
                return self._shared[key]
            except KeyError:
                value = self._shared[key] = make()
                return value

    def close(self) -> None:
        """Close what the backends keep (connections). The Backend stays
        usable: what a later disk needs is made again."""
        with self._shared_lock:
            kept, self._shared = self._shared, {}
        for value in kept.values():
            close = getattr(value, 'close', None)
            if close is not None:
                close()

    def __enter__(self) -> 'Backend':
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _type(self, image_type: str | None) -> str:
        image_type = image_type or self.conf.libvirt.images_type
        if image_type == 'default':
            image_type = 'qcow2' if self.use_cow else 'flat'
        if image_type == 'raw':
            image_type = 'flat'
        return image_type

    def image_class(self, image_type: str | None = None
                    ) -> type[image_mod.Image]:
        """The class this Backend makes disks of ``image_type`` with
        (default: the host's). A caller's subclass may give its own classes
        (the Nova face gives Nova's names for the same backends)."""
        return backend_class(self._type(image_type))

    def backend(self, image_type: str | None = None
                ) -> Callable[..., image_mod.Image]:
        """A constructor ``f(instance=, disk_name=, path=,
        disk_info_mapping=)`` for ``image_type`` (default: the host's)."""
        return functools.partial(self.image_class(image_type), backend=self)

    def by_name(self, instance, name: str, image_type: str | None = None,
                disk_info_mapping=None) -> image_mod.Image:
        """A disk of ``instance`` by name, on ``image_type`` or the host's
        configured type (for disks about to be created)."""
        names.check_disk_name(name)
        return self.backend(image_type)(instance=instance, disk_name=name,
                                        disk_info_mapping=disk_info_mapping)

    @contextlib.contextmanager
    def batch(self, instance, disks: Iterable[disks_mod.CreatableDisk] = ()
              ) -> Iterator[batch_mod.CreationBatch]:
        """Create several of ``instance``'s disks with two record writes.

        Holds the instance's lock for the block. On entry the ``creating``
        records of ``disks`` (those that have no record) are written in one
        atomic write; disks created in the block (``create_from_*``,
        ``create_empty``, ``cache``) keep their ``created`` records until
        the block ends, when they are written in one more, then Nova's
        disk.info. Crash guarantees as for one disk: see
        :mod:`imagebackend.batch`. ::

            with backend.batch(instance, todo):
                for disk in todo:
                    disk.create(context)
        """
        uuid = names.check_instance_uuid(instance.uuid)
        with locks.instance_lock(self.conf, uuid):
            planned = [d.planned_record() for d in disks]
            with batch_mod.batch(self.records, uuid, planned, os.path.join(
                    self.conf.instances_path, uuid)) as current:
                yield current

    def by_libvirt_path(self, instance, path: str,
                        image_type: str | None = None) -> image_mod.Image:
        return self.backend(image_type)(instance=instance, path=path)

    # -- existing disks ------------------------------------------------------

    def from_metadata(self, instance, name: str, disk_info_mapping=None, *,
                      created_here: bool = True) -> image_mod.Image:
        """An existing disk, opened as its record says it is.

        A disk made before records gets one from Nova's disk.info, or else
        from this host's config, but only if this is the host that made it
        (``created_here``): a migration destination raises RecordNotFound.
        """
        names.check_disk_name(name)
        uuid = names.check_instance_uuid(instance.uuid)
        record = self.records.get(uuid, name)
        if record is None:
            record = self._adopt(instance, name, created_here)
        if not record.created:
            raise exception.IncompleteDisk(disk_name=name, instance=uuid,
                                           state=record.state)
        cls = self.image_class(record.backend)
        disk = cls(instance=instance, disk_name=name,
                   disk_info_mapping=disk_info_mapping, backend=self,
                   record=record)
        if disk.location != record.location:
            # The record came with the instance from another host (cold
            # migration): the disk lives here now. Kept in memory until the
            # caller changes the disk or saves it (reading changes nothing).
            disk._record = record.replace(location=disk.location)
            disk.moved_from = record.location
        return disk

    def _adopt(self, instance, name: str,
               created_here: bool) -> records_mod.DiskRecord:
        """Decide (:meth:`adoption_record`) and write (:meth:`save_adopted`)
        the record of a disk made before records existed."""
        record = self.adoption_record(instance, name, created_here)
        self.save_adopted(instance, record)
        return record

    def adoption_record(self, instance, name: str,
                        created_here: bool = True) -> records_mod.DiskRecord:
        """The record a disk made before records existed would be adopted
        with; nothing is written (see :meth:`save_adopted`).

        Nova's disk.info says what format it decided a file disk has.
        Failing that, only the host that made the disk may adopt it
        (``created_here``), on this host's backend -- unless that backend's
        disks have a backing file: Nova's Qcow2 always wrote disk.info, so
        a file it does not name is no overlay of Nova's, and a qcow2 header
        in it may be the guest's own, naming a host file as backing. Such a
        disk is adopted as raw (:data:`RAW_FILE_BACKEND`). The file is
        never sniffed for its format, and a backing file is read only from
        a disk disk.info says is qcow2, and accepted only inside this
        host's image cache.
        """
        instance_dir = os.path.join(self.conf.instances_path, instance.uuid)
        path = os.path.join(instance_dir, name)
        fmt = disk_info.format_of(path)
        if fmt is not None:
            image_type = _DISK_INFO_BACKENDS.get(fmt)
            if image_type is None:
                raise exception.CorruptRecord(
                    location=disk_info.path_for(path),
                    reason=f'unknown format {fmt!r} for {name}')
            how = 'disk.info'
        elif created_here:
            image_type = self._type(None)
            how = 'host config'
            if self.image_class(image_type).capabilities.backing_in_cache:
                image_type, how = RAW_FILE_BACKEND, 'raw: not in disk.info'
        else:
            raise exception.RecordNotFound(disk_name=name,
                                           instance=instance.uuid)
        disk = self.image_class(image_type)(instance=instance, disk_name=name,
                                         backend=self)
        if not disk.exists():
            raise exception.RecordNotFound(disk_name=name,
                                           instance=instance.uuid)
        fmt = fmt or disk.driver_format
        disk.driver_format = fmt
        backing = None
        facts: dict[str, Any] = {}
        if disk.capabilities.backing_in_cache:
            # disk.info says qcow2: a container qemu wrote, whose header
            # names the base the guest reads through. Read once, with its
            # format named, and only a base in this host's cache is taken.
            info = qemu.info(disk.path, fmt)
            size = int(info['virtual-size'])
            backing = info.get('full-backing-filename') or info.get(
                'backing-filename')
            if backing:
                facts = self._adopted_backing(disk.path, backing, info.get(
                    'backing-filename-format'))
        else:
            size = disk.get_disk_size(disk.path)
        record = records_mod.DiskRecord(
            instance=instance.uuid, name=name, backend=disk.image_type,
            format=fmt, location=disk.location, source_type='none',
            source_id=None, virtual_size=size,
            state=records_mod.CREATED, encryption=(
                disk.encryption.to_record() if disk.encryption else None),
            provenance={'path': 'adopted', 'from': how}, **facts)
        return record

    def save_adopted(self, instance, record: records_mod.DiskRecord) -> None:
        """Write an adopted disk's record, then list it in Nova's disk.info
        as the record says (Nova's module, should the disk go back to a
        host on it, finds it listed as adopted and never probes it)."""
        self.records.put(record)
        disk = self.image_class(record.backend)(
            instance=instance, disk_name=record.name, backend=self,
            record=record)
        disk._sync_disk_info()

    def _adopted_backing(self, path: str, backing: str,
                         backing_format: str | None) -> dict[str, Any]:
        """Record fields for the base an adopted qcow2 disk names, if it is
        a file of this host's image cache (symlinks resolved) whose format
        is known (its sidecar, else the header's); else ImageUnacceptable."""
        def refuse(reason):
            return exception.ImageUnacceptable(image_id=path, reason=reason)
        if not os.path.isabs(backing):
            backing = os.path.join(os.path.dirname(path), backing)
        real = os.path.realpath(backing)
        base_dir = os.path.realpath(self.image_cache.base_dir)
        if os.path.dirname(real) != base_dir:
            raise refuse(f'its backing file {backing} is not in the image '
                         f'cache {self.image_cache.base_dir}')
        try:
            entry_name = names.check_cache_name(os.path.basename(real))
        except exception.InvalidDiskName as e:
            raise refuse(f'its backing file {backing}: {e}')
        entry = self.image_cache.get(entry_name)
        facts: dict[str, Any] = {'backing': entry_name}
        if entry is not None:
            if backing_format and backing_format != entry.format:
                raise refuse(f'it names {backing_format} as the format of '
                             f'its base {entry_name}, which is '
                             f'{entry.format}')
            backing_format = entry.format
            facts['backing_sha256'] = entry.sha256
        if not backing_format:
            raise refuse(f'the format of its base {entry_name} is not known '
                         '(no cache sidecar, none in its header)')
        facts['backing_format'] = backing_format
        return facts
