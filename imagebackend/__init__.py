"""imagebackend: images and template functions into a VM's local disks.

The public face: :class:`Backend` makes :class:`Image` objects (one per
disk) whose ``create_from_image`` / ``create_from_func`` create disks and
whose legacy ``cache()`` keeps Nova's contract; every disk has a
:class:`DiskRecord`; errors are in :mod:`imagebackend.exception`.
"""

from imagebackend import exception
from imagebackend.backend import Backend
from imagebackend.cache import CacheEntry, ImageCache
from imagebackend.image import Capabilities, Image
from imagebackend.records import (DiskRecord, InstanceDirStore, MemoryStore,
                                  RecordStore)
from imagebackend.sources import DirectoryImageSource, ImageMeta, ImageSource
from imagebackend.disks import CreatableDisk, DiskFromFunc, DiskFromImage
from imagebackend.transport import LocalTransport, RsyncTransport, Transport

__all__ = [
    'Backend', 'CacheEntry', 'Capabilities', 'CreatableDisk',
    'DirectoryImageSource', 'DiskFromFunc', 'DiskFromImage', 'DiskRecord',
    'Image', 'ImageCache', 'ImageMeta', 'ImageSource', 'InstanceDirStore',
    'LocalTransport', 'MemoryStore', 'RecordStore', 'RsyncTransport',
    'Transport', 'exception',
]
