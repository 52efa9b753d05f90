"""Qcow2: each disk is a qcow2 overlay on a base in the image cache.

Native path: the base (the image, raw unless ``force_raw_images`` is off, or
a template made once by the template function) is ensured in the cache, and
the disk is the overlay
``qemu-img create -f qcow2 -F <base format> -b <base> <disk> [size]``
writes: written in-process by :mod:`imagebackend.qcow2_overlay` (the same
bytes, no process) when ``[imagebackend] qcow2_overlay_writer`` is on and
the writer covers the request (no preallocation, a raw or qcow2 base, a
size and base path in qcow2's range), else by that command. The record's
provenance ``overlay`` says which (``in-process`` or ``qemu-img``).
The base's format and size come from its cache sidecar and the disk's from
its record, so no ``qemu-img info`` runs on anything the library made.

A Qcow2 disk depends on its base: on another host (migration) the base must
be recreated there first, which ``check_backing_*`` do without touching the
disk. The record keeps the base's sha256; a base restored from an image id
whose bytes have changed since is refused (and not left in the cache).

A disk old Nova put on a resized copy of its base, ``_base/<base>_<N>``
(N GiB), gets that copy made again from ``_base/<base>`` where it is
missing, by the legacy ``cache()`` path (as Nova's ``legacy_backing_size``)
and by ``check_backing_from_image``: see :meth:`ImageCache.ensure_resized`.
The disk's base name comes from its record, or for a disk without one from
its header (``-f qcow2``), only when Nova's disk.info says it is qcow2.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from oslo_utils import units

from imagebackend import cache as cache_mod
from imagebackend import disk_info
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import formats
from imagebackend import image
from imagebackend import names
from imagebackend import plans
from imagebackend import qcow2_overlay
from imagebackend import qemu
from imagebackend.backends import localfile


class Qcow2(localfile.LocalFileImage):
    """A qcow2 overlay whose backing file is a cache entry."""

    image_type = 'qcow2'
    fixed_format = 'qcow2'
    capabilities = image.Capabilities(file_in_instance_path=True,
                                      backing_in_cache=True,
                                      native_create=True,
                                      nova_disk_info=True)

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None, *, backend, record=None):
        super().__init__(instance, disk_name, path, disk_info_mapping,
                         backend=backend, driver_format=self.fixed_format,
                         record=record)

    # -- native ----------------------------------------------------------------

    def create_from_image(self, context: Any, image_id: str,
                          size: int | None = None,
                          fallback: str | None = None) -> None:
        entry = self.image_cache.fetch_image(context, image_id, fallback,
                                             size=size)
        self._overlay('image', image_id, entry, size)

    def create_from_func(self, context: Any, func: Callable[[str], None],
                         cache_name: str, size: int | None = None,
                         fallback: str | None = None) -> None:
        entry = self.image_cache.ensure_template(cache_name, func, fallback)
        self._overlay('func', cache_name, entry, size)

    def _overlay(self, source_type: str, source_id: str,
                 entry: cache_mod.CacheEntry, size: int | None) -> None:
        self._check_size(size, entry.virtual_size)
        virtual_size = size or entry.virtual_size
        with self._creating(source_type, source_id, 'native') as facts:
            how = self._write_overlay(size, virtual_size, entry.path,
                                      entry.format)
            self._preallocate(size)
            facts.update(format='qcow2', virtual_size=virtual_size,
                         backing=entry.name, backing_format=entry.format,
                         backing_sha256=entry.sha256,
                         provenance={'overlay': how})

    def _write_overlay(self, size: int | None, virtual_size: int | None,
                       backing: str, backing_format: str) -> str:
        """Make the overlay at this disk's path: in-process when the writer
        covers it, else ``qemu-img create`` (``size`` None: the backing
        file's). Returns how (``provenance['overlay']``). Called inside
        _creating, which makes the disk durable before its record says
        created: no fsync of its own."""
        if self._writes_overlay(virtual_size, backing, backing_format):
            qcow2_overlay.write(self.path, virtual_size, backing,
                                backing_format, durable=False)
            return 'in-process'
        qemu.create(self.path, 'qcow2', size, backing=backing,
                    backing_fmt=backing_format)
        return 'qemu-img'

    def _writes_overlay(self, size: int | None, backing: str,
                        backing_format: str) -> bool:
        """Whether the overlay is written in-process: the writer is on and
        covers the request. A disk to preallocate (``preallocate_images =
        space``) keeps the qemu-img path: the writer covers plain
        overlays only."""
        return (self.conf.imagebackend.qcow2_overlay_writer
                and not self.preallocate
                and qcow2_overlay.covers(size, backing, backing_format))

    def plan_create(self, source_type, source_id, func, size):
        """What create_from_image / create_from_func above would do
        (create_from_content is create_from_func here)."""
        if source_type in ('func', 'content'):
            base, steps = plans.plan_template(self.image_cache, source_id,
                                              func)
        else:
            base, steps = plans.plan_image(self.image_cache, source_id, size)
        what = f'a qcow2 overlay on {base.name} at {self.path}'
        # A base not fetched yet has no known size: assume one in the
        # writer's range (2 PiB, more than a file on this host can hold).
        if self._writes_overlay(size or base.virtual_size or 1, base.path,
                                base.format):
            steps.append(plans.Step(what + ', written in-process'))
        else:
            steps.append(plans.Step(what, command=qemu.create_command(
                self.path, 'qcow2', size or None, backing=base.path,
                backing_fmt=base.format)))
        return steps + (plans.preallocate(self.path, size)
                        if self.preallocate else [])

    def check_backing_from_image(self, context, image_id, fallback=None):
        """Restore the base the disk was made on, and prove it is that base:
        an image id whose bytes changed since (a re-upload, a changed file)
        must not become the disk's base (the guest would read other data
        where it never wrote). The record keeps the base's sha256."""
        self._require_disk()
        name = names.image_cache_name(image_id)
        present = self.image_cache.get(name)
        entry = self.image_cache.fetch_image(context, image_id, fallback)
        self._restore_legacy_base(entry)
        expected = self._expected_base_sha256(entry.name)
        if expected is None or entry.sha256 == expected:
            return
        if present is None:
            # Fetched by this call: take it away again, so the disk is not
            # left pointing at the wrong bytes (unless someone replaced it
            # meanwhile: then it is theirs).
            with self.image_cache.lock(name):
                now = self.image_cache.get(name)
                if now is not None and now.sha256 == entry.sha256 and \
                        now.created_at == entry.created_at:
                    fileutils.remove_path(now.path)
                    fileutils.remove_path(now.path + names.META_SUFFIX)
        raise exception.ImageUnacceptable(
            image_id=image_id, reason=(
                f'it is not the base disk {self.location} was made on: '
                f'cache entry {entry.name} has sha256 {entry.sha256}, the '
                f'disk\'s record says {expected}'))

    def _expected_base_sha256(self, entry_name: str) -> str | None:
        """The sha256 the record keeps for base ``entry_name`` (None for a
        record made before the library kept it, or for another base)."""
        record = self.record
        if record is None or record.backing != entry_name:
            return None
        return record.backing_sha256

    def check_backing_from_func(self, context, func, cache_name,
                                fallback=None):
        self._require_disk()
        self.image_cache.ensure_template(cache_name, func, fallback)

    # -- legacy (Nova's Qcow2.create_image) ------------------------------------

    def create_image(self, prepare_template, base, size, safe=False, *args,
                     **kwargs):
        if not os.path.exists(base):
            self._run_template(prepare_template, base, *args, **kwargs)
        # Nova re-checks the base's safety on every use unless it made the
        # base itself (safe); so does the legacy path.
        check = self.image_cache.deep_inspection(safe)
        entry = self.image_cache.get(os.path.basename(base))
        if entry is None:
            # Written just now by the caller's fetch (Nova's writes no
            # sidecar): described once, from its inspected bytes, so its
            # format and size come from the sidecar, never from qemu-img.
            entry = self._described_base(base, kwargs.get('image_id'))
        elif check:
            formats.detect(base, check_safety=True)
        self.image_cache.touch(entry)
        base_format, base_size = entry.format, entry.virtual_size
        self.verify_base_size(base, size, base_size)
        if self.exists() and self._legacy_base_name(
                os.path.basename(base)) is not None:
            self._restore_legacy_base(
                self._described_base(base, kwargs.get('image_id')))
        if not self.exists():
            with self.image_cache.lock(os.path.basename(base)):
                self._write_overlay(size, size or base_size, base,
                                    base_format)
            self._note_made(size or base_size)

    # -- legacy resized bases (Nova's legacy_backing_size) ---------------------

    def _restore_legacy_base(self, entry: cache_mod.CacheEntry) -> None:
        """Make again the resized copy of ``entry`` this disk is on, if it
        is on one (``<entry>_<N>``, see :func:`legacy_resized_size`) and
        this host lacks it; the copy is refused if the disk's record keeps
        a digest it does not have."""
        name = self._legacy_base_name(entry.name)
        if name is None or os.path.exists(self.image_cache.path(name)):
            return
        self.image_cache.ensure_resized(
            entry, name, legacy_resized_size(name, entry.name),
            expected_sha256=self._expected_base_sha256(name))

    def _described_base(self, base: str, image_id: str | None
                        ) -> cache_mod.CacheEntry:
        """The cache entry of ``base``, which Nova's fetch may have written
        without a sidecar: then described now, from its bytes, as the
        image ``image_id`` (a template when there is none)."""
        if image_id is not None and not os.path.exists(
                base + names.META_SUFFIX):
            try:
                return self.image_cache.adopt(os.path.basename(base),
                                              'image', image_id)
            except exception.CorruptCacheEntry:
                pass  # described meanwhile
        return self._legacy_base_entry(base)

    def _legacy_base_name(self, base_name: str) -> str | None:
        """The name of the legacy resized copy of ``base_name`` the disk
        is on, or None if it is on something else."""
        backing = self._backing_name()
        if backing is None or legacy_resized_size(backing, base_name) is None:
            return None
        return backing

    def _backing_name(self) -> str | None:
        """The file name of the base this disk is on: as its record says;
        for a disk without one, from its qcow2 header, read with the format
        named, and only when Nova's disk.info says the disk is qcow2 (a
        file nothing describes may be a raw disk whose guest wrote a qcow2
        header naming a host file)."""
        record = self.record
        if record is not None:
            return record.backing
        if not self.exists():
            return None
        if disk_info.format_of(self.path) != 'qcow2':
            return None
        info = qemu.info(self.path, 'qcow2')
        backing = info.get('backing-filename')
        return os.path.basename(backing) if backing else None

    def _settle(self) -> None:
        # The overlay names its base by absolute path; on a host whose
        # instances_path differs, point it at this host's copy of the same
        # entry (check_backing has made sure it is here, sha256-verified).
        record = self.record
        if self.moved_from is not None and record is not None and \
                record.backing:
            qemu.rebase_unsafe(self.path, 'qcow2',
                               self.image_cache.path(record.backing),
                               self._backing_format(record))

    def _backing_format(self, record) -> str:
        """The base's format as recorded; for a record made before it was
        always recorded, as this host's copy's sidecar says. Never a guess:
        a qcow2 base taken for raw shows the guest qcow2 metadata as data."""
        if record.backing_format:
            return record.backing_format
        entry = self.image_cache.get(record.backing)
        if entry is None:
            raise exception.CorruptRecord(
                location=f'{record.instance}/{record.name}',
                reason=f'the format of its base {record.backing} is not '
                'recorded and the base is not in this host\'s cache')
        self._record = record.replace(backing_format=entry.format)
        return entry.format

    def _grow(self, size: int) -> None:
        qemu.resize(self.path, 'qcow2', size)


def legacy_resized_size(backing: str, base_name: str) -> int | None:
    """The size in bytes of ``backing`` if it names a legacy resized copy
    of cache entry ``base_name`` (``<base_name>_<N>``: N GiB), else None.

    Nova takes any name ending in ``_<digits>`` and appends that suffix to
    whatever base it was given (so a disk on template ``swap_512`` would
    get a 512 GiB ``swap_512_512``); here the prefix must be the base the
    caller restores.
    """
    prefix, sep, gib = backing.rpartition('_')
    if not sep or prefix != base_name or not (gib.isascii() and
                                             gib.isdigit()):
        return None
    return int(gib) * units.Gi
