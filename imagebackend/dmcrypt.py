"""dm-crypt mappings, as Nova makes them (``nova/virt/libvirt/storage/
dmcrypt.py`` and its privsep commands): plain mode, no header, so the
mapping is exactly as large as the device under it.

``cryptsetup create <target> <device> --cipher=<cipher> --key-size=<bits>
--key-file=-``: the key, hex-encoded as Nova encodes it, goes on the
command's stdin, never in its arguments (which the process runner records
and logs). Everything runs through :func:`imagebackend.processes.execute`.
"""

from __future__ import annotations

import binascii
import os
import re

from imagebackend import exception
from imagebackend import processes

#: Where device-mapper puts mapped devices.
MAPPER_ROOT = '/dev/mapper'

#: Nova's suffix, so a mapping's name never collides with an LV's own
#: device-mapper name.
SUFFIX = '-dmcrypt'

# cryptsetup's exit code for "no such device" (Nova ignores it on remove).
_NO_DEVICE = 4

_NAME = re.compile(r'^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$')


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or \
            name in ('.', '..'):
        raise exception.InvalidInput(
            reason=f'{name!r} is not a device-mapper name')
    return name


def volume_name(base: str) -> str:
    """The mapping's name for the volume ``base`` (an LV name)."""
    return _check_name(base + SUFFIX)


def volume_path(name: str) -> str:
    """The mapped device of mapping ``name``."""
    return os.path.join(MAPPER_ROOT, _check_name(name))


def is_encrypted(path: str) -> bool:
    """True if ``path`` is a mapped device this module names."""
    return (os.path.dirname(path) == MAPPER_ROOT and
            os.path.basename(path).endswith(SUFFIX))


def base_name(name: str) -> str:
    """The volume a mapping ``name`` maps (``volume_name``'s inverse)."""
    if not name.endswith(SUFFIX) or name == SUFFIX:
        raise exception.InvalidInput(
            reason=f'{name!r} is not a name ending in {SUFFIX}')
    return name[:-len(SUFFIX)]


def create_volume(target: str, device: str, cipher: str, key_size: int,
                  key: bytes) -> None:
    """Map ``device`` as ``target``, encrypted with ``key`` (raw bytes, as
    the key manager's ``get_encoded()`` gives them)."""
    cmd = ('cryptsetup', 'create', _check_name(target), device,
           '--cipher=' + cipher, '--key-size=' + str(int(key_size)),
           '--key-file=-')
    processes.execute(*cmd, root=True,
                      process_input=binascii.hexlify(key).decode('ascii'))


def resize_volume(target: str) -> None:
    """Make mapping ``target`` as large as its (grown) device again."""
    processes.execute('cryptsetup', 'resize', _check_name(target),
                      root=True)


def delete_volume(target: str) -> None:
    """Remove mapping ``target``; one that is already gone is no error."""
    try:
        processes.execute('cryptsetup', 'remove', _check_name(target),
                          root=True)
    except exception.ProcessError as e:
        if e.exit_code != _NO_DEVICE:
            raise


def list_volumes() -> list[str]:
    """The names of the mappings this module makes (``*-dmcrypt``)."""
    try:
        found = os.listdir(MAPPER_ROOT)
    except FileNotFoundError:
        return []
    return sorted(n for n in found if n.endswith(SUFFIX))
