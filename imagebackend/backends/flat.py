"""Flat: each disk is a plain file in the instance directory.

Native path, root from an image: the cached base is reflinked into place
(constant time on XFS/btrfs) or else copied extent by extent, in-kernel, so
holes stay holes; then the file is grown by truncation. No subprocess runs
for a raw image. Ephemeral and swap disks are written straight into the
disk by the template function; no template is cached (the cache name is
still recorded as the disk's source).

A Flat disk has no backing file, so there is never anything to restore on
another host: ``check_backing_*`` only confirm the disk is there.

The disk's format is the cached image's format (raw unless
``force_raw_images`` is off and the image was, say, qcow2), as recorded;
it is never sniffed from the file.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from imagebackend import cache_audit
from imagebackend import disk_info
from imagebackend import fileutils
from imagebackend import filesystems
from imagebackend import image
from imagebackend import names
from imagebackend import plans
from imagebackend import processes
from imagebackend import qemu
from imagebackend.backends import localfile


class Flat(image.SelfContained, localfile.LocalFileImage):
    """A disk that is one self-contained file (raw, or unconverted image)."""

    image_type = 'flat'
    capabilities = image.Capabilities(
        file_in_instance_path=True, native_create=True, nova_disk_info=True,
        # Nova's loophole: kernel, ramdisk and config drive are Flat files
        # whatever the host's images_type, and not ephemeral storage.
        unencrypted_names=frozenset({'kernel', 'ramdisk', 'disk.config'}))

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None, *, backend, record=None):
        super().__init__(instance, disk_name, path, disk_info_mapping,
                         backend=backend, record=record)
        if self.record is not None:
            self.driver_format = self.record.format
        elif self.path and self.exists():
            # A disk Nova's module made: the format Nova's disk.info gives
            # it (a qcow2 image kept with force_raw_images off), not raw.
            # Read only, as opening a disk changes nothing.
            self.driver_format = (disk_info.format_of(self.path) or
                                  self.driver_format)

    def correct_format(self) -> None:
        """Nova's: take the disk's format from resolve_driver_format()
        (record, else disk.info, else raw; never probed) if it exists."""
        if self.exists():
            self.driver_format = self.resolve_driver_format()

    # -- native ----------------------------------------------------------------

    def create_from_image(self, context: Any, image_id: str,
                          size: int | None = None,
                          fallback: str | None = None) -> None:
        entry = self.image_cache.fetch_image(context, image_id, fallback,
                                             size=size)
        self._check_size(size, entry.virtual_size)
        self.driver_format = entry.format
        with self._creating('image', image_id, 'native') as facts:
            method = fileutils.clone_or_sparse_copy(entry.path, self.path)
            final = entry.virtual_size
            if size and size > final:
                qemu.resize(self.path, entry.format, size)
                final = size
                # _creating puts it on disk before the record says created.
                self._grow_filesystem(durable=False)
            self._preallocate(size)
            facts.update(format=entry.format, virtual_size=final,
                         provenance={'copy': method,
                                     'image_sha256': entry.sha256})

    def create_from_func(self, context: Any, func: Callable[[str], None],
                         cache_name: str, size: int | None = None,
                         fallback: str | None = None) -> None:
        # No template is kept, but the name is recorded as the disk's source
        # (and is a cache path on other backends): same rule everywhere.
        names.check_cache_name(cache_name)
        self.driver_format = 'raw'
        with self._creating('func', cache_name, 'native') as facts:
            func(self.path)
            final = os.path.getsize(self.path)
            if size and size > final:
                os.truncate(self.path, size)
                final = size
            self._preallocate(size)
            facts.update(format='raw', virtual_size=final)

    def plan_create(self, source_type, source_id, func, size):
        """What create_from_image / create_from_func above would do
        (create_from_content is create_from_func here)."""
        steps = []
        if source_type in ('func', 'content'):
            steps += plans.write_with(func, self.path, size)
        else:
            base, steps = plans.plan_image(self.image_cache, source_id, size)
            steps.append(plans.Step(
                f'copy {base.path} to {self.path} (reflink, else only its '
                'data extents, in-kernel)',
                write_bytes=(os.stat(base.path).st_blocks * 512
                             if base.cached else base.virtual_size or 0)))
            if size and (base.virtual_size is None or
                         size > base.virtual_size):
                steps += self._plan_grow(base, size)
        return steps + (plans.preallocate(self.path, size)
                        if self.preallocate else [])

    def _plan_grow(self, base, size):
        when = (None if base.virtual_size else
                f'if the image is smaller than {size} bytes')
        if base.format != 'raw':
            return [plans.Step(f'grow {self.path} to {size} bytes',
                               command=qemu.resize_command(
                                   self.path, base.format, size),
                               when=when)]
        steps = [plans.Step(f'grow {self.path} to {size} bytes (truncate)',
                            when=when)]
        if base.cached and not cache_audit.keeping_atime(
                base.path, filesystems.bare_ext_filesystem, base.path):
            return steps
        # Known from the base's bytes once it is cached; else a condition.
        fs_when = ' and '.join(c for c in (when, None if base.cached else
                                           'if the image is one bare ext '
                                           'filesystem') if c) or None
        return steps + [plans.Step('grow the filesystem in it', command=cmd,
                                   when=fs_when)
                        for cmd in (('e2fsck', '-fp', self.path),
                        ('resize2fs', self.path))]

    # -- legacy (Nova's Flat.create_image) -------------------------------------

    def create_image(self, prepare_template, base, size, safe=False, *args,
                     **kwargs):
        if 'image_id' not in kwargs:
            # Generating (ephemeral, swap): written straight into the disk.
            if not self.exists():
                self._run_template(prepare_template, self.path, *args,
                                   **kwargs)
                # Raw, as the driver_format it is recorded with says.
                self._note_made(os.path.getsize(self.path))
            elif size:
                self.resize_image(size)
            return
        if not os.path.exists(base):
            self._run_template(prepare_template, base, *args, **kwargs)
        # The copy has the base's format: from its sidecar (a base Nova's
        # fetch wrote gets one now, from its inspected bytes), checked.
        entry = self._legacy_base_entry(base)
        self.driver_format = entry.format
        self.image_cache.touch(entry)
        self.verify_base_size(base, size, entry.virtual_size)
        if not self.exists():
            with self.image_cache.lock(os.path.basename(base)):
                processes.execute('cp', '-r', base, self.path)
            self._note_made(entry.virtual_size)
            if size:
                self.resize_image(size)

    def _grow(self, size: int) -> None:
        qemu.resize(self.path, self.driver_format, size)

    def _resize_image(self, size: int) -> None:
        """Grow the disk; a raw disk that is one bare ext2/3/4 filesystem
        gets its filesystem grown too (Nova's ``disk.api.extend``), after
        the record says the new size: the disk has it whatever becomes of
        the filesystem."""
        raw = self.driver_format == 'raw' and os.path.isfile(self.path)
        before = os.path.getsize(self.path) if raw else None
        super()._resize_image(size)
        if raw and os.path.getsize(self.path) > before:
            self._grow_filesystem()

    def _grow_filesystem(self, durable: bool = True) -> None:
        """Grow a raw disk's bare ext filesystem to the disk's size (see
        :mod:`imagebackend.filesystems`; never a partitioned disk, another
        filesystem, or a qcow2 file), and put what it wrote on disk
        (``durable``; not for a disk still being created, whose creation
        does that once)."""
        if self.driver_format == 'raw' and filesystems.grow_ext(
                self.path) and durable:
            self._make_durable()
