"""Ploop: each disk is a directory holding ``root.hds`` and its descriptor.

A Ploop disk is ``<instances_path>/<uuid>/<disk name>/`` with the data in
``root.hds`` and ``DiskDescriptor.xml`` next to it (Nova's layout; libvirt
gets ``<disk type='file'>``, ``<driver type='ploop'>`` and the directory as
its source, as Nova gives it). ``root.hds`` is in one of ploop's two image
formats, chosen as Nova chooses its ``pcs_format``:

* **raw** ("Plain" in the descriptor): a raw file. Used for raw images,
  for every image when ``force_raw_images`` is on, and for ephemeral and
  swap disks.
* **expanded** ("Compressed"): ploop's sparse format, which is qemu's
  ``parallels`` format byte for byte. Used for images declared ``ploop``
  when ``force_raw_images`` is off. (Nova refused any other non-raw image
  here; this backend converts it to the expanded format instead, which
  keeps it sparse as qcow2 kept it.)

Which tool does what, and why (Debian's ``ploop`` 1.15, no kernel module;
``../shared/reference/real-backends.md`` section 5):

* ``ploop restore-descriptor -f raw DIR DIR/root.hds`` writes the
  descriptor of every raw disk: the real tool, which works offline. It
  insists on a file of whole 1 MiB clusters, so raw disks are sized in
  whole MiB (a requested size, or an image of another size, is rounded up
  to the next MiB with zeros the guest never wrote).
* ``ploop init`` (Nova's ephemeral path) segfaults, so ephemeral and swap
  disks are made by the template function writing straight into
  ``DIR/root.hds`` (a raw file; the cache name is recorded, no template is
  kept), then ``restore-descriptor``.
* ``ploop restore-descriptor -f expanded`` refuses qemu's images (qemu
  writes the version-2 magic, and ploop checks v2 support against the
  kernel module), so an expanded disk's data is written by qemu-img
  (``qemu-img convert -O parallels``, or a plain copy of a cached image
  that already is parallels) and its descriptor by
  :mod:`imagebackend.parallels`, which also finishes the image as ploop
  wants it at rest.
* Growing: ``ploop grow -s <N>K DIR/DiskDescriptor.xml`` for raw disks (the
  real tool, offline; note it writes zeros over the whole added range,
  ~2.7 s per GiB here, because ploop keeps raw images allocated).
  ``qemu-img resize`` cannot resize parallels images, and ``ploop grow``
  on a qemu-made expanded image, although it exits 0, sets the header's
  "empty image" flag on an image that holds data (qemu's spec: such an
  image "should be considered clear"), so an expanded disk is grown by
  copying it into a bigger one: ``qemu-img create -f parallels`` +
  ``qemu-img convert -n --target-is-zero``, then a new descriptor.
* A disk created at a size larger than its source is extended *before*
  its descriptor exists: the raw file is truncated (sparse, no process),
  the expanded one converted straight into an image of the final size; so
  the native paths never pay for ``ploop grow``'s zero-filling. Nova's
  legacy path (``create_image`` then ``resize_image``) does. Raw disks
  thus stay sparse, as Nova's ``cp`` made them; ploop fills a raw image's
  holes itself when it opens it through its descriptor.
* An expanded disk that arrives from another host (cold migration: a
  transport that keeps holes, or qemu as the guest's writer) is finished
  again on arrival (``settle``).

Commands per disk, native paths (the image already in the cache):

==========================================  ==================================
root from a raw image (any size)            ``ploop restore-descriptor``
root, expanded, at the image's size         none (a copy, and the descriptor
                                            written in-process)
root, expanded from a non-parallels base    ``qemu-img convert -O parallels``
root, expanded, larger than the image       ``qemu-img create`` +
                                            ``qemu-img convert -n``
ephemeral / swap                            the template's ``mkfs`` /
                                            ``mkswap`` + ``restore-descriptor``
grow an existing raw / expanded disk        ``ploop grow`` / create + convert
==========================================  ==================================

A disk exists once its descriptor does; a directory without one is what an
interrupted creation left (a new creation replaces it), and anything else
at the path (another backend's disk file, on a host whose ``images_type``
changed) counts as existing, so it is never overwritten.

A Ploop disk has no backing file: ``check_backing_*`` only confirm the disk
is there, and a live migration's destination gets an empty disk of the
recorded size and ploop format (``create_empty``). The ploop format is
recorded (provenance ``ploop_format``) and, for a disk on this host, read
from its descriptor, never guessed from the data.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any, Callable

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import image
from imagebackend import names
from imagebackend import plans
from imagebackend import processes
from imagebackend import qemu
from imagebackend.backends import localfile
from imagebackend.parallels import (CLUSTER, DATA, DESCRIPTOR, QEMU_FORMATS,
                                    TYPES, Descriptor, ParallelsHeader,
                                    finish_expanded, read_descriptor,
                                    read_parallels_header, round_size,
                                    write_descriptor)

LOG = logging.getLogger(__name__)

# In a plan, for a cluster size known only once the image is fetched.
CLUSTER_OF_THE_IMAGE = "<the image's cluster size>"


# -- the backend -------------------------------------------------------------------

class Ploop(image.SelfContained, localfile.LocalFileImage):
    """A disk that is a ploop directory (``root.hds`` + descriptor)."""

    image_type = 'ploop'
    fixed_format = 'ploop'
    # Nova's Ploop inherited is_file_in_instance_path() False, but the disk
    # IS in the instance directory: flows remove the directory with the
    # disk and cold migration copies it, so say so. Nothing lives in the
    # cache that a disk depends on. Nova's Ploop never reads disk.info
    # (its disks are ploop), but Nova's driver lists them there on
    # pre-live-migration, and a host adopting the disk reads it: listed.
    capabilities = image.Capabilities(file_in_instance_path=True,
                                      native_create=True,
                                      nova_disk_info=True)

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None, *, backend, record=None):
        super().__init__(instance, disk_name, path, disk_info_mapping,
                         backend=backend, driver_format=self.fixed_format,
                         record=record)
        # As in Nova: a directory is not fallocated (preallocate_images).
        self.preallocate = False
        self.driver_io = None

    @property
    def descriptor_path(self) -> str:
        return os.path.join(self.path, DESCRIPTOR)

    @property
    def data_path(self) -> str:
        return os.path.join(self.path, DATA)

    def exists(self) -> bool:
        """A ploop disk exists once its descriptor does. Anything else at
        the path that is not a directory (another backend's disk file)
        also counts: it must never be taken for free room. A directory
        without a descriptor is what an interrupted creation left."""
        if os.path.isfile(self.descriptor_path):
            return True
        return os.path.lexists(self.path) and not os.path.isdir(self.path)

    def descriptor(self) -> Descriptor:
        return read_descriptor(self.path)

    @property
    def ploop_format(self) -> str:
        """'raw' or 'expanded', as the disk's descriptor says."""
        return self.descriptor().ploop_format

    def _format_for(self, base_format: str) -> str:
        """Nova's pcs_format for a cached image of ``base_format``."""
        if base_format == 'raw' or self.conf.force_raw_images:
            return 'raw'
        return 'expanded'

    # -- native ----------------------------------------------------------------

    def create_from_image(self, context: Any, image_id: str,
                          size: int | None = None,
                          fallback: str | None = None) -> None:
        entry = self.image_cache.fetch_image(context, image_id, fallback,
                                             size=size)
        self._check_size(size, entry.virtual_size)
        fmt = self._format_for(entry.format)
        with self._creating('image', image_id, 'native',
                            ploop_format=fmt) as facts:
            self._make_dir()
            how, final = self._write_data(entry.path, entry.format,
                                          entry.virtual_size, fmt, size)
            facts.update(format='ploop', virtual_size=final,
                         provenance={'copy': how,
                                     'image_sha256': entry.sha256})

    def create_from_func(self, context: Any, func: Callable[[str], None],
                         cache_name: str, size: int | None = None,
                         fallback: str | None = None) -> None:
        # No template is kept (ploop init would have made the disk in
        # place); the name is still recorded as the disk's source.
        names.check_cache_name(cache_name)
        with self._creating('func', cache_name, 'native',
                            ploop_format='raw') as facts:
            self._make_dir()
            func(self.data_path)
            final = self._presize(size)
            self._restore_descriptor()
            facts.update(format='ploop', virtual_size=final)

    def _write_data(self, src: str, src_format: str, src_size: int,
                    fmt: str, size: int | None) -> tuple[str, int]:
        """Make root.hds (ploop format ``fmt``) and the descriptor from the
        cached ``src`` (``src_size`` bytes to the guest), at least ``size``
        bytes. Returns (how, size)."""
        data = self.data_path
        if fmt == 'raw':
            if src_format == 'raw':
                how = fileutils.clone_or_sparse_copy(src, data)
            else:  # force_raw_images, but the entry predates it
                qemu.convert(src, src_format, data, 'raw')
                how = 'convert'
            final = self._presize(size)
            self._restore_descriptor()
            return how, final
        src_header = (read_parallels_header(src)
                      if src_format == 'parallels' else None)
        if size and round_size(size) > src_size:
            # Straight into an image of the final size: qemu-img cannot
            # resize parallels, and this is one copy instead of two.
            self._create_parallels(data, round_size(size), src_header)
            qemu.convert(src, src_format, data, 'parallels',
                         target_is_zero=True)
            how = 'convert'
        elif src_header is not None:
            how = fileutils.clone_or_sparse_copy(src, data)
        else:
            qemu.convert(src, src_format, data, 'parallels')
            how = 'convert'
        header = finish_expanded(data)
        self._write_descriptor(header)
        return how, header.virtual_size

    # -- the plan (imagebackend.plans) ---------------------------------------

    def plan_create(self, source_type, source_id, func, size):
        """What create_from_image / create_from_func above would do
        (create_from_content is create_from_func here), in their order."""
        if source_type in ('func', 'content'):
            try:
                names.check_cache_name(source_id)
            except exception.ImageBackendError as e:
                raise plans.Refused(e, [])
            written = getattr(func, 'size', None)
            steps = self._plan_dir() + plans.write_with(func, self.data_path,
                                                        written)
            return steps + self._plan_presize(written, size) + [
                self._plan_restore_descriptor()]
        base, steps = plans.plan_image(self.image_cache, source_id, size)
        fmt = self._format_for(base.format)
        steps += self._plan_dir()
        src, data, vsize = base.path, self.data_path, base.virtual_size
        if fmt == 'raw':
            if base.format == 'raw':
                steps.append(plans.Step(
                    f'copy {src} to {data} (reflink, else only its data '
                    'extents, in-kernel)',
                    write_bytes=(os.stat(src).st_blocks * 512
                                 if base.cached else vsize or 0)))
            else:  # force_raw_images, but the entry predates it
                steps.append(plans.Step(
                    f'convert {src} to raw at {data}',
                    command=qemu.convert_command(src, base.format, data,
                                                 'raw'),
                    write_bytes=vsize or 0))
            return steps + self._plan_presize(vsize, size) + [
                self._plan_restore_descriptor()]
        grow = bool(size) and (vsize is None or round_size(size) > vsize)
        small = (f'if the image is smaller than {round_size(size)} bytes'
                 if grow and vsize is None else None)
        # As _write_data: a parallels base's header (its cluster size; an
        # entry not yet fetched is inspected as parallels on the way in).
        header = (read_parallels_header(src)
                  if base.format == 'parallels' and base.cached else None)
        parallels = header is not None or (base.format == 'parallels' and
                                           not base.cached)
        if grow:
            cluster = (str(header.cluster_size) if header else
                       CLUSTER_OF_THE_IMAGE if parallels else str(CLUSTER))
            steps += self._plan_grown_copy(base, round_size(size), cluster,
                                           small)
        if not grow or small:
            other = 'otherwise' if small else None
            if parallels:
                steps.append(plans.Step(
                    f'copy {src} to {data} (reflink, else only its data '
                    'extents, in-kernel)', when=other,
                    write_bytes=(os.stat(src).st_blocks * 512
                                 if base.cached else vsize or 0)))
            else:
                steps.append(plans.Step(
                    f'convert {src} to ploop\'s expanded format at {data}',
                    command=qemu.convert_command(src, base.format, data,
                                                 'parallels'),
                    write_bytes=vsize or 0, when=other))
        return steps + [plans.Step(
            f'fill the holes of {data} and set its header\'s "empty" flag '
            f'as ploop wants, then write {self.descriptor_path} '
            '(in-process)')]

    def _plan_dir(self) -> list[plans.Step]:
        """``_make_dir``: a directory an interrupted creation left goes."""
        if os.path.isdir(self.path) and not os.path.islink(self.path) and \
                not os.path.exists(self.descriptor_path):
            return [plans.Step(f'remove {self.path}: a ploop directory '
                               'without a descriptor, left by an '
                               'interrupted creation'),
                    plans.Step(f'make the directory {self.path}')]
        return [plans.Step(f'make the directory {self.path}')]

    def _plan_presize(self, current: int | None,
                      size: int | None) -> list[plans.Step]:
        """``_presize``: a truncate, when the raw data is not yet whole
        clusters of at least ``size`` bytes."""
        if current is not None and \
                round_size(max(current, size or 0)) == current:
            return []
        final = (round_size(max(current, size or 0)) if current is not None
                 else None)
        return [plans.Step(
            f'extend {self.data_path} to '
            + (f'{final} bytes' if final else
               f'whole MiB, at least {size or 0} bytes') + ' (truncate)',
            when=None if current is not None else
            'if its size is not already that')]

    def _plan_restore_descriptor(self) -> plans.Step:
        return plans.Step(
            f'write {self.descriptor_path} (ploop, as root)',
            command=('ploop', 'restore-descriptor', '-f', 'raw', self.path,
                     self.data_path))

    def _plan_grown_copy(self, base, size: int, cluster: str,
                         when: str | None) -> list[plans.Step]:
        """``_write_data``'s copy straight into an image of ``size``."""
        return [
            plans.Step(f'an empty expanded image of {size} bytes at '
                       f'{self.data_path}',
                       command=qemu.create_command(
                           self.data_path, 'parallels', size,
                           options={'cluster_size': cluster}), when=when),
            plans.Step(f'copy {base.path} into it',
                       command=qemu.convert_command(
                           base.path, base.format, self.data_path,
                           'parallels', target_is_zero=True),
                       write_bytes=base.virtual_size or size, when=when)]

    # -- steps -----------------------------------------------------------------

    def _make_dir(self) -> None:
        if os.path.isdir(self.path) and not os.path.islink(self.path) and \
                not os.path.exists(self.descriptor_path):
            LOG.warning('removing %s: a ploop directory without a '
                        'descriptor, left by an interrupted creation',
                        self.path)
            shutil.rmtree(self.path)
        os.mkdir(self.path)

    def _presize(self, size: int | None) -> int:
        """Extend the raw root.hds (sparse, before it has a descriptor) to
        whole clusters and at least ``size``; return its size."""
        current = os.path.getsize(self.data_path)
        final = round_size(max(current, size or 0))
        if final != current:
            os.truncate(self.data_path, final)
        return final

    def _restore_descriptor(self) -> None:
        processes.execute('ploop', 'restore-descriptor', '-f', 'raw',
                          self.path, self.data_path, root=True)

    def _write_descriptor(self, header: ParallelsHeader) -> None:
        write_descriptor(self.path, Descriptor.expanded(header))

    @staticmethod
    def _create_parallels(path: str, size: int,
                          like: ParallelsHeader | None = None
                          ) -> None:
        cluster = like.cluster_size if like else CLUSTER
        qemu.create(path, 'parallels', size,
                    options={'cluster_size': str(cluster)})

    # -- existing disks ----------------------------------------------------------


    def _settle(self) -> None:
        # A transport that keeps holes (rsync -S, a sparse copy) and a
        # writer other than ploop (qemu) may leave an expanded image with
        # holes ploop would take for damage: finish it again on arrival.
        if self.moved_from is not None and self.exists() and \
                self.ploop_format == 'expanded':
            finish_expanded(self.data_path)

    def get_disk_size(self, name: str) -> int:
        """Virtual size of ``name``; for a ploop directory, Nova's way:
        qemu-img info of its root.hds, in the descriptor's format."""
        if os.path.isfile(os.path.join(name, DESCRIPTOR)):
            fmt = read_descriptor(name).ploop_format
            return qemu.virtual_size(os.path.join(name, DATA),
                                     QEMU_FORMATS[fmt])
        return super().get_disk_size(name)

    def _resize_image(self, size: int) -> None:
        """Grow to ``size`` rounded up to whole MiB; refuse to shrink."""
        current = self.virtual_size()
        if size < current:
            raise exception.CannotShrink(path=self.location, current=current,
                                         size=size)
        size = round_size(size)
        if size <= current:
            return
        self._grow(size)
        self._update_record(virtual_size=size)

    def _grow(self, size: int) -> None:
        self._require_disk()
        if self.ploop_format == 'raw':
            processes.execute('ploop', 'grow', '-s', f'{size // 1024}K',
                              self.descriptor_path, root=True)
            return
        old = read_parallels_header(self.data_path)
        bigger = self.data_path + '.grow'
        fileutils.remove_path(bigger)
        try:
            self._create_parallels(bigger, size, old)
            qemu.convert(self.data_path, 'parallels', bigger, 'parallels',
                         target_is_zero=True)
            header = finish_expanded(bigger)
            os.replace(bigger, self.data_path)
        finally:
            fileutils.remove_path(bigger)
        self._write_descriptor(header)

    @staticmethod
    def _empty_format(like) -> str:
        """The ploop format of an empty disk like ``like``."""
        fmt = (like.provenance or {}).get('ploop_format') or 'raw'
        if fmt not in TYPES:
            raise exception.InvalidInput(
                reason=f'record of {like.name} has unknown ploop format '
                       f'{fmt!r}')
        return fmt

    def _prepare_empty(self, like) -> dict[str, Any]:
        """An empty disk of ``like``'s size and ploop format, for a block
        live migration to fill."""
        return {'ploop_format': self._empty_format(like)}

    def _make_empty(self, like) -> tuple[str, int]:
        size = like.virtual_size
        self._make_dir()
        if self._empty_format(like) == 'raw':
            with open(self.data_path, 'xb'):
                pass
            final = self._presize(size)
            self._restore_descriptor()
        else:
            self._create_parallels(self.data_path, size)
            header = finish_expanded(self.data_path)
            self._write_descriptor(header)
            final = header.virtual_size
        return 'ploop', final

    def snapshot_extract(self, target: str, out_format: str) -> None:
        qemu.convert(self.data_path, QEMU_FORMATS[self.ploop_format], target,
                     out_format, compress=self._compress_snapshot(out_format))

    # -- legacy (Nova's Ploop.create_image) ------------------------------------

    def create_image(self, prepare_template, base, size, safe=False, *args,
                     **kwargs):
        if 'image_id' not in kwargs:
            # Generating (ephemeral, swap). Nova's template made the whole
            # directory with `ploop init`, which crashes here: the template
            # writes root.hds instead, then restore-descriptor.
            if self.exists():
                return
            self._make_dir()
            try:
                self._run_template(prepare_template, self.data_path,
                                   *args, **kwargs)
                self._presize(None)
                self._restore_descriptor()
            except BaseException:
                fileutils.remove_path(self.path)
                raise
            return
        if not os.path.exists(base):
            self._run_template(prepare_template, base, *args, **kwargs)
        base_format, _size = self.image_cache.legacy_base(base, safe)
        self.verify_base_size(base, size)
        if self.exists():
            return
        fmt = self._format_for(base_format)
        with self.image_cache.lock(os.path.basename(base)):
            self._make_dir()
            if QEMU_FORMATS[fmt] == base_format:
                processes.execute('cp', '-r', base, self.data_path)
            else:
                qemu.convert(base, base_format, self.data_path,
                             QEMU_FORMATS[fmt])
            if fmt == 'raw':
                self._presize(None)
                self._restore_descriptor()
            else:
                self._write_descriptor(finish_expanded(self.data_path))
        if size:
            self.resize_image(size)

    def _legacy_facts(self, base: str) -> dict[str, Any]:
        facts = super()._legacy_facts(base)
        facts['provenance'] = {'ploop_format': self.ploop_format}
        return facts
