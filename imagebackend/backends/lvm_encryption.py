"""Lvm disks encrypted with dm-crypt: the mapping over a disk's LV.

Ephemeral storage encryption, as Nova does it: a disk of an instance with
an ``ephemeral_key_uuid`` is a dm-crypt mapping over its LV
(:mod:`imagebackend.dmcrypt`): the guest's device is
``/dev/mapper/<lv>-dmcrypt`` (``Lvm.path``), the LV's is
``Lvm.lv_path``. The key is fetched from the backend's key manager
before anything is made; ``cryptsetup create`` runs right after
``lvcreate``, and the image or template function writes through the
mapping. The record holds cipher, key size and key reference, so the disk
is reopened encrypted from it; undo and delete remove the mapping, then
(after the wipe, on the LV) the LV. With encryption required and no key
for the instance, nothing is created (typed errors,
:mod:`imagebackend.encryption`); an encrypted disk is not thin-snapshotted
(a snapshot of a plaintext base cannot be read through a mapping) nor
migrated (its key would have to be fetched on the destination).
"""

from __future__ import annotations

import os
from typing import Any, Callable

from imagebackend import dmcrypt
from imagebackend import encryption as encryption_mod
from imagebackend import exception


class LvmEncryption:
    """The dm-crypt side of :class:`~imagebackend.backends.lvm.Lvm` (a
    mixin: ``encryption``, ``lv``, ``lv_path`` and ``path`` are the
    disk's)."""

    def _encryption(self) -> encryption_mod.Encryption | None:
        """How this disk is encrypted: as its Lvm record says, for a disk
        that has one; else, for a disk to be made, under the instance's
        key (None without one). A disk recorded unencrypted where
        encryption is required is refused (UnencryptedDisk)."""
        record = self.record
        if record is not None and record.backend == self.image_type:
            if record.encryption is not None:
                return encryption_mod.Encryption.from_record(
                    record.encryption)
            if record.created:
                why = encryption_mod.required_by(self.conf, self.instance)
                if why:
                    raise exception.UnencryptedDisk(
                        disk=f'{record.instance}/{record.name}', why=why)
                return None
        return encryption_mod.for_new_disk(self.conf, self.instance)

    @property
    def _mapping(self) -> str:
        """The dm-crypt mapping's name (encrypted disks)."""
        return dmcrypt.volume_name(self.lv)

    def _encryption_key(self, context: Any) -> bytes | None:
        """The key to encrypt a new disk with (None: not encrypted),
        fetched before anything is made; refuses an unencrypted disk
        where encryption is required."""
        encryption_mod.refuse_unencrypted_creation(self)
        if self.encryption is None:
            return None
        return self._fetch_key(context)

    def _fetch_key(self, context: Any) -> bytes:
        return encryption_mod.get_key(
            getattr(self._backend, 'key_manager', None), context,
            self.encryption.key_uuid, self.location)

    def _open_mapping(self, key: bytes) -> None:
        enc = self.encryption
        dmcrypt.create_volume(self._mapping, self.lv_path, enc.cipher,
                              enc.key_size, key)

    def _close_mapping(self) -> None:
        # Asked of cryptsetup even when no mapping shows (Nova's order and
        # calls): one already gone is no error (dmcrypt.delete_volume).
        if self.encryption is not None:
            dmcrypt.delete_volume(self._mapping)

    def check_backing_from_image(self, context: Any, image_id: str,
                                 fallback: str | None = None) -> None:
        super().check_backing_from_image(context, image_id, fallback)
        self._reopen_mapping(context)

    def check_backing_from_func(self, context: Any,
                                func: Callable[[str], None], cache_name: str,
                                fallback: str | None = None) -> None:
        super().check_backing_from_func(context, func, cache_name, fallback)
        self._reopen_mapping(context)

    def _reopen_mapping(self, context: Any) -> None:
        """What an existing encrypted disk depends on is its mapping: one
        that is gone (a host reboot) is opened again, the key fetched."""
        if self.encryption is None or os.path.lexists(self.path):
            return
        self._open_mapping(self._fetch_key(context))
