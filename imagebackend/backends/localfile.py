"""What every disk kept as a file in the instance directory shares."""

from __future__ import annotations

import os
from typing import Any

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import image
from imagebackend import models
from imagebackend import names
from imagebackend import qemu


class LocalFileImage(image.Image):
    """A disk at ``<instances_path>/<uuid>/<disk name>`` (or a given path)."""

    def __init__(self, instance=None, disk_name=None, path=None,
                 disk_info_mapping=None, *, backend, driver_format='raw',
                 record=None):
        super().__init__(instance, disk_name, path, disk_info_mapping,
                         backend=backend, source_type='file',
                         driver_format=driver_format, record=record)
        if path is None:
            if instance is None or disk_name is None:
                raise exception.InvalidInput(
                    reason='a disk needs an instance and a name, or a path')
            self.path = os.path.join(self.instance_dir, disk_name)
        elif disk_name is None and instance is not None and \
                os.path.dirname(path) == self.instance_dir:
            self.disk_name = names.check_disk_name(os.path.basename(path))
        self.preallocate = self.conf.preallocate_images == 'space'
        if self.preallocate:
            self.driver_io = 'native'

    def get_model(self, connection=None) -> models.LocalFileImage:
        """The disk as a file in its real format (Nova's ``get_model``;
        no libvirt ``connection`` is needed for a local file). Nova's Flat
        said raw whatever the file held: a qcow2 file described as raw is
        how a tool opening it writes into the container instead of the
        guest's data, so the recorded format is given."""
        return models.LocalFileImage(self.path, self.driver_format)

    def remove_disk(self) -> None:
        fileutils.remove_path(self.path)

    def send_to(self, transport, host: str, progress=None) -> None:
        relpath = os.path.relpath(self.path, self.conf.instances_path)
        transport.put(host, self.path, relpath, progress=progress)

    def _prepare_empty(self, like) -> dict[str, Any]:
        if self.capabilities.backing_in_cache:
            super()._prepare_empty(like)
        self.driver_format = like.format
        return {}

    def _make_empty(self, like) -> tuple[str, int]:
        qemu.create(self.path, like.format, like.virtual_size)
        return like.format, like.virtual_size
