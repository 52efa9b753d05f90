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
from typing import Any, Iterator, Protocol, runtime_checkable

from imagebackend import exception
from imagebackend import names

# Formats an image may declare (Glance's disk_format names).
DISK_FORMATS = ('raw', 'qcow2', 'vmdk', 'vdi', 'vhd', 'vhdx', 'iso', 'ploop',
                'qed', 'ami', 'aki', 'ari')


@dataclasses.dataclass(frozen=True)
class ImageMeta:
    """What an image source says about an image before it is fetched."""

    id: str
    disk_format: str
    size: int | None = None
    name: str | None = None
    # Other places the image lives (e.g. ``rbd://fsid/pool/image/snap``),
    # which a backend may use instead of downloading.
    locations: tuple[str, ...] = ()
    properties: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class ImageSource(Protocol):
    """Fetch images by id. Raise ImageNotFound for an unknown id."""

    def get_meta(self, context: Any, image_id: str) -> ImageMeta:
        ...

    def open(self, context: Any, image_id: str) -> Iterator[bytes]:
        """Yield the image's bytes in chunks."""
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
            if os.path.isfile(path):
                return path, fmt
        raise exception.ImageNotFound(image_id=image_id)

    def get_meta(self, context: Any, image_id: str) -> ImageMeta:
        path, fmt = self._find(image_id)
        return ImageMeta(id=image_id, disk_format=fmt,
                         size=os.path.getsize(path), name=image_id)

    def open(self, context: Any, image_id: str) -> Iterator[bytes]:
        path, _fmt = self._find(image_id)
        with open(path, 'rb') as f:
            while True:
                chunk = f.read(self.chunk_size)
                if not chunk:
                    return
                yield chunk

    def add(self, image_id: str, disk_format: str, src_path: str) -> str:
        """Put a file into the directory as an image (for demos and tests)."""
        names.check_disk_name(image_id)
        if disk_format not in DISK_FORMATS:
            raise exception.InvalidInput(
                reason=f'unknown disk format {disk_format!r}')
        os.makedirs(self.directory, exist_ok=True)
        dst = os.path.join(self.directory, f'{image_id}.{disk_format}')
        os.replace(src_path, dst)
        return dst
