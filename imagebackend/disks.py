"""Creatable disks: a disk described, not yet created.

A compute driver turns an instance into a list of these and then decides,
per disk, what must happen: ``create`` a disk that does not exist,
``check_backing`` of one that does (restore the cache entry it depends on,
never touching the disk). Constructing one creates nothing.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable

from imagebackend import exception
from imagebackend import image as image_mod
from imagebackend import nospace
from imagebackend import records as records_mod


@dataclasses.dataclass
class CreatableDisk(abc.ABC):
    """A backend disk plus what it is to be made from."""

    image: image_mod.Image
    size: int | None
    # Contents need not survive a move (swap): recreated, never copied.
    disposable: bool = False

    def __post_init__(self):
        # Checked here, before anything is made: a bad size must not reach
        # a backend as a "too small" comparison or a truncate.
        size = self.size
        if size is not None and (not isinstance(size, int) or
                                 isinstance(size, bool) or size < 0):
            raise exception.InvalidInput(
                reason=f'disk {self.image.disk_name}: size must be a '
                       f'non-negative integer of bytes or None, not '
                       f'{size!r}')

    @property
    def name(self) -> str:
        return self.image.disk_name

    def exists(self) -> bool:
        return self.image.exists()

    @abc.abstractmethod
    def create(self, context: Any, fallback: str | None = None) -> None:
        """Create the disk (and its record); DiskExists if it is there."""

    @abc.abstractmethod
    def check_backing(self, context: Any,
                      fallback: str | None = None) -> None:
        """Restore what the existing disk depends on, if anything."""

    @property
    @abc.abstractmethod
    def source(self) -> tuple[str, str]:
        """``('image', image id)`` or ``('func', cache name)``."""

    def planned_record(self) -> records_mod.DiskRecord:
        """The ``creating`` record :meth:`create` will write (for a batch
        of creations to write ahead: ``Backend.batch``)."""
        return self.image.planned_record(*self.source)


@dataclasses.dataclass
class DiskFromImage(CreatableDisk):
    """A disk to be made from image ``image_id``."""

    image_id: str = ''

    @property
    def source(self) -> tuple[str, str]:
        return ('image', self.image_id)

    def create(self, context, fallback=None):
        # Backstop for write points that do not map ENOSPC themselves.
        with nospace.mapped(f'disk {self.name}'):
            self.image.create_from_image(context, self.image_id, self.size,
                                         fallback)

    def check_backing(self, context, fallback=None):
        self.image.check_backing_from_image(context, self.image_id, fallback)


@dataclasses.dataclass
class DiskFromFunc(CreatableDisk):
    """A disk to be made by ``func(target)`` (ephemeral, swap, config).

    ``keep_template=False`` declares per-instance content (a config drive):
    no other disk shares it and a later disk of the same source (a rescue
    config drive) must be made afresh, so the backend makes the disk
    straight from what ``func`` writes (``Image.create_from_content``) and
    keeps no template of it, in its cache or its store.
    """

    func: Callable[[str], None] = None
    cache_name: str = ''
    keep_template: bool = True

    @property
    def source(self) -> tuple[str, str]:
        return ('func', self.cache_name)

    def create(self, context, fallback=None):
        make = (self.image.create_from_func if self.keep_template
                else self.image.create_from_content)
        with nospace.mapped(f'disk {self.name}'):
            make(context, self.func, self.cache_name, self.size, fallback)

    def check_backing(self, context, fallback=None):
        self.image.check_backing_from_func(context, self.func,
                                           self.cache_name, fallback)
