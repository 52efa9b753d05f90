"""The abstract ``Image``: one local disk of an instance, on one backend.

Two interfaces live here. The new one gives the backend all the context:
``create_from_image`` / ``create_from_func`` create a disk,
``check_backing_from_image`` / ``check_backing_from_func`` restore what an
existing disk depends on. The legacy one is Nova's, unchanged in meaning:
``cache(fetch_func, filename, size, safe, ...)`` over ``create_image()``.
By default the new interface runs through the legacy one (:mod:`shim`);
native backends override it.

Whatever path creates a disk, the record is kept here, in one place:
written ``creating`` before storage is touched, ``created`` once the disk is
whole, and removed along with the partial disk on failure.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import logging
import os
import stat
import threading
from typing import Any, Callable, ClassVar, Iterator

from imagebackend import batch as batch_mod
from imagebackend import disk_info
from imagebackend import encryption as encryption_mod
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import formats
from imagebackend import libvirt_config
from imagebackend import locks
from imagebackend import names
from imagebackend import processes
from imagebackend import qemu
from imagebackend import records as records_mod
from imagebackend import revert
from imagebackend import shim

LOG = logging.getLogger(__name__)

QOS_SPECS = ('disk_read_bytes_sec', 'disk_read_iops_sec',
             'disk_write_bytes_sec', 'disk_write_iops_sec',
             'disk_total_bytes_sec', 'disk_total_iops_sec')


def callable_name(func: Callable[..., Any]) -> str:
    """A function's name for an error message (a partial or mock has
    none: its repr)."""
    return getattr(func, '__qualname__', None) or repr(func)


def _disk_scsi(info: libvirt_config.GuestDisk, disk_unit: int | None) -> None:
    """A fixed unit on the SCSI controller (Nova bug 1792077)."""
    if info.target_bus == 'scsi' and disk_unit is not None:
        info.device_addr = libvirt_config.DriveAddress(controller=0,
                                                       unit=disk_unit)


def _disk_qos(info: libvirt_config.GuestDisk, extra_specs: dict) -> None:
    """Flavor extra specs ``quota:disk_*`` become ``<iotune>`` limits."""
    for key, value in (extra_specs or {}).items():
        scope = key.split(':')
        if len(scope) == 2 and scope[0] == 'quota' and scope[1] in QOS_SPECS:
            setattr(info, scope[1], int(value))


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a backend is and can do, as data: flows ask these, not types."""

    # Every host sees the same disks: migration copies nothing.
    shared_storage: bool = False
    # Disks are files (or directories) inside the instance directory.
    file_in_instance_path: bool = False
    # Disks depend on a cache entry (a backing file) that must exist on
    # every host using them: migration must recreate it there.
    backing_in_cache: bool = False
    # Disks are block devices: every disk's is_block_dev, which Nova's
    # driver reads (mkfs as root) and libvirt_fs_info answers from.
    block_device: bool = False
    # create_from_* are implemented natively, not through the shim.
    native_create: bool = False
    # Nova lists these disks in the disk.info beside them (path -> format):
    # the library keeps that file in step with the disk's record.
    nova_disk_info: bool = False
    # Disks can be encrypted (ephemeral storage encryption, dm-crypt).
    encryption: bool = False
    # Disk names that are not ephemeral storage, allowed unencrypted on
    # this backend where encryption is required (Nova's Flat loophole).
    unencrypted_names: frozenset[str] = frozenset()


