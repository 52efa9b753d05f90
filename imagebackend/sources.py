"""Where images come from.

An :class:`ImageSource` answers two questions about an image id: what it
claims to be (:class:`ImageMeta`: declared disk format, size) and what its
bytes are (:meth:`ImageSource.open`, a stream of chunks). The image cache
does everything else: temporary names, inspection, conversion, renames.

:class:`DirectoryImageSource` is the embedded default: images are files
``<image id>.<disk_format>`` in one folder, so the declared format is the
file's extension and is never guessed from the bytes. Glance or HTTP plug in
by implementing the same two methods.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import uuid as uuid_mod
from typing import Any, Iterator, Protocol, runtime_checkable

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names

# Formats an image may declare (Glance's disk_format names).
DISK_FORMATS = ('raw', 'qcow2', 'vmdk', 'vdi', 'vhd', 'vhdx', 'iso', 'ploop',
                'qed', 'ami', 'aki', 'ari')


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """What an image source says about an image before it is fetched."""

    id: str
    disk_format: str
    size: int | None = None          # bytes of the image data
    name: str | None = None
    # Other places the image lives (e.g. ``rbd://fsid/pool/image/snap``),
    # which a backend may use instead of downloading.
    locations: tuple[str, ...] = ()
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The disk size the image declares (Glance's virtual_size), if known:
    # checked against the disk asked for before anything is fetched.
    virtual_size: int | None = None


@runtime_checkable
class ImageSource(Protocol):
    """Fetch images by id. Raise ImageNotFound for an unknown id."""

    def get_meta(self, context: Any, image_id: str) -> ImageMeta:
        ...

    def open(self, context: Any, image_id: str) -> Iterator[bytes]:
        """Yield the image's bytes in chunks."""
        ...


@runtime_checkable
class StoreCopier(Protocol):
    """Optional, for a source in front of Glance multistore: copy an image
    into another store (Nova: ``IMAGE_API.copy_image_to_store``).

    Rbd asks for it when an image is in no store of its cluster and
    ``[libvirt] images_rbd_glance_store_name`` is set, then re-reads
    ``get_meta`` until the copy shows: ``properties['stores']`` lists
    ``store`` (and ``os_glance_importing_to_stores`` no longer does), or a
    cloneable ``rbd://`` location of the cluster is listed;
    ``os_glance_failed_import`` listing it is a failure."""

    def copy_to_store(self, context: Any, image_id: str, store: str) -> None:
        """Start the copy (return at once). A copy already under way is
        not an error (return normally); raise ImageUnacceptable if the
        image can never be copied."""
        ...


class DirectoryImageSource:
    """Images as files ``<image id>.<disk_format>`` in one directory."""

    chunk_size = 1024 * 1024

    def __init__(self, directory: str):
        self.directory = directory

    def _find(self, image_id: str) -> tuple[str, str]:
        try:
            names.check_disk_name(image_id)
        except exception.InvalidDiskName:
            raise exception.ImageNotFound(image_id=image_id)
        for fmt in DISK_FORMATS:
            path = os.path.join(self.directory, f'{image_id}.{fmt}')
            if os.path.lexists(path):
                return self._inside(image_id, path), fmt
        raise exception.ImageNotFound(image_id=image_id)

    def _inside(self, image_id: str, path: str) -> str:
        """``path`` with symlinks resolved, if that is a regular file in the
        images folder: a link to a host file (``/etc/shadow``) must never
        put that file into the cache and a guest's disk."""
        real = os.path.realpath(path)
        folder = os.path.realpath(self.directory)
        if os.path.dirname(real) != folder:
            raise exception.ImageUnacceptable(
                image_id=image_id, reason=f'{path} leads out of the images '
                f'folder {self.directory} (to {real})')
        if not os.path.isfile(real):
            raise exception.ImageUnacceptable(
                image_id=image_id, reason=f'{path} is not a regular file')
        return real

    def _open(self, image_id: str) -> tuple[int, str]:
        """An open descriptor on the image's file, and its format. Opened
        without following a link, then checked to be the very file found
        inside the folder (nothing swapped in between)."""
        path, fmt = self._find(image_id)
        before = os.lstat(path)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise exception.ImageUnacceptable(
                image_id=image_id, reason=f'cannot open {path}: {e}')
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or \
                (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            os.close(fd)
            raise exception.ImageUnacceptable(
                image_id=image_id, reason=f'{path} changed while opened')
        return fd, fmt

    def get_meta(self, context: Any, image_id: str) -> ImageMeta:
        fd, fmt = self._open(image_id)
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return ImageMeta(id=image_id, disk_format=fmt, size=size,
                         name=image_id)

    def open(self, context: Any, image_id: str) -> Iterator[bytes]:
        fd, _fmt = self._open(image_id)
        with os.fdopen(fd, 'rb') as f:
            while True:
                chunk = f.read(self.chunk_size)
                if not chunk:
                    return
                yield chunk

    def add(self, image_id: str, disk_format: str, src_path: str, *,
            copy: bool = False) -> str:
        """Put file ``src_path`` into the directory as image ``image_id``
        (moved, or copied with ``copy=True``); return its new path.

        Everything is checked before anything is written: the id (it
        becomes a file name, so ``../x`` is refused), the format, that the
        source is a regular file and that no image of that id exists (an
        id's bytes never change: caches are keyed by it). The bytes go to a
        hidden temporary name, are fsynced and then linked into place,
        which fails rather than replace an image added concurrently.
        """
        names.check_disk_name(image_id)
        if disk_format not in DISK_FORMATS:
            raise exception.InvalidInput(
                reason=f'unknown disk format {disk_format!r}')
        if not os.path.isfile(src_path):
            raise exception.InvalidInput(
                reason=f'{src_path} is not a regular file')
        dst = os.path.join(self.directory, f'{image_id}.{disk_format}')
        for fmt in DISK_FORMATS:
            if os.path.lexists(os.path.join(self.directory,
                                            f'{image_id}.{fmt}')):
                raise exception.InvalidInput(
                    reason=f'image {image_id} already exists')
        os.makedirs(self.directory, exist_ok=True)
        tmp = os.path.join(self.directory, f'.{image_id}.{disk_format}.'
                                           f'{uuid_mod.uuid4().hex}.tmp')
        try:
            fileutils.clone_or_sparse_copy(src_path, tmp)
            fileutils.fsync_file(tmp)
            try:
                os.link(tmp, dst)
            except FileExistsError:
                raise exception.InvalidInput(
                    reason=f'image {image_id} already exists')
        finally:
            fileutils.remove_path(tmp)
        fileutils.fsync_dir(self.directory)
        if not copy:
            os.unlink(src_path)
        return dst
