"""Ephemeral storage encryption: when it is required, with what, and the key.

Nova's rule, kept: encryption is required of an instance's disks when
``[ephemeral_storage_encryption] enabled`` is set or the instance carries an
``ephemeral_key_uuid``. A backend that cannot encrypt (its
:attr:`~imagebackend.image.Capabilities.encryption` is False) refuses such a
disk when it is constructed, except for the disk names it declares are not
ephemeral storage (Nova's Flat loophole: kernel, ramdisk, disk.config).

What a disk is encrypted with is recorded (``DiskRecord.encryption``:
cipher, key size, key reference -- never the key), so the disk is reopened
encrypted by its record whatever the host's configuration says today. The
key itself comes from the caller's key manager (castellan's API:
``get(context, key_uuid).get_encoded()``), given to ``Backend(key_manager=)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from imagebackend import exception

#: The instance attribute naming its key in the key manager (Nova's).
KEY_ATTRIBUTE = 'ephemeral_key_uuid'


@dataclasses.dataclass(frozen=True)
class Encryption:
    """How one disk is encrypted (dm-crypt plain mode, as Nova's Lvm)."""

    cipher: str
    key_size: int
    key_uuid: str

    def to_record(self) -> dict[str, Any]:
        return {'cipher': self.cipher, 'key_size': self.key_size,
                'key_uuid': self.key_uuid}

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> 'Encryption':
        return cls(data['cipher'], data['key_size'], data['key_uuid'])


def instance_key_uuid(instance: Any) -> str | None:
    """The instance's ``ephemeral_key_uuid``, or None. Works on Nova's
    Instance objects (an unset field is None, never lazy-loaded), dicts and
    plain objects."""
    if instance is None:
        return None
    get = getattr(instance, 'get', None)
    if callable(get):
        try:
            return get(KEY_ATTRIBUTE, None) or None
        except (AttributeError, KeyError):
            return None
    return getattr(instance, KEY_ATTRIBUTE, None) or None


def required_by(conf: Any, instance: Any) -> str | None:
    """Why encryption is required of ``instance``'s disks on this host, or
    None when it is not."""
    group = getattr(conf, 'ephemeral_storage_encryption', None)
    if group is not None and group.enabled:
        return '[ephemeral_storage_encryption] enabled is set'
    key_uuid = instance_key_uuid(instance)
    if key_uuid:
        return f'the instance has {KEY_ATTRIBUTE} {key_uuid}'
    return None


def refuse_unencryptable(disk: Any) -> None:
    """EncryptionUnsupported if encryption is required of ``disk`` and its
    backend cannot encrypt it (a name its backend declares is not ephemeral
    storage excepted). Run when a disk object is constructed."""
    caps = disk.capabilities
    if caps.encryption or disk.disk_name in caps.unencrypted_names:
        return
    why = required_by(disk.conf, disk.instance)
    if why:
        raise exception.EncryptionUnsupported(
            why=why, backend=disk.image_type,
            disk=disk.disk_name or disk.path)


def refuse_unencrypted_creation(disk: Any) -> None:
    """Before a disk is made: refuse unless it will be encrypted, wherever
    encryption is required of it. On a backend that can encrypt, a disk
    without :class:`Encryption` is one whose instance has no key."""
    refuse_unencryptable(disk)
    if disk.encryption is not None or \
            disk.disk_name in disk.capabilities.unencrypted_names:
        return
    why = required_by(disk.conf, disk.instance)
    if why:
        raise exception.EncryptionKeyUnavailable(
            key_uuid=None, disk=disk.disk_name or disk.path,
            reason=f'encryption is required ({why}) but the instance has '
            f'no {KEY_ATTRIBUTE} to encrypt it with')


def for_new_disk(conf: Any, instance: Any) -> Encryption | None:
    """What a new disk of ``instance`` is encrypted with: the host's cipher
    and key size under the instance's key; None if it has no key (then a
    backend that can encrypt refuses to create when encryption is
    required, see :func:`required_by`)."""
    key_uuid = instance_key_uuid(instance)
    if not key_uuid:
        return None
    group = conf.ephemeral_storage_encryption
    return Encryption(group.cipher, group.key_size, key_uuid)


def get_key(key_manager: Any, context: Any, key_uuid: str,
            disk: str) -> bytes:
    """The key's bytes from the key manager; EncryptionKeyUnavailable if
    there is no context or key manager, or the key manager fails."""
    def refuse(reason: str) -> exception.EncryptionKeyUnavailable:
        return exception.EncryptionKeyUnavailable(
            key_uuid=key_uuid, disk=disk, reason=reason)
    if context is None:
        # Nova: "Instance disk to be encrypted but no context provided".
        raise refuse('the disk is to be encrypted but no context was '
                     'provided to fetch its key')
    if key_manager is None:
        raise refuse('no key manager: pass Backend(key_manager=...)')
    try:
        key = key_manager.get(context, key_uuid).get_encoded()
    except Exception as e:
        raise refuse(f'the key manager failed: {type(e).__name__}: {e}') \
            from e
    if not isinstance(key, bytes) or not key:
        raise refuse('the key manager returned no key bytes')
    return key