class Image(abc.ABC):
    """One disk of one instance on one backend (abstract)."""

    image_type: ClassVar[str] = 'abstract'
    capabilities: ClassVar[Capabilities] = Capabilities()
    # Nova's class attributes, kept for drivers that read them.
    SUPPORTS_CLONE: ClassVar[bool] = False
    SUPPORTS_LUKS: ClassVar[bool] = False
    # The format every disk of this backend has, or None where a disk's
    # record says (Flat keeps unconverted images; block backends are raw).
    fixed_format: ClassVar[str | None] = None
    # How this disk is encrypted (backends that can encrypt set it).
    encryption: encryption_mod.Encryption | None = None
    # While cache() creates the disk: the virtual size create_image says it
    # made (:meth:`_note_made`), 0 until it says; None when not creating.
    _made: int | None = None

    def __init__(self, instance=None, disk_name: str | None = None,
                 path: str | None = None, disk_info_mapping=None, *,
                 backend, source_type: str = 'file',
                 driver_format: str = 'raw', is_block_dev: bool | None = None,
                 record: records_mod.DiskRecord | None = None):
        self.instance = instance
        self.disk_info_mapping = disk_info_mapping
        self._backend = backend
        self.conf = backend.conf
        self.image_cache = backend.image_cache
        self.records = backend.records
        self.source_type = source_type
        self.driver_format = driver_format
        # Nova's per-disk attribute (its driver makes an ephemeral disk's
        # filesystem as root where it is True): by default the backend's
        # declaration, the block_device capability.
        self.is_block_dev = (self.capabilities.block_device
                             if is_block_dev is None else is_block_dev)
        self.driver_io = None
        self.discard_mode = self.conf.libvirt.hw_disk_discard
        self.preallocate = False
        self.lock_path = self.image_cache.lock_path
        if disk_name is not None:
            names.check_disk_name(disk_name)
        self.disk_name = disk_name
        self.path = path
        self._record = record
        # Where the record said the disk was, when it came from elsewhere.
        self.moved_from: str | None = None
        self._creation_path = threading.local()
        # Never an unencrypted disk where encryption is required.
        encryption_mod.refuse_unencryptable(self)

    # -- identity ------------------------------------------------------------

    @property
    def instance_uuid(self) -> str:
        return names.check_instance_uuid(self.instance.uuid)

    @property
    def instance_dir(self) -> str:
        return os.path.join(self.conf.instances_path, self.instance_uuid)

    @property
    def location(self) -> str:
        """Where the disk lives, as recorded (a path, LV or RBD name)."""
        return self.path

    @property
    def record(self) -> records_mod.DiskRecord | None:
        if self._record is None and self.instance is not None and \
                self.disk_name is not None:
            self._record = self.records.get(self.instance_uuid,
                                            self.disk_name)
        return self._record

    @classmethod
    def is_shared_block_storage(cls) -> bool:
        return cls.capabilities.shared_storage

    @classmethod
    def is_file_in_instance_path(cls) -> bool:
        return cls.capabilities.file_in_instance_path

    def exists(self) -> bool:
        return os.path.exists(self.path)

    def _instance_locked(self):
        """The instance's lock (re-entrant per thread: see
        :mod:`imagebackend.locks`); nothing for a disk opened by path
        without its instance."""
        if self.instance is None:
            return contextlib.nullcontext()
        return locks.instance_lock(self.conf, self.instance_uuid)

    def _require_disk(self) -> None:
        if not self.exists():
            raise exception.DiskNotFound(location=self.location)

    # -- the new interface ---------------------------------------------------

    def create_from_image(self, context: Any, image_id: str,
                          size: int | None = None,
                          fallback: str | None = None) -> None:
        """Create this disk from image ``image_id``, ``size`` bytes or the
        image's size. ``fallback`` names a host to copy a missing cache
        entry from when the image source no longer has it."""
        shim.create_from_image(self, context, image_id, size, fallback)

    def create_from_func(self, context: Any, func: Callable[[str], None],
                         cache_name: str, size: int | None = None,
                         fallback: str | None = None) -> None:
        """Create this disk from what ``func(target)`` writes; ``cache_name``
        names the result when the backend keeps it as a template."""
        shim.create_from_func(self, context, func, cache_name, size,
                              fallback)

    def create_from_content(self, context: Any,
                            func: Callable[[str], None], cache_name: str,
                            size: int | None = None,
                            fallback: str | None = None) -> None:
        """Create this disk from what ``func(target)`` writes, keeping no
        template: per-instance content (a config drive) that no other disk
        shares and that must be made afresh each time. ``cache_name`` is
        only recorded as the disk's source.

        Default: :meth:`create_from_func`, which is that already on
        backends that write the function's output into the disk itself
        (Flat, Lvm, Ploop). Backends whose ``create_from_func`` goes
        through a shared template override this."""
        self.create_from_func(context, func, cache_name, size, fallback)

    def check_backing_from_image(self, context: Any, image_id: str,
                                 fallback: str | None = None) -> None:
        """Recreate what an existing disk made from an image depends on.
        Never touches the disk itself."""
        shim.check_backing_from_image(self, context, image_id, fallback)

    def check_backing_from_func(self, context: Any,
                                func: Callable[[str], None], cache_name: str,
                                fallback: str | None = None) -> None:
        shim.check_backing_from_func(self, context, func, cache_name,
                                     fallback)

    def plan_exists(self) -> list:
        """The steps :meth:`exists` takes, for plans (commands where it
        runs one); none where it only looks at a path."""
        return []

    def plan_create(self, source_type: str, source_id: str,
                    func: Callable[[str], None] | None,
                    size: int | None) -> list | None:
        """What ``create_from_image`` (``source_type`` 'image'),
        ``create_from_func`` ('func') or ``create_from_content``
        ('content') would do, as :class:`imagebackend.plans.Step` objects,
        without doing it; raises :class:`imagebackend.plans.Refused` where
        it would fail. None: this backend does not say (the default)."""
        return None

    # -- the legacy interface ------------------------------------------------

    @abc.abstractmethod
    def create_image(self, prepare_template: Callable[..., None], base: str,
                     size: int | None, *args, **kwargs) -> None:
        """Nova's contract: create the disk, calling
        ``prepare_template(target=...)`` to materialise the template."""

    @staticmethod
    def _run_template(prepare_template: Callable[..., None], target: str,
                      *args, **kwargs) -> None:
        """``prepare_template(target=target, ...)``, then NothingMade if it
        returned without making ``target``: the caller learns which
        function failed it, not an OSError from whatever reads it next."""
        prepare_template(target=target, *args, **kwargs)
        Image._require_made(prepare_template, target)

    @staticmethod
    def _require_made(prepare_template: Callable[..., None],
                      target: str) -> None:
        """NothingMade unless ``prepare_template`` made ``target``."""
        if not os.path.exists(target):
            raise exception.NothingMade(
                function=callable_name(prepare_template), path=target)

    def cache(self, fetch_func: Callable[..., None], filename: str,
              size: int | None = None, safe: bool = False, *args,
              **kwargs) -> None:
        """Nova's entry point, with Nova's meaning (see nova-behaviour 1.3),
        plus a metadata record for any disk it creates."""
        names.check_cache_name(filename)
        # Whether the disk exists is decided, and acted on, under the
        # instance's lock (see _creating).
        with self._instance_locked():
            self._cache(fetch_func, filename, size, safe, *args, **kwargs)

    def _cache(self, fetch_func, filename, size, safe, *args, **kwargs):
        cache = self.image_cache
        cache.ensure_dirs()
        base = cache.path(filename)

        def fetch_func_sync(target, *args, **kwargs):
            with cache.lock(filename):
                if target != base or not os.path.exists(base):
                    fetch_func(target=target, *args, **kwargs)
        # Errors name the caller's function, not this wrapper.
        fetch_func_sync.__qualname__ = callable_name(fetch_func)

        if not self.exists():
            if 'image_id' in kwargs:
                source = ('image', kwargs['image_id'])
            else:
                source = ('func', filename)
            with self._creating(source[0], source[1],
                                self._current_creation_path()) as facts:
                self._made = 0
                try:
                    self.create_image(fetch_func_sync, base, size,
                                      safe=safe, *args, **kwargs)
                    self._legacy_resize(base, size)
                    facts.update(self._legacy_facts(base))
                finally:
                    self._made = None
            return
        if not os.path.exists(base):
            self.create_image(fetch_func_sync, base, size, safe=safe,
                              *args, **kwargs)
        self._legacy_resize(base, size)

    def _legacy_resize(self, base: str, size: int | None) -> None:
        if size:
            if os.path.exists(base) and size > self.get_disk_size(base) \
                    and size > self._made_size():
                self.resize_image(size)
            self._preallocate(size)

    def _note_made(self, virtual_size: int) -> None:
        """Say, from ``create_image``, the virtual size of the disk it has
        just made (it knows: the size it asked for, or the base's as its
        sidecar says), so that cache() records it without a qemu-img
        probe. Only while cache() is creating the disk."""
        if self._made is not None:
            self._made = virtual_size

    def _made_size(self) -> int:
        """The size create_image said it made (:meth:`_note_made`), else 0
        (not known)."""
        return self._made or 0

    def _legacy_facts(self, base: str) -> dict[str, Any]:
        """What cache() made: as create_image said (:meth:`_note_made`),
        else found the way Nova finds it (qemu-img, for a create_image
        that does not say, e.g. a subclass's)."""
        size = self._made_size()
        facts = {'format': self.driver_format,
                 'virtual_size': size or self.get_disk_size(self.path)}
        if self.capabilities.backing_in_cache:
            entry = self._legacy_base_entry(base)
            facts.update(backing=entry.name, backing_format=entry.format,
                         backing_sha256=entry.sha256)
        return facts

    def _legacy_base_entry(self, base: str):
        """The cache entry a disk cache() made depends on, with its sidecar.

        A base a caller's fetch_func wrote has no sidecar yet: it is
        inspected now (the library's inspector, never a probe) and given
        one, so the record holds the base's real format and sha256; a base
        whose format cannot be told refuses the disk (ImageUnacceptable),
        as a disk whose backing format is unknown is read wrongly later.
        """
        name = os.path.basename(base)
        cache = self.image_cache
        # A base cached earlier must still have its digest (cheap while its
        # size, mtime and inode are unchanged): changed bytes are refused.
        entry = cache.check(name) if os.path.exists(
            base + names.META_SUFFIX) else None
        if entry is None:
            record = self._record
            kind, source = 'template', name
            if record is not None and record.source_type == 'image':
                kind, source = 'image', record.source_id
            if os.path.exists(base):
                # The caller's fetch_func wrote it just now (Nova's legacy
                # path writes no sidecar): describe it once, explicitly.
                try:
                    entry = cache.adopt(name, kind, source)
                except exception.CorruptCacheEntry:
                    entry = cache.get(name)  # described meanwhile
        if entry is None:
            raise exception.ImageUnacceptable(
                image_id=name, reason='the base this disk was made on is '
                'gone, so its format cannot be recorded')
        return entry

    @contextlib.contextmanager
    def creation_path(self, kind: str) -> Iterator[None]:
        """Label records written inside the block (e.g. ``'shim'``)."""
        previous = getattr(self._creation_path, 'kind', None)
        self._creation_path.kind = kind
        try:
            yield
        finally:
            self._creation_path.kind = previous

    def _current_creation_path(self) -> str:
        return getattr(self._creation_path, 'kind', None) or 'legacy-cache'

    # -- record keeping, in one place ----------------------------------------

    @contextlib.contextmanager
    def _creating(self, source_type: str, source_id: str | None,
                  creation_path: str, **provenance) -> Iterator[dict]:
        """Create a disk all-or-nothing, with its record.

        Yields a dict the caller fills with facts about the disk it made
        (format, virtual_size, backing, backing_format, provenance...).
        """
        if self.disk_name is None:
            raise exception.InvalidInput(
                reason='a disk opened by path cannot be created')
        encryption_mod.refuse_unencrypted_creation(self)
        # The instance's lock (re-entrant: the driver's flows hold it
        # already) from the "does it exist" decision to the record saying
        # created: two threads or processes creating one disk through this
        # API would otherwise both decide to, and the loser's undo would
        # remove the winner's disk under its `created` record.
        with self._instance_locked():
            with self._creating_locked(source_type, source_id,
                                       creation_path, **provenance) as facts:
                yield facts

    def planned_record(self, source_type: str, source_id: str | None,
                       creation_path: str | None = None,
                       **provenance) -> records_mod.DiskRecord:
        """The ``creating`` record a creation of this disk from
        ``source_type``/``source_id`` would write (by default on this
        backend's own path: ``native`` or ``shim``), for a batch to write
        ahead (:meth:`imagebackend.backend.Backend.batch`). Writes
        nothing."""
        if self.disk_name is None:
            raise exception.InvalidInput(
                reason='a disk opened by path cannot be created')
        if creation_path is None:
            creation_path = ('native' if self.capabilities.native_create
                             else 'shim')
        return records_mod.DiskRecord(
            instance=self.instance_uuid, name=self.disk_name,
            backend=self.image_type, format=self.driver_format,
            location=self.location, source_type=source_type,
            source_id=source_id, state=records_mod.CREATING, encryption=(
                self.encryption.to_record() if self.encryption else None),
            provenance={'path': creation_path, **provenance})

    def _batch(self) -> batch_mod.CreationBatch | None:
        """The batch of creations this thread has open for the instance."""
        if self.instance is None or self.disk_name is None:
            return None
        return batch_mod.active(self.records, self.instance_uuid)

    @contextlib.contextmanager
    def _creating_locked(self, source_type: str, source_id: str | None,
                         creation_path: str, **provenance) -> Iterator[dict]:
        if self._exists_before_creating():
            raise exception.DiskExists(location=self.location)
        uuid = self.instance_uuid
        batch = self._batch()
        # A disk of that name made elsewhere (another backend: the host's
        # images_type changed since) is not to be shadowed by a new one.
        # (A batch's declared record is a creating one: no read needed.)
        known = batch.declared(self.disk_name) if batch else None
        if known is None:
            known = self.records.get(uuid, self.disk_name)
        if known is not None and known.created and (
                known.backend != self.image_type or
                known.location != self.location):
            raise exception.DiskExists(location=known.location)
        record = self.planned_record(source_type, source_id, creation_path,
                                     **provenance)
        facts: dict[str, Any] = {}
        with revert.Reverter() as undo:
            if not os.path.isdir(self.instance_dir):
                undo.add(lambda: _rmdir_if_empty(self.instance_dir))
            # Before storage is touched: written now, or by the batch.
            if batch is None or not batch.claim(record):
                self.records.put(record)
            undo.add(lambda: self._drop_record(batch))
            self._record = record
            undo.add(self._forget_record)
            os.makedirs(self.instance_dir, exist_ok=True)
            # The disk did not exist: whatever is there on failure is ours,
            # unless the create command itself found it there (DiskExists).
            theirs: list[bool] = []
            undo.add(lambda: theirs or self.remove_disk())
            try:
                yield facts
            except exception.DiskExists:
                theirs.append(True)
                raise
            # A power cut must not leave a `created` record over a disk
            # whose bytes were still in the page cache.
            self._make_durable()
            prov = dict(record.provenance, **facts.pop('provenance', {}))
            self._record = record.replace(state=records_mod.CREATED,
                                          provenance=prov, **facts)
            self.driver_format = self._record.format
            if batch is not None:
                # Whole and durable: written with the batch's others.
                batch.defer(self)
                return
            self.records.put(self._record)
            # Inside the undo block: a disk Nova's module would find
            # unlisted (and probe) is not left behind if this fails.
            self._sync_disk_info()

    def _drop_record(self, batch=None) -> None:
        """Delete the disk's record (and tell a batch it is gone)."""
        self.records.delete(self.instance_uuid, self.disk_name)
        if batch is not None:
            batch.forget(self.disk_name)

    def _exists_before_creating(self) -> bool:
        """Whether the disk is there, asked before creating it. A backend
        whose create command refuses an existing disk, raising DiskExists
        before making anything, may skip the question."""
        return self.exists()

    def _forget_record(self) -> None:
        self._record = None

    def _make_durable(self) -> None:
        """Put the disk's data, and the directory entries naming it, on
        stable storage, so that a record saying so survives a power cut
        only with them. Runs before a record says ``created``, and before
        ``settle`` or a resize saves a record over a changed disk.

        Default, for a disk at a local path: fsync the file or block
        device (a directory disk: every file in it and the directory),
        then, for a file, the directory holding it and, when that is the
        instance directory (perhaps just made), instances_path. Backends
        whose disks are not local paths override this.
        DiskNotFound if nothing is there.
        """
        path = self.path
        if not path or not os.path.lexists(path):
            raise exception.DiskNotFound(location=self.location)
        fileutils.fsync_tree(path)
        if stat.S_ISBLK(os.stat(path).st_mode):
            return
        parent = os.path.dirname(os.path.abspath(path))
        fileutils.fsync_dir(parent)
        if self.instance is not None and parent == os.path.abspath(
                self.instance_dir):
            fileutils.fsync_dir(self.conf.instances_path)

    def settle(self) -> None:
        """Make an existing disk at home on this host and save its record.

        After a move (cold migration) the disk may still name its old
        place (Qcow2's backing path), or its data may have arrived in
        transit form (an LV's contents as a file): backends finish the
        move in ``_settle``. Then the record is saved as this host has it.
        """
        moved_from = self.moved_from
        self._settle()
        self.moved_from = None
        if self._record is not None:
            # What _settle rewrote (a rebase, an LV filled from transit
            # data) is on disk before the record is saved over it; a
            # missing disk is check_backing's to report, typed.
            with contextlib.suppress(exception.DiskNotFound):
                self._make_durable()
            self.records.put(self._record)
            self._sync_disk_info(moved_from)

    def _settle(self) -> None:
        """Finish a move on this host (default: nothing to do)."""

    def _update_record(self, **changes) -> None:
        record = self.record
        if record is not None and record.created:
            self._record = record.replace(**changes)
            # The change (a grown disk) is on disk before the record says.
            with contextlib.suppress(exception.DiskNotFound):
                self._make_durable()
            self.records.put(self._record)
            self._sync_disk_info()

    @abc.abstractmethod
    def remove_disk(self) -> None:
        """Delete the disk's storage if present (not its record)."""

    def delete(self) -> None:
        """Delete the disk and then its record."""
        with self._instance_locked():
            self._delete()

    def _delete(self) -> None:
        self.remove_disk()
        if self.disk_name is not None and self.instance is not None:
            self._drop_record(self._batch())
        self._record = None
        self._sync_disk_info()

    # -- Nova's disk.info, derived from the record ----------------------------

    @property
    def disk_info_path(self) -> str | None:
        """Nova's attribute: the disk.info that lists this disk (beside
        it), or None on backends Nova does not list there."""
        if not self.capabilities.nova_disk_info or not self.path:
            return None
        return disk_info.path_for(self.path)

    def _sync_disk_info(self, moved_from: str | None = None) -> None:
        """Make Nova's disk.info say what the record says of this disk
        (backends with ``nova_disk_info`` only): its path and format once
        the record says ``created``; no entry once the record is gone.
        ``moved_from``: where the disk was before a move, whose entry goes.

        Always run after the record is written: the record is the truth. A
        crash between the two leaves disk.info behind (an entry missing,
        or a deleted disk's left over); the record still wins, and the
        disk's next record write or ``resolve_driver_format()`` puts the
        entry right (a new disk at a left-over path overwrites it).
        """
        if not self.capabilities.nova_disk_info or not self.path:
            return
        record = self._record
        if record is None:
            if self.instance is not None and self.disk_name is not None:
                try:
                    disk_info.remove(self.path, self.lock_path)
                except exception.CorruptRecord as e:
                    # The disk is gone already; a garbled file is left
                    # for the operator, as it is (it lists no new disk).
                    LOG.warning('%s', e)
            return
        batch_mod.sync_disk_info([self],
                                 replaces=[moved_from] if moved_from else [])

    def disk_info_entry(self) -> tuple[str, str] | None:
        """``(path, format)``: what Nova's disk.info is to list for this
        disk as its record says (a created record, on a backend Nova lists
        there); None where it lists nothing of it."""
        record = self._record
        if not self.capabilities.nova_disk_info or not self.path or \
                record is None or not record.created:
            return None
        return os.path.abspath(self.path), record.format

    def resolve_driver_format(self) -> str:
        """The disk's format, as Nova's ``resolve_driver_format``: the
        record's, else what Nova's disk.info lists, else the backend's
        (``driver_format``). Never from the file's bytes (no qemu-img
        probe, unlike Nova's Flat).

        Like Nova, it writes disk.info when it learns the format: the
        record's, where disk.info lacks or contradicts it (the record
        wins); the backend's for an existing disk nothing describes, but
        only where that asserts no backing file (not Qcow2: a file with no
        record and no entry may hold a guest's qcow2 header). Nothing is
        written for a disk that does not exist: no instance directory is
        made by asking.
        """
        record = self.record
        if record is not None and record.created:
            self._sync_disk_info(self.moved_from)
            return record.format
        if not self.capabilities.nova_disk_info or not self.path:
            return self.driver_format
        listed = disk_info.format_of(self.path)
        if listed is not None:
            return listed
        if self.exists() and not self.capabilities.backing_in_cache:
            disk_info.set_format(self.path, self.driver_format,
                                 self.lock_path)
        return self.driver_format

    def allocated_bytes(self) -> int | None:
        """Bytes the disk takes on its storage (files: what ``du`` says;
        other backends ask their storage). None if it cannot be told."""
        try:
            return fileutils.allocated_bytes(self.path)
        except OSError:
            return None

    def send_to(self, transport, host: str, progress=None) -> None:
        """Copy this disk's data to the same place on ``host`` (cold
        migration). Backends on shared storage send nothing."""
        raise exception.NotSupported(operation='send_to',
                                     backend=self.image_type)

    def create_empty(self, like: records_mod.DiskRecord) -> None:
        """Make an empty disk shaped like ``like`` (a record from another
        host): same backend, format, size and source, for a block live
        migration to fill. Backends whose disks have a backing file
        recreate them from their source instead.

        All-or-nothing as every creation: backends refuse in
        :meth:`_prepare_empty` before anything is written, and make the
        disk in :meth:`_make_empty`."""
        provenance = self._prepare_empty(like)
        with self._creating(like.source_type, like.source_id, 'empty',
                            purpose='live-migration', **provenance) as facts:
            fmt, virtual_size = self._make_empty(like)
            facts.update(format=fmt, virtual_size=virtual_size)

    def _prepare_empty(self, like: records_mod.DiskRecord) -> dict[str, Any]:
        """Refuse an empty disk like ``like`` (NotSupported: this backend
        makes none), else return the provenance its record is to carry."""
        raise exception.NotSupported(operation='create_empty',
                                     backend=self.image_type)

    def _make_empty(self, like: records_mod.DiskRecord) -> tuple[str, int]:
        """Make the empty disk; return its (format, virtual size)."""
        raise NotImplementedError

    # -- size ------------------------------------------------------------------

    def virtual_size(self) -> int:
        """The disk's size as the guest sees it: the record says, else
        (while cache() creates it) what create_image said it made, else (a
        disk made before records) qemu-img with the backend's format."""
        record = self.record
        if record is not None and record.created:
            return record.virtual_size
        made = self._made_size()
        return made or self.get_disk_size(self.path)

    def resize_image(self, size: int) -> None:
        """Grow the disk to ``size`` bytes; refuse to shrink it.

        Decided under the instance's lock, from the record as it is stored
        then (one read when the disk was opened may be stale): two
        resizes of one disk at once, each deciding from the size before
        the other, would otherwise shrink what the other grew and leave a
        record of the wrong size. Backends grow in :meth:`_resize_image`.
        """
        with self._instance_locked():
            self._reload_record()
            self._resize_image(size)

    def _reload_record(self) -> None:
        """Read the record again when next asked; not a moved disk's,
        which is this host's view of it kept in memory until it settles."""
        if self.moved_from is None and self.instance is not None and \
                self.disk_name is not None:
            self._record = None

    def _resize_image(self, size: int) -> None:
        """resize_image under the instance's lock (backends override)."""
        current = self.virtual_size()
        if size < current:
            raise exception.CannotShrink(path=self.location, current=current,
                                         size=size)
        if size == current:
            return
        self._grow(size)
        if self._made_size():
            self._note_made(size)
        self._update_record(virtual_size=size)

    @abc.abstractmethod
    def _grow(self, size: int) -> None:
        """Make the disk ``size`` bytes (larger than it is)."""

    def get_disk_size(self, name: str) -> int:
        """Virtual size of the file ``name`` (Nova: qemu-img info): a cache
        entry's from its sidecar; else qemu-img, always with an explicit
        format: the disk's, or for a file
        nothing describes (a Nova-era base without a sidecar) the format
        its bytes show to format_inspector, safety-checked; never one
        qemu-img probes."""
        fmt = None
        if os.path.dirname(name) == self.image_cache.base_dir:
            entry = self.image_cache.get(os.path.basename(name))
            if entry is not None:
                # The sidecar measured it when the entry was made.
                return entry.virtual_size
        elif name == self.path:
            fmt = self.driver_format
        if fmt is None:
            fmt = formats.cache_format(formats.detect(
                name, image_id=os.path.basename(name)).format)
        return qemu.virtual_size(name, fmt)

    def verify_base_size(self, base: str, size: int | None,
                         base_size: int = 0) -> None:
        """Refuse a disk smaller than its base (size None: no check)."""
        if not size:
            return
        if not base_size:
            base_size = self.get_disk_size(base)
        if size < base_size:
            raise exception.DiskTooSmall(size=size, image_size=base_size)

    @staticmethod
    def _check_size(size: int | None, image_size: int) -> None:
        if size and size < image_size:
            raise exception.DiskTooSmall(size=size, image_size=image_size)

    # -- preallocation ---------------------------------------------------------

    def _can_fallocate(self) -> bool:
        """Whether fallocate(1) exists and this backend's filesystem
        supports it: probed once per class with a 1-byte file beside the
        disk, as Nova does (the answer is kept on the class as
        ``can_fallocate``). Backends whose disks are no files say False."""
        cls = type(self)
        can = getattr(cls, 'can_fallocate', None)
        if can is None:
            probe = self.path + '.fallocate_test'
            try:
                processes.execute('fallocate', '-l', '1', probe)
                can = True
            except exception.ProcessError as e:
                LOG.warning('Unable to preallocate image at path %s: %s',
                            self.path, e.stderr)
                can = False
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(probe)
            cls.can_fallocate = can
        return can

    def _preallocate(self, size: int | None) -> None:
        """Reserve ``size`` bytes for the disk (preallocate_images=space),
        where the filesystem can and the disk is writable (Nova's rule)."""
        if not (self.preallocate and size and self._can_fallocate()
                and os.access(self.path, os.W_OK)):
            return
        try:
            processes.execute('fallocate', '-n', '-l', str(size), self.path)
        except exception.ProcessError as e:
            LOG.warning('preallocation of %s failed: %s', self.path,
                        e.stderr)

    # -- libvirt ---------------------------------------------------------------

    def libvirt_info(self, cache_mode: str | None, extra_specs: dict,
                     boot_order: int | None = None,
                     disk_unit: int | None = None
                     ) -> libvirt_config.GuestDisk:
        """The guest's ``<disk>`` for this disk."""
        return file_disk_config(self, cache_mode, extra_specs, boot_order,
                                disk_unit)

    # For backends that build their own <disk> (Rbd's network disk).
    _disk_scsi = staticmethod(_disk_scsi)
    _disk_qos = staticmethod(_disk_qos)

    def libvirt_fs_info(self, target: str, driver_type: str | None = None
                        ) -> libvirt_config.GuestFilesys:
        if self.is_block_dev:
            return libvirt_config.GuestFilesys(
                source_type='block', source_dev=self.path, target_dir=target)
        return libvirt_config.GuestFilesys(
            source_type='file', source_file=self.path,
            driver_format=self.driver_format,
            driver_type=driver_type or (
                'loop' if self.driver_format == 'raw' else 'nbd'),
            target_dir=target)

    # -- snapshots and Nova's optional hooks -----------------------------------

    def snapshot_extract(self, target: str, out_format: str) -> None:
        """Cold-copy the disk into ``target`` in ``out_format``."""
        qemu.convert(self.path, self.driver_format, target, out_format,
                     compress=self._compress_snapshot(out_format))

    def _compress_snapshot(self, out_format: str) -> bool:
        """Whether a snapshot written in ``out_format`` is compressed:
        ``[libvirt] snapshot_compression``, for qcow2 only (as Nova)."""
        return bool(self.conf.libvirt.snapshot_compression and
                    out_format == 'qcow2')

    def import_file(self, instance, local_file: str, remote_name: str):
        """A local file is already in a file backend's store."""

    def create_snap(self, name: str) -> None:
        pass

    def remove_snap(self, name: str, ignore_errors: bool = False) -> None:
        pass

    def rollback_to_snap(self, name: str) -> None:
        pass

    def clone(self, context: Any, image_id_or_uri: str):
        raise exception.ImageUnacceptable(
            image_id=image_id_or_uri, reason='clone() is not implemented')

    def flatten(self) -> None:
        raise NotImplementedError(
            f'flatten() is not implemented for {self.image_type}')

    def direct_snapshot(self, context: Any, snapshot_name: str,
                        image_format: str, image_id: str,
                        base_image_id: str):
        raise NotImplementedError(
            f'direct_snapshot() is not implemented for {self.image_type}')

    def cleanup_direct_snapshot(self, location: str,
                                also_destroy_volume: bool = False,
                                ignore_errors: bool = False) -> None:
        pass


