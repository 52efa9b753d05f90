"""Lvm disks moved to another host: the LV's contents in transit.

Migration, which Nova refused for Lvm (cold) or turned into plain files
(live; bugs 1270305, 1245595, 1241866): ``send_to`` reads the LV
(``qemu-img convert -T none -f raw -O raw <dev> <tmp>``, zero blocks become
holes) and sends it as ``<uuid>/<disk name>.lv-transfer`` under the
destination's instances_path; there ``settle()`` (run first by
``finish_migration``) creates an LV of the recorded size, writes the file
into it (``qemu-img convert -t none -f raw -O raw -n``) and deletes the
file -- all or nothing: a failed settle leaves no LV behind. For a live
migration, ``create_empty`` makes an LV of the recorded size for the block
migration to fill.
"""

from __future__ import annotations

import os

from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import qemu
from imagebackend import revert

#: Suffix of an LV's contents in transit (cold migration), in the
#: destination's instance directory.
TRANSFER_SUFFIX = '.lv-transfer'


class LvmMigration:
    """A cold migration of an :class:`~imagebackend.backends.lvm.Lvm` disk
    (a mixin: it creates, writes and removes the disk's LV with the disk's
    own methods). A live migration's empty LV (``_prepare_empty``,
    ``_make_empty``) and the refusal of an encrypted disk are Lvm's."""

    def _transfer_path(self) -> str:
        return os.path.join(self.instance_dir,
                            self.disk_name + TRANSFER_SUFFIX)

    def send_to(self, transport, host: str, progress=None) -> None:
        """Send the LV's contents as a sparse file ``<uuid>/<disk name>
        .lv-transfer`` under ``host``'s instances_path."""
        if self.disk_name is None:
            raise exception.InvalidInput(
                reason='a disk opened by path cannot be sent')
        self._refuse_encrypted('migrating an encrypted disk')
        self._require_disk()
        os.makedirs(self.instance_dir, exist_ok=True)
        tmp = os.path.join(self.instance_dir,
                           f'.{self.disk_name}{TRANSFER_SUFFIX}'
                           f'{names.PART_SUFFIX}')
        fileutils.remove_path(tmp)
        try:
            # Source read with O_DIRECT (-T none); zero blocks become holes.
            qemu.convert(self.path, 'raw', tmp, 'raw', src_cache='none',
                         root=True)
            relpath = os.path.relpath(self._transfer_path(),
                                      self.conf.instances_path)
            transport.put(host, tmp, relpath, progress=progress)
        finally:
            fileutils.remove_path(tmp)

    def _settle(self) -> None:
        """Turn an arrived ``.lv-transfer`` file into this host's LV."""
        if self.disk_name is None:
            return
        transfer = self._transfer_path()
        if not os.path.exists(transfer):
            return
        record = self.record
        size = max(record.virtual_size if record else 0,
                   os.path.getsize(transfer))
        made = None
        with revert.Reverter() as undo:
            if not self.exists():
                made = self._lvcreate(size, self._extents())
                undo.add(self.remove_disk)
            self._write(transfer, 'raw', self.path)
        os.unlink(transfer)
        if record is not None and made and record.virtual_size != made:
            # This VG's extents are larger: the guest sees the LV's size.
            self._record = record.replace(virtual_size=made)
