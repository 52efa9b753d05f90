"""The logical volume of an Lvm disk, made by one ``lvcreate``.

No ``vgs`` / ``lvs`` round trip per disk: ``lvcreate`` itself refuses a
volume group without the space (its message, with free and required
extents, becomes a typed :class:`InsufficientSpace`) and an LV that exists
(:class:`~imagebackend.exception.DiskExists`; what is there is left
alone), both before anything is made. The existence question is still
asked (``lvs``) for a disk that has a record, whatever its state: a
record may stand for an LV that is not this creation's to replace.
Sizes are rounded up to whole extents (LVM does it anyway) and the record
holds the LV's real size, which is what the guest sees: the extent size is
read once per :class:`~imagebackend.backend.Backend` and volume group
(``vgs``). An extent size changed since (``vgchange -s``) shows when
lvcreate says it rounded up a size of whole (old) extents: it is read
again, and the record gets the LV's real size.
"""

from __future__ import annotations

import re

from oslo_utils import units

from imagebackend import exception
from imagebackend import processes
from imagebackend import revert
from imagebackend.backends.lvm_volumes import (
    InsufficientSpace, VolumeGroup, volume_group)

# Nova's sparse LVs preallocate this much and grow on demand.
SPARSE_PREALLOCATED = 64 * units.Mi

# lvcreate's refusals (lvm2 lib/metadata/lv_manip.c, tools/lvcreate.c).
_NO_SPACE = re.compile(r'insufficient free space \((\d+) extents?\): '
                       r'(\d+) required', re.I)
_NO_SPACE_NEEDED = re.compile(r'insufficient free space: (\d+) extents '
                              r'needed, but only (\d+) available', re.I)
_NO_SPACE_MORE = re.compile(r'insufficient suitable allocatable extents '
                            r'.*?: (\d+) more required', re.I)
_LV_EXISTS = re.compile(r'logical volume \S+ already exists in volume '
                        r'group', re.I)
_VG_MISSING = re.compile(r'volume group "[^"]*" not found', re.I)


class LvCreation:
    """How :class:`~imagebackend.backends.lvm.Lvm` makes its disk's LV (a
    mixin: ``vg``, ``lv``, ``thin_pool``, ``sparse`` and the mapping are
    the disk's)."""

    def _known_extents(self) -> dict[str, int]:
        """VG name -> extent size, as this Backend has read them."""
        return self._backend.shared((__name__, 'extent_size'), dict)

    def _extents(self) -> VolumeGroup:
        """The VG as far as sizes go: its extent size, read once per
        Backend (``vgs``); size and free are not known (0) -- lvcreate
        says when the space is short."""
        known = self._known_extents()
        extent = known.get(self.vg)
        if extent is None:
            extent = known[self.vg] = volume_group(self.vg).extent_size
        return VolumeGroup(self.vg, 0, 0, extent)

    def _needed(self, vg: VolumeGroup, size: int) -> int:
        """What a new LV of ``size`` takes from the VG (0 in a thin pool:
        overcommitted on purpose)."""
        if self.thin_pool:
            return 0
        needed = vg.round(size)
        if self.sparse:
            needed = min(needed, vg.round(SPARSE_PREALLOCATED))
        return needed

    def _require_free(self, vg: VolumeGroup, needed: int) -> None:
        needed = self._needed(vg, needed)
        if needed > vg.free:
            raise InsufficientSpace(vg=self.vg, needed=needed, free=vg.free)

    def _run_lvcreate(self, command: tuple[str, ...], vg: VolumeGroup,
                      size: int) -> str:
        """Run an ``lvcreate`` of this disk; its refusals typed: an LV
        that exists (DiskExists), a VG without the space
        (InsufficientSpace, with lvcreate's figures). Either way nothing
        was made. Returns what lvcreate said (stdout and stderr)."""
        try:
            out, err = processes.execute(*command, root=True)
            return f'{out or ""}\n{err or ""}'
        except exception.ProcessError as e:
            stderr = e.stderr or ''
            if _LV_EXISTS.search(stderr):
                raise exception.DiskExists(location=self.location)
            if _VG_MISSING.search(stderr):
                # Gone since its extent size was read: asked again next time.
                self._known_extents().pop(self.vg, None)
                raise exception.BackendUnavailable(
                    image_type='lvm', reason=f'volume group {self.vg} not '
                    'found')
            if 'insufficient' not in stderr.lower():
                raise
            needed = self._needed(vg, size)
            if (m := _NO_SPACE.search(stderr)):
                free = int(m.group(1)) * vg.extent_size
                needed = int(m.group(2)) * vg.extent_size
            elif (m := _NO_SPACE_NEEDED.search(stderr)):
                needed = int(m.group(1)) * vg.extent_size
                free = int(m.group(2)) * vg.extent_size
            elif (m := _NO_SPACE_MORE.search(stderr)):
                free = max(needed - int(m.group(1)) * vg.extent_size, 0)
            else:
                free = volume_group(self.vg).free
            raise InsufficientSpace(vg=self.vg, needed=needed, free=free)

    def _lvcreate_command(self, size: int, vg: VolumeGroup
                          ) -> tuple[str, ...]:
        """The ``lvcreate`` of this disk's LV of ``size`` (rounded up)."""
        size = vg.round(size)
        if self.thin_pool:
            cmd = ['-T', f'{self.vg}/{self.thin_pool}', '-V', f'{size}b',
                   '-n', self.lv]
        elif self.sparse:
            cmd = ['-L', f'{vg.round(SPARSE_PREALLOCATED)}b',
                   '--virtualsize', f'{size}b', '-n', self.lv, self.vg]
        else:
            cmd = ['-L', f'{size}b', '-n', self.lv, self.vg]
        return ('lvcreate', '-y', *cmd)

    def _lvcreate(self, size: int, vg: VolumeGroup,
                  key: bytes | None = None) -> int:
        """Create this disk's LV of ``size`` (rounded up); return its size.
        An encrypted disk's mapping is opened over it with ``key`` (the LV
        is removed again if that fails). The caller removes the disk on
        later failures (``_creating`` or a Reverter)."""
        if (key is None) != (self.encryption is None):
            raise exception.EncryptionKeyUnavailable(
                key_uuid=getattr(self.encryption, 'key_uuid', None),
                disk=self.location, reason='no key was fetched for it'
                if key is None else 'the disk is not to be encrypted')
        said = self._run_lvcreate(self._lvcreate_command(size, vg), vg, size)
        if 'rounding up size' in said.lower():
            # Whole extents were asked for: the VG's extent size changed.
            self._known_extents().pop(self.vg, None)
            vg = self._extents()
        size = vg.round(size)
        if key is not None:
            with revert.Reverter() as undo:
                undo.add(self.remove_disk)
                self._open_mapping(key)
        return size
