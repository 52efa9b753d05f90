"""What creating an Rbd disk would do, nothing done (its plan).

``plan_create`` lists, step by step, what ``create_from_image``,
``create_from_func`` and ``create_from_content`` (:mod:`.rbd_create`)
would do: Ceph is read, never written.
"""

from __future__ import annotations

import os

from imagebackend import exception
from imagebackend import formats
from imagebackend import names
from imagebackend import plans
from imagebackend import qemu
from imagebackend.backends.ceph_connection import typed
from imagebackend.backends.rbd_create import (
    META_FORMAT, META_SHA256, META_SOURCE, PART_INFIX)
from imagebackend.backends.rbd_locations import BASE_SNAP

# Stands, in a plan, for the random part of a name creation would pick.
RANDOM = '<random>'


class RbdPlans:
    """The plan of an Rbd disk's native creation (a part of
    :class:`~imagebackend.backends.rbd.Rbd`)."""

    def plan_create(self, source_type, source_id, func, size):
        """What create_from_image / create_from_func / create_from_content
        (:mod:`.rbd_create`) would do. Ceph is read (does the disk, the
        pool base, an rbd:// location of the image exist), never written.
        librbd calls are in-process steps; ``rbd import`` and ``qemu-img
        convert`` are commands. Bytes imported into the pool count as
        written (an upper bound: ``rbd import`` skips zeroes)."""
        try:
            with self._connect() as conn:
                with typed('plan', self.location):
                    self._refuse_existing(conn)
                    if source_type == 'content':
                        names.check_cache_name(source_id)
                        return self._plan_content(func, size)
                    if source_type == 'func':
                        base = names.check_cache_name(source_id)
                        why_not = 'the template is not in the pool yet'
                    else:
                        base = names.image_cache_name(source_id)
                    parent = self._pool_base(conn, base,
                                             f'{source_type}:{source_id}')
                    if parent is None and source_type == 'image':
                        parent, why_not = self._location_parent(
                            conn, None, source_id)
                    if parent is not None:
                        self._check_size(size, parent.size)
                        return self._plan_clone(parent.spec, parent.how,
                                                parent.why, parent.size,
                                                size)
        except exception.ImageBackendError as e:
            raise plans.Refused(e, [])
        return self._plan_import_base(base, source_type, source_id, func,
                                      size, why_not)

    def _plan_clone(self, spec: str, how: str, why: str,
                    parent_size: int | None,
                    size: int | None) -> list[plans.Step]:
        """The steps of _clone_disk."""
        steps = [plans.Step(f'clone {spec} as {self.location} ({how}: '
                            f'{why}); in-process (librbd), no data copied')]
        return steps + self._plan_grow(size, parent_size, 'image')

    def _plan_grow(self, size: int | None, made: int | None,
                   what: str) -> list[plans.Step]:
        """The librbd resize after a clone or import to ``made`` bytes
        (None: known only once there), when the disk is to be bigger."""
        if not size or (made is not None and size <= made):
            return []
        return [plans.Step(
            f'resize {self.location} to {size} bytes; in-process (librbd)',
            when=None if made else
            f'if the {what} is smaller than {size} bytes')]

    def _plan_import_base(self, base: str, source_type: str,
                          source_id: str, func, size: int | None,
                          why_not: str) -> list[plans.Step]:
        """The steps of _import_base (then _clone_disk): the cache entry,
        made or fetched as the cache would, imported once as the pool
        base."""
        if source_type == 'func':
            entry, steps = plans.plan_template(self.image_cache, source_id,
                                               func)
        else:
            entry, steps = plans.plan_image(self.image_cache, source_id,
                                            size)
        try:
            self._check_size(size, entry.virtual_size or 0)
        except exception.DiskTooSmall as e:
            raise plans.Refused(e, steps)
        part = f'{base}{PART_INFIX}{RANDOM}'
        steps.append(plans.Step(
            f'{self.pool}/{base}@{BASE_SNAP} is not in the pool '
            f'({why_not or "not in the pool yet"}): import {entry.path} '
            f'once as {self.pool}/{part}, under the cache\'s lock for '
            f'{base}'))
        steps += self._plan_import_file(entry.path, entry.format, part,
                                        entry.virtual_size)
        steps.append(plans.Step(
            f'on {self.pool}/{part}: set metadata {META_SOURCE}='
            f'{source_type}:{source_id}, {META_SHA256}, {META_FORMAT}='
            f'{entry.format}; create and protect snapshot {BASE_SNAP}; '
            f'rename it to {self.pool}/{base}; in-process (librbd)'))
        return steps + self._plan_clone(
            f'{self.pool}/{base}@{BASE_SNAP}', 'import',
            'the pool base just imported', entry.virtual_size, size)

    def _plan_import_file(self, local: str, fmt: str, name: str,
                          nbytes: int | None) -> list[plans.Step]:
        """The steps of _import_file."""
        fmt = formats.qemu_format(fmt)
        steps = []
        if fmt != 'raw':
            tmp = f'{local}.raw{names.PART_SUFFIX}'
            steps.append(plans.Step(
                f'convert {local} ({fmt}) to a raw temporary copy',
                command=qemu.convert_command(local, fmt, tmp, 'raw'),
                write_bytes=nbytes or 0))
            local = tmp
        steps.append(plans.Step(
            f'import {local} into the pool as {self.pool}/{name}',
            command=('rbd', 'import', '--no-progress', '--image-format',
                     '2', '--dest-pool', self.pool, *self._cli_args(),
                     local, name), write_bytes=nbytes or 0))
        if fmt != 'raw':
            steps.append(plans.Step(f'remove {local}'))
        return steps

    def _plan_content(self, func, size: int | None) -> list[plans.Step]:
        """The steps of create_from_content."""
        tmpdir = os.path.join(
            self.instance_dir,
            f'.{self.disk_name}-{RANDOM}{names.PART_SUFFIX}')
        local = os.path.join(tmpdir, 'content')
        made = getattr(func, 'size', None)
        try:
            self._check_size(size, made or 0)
        except exception.DiskTooSmall as e:
            raise plans.Refused(e, [])
        steps = [plans.Step(f'make {tmpdir} (a temporary directory)')]
        steps += plans.write_with(func, local, made)
        steps += self._plan_import_file(local, 'raw', self.rbd_name, made)
        steps.append(plans.Step(f'remove {tmpdir}'))
        return steps + self._plan_grow(size, made, 'content')
