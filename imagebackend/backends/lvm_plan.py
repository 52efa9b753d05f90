"""What creating an Lvm disk would run, doing nothing (``plan spawn``).

:class:`LvmPlans` gives :class:`~imagebackend.backends.lvm.Lvm` its
``plan_create`` and ``plan_exists``: the steps and commands of
``create_from_image`` / ``create_from_func``, each ``_plan_<x>`` mirroring
the method ``<x>`` that runs them. It reads the volume group (``vgs``, and
``lvs`` for a thin base) for sizes and free space, and refuses where
creation would; it never creates anything nor fetches a key.
"""

from __future__ import annotations

import os

from imagebackend import cache_audit
from imagebackend import encryption as encryption_mod
from imagebackend import exception
from imagebackend import filesystems
from imagebackend import names
from imagebackend import plans
from imagebackend import qemu
from imagebackend.backends.lvm_volumes import (
    DEVICE_ROOT, LVS, VGS, VolumeGroup, base_lv_name, logical_volumes,
    volume_group)


class LvmPlans:
    """``plan_create`` and ``plan_exists`` of
    :class:`~imagebackend.backends.lvm.Lvm` (a mixin: the steps use the
    disk's names, config and creation helpers)."""

    def plan_create(self, source_type, source_id, func, size):
        """What create_from_image / create_from_func (lvm.py) would do
        (create_from_content is create_from_func here). Reads the volume
        group (``vgs``, and ``lvs`` for a thin base) for sizes and free
        space; never fetches an encryption key."""
        steps: list[plans.Step] = []
        try:
            if source_type in ('func', 'content'):
                self._plan_func(steps, source_id, size)
                steps += plans.write_with(func, self.path, size)
            else:
                self._plan_image(steps, source_id, size)
        except plans.Refused as e:
            raise plans.Refused(e.error, steps + e.steps)
        except exception.ImageBackendError as e:
            raise plans.Refused(e, steps)
        return steps

    def plan_exists(self):
        """``exists`` asks LVM."""
        return [self._plan_lvs(f'is {self.location} there?')]

    def _plan_lvs(self, what: str) -> plans.Step:
        return plans.Step(what, command=(*LVS, self.vg))

    def _plan_exists_check(self, steps: list) -> None:
        """``_exists_before_creating``: asked only for a recorded disk."""
        if self.record is not None:
            steps.append(self._plan_lvs(f'check {self.location} does not '
                                        'exist'))

    def _plan_group(self, steps: list) -> VolumeGroup:
        """``_extents``' step (until this Backend knows the extent size),
        and the VG read now (read-only): the free space lvcreate would
        find, for :meth:`_plan_lvcreate` to refuse where it would."""
        # Listed for the first disk a Backend plans (a spawn's plan holds
        # all its disks' before any is made), unless it knows the size.
        planned = self._backend.shared((__name__, 'planned_extent_size'),
                                       set)
        if self.vg not in self._known_extents() and self.vg not in planned:
            planned.add(self.vg)
            steps.append(plans.Step(f'read volume group {self.vg}\'s extent '
                                    'size (once per Backend)',
                                    command=(*VGS, self.vg)))
        return volume_group(self.vg)

    def _plan_key(self, steps: list) -> None:
        """``_encryption_key``: refused, or the key fetched (a step)."""
        encryption_mod.refuse_unencrypted_creation(self)
        if self.encryption is not None:
            steps.append(plans.Step(
                f'fetch key {self.encryption.key_uuid} from the key manager '
                '(it goes to cryptsetup on stdin, never on a command line)'))

    def _plan_lvcreate(self, steps: list, size: int | None,
                       vg: VolumeGroup) -> None:
        """``_creating``'s check, then ``_lvcreate`` (and the mapping);
        refused where lvcreate would find too little free space."""
        self._plan_exists_check(steps)
        if size is None:
            steps.append(plans.Step(
                f'create LV {self.location} of the image\'s virtual size '
                '(known once it is fetched)'))
        else:
            steps.append(plans.Step(
                f'create LV {self.location} of {vg.round(size)} bytes',
                command=self._lvcreate_command(size, vg)))
            self._require_free(vg, size)
        if self.encryption is not None:
            enc = self.encryption
            steps.append(plans.Step(
                f'map {self.lv_path} as {self.path} (dm-crypt {enc.cipher}, '
                f'{enc.key_size}-bit key)',
                command=('cryptsetup', 'create', self._mapping, self.lv_path,
                         '--cipher=' + enc.cipher,
                         '--key-size=' + str(int(enc.key_size)),
                         '--key-file=-')))

    def _plan_func(self, steps: list, cache_name: str,
                   size: int | None) -> None:
        names.check_cache_name(cache_name)
        if not size:
            raise exception.InvalidInput(
                reason='an LVM disk made by a function needs a size')
        self._plan_key(steps)
        vg = self._plan_group(steps)
        self._plan_lvcreate(steps, size, vg)

    def _plan_image(self, steps: list, image_id: str,
                    size: int | None) -> None:
        self._plan_key(steps)
        base, cache_steps = plans.plan_image(self.image_cache, image_id,
                                             size)
        steps += cache_steps
        vsize = base.virtual_size
        # Unknown until fetched: the flavor's size, unless the image is
        # bigger (then DiskTooSmall once it is fetched).
        wanted = max(size or 0, vsize) if vsize is not None else size
        if self.thin_snapshots:
            self._plan_snapshot(steps, base, wanted)
            return
        vg = self._plan_group(steps)
        self._plan_lvcreate(steps, wanted, vg)
        steps.append(self._plan_write(base, self.path))
        steps += self._plan_grow_fs(base, wanted)

    def _plan_write(self, base: plans.Base, dst: str) -> plans.Step:
        """``_write``: the image's guest bytes into the device (zeroes
        included: a device is not known to read as zeroes)."""
        return plans.Step(
            f'write the image\'s guest bytes from {base.path} into {dst}',
            command=qemu.convert_command(base.path, base.format, dst, 'raw',
                                         cache='none', existing_target=True),
            write_bytes=base.virtual_size or 0)

    def _plan_snapshot(self, steps: list, base: plans.Base,
                       wanted: int | None) -> None:
        """``_snapshot_of``: the thin base LV (made once), a snapshot of
        it, grown to the flavor's size."""
        vg = self._plan_group(steps)
        name = base_lv_name(base.name)
        steps.append(self._plan_lvs(f'is thin base LV {self.vg}/{name} '
                                    'there?'))
        volumes = logical_volumes(self.vg)
        if self.thin_pool not in volumes:
            raise exception.BackendUnavailable(
                image_type=self.image_type, reason=f'thin pool '
                f'{self.thin_pool} is not in volume group {self.vg}')
        vsize = base.virtual_size
        if name not in volumes:
            steps.append(plans.Step(
                f'create thin base LV {self.vg}/{name}',
                command=None if vsize is None else (
                    'lvcreate', '-y', '-T', f'{self.vg}/{self.thin_pool}',
                    '-V', f'{vg.round(vsize)}b', '-n', name)))
            steps.append(self._plan_write(
                base, os.path.join(DEVICE_ROOT, self.vg, name)))
        self._plan_exists_check(steps)
        steps.append(plans.Step(
            f'thin snapshot {self.location} of {self.vg}/{name}',
            command=('lvcreate', '-y', '-s', '-kn', '-n', self.lv,
                     f'{self.vg}/{name}')))
        if wanted and (vsize is None or vg.round(wanted) > vg.round(vsize)):
            steps.append(plans.Step(
                f'grow {self.location} to {vg.round(wanted)} bytes',
                command=('lvextend', '-L', f'{vg.round(wanted)}b',
                         self.location),
                when=None if vsize else
                f'if the image is smaller than {vg.round(wanted)} bytes'))
        steps += self._plan_grow_fs(base, wanted)

    def _plan_grow_fs(self, base: plans.Base,
                      wanted: int | None) -> list[plans.Step]:
        """``_grow_filesystem``: a disk made bigger than its image gets
        the image's bare ext filesystem grown."""
        vsize = base.virtual_size
        if not wanted or (vsize is not None and wanted <= vsize):
            return []
        when = [] if vsize else [f'if the image is smaller than {wanted} '
                                 'bytes']
        if base.cached and base.format == 'raw':
            # The guest's bytes are the cached file's: known now.
            if not cache_audit.keeping_atime(
                    base.path, filesystems.bare_ext_filesystem, base.path):
                return []
        else:
            when.append('if the image is one bare ext filesystem')
        return [plans.Step('grow the ext filesystem in it', command=cmd,
                           when=' and '.join(when) or None)
                for cmd in (('e2fsck', '-fp', self.path),
                            ('resize2fs', self.path))]
