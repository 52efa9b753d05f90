"""imagebackend: images and template functions into a VM's local disks.

What a compute driver uses, all here:

- :class:`~imagebackend.backend.Backend`: one per host configuration; it
  makes an :class:`~imagebackend.image.Image` per disk (``by_name`` for a
  disk to create, ``from_metadata`` for an existing one) whose
  ``create_from_image`` / ``create_from_func`` create it and whose legacy
  ``cache()`` keeps Nova's contract.
- :class:`~imagebackend.disks.DiskFromImage` /
  :class:`~imagebackend.disks.DiskFromFunc`: a disk described, not yet
  created (``disk.create(context)``, or several in ``Backend.batch``).
- :class:`~imagebackend.records.DiskRecord`: what every disk is (backend,
  format, size, source).
- The backends' classes ``Flat``, ``Qcow2``, ``Lvm``, ``Rbd``, ``Ploop``
  (imported on first use: ``Rbd`` loads librbd).
- :mod:`~imagebackend.exception` (every error is an ``ImageBackendError``)
  and :mod:`~imagebackend.config` (Nova's options; ``config.list_opts``
  for generators).

Plumbing is reached from its own module: :mod:`imagebackend.cache`
(``ImageCache``), :mod:`~imagebackend.records` (stores),
:mod:`~imagebackend.sources`, :mod:`~imagebackend.transport`,
:mod:`~imagebackend.image` (``Capabilities``), ``processes``, ``qemu``.
"""

from imagebackend import backend as _backend
from imagebackend import backend_types as _backend_types
from imagebackend import config
from imagebackend import exception
from imagebackend.backend import Backend
from imagebackend.disks import DiskFromFunc, DiskFromImage
from imagebackend.image import Image
from imagebackend.records import DiskRecord

# Class name -> image type, from the one declaration of the backends.
_BACKEND_CLASSES = {path.rsplit(':', 1)[1]: image_type
                    for image_type, path in _backend_types.BACKENDS.items()}

__all__ = [
    'Backend', 'DiskFromFunc', 'DiskFromImage', 'DiskRecord', 'Image',
    'config', 'exception', *sorted(set(_BACKEND_CLASSES)),
]


def __getattr__(name: str) -> type:
    # The backends' modules import what only their disks need (librbd,
    # oslo.privsep): a driver that uses one backend loads only that one.
    image_type = _BACKEND_CLASSES.get(name)
    if image_type is None:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return _backend.backend_class(image_type)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
