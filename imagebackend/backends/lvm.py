"""Lvm: each disk is a logical volume in ``[libvirt] images_volume_group``.

Names. A disk is the LV ``<instance uuid>_<disk name>`` (Nova's name, with
any ``_`` of the disk name doubled), block device
``/dev/<volume group>/<LV>``; its record's location is ``<vg>/<lv>``.
An existing disk is found in the VG its record names, whatever
``images_volume_group`` says today (the option may have changed since).
libvirt sees a ``type='block'`` raw disk (``io='native'`` unless the
deprecated ``sparse_logical_volumes`` is on).

Native path, per disk (the cache entry already fetched; its format and size
come from its sidecar, so nothing runs ``qemu-img info``):

* root from an image: ``lvcreate -y -L <bytes>b -n <lv> <vg>``, then the
  cached base is written into the LV by
  ``qemu-img convert -q -f <entry format> -O raw -t none -n <base> <dev>``
  (explicit ``-f``; never through a temporary file) -- 2 processes, where
  Nova runs 7 (2 of them ``qemu-img info``);
* ephemeral and swap: ``lvcreate``, then the template function formats the
  LV in place (``mkfs`` / ``mkswap`` on the device). No template is
  cached; the cache name is recorded as the disk's source.

Thin pools (``[imagebackend] thin_pool``): an image is written once into a
thin LV ``_base_<cache name>`` of the pool, and each disk made from it is a
thin snapshot, ``lvcreate -y -s -kn -n <lv> <vg>/<base lv>``, grown with
``lvextend`` when the flavor is bigger -- no copy per disk. Generated disks
are thin LVs (``lvcreate -y -T <vg>/<pool> -V <bytes>b -n <lv>``) formatted
in place. A thin snapshot does not depend on its origin (blocks are shared
by reference count), so even then nothing has to be restored on another
host. Whether a host uses thin snapshots is a property of the backend
(:attr:`Lvm.thin_snapshots`, from config), not a branch in any flow. Base
LVs are not aged out by the cache manager (it manages ``_base`` files).

Growing is ``lvextend -L <bytes>b <vg>/<lv>`` after a free-space check;
shrinking is refused (:class:`~imagebackend.exception.CannotShrink`). The
guest filesystem is not grown then (Nova's Lvm did not resize at all); a
volume *made* bigger than its image gets the image's bare ext filesystem
grown, as Nova's ``create_lvm_image`` ran ``resize2fs``
(:mod:`imagebackend.filesystems`).

Deleting wipes the LV as ``[libvirt] volume_clear`` says, bounded by
``volume_clear_size`` MiB (0: all of it): ``shred -n0 -z -s<bytes> <dev>``
(zero) or ``shred -n3 -s<bytes> <dev>`` (shred), then
``lvremove -f <vg>/<lv>``; a missing LV is not an error. Thin LVs are not
wiped: writing every block of a thin LV would allocate all of it in the
pool, and the pool hands out zeroed blocks. A new thick LV may hold
whatever an unwiped LV left on its extents: ``volume_clear`` (default
``zero``) is the defence, as in Nova.

Everything runs through :func:`imagebackend.processes.execute`, with the
environment of the calling process: an LVM configuration (``--config`` in
``LVM_SYSTEM_DIR``) is the host's business, never the backend's. Every
command on the volume group or the LV's device runs with ``root=True``
(:mod:`imagebackend.privileged`: a privsep daemon's environment then,
when the process is not root), and so do the device's fsync
(:func:`flush_device`) and the filesystem tools on it.

The modules next to this one tell the rest, each its part:
:mod:`~imagebackend.backends.lvm_volumes` (names as LVM accepts them, what
``vgs`` and ``lvs`` report), :mod:`~imagebackend.backends.lvm_lvcreate`
(a disk's LV made, lvcreate's refusals typed),
:mod:`~imagebackend.backends.lvm_encryption` (the dm-crypt mapping),
:mod:`~imagebackend.backends.lvm_migration` (a cold migration's send and
settle) and :mod:`~imagebackend.backends.lvm_plan` (what creation would
run). Class :class:`Lvm` inherits their methods.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, ClassVar

from oslo_utils import units

from imagebackend import dmcrypt
from imagebackend import exception
from imagebackend import filesystems
from imagebackend import image
from imagebackend import models
from imagebackend import names
from imagebackend import processes
from imagebackend import qemu
from imagebackend import revert
from imagebackend.backends import lvm_encryption
from imagebackend.backends import lvm_lvcreate
from imagebackend.backends import lvm_migration
from imagebackend.backends import lvm_plan
from imagebackend.backends.lvm_migration import (  # noqa: F401 (API)
    TRANSFER_SUFFIX)
from imagebackend.backends.lvm_volumes import (  # noqa: F401 (API)
    BASE_PREFIX, DEVICE_ROOT, REPORT, InsufficientSpace, LogicalVolume,
    VolumeGroup, base_lv_name, check_lvm_name, escape, flush_device,
    logical_volumes, lv_name, report, unescape, volume_group)

LOG = logging.getLogger(__name__)


class Lvm(lvm_plan.LvmPlans, lvm_encryption.LvmEncryption,
          lvm_lvcreate.LvCreation, lvm_migration.LvmMigration,
          image.SelfContained, image.Image):
    """A disk that is one logical volume (thick, or thin in a pool)."""

    image_type = 'lvm'
    capabilities = image.Capabilities(block_device=True, native_create=True,
                                      encryption=True)
    # The backend can make disks as thin snapshots of a per-image base;
    # whether this host does is :attr:`thin_snapshots` (config).
    SUPPORTS_THIN_SNAPSHOTS: ClassVar[bool] = True
    def _can_fallocate(self) -> bool:
        # A block device cannot be fallocate'd (as in Nova).
        return False

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None, *, backend, record=None):
        super().__init__(instance, disk_name, path, disk_info_mapping,
                         backend=backend, source_type='block',
                         driver_format='raw', record=record)
        if path is None:
            if instance is None or disk_name is None:
                raise exception.InvalidInput(
                    reason='a disk needs an instance and a name, or a path')
            self.lv = lv_name(self.instance_uuid, disk_name)
            self.vg = self._recorded_vg() or self._configured_vg()
        elif dmcrypt.is_encrypted(path):
            # An encrypted disk's libvirt path: its mapping.
            self.lv = check_lvm_name(dmcrypt.base_name(
                os.path.basename(path)))
            self._name_from_lv()
            self.vg = (self.disk_name and self._recorded_vg()) or \
                self._configured_vg()
        else:
            self.vg, self.lv = self._parse_path(path)
            self._name_from_lv()
        self.lv_path = os.path.join(DEVICE_ROOT, self.vg, self.lv)
        self.encryption = self._encryption()
        if path is not None and dmcrypt.is_encrypted(path) and \
                self.encryption is None:
            raise exception.InvalidInput(
                reason=f'{path} is an encrypted disk, but neither a record '
                'nor the instance says how it is encrypted')
        self.path = (dmcrypt.volume_path(self._mapping)
                     if self.encryption else self.lv_path)
        self.thin_pool = self.conf.imagebackend.thin_pool
        if self.thin_pool:
            check_lvm_name(self.thin_pool, 'thin pool name')
        self.sparse = self.conf.libvirt.sparse_logical_volumes
        # Nova: a thick LV is preallocated, so qemu may use native AIO.
        self.preallocate = not self.sparse
        if self.preallocate:
            self.driver_io = 'native'

    def _name_from_lv(self) -> None:
        if self.disk_name is None and self.instance is not None:
            found = names.disk_name_from(self.lv, self.instance.uuid)
            if found is not None:
                self.disk_name = names.check_disk_name(unescape(found))

    def _recorded_vg(self) -> str | None:
        """The VG this disk's record puts it in, if it has an Lvm record
        made on this host: an existing disk is where its record says, not
        in today's ``images_volume_group``. A record that came with the
        disk's contents from another host (a ``.lv-transfer`` file is
        here) names that host's VG: the disk is made here in this host's.
        """
        record = self.record
        if record is None or record.backend != self.image_type or \
                os.path.exists(self._transfer_path()):
            return None
        vg, sep, lv = record.location.partition('/')
        where = f'{record.instance}/{record.name}'
        if not sep or lv != self.lv:
            # A record naming another LV would hand this disk's operations
            # (resize, wipe, delete) to a volume that is not this disk.
            raise exception.CorruptRecord(
                location=where, reason=f'location {record.location!r} is '
                f'not <volume group>/{self.lv}')
        try:
            return check_lvm_name(vg, 'volume group name', lv=False)
        except exception.InvalidDiskName as e:
            raise exception.CorruptRecord(location=where, reason=str(e))

    def _configured_vg(self) -> str:
        vg = self.conf.libvirt.images_volume_group
        if not vg:
            raise exception.BackendUnavailable(
                image_type='lvm',
                reason='[libvirt] images_volume_group is not set')
        return check_lvm_name(vg, 'volume group name', lv=False)

    @staticmethod
    def _parse_path(path: str) -> tuple[str, str]:
        rel = os.path.relpath(os.path.normpath(path), DEVICE_ROOT)
        parts = rel.split(os.sep)
        if len(parts) != 2 or rel.startswith('..'):
            raise exception.InvalidInput(
                reason=f'{path} is not {DEVICE_ROOT}/<volume group>/<LV>')
        return (check_lvm_name(parts[0], 'volume group name', lv=False),
                check_lvm_name(parts[1]))

    # -- identity -------------------------------------------------------------

    @property
    def location(self) -> str:
        return f'{self.vg}/{self.lv}'

    @property
    def thin_snapshots(self) -> bool:
        """Disks from images are thin snapshots of a per-image base LV
        (never an encrypted disk: its base holds plaintext)."""
        return bool(self.thin_pool) and self.encryption is None

    def _volume(self) -> LogicalVolume | None:
        return logical_volumes(self.vg).get(self.lv)

    def exists(self) -> bool:
        return self._volume() is not None

    # -- volumes --------------------------------------------------------------

    def _exists_before_creating(self) -> bool:
        # lvcreate refuses an existing LV (_run_lvcreate). Asked still
        # for a disk with a record: what it names is not ours to take;
        # but not for the creating record this thread's batch declared,
        # under the instance lock, for a disk the flow found absent.
        batch = self._batch()
        if batch is not None and batch.declared(self.disk_name):
            return False
        return self.record is not None and self.exists()

    def _write(self, src: str, src_format: str, dst: str) -> None:
        """Write a file's guest bytes into an existing device (no temp)."""
        qemu.convert(src, src_format, dst, 'raw', existing_target=True,
                     cache='none', root=True)
        # On stable storage before anything relies on it (a record, a
        # base LV's snapshots, the transit file's removal in _settle).
        flush_device(dst)

    def _make_durable(self) -> None:
        """Flush the LV's block device: what a template function (mkfs,
        mkswap) wrote through its page cache, and the disk's write cache.
        LVM's own metadata is written synchronously by lvm2."""
        flush_device(self.path, self.location)

    # -- native ---------------------------------------------------------------

    def create_from_image(self, context: Any, image_id: str,
                          size: int | None = None,
                          fallback: str | None = None) -> None:
        key = self._encryption_key(context)
        entry = self.image_cache.fetch_image(context, image_id, fallback,
                                             size=size)
        self._check_size(size, entry.virtual_size)
        wanted = max(size or 0, entry.virtual_size)
        if self.thin_snapshots:
            self._snapshot_of(image_id, entry, wanted)
            return
        vg = self._extents()
        with self._creating('image', image_id, 'native') as facts:
            final = self._lvcreate(wanted, vg, key)
            self._write(entry.path, entry.format, self.path)
            self._grow_filesystem(entry.virtual_size, wanted)
            facts.update(format='raw', virtual_size=final,
                         provenance={'copy': 'qemu-img convert',
                                     'image_sha256': entry.sha256})

    def _snapshot_of(self, image_id: str, entry, wanted: int) -> None:
        vg = self._extents()
        base = self._ensure_base(entry, vg)
        with self._creating('image', image_id, 'native') as facts:
            self._run_lvcreate(('lvcreate', '-y', '-s', '-kn', '-n', self.lv,
                                f'{self.vg}/{base}'), vg, 0)
            final = vg.round(entry.virtual_size)
            if vg.round(wanted) > final:
                final = vg.round(wanted)
                processes.execute('lvextend', '-L', f'{final}b',
                                  f'{self.vg}/{self.lv}', root=True)
            self._grow_filesystem(entry.virtual_size, wanted)
            facts.update(format='raw', virtual_size=final,
                         provenance={'copy': 'thin-snapshot',
                                     'base_lv': base,
                                     'image_sha256': entry.sha256})

    def _ensure_base(self, entry, vg: VolumeGroup) -> str:
        """The thin base LV holding ``entry``'s guest bytes, made once."""
        base = base_lv_name(entry.name)
        with self.image_cache.lock(entry.name):
            if base in logical_volumes(self.vg):
                return base
            size = vg.round(entry.virtual_size)
            with revert.Reverter() as undo:
                processes.execute('lvcreate', '-y', '-T',
                                  f'{self.vg}/{self.thin_pool}', '-V',
                                  f'{size}b', '-n', base, root=True)
                undo.add(lambda: processes.execute(
                    'lvremove', '-f', f'{self.vg}/{base}', root=True))
                self._write(entry.path, entry.format,
                            os.path.join(DEVICE_ROOT, self.vg, base))
        return base

    def create_from_func(self, context: Any, func: Callable[[str], None],
                         cache_name: str, size: int | None = None,
                         fallback: str | None = None) -> None:
        # No template is kept; the name is recorded as the disk's source.
        names.check_cache_name(cache_name)
        if not size:
            raise exception.InvalidInput(
                reason='an LVM disk made by a function needs a size')
        key = self._encryption_key(context)
        vg = self._extents()
        with self._creating('func', cache_name, 'native') as facts:
            final = self._lvcreate(size, vg, key)
            func(self.path)
            facts.update(format='raw', virtual_size=final)

    # -- legacy (Nova's Lvm.create_image) -------------------------------------

    def create_image(self, prepare_template, base, size, safe=False, *args,
                     **kwargs):
        # As Nova: the key first (before any template is made), and no
        # context for a disk to encrypt is an error.
        exists = self.exists()
        key = None if exists else self._encryption_key(kwargs.get('context'))
        generated = 'ephemeral_size' in kwargs
        if generated and size:
            # Ephemeral: the filesystem is made right on the volume.
            if not exists:
                with revert.Reverter() as undo:
                    self._lvcreate(size, self._extents(), key)
                    self._undo_unless_recording(undo)
                    prepare_template(target=self.path, *args, **kwargs)
            return
        # Root disks, and swap (Nova passes swap_mb, not ephemeral_size):
        # through a template in the cache.
        if not os.path.exists(base):
            self._run_template(prepare_template, base, *args, **kwargs)
        name = os.path.basename(base)
        base_format, base_size = self.image_cache.legacy_base(base, safe)
        self.verify_base_size(base, size, base_size)
        if exists or self.exists():
            return
        with self.image_cache.lock(name), revert.Reverter() as undo:
            wanted = max(size or 0, base_size)
            self._lvcreate(wanted, self._extents(), key)
            self._undo_unless_recording(undo)
            # Nova's convert_image_unsafe had no -f; the sidecar says it.
            self._write(base, base_format, self.path)
            self._grow_filesystem(base_size, wanted)

    def _grow_filesystem(self, base_size: int, size: int) -> None:
        """Nova's create_lvm_image: a volume made bigger than its image gets
        the image's bare ext2/3/4 filesystem grown to fill it (see
        :mod:`imagebackend.filesystems`: never a partitioned disk or
        another filesystem; a failing tool leaves the filesystem as it
        was, logged). What it wrote is flushed with the volume."""
        if size > base_size and filesystems.grow_ext(self.path):
            flush_device(self.path, self.location)

    def _undo_unless_recording(self, undo: revert.Reverter) -> None:
        """Remove the disk (mapping, then LV) if the rest of a direct
        create_image call fails, as Nova's remove_volume_on_error does.
        Under cache() the record keeping (a ``creating`` record) removes
        it already."""
        record = self._record
        if record is None or record.created:
            undo.add(self.remove_disk)

    def get_disk_size(self, name: str) -> int:
        if name in (self.path, self.lv_path):
            volume = self._volume()
            if volume is None:
                raise exception.DiskNotFound(location=self.location)
            return volume.size
        return super().get_disk_size(name)

    # -- size -----------------------------------------------------------------

    def _resize_image(self, size: int) -> None:
        """Grow the LV to ``size`` bytes (rounded up to whole extents)."""
        vg = volume_group(self.vg)
        target = vg.round(size)
        current = self.virtual_size()
        if target < current:
            raise exception.CannotShrink(path=self.location, current=current,
                                         size=size)
        if target == current:
            return
        self._extend(target, current, vg)
        self._update_record(virtual_size=target)

    def _grow(self, size: int) -> None:
        vg = volume_group(self.vg)
        self._extend(vg.round(size), self.virtual_size(), vg)

    def _extend(self, target: int, current: int, vg: VolumeGroup) -> None:
        if not self.thin_pool and target - current > vg.free:
            raise InsufficientSpace(vg=self.vg, needed=target - current,
                                    free=vg.free)
        processes.execute('lvextend', '-L', f'{target}b',
                          f'{self.vg}/{self.lv}', root=True)
        if self.encryption is not None and os.path.lexists(self.path):
            dmcrypt.resize_volume(self._mapping)

    def get_model(self, connection=None) -> models.LocalBlockImage:
        """The disk as a raw block device (Nova's ``get_model``)."""
        return models.LocalBlockImage(self.path)

    def allocated_bytes(self) -> int | None:
        """What the LV takes in its VG (``lvs``): all of a thick LV; a
        thin LV's mapped share (``data_percent``). None if it is gone."""
        try:
            out = report(f'{self.vg}/{self.lv}', 'lvs', *REPORT, '-o',
                         'lv_size,segtype,data_percent')
        except (exception.ProcessError, exception.BackendUnavailable):
            return None
        for line in out.splitlines():
            fields = [f.strip() for f in line.split('|')]
            if len(fields) == 3 and fields[0]:
                size = int(fields[0])
                if fields[1] == 'thin' and fields[2]:
                    return int(size * float(fields[2]) / 100)
                return size
        return None

    # -- deletion -------------------------------------------------------------

    def remove_disk(self) -> None:
        # The mapping first: an LV that is mapped cannot be removed.
        self._close_mapping()
        volume = self._volume()
        if volume is None:
            return
        if not volume.thin:
            self._clear(volume.size)
        processes.execute('lvremove', '-f', f'{self.vg}/{self.lv}',
                          root=True)

    def _clear(self, size: int) -> None:
        """Wipe the LV as ``[libvirt] volume_clear`` says (Nova's
        ``clear_volume``)."""
        method = self.conf.libvirt.volume_clear
        if method == 'none':
            return
        bound = self.conf.libvirt.volume_clear_size * units.Mi
        if bound and bound < size:
            size = bound
        if method == 'zero':
            processes.execute('shred', '-n0', '-z', f'-s{size}',
                              self.lv_path, root=True)
        else:
            processes.execute('shred', '-n3', f'-s{size}', self.lv_path,
                              root=True)

    # -- migration ------------------------------------------------------------

    def _refuse_encrypted(self, operation: str) -> None:
        if self.encryption is not None:
            raise exception.NotSupported(operation=operation,
                                         backend=self.image_type)

    def _prepare_empty(self, like) -> dict[str, Any]:
        self._refuse_encrypted('migrating an encrypted disk')
        self.driver_format = 'raw'
        return {}

    def _make_empty(self, like) -> tuple[str, int]:
        return 'raw', self._lvcreate(like.virtual_size, self._extents())