def file_disk_config(disk, cache_mode: str | None, extra_specs: dict,
                     boot_order: int | None = None,
                     disk_unit: int | None = None
                     ) -> libvirt_config.GuestDisk:
    """Nova's generic ``<disk>`` from a disk's attributes (path, formats,
    mapping); shared with the test fixture's fakes."""
    mapping = disk.disk_info_mapping
    if not mapping:
        raise exception.InvalidInput(
            reason='libvirt_info needs the disk_info_mapping')
    info = libvirt_config.GuestDisk(
        source_type=disk.source_type,
        source_device=mapping.get('type', 'disk'),
        target_bus=mapping['bus'], target_dev=mapping['dev'],
        driver_cache=cache_mode, driver_discard=disk.discard_mode,
        driver_io=disk.driver_io, driver_format=disk.driver_format,
        source_path=disk.path, boot_order=boot_order)
    libvirt = getattr(disk.conf, 'libvirt', None)  # fakes may have no conf
    if getattr(libvirt, 'virt_type', None) in ('qemu', 'kvm'):
        info.driver_name = 'qemu'
    _disk_scsi(info, disk_unit)
    _disk_qos(info, extra_specs)
    return info


class SelfContained:
    """For backends whose disks depend on nothing on a host once made
    (Flat, Lvm, Rbd, Ploop): there is no cache entry to restore, so
    ``check_backing_*`` only confirm the disk is there. Put it first
    among the bases, before :class:`Image`."""

    def check_backing_from_image(self, context, image_id, fallback=None):
        self._require_disk()

    def check_backing_from_func(self, context, func, cache_name,
                                fallback=None):
        names.check_cache_name(cache_name)
        self._require_disk()


def _rmdir_if_empty(path: str) -> None:
    try:
        os.rmdir(path)
    except OSError:
        pass
