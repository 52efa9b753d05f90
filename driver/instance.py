"""The Nova-shaped instance the driver reads, and its disk layout.

A Nova ``Instance`` object works wherever these are used; the small
dataclasses here are for drivers (and the CLI) without Nova.
"""

from __future__ import annotations

import dataclasses
import uuid as uuid_mod
from typing import Any


@dataclasses.dataclass
class Flavor:
    """Sizes as Nova's flavor gives them: GiB, GiB, MiB."""

    root_gb: int = 1
    ephemeral_gb: int = 0
    swap: int = 0


@dataclasses.dataclass
class Instance:
    """What the flows read of an instance."""

    uuid: str = dataclasses.field(default_factory=lambda: str(uuid_mod.uuid4()))
    name: str = 'instance'
    os_type: str | None = 'linux'
    image_ref: str | None = None
    host: str | None = None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    flavor: Flavor = dataclasses.field(default_factory=Flavor)
    config_drive: bool = False

    @property
    def hostname(self) -> str:
        return self.name


def disk_mapping(instance, block_device_info: dict | None = None,
                 bus: str = 'virtio') -> dict[str, dict[str, str]]:
    """Nova's ``disk_info['mapping']`` for an instance's local disks.

    Device names follow the order Nova's blockinfo assigns them: root,
    flavor ephemeral, BDM ephemerals, swap, config drive.
    """
    bdi = block_device_info or {}
    names = []
    if not root_is_volume(bdi):
        names.append('disk')
    if instance.flavor.ephemeral_gb:
        names.append('disk.local')
    for idx, _eph in enumerate(bdi.get('ephemerals') or []):
        names.append(f'disk.eph{idx}')
    if swap_mb(instance, bdi):
        names.append('disk.swap')
    mapping = {}
    for i, name in enumerate(names):
        mapping[name] = {'bus': bus, 'dev': 'vd' + chr(ord('a') + i),
                         'type': 'disk'}
    if getattr(instance, 'config_drive', False):
        mapping['disk.config'] = {'bus': 'sata', 'dev': 'sda',
                                  'type': 'cdrom'}
    return mapping


def rescue_mapping(instance, bus: str = 'virtio') -> dict[str, dict]:
    """Nova's legacy rescue layout: rescue root first, original root next."""
    mapping = {'disk.rescue': {'bus': bus, 'dev': 'vda', 'type': 'disk'},
               'disk': {'bus': bus, 'dev': 'vdb', 'type': 'disk'}}
    if getattr(instance, 'config_drive', False):
        mapping['disk.config.rescue'] = {'bus': 'sata', 'dev': 'sda',
                                         'type': 'cdrom'}
    return mapping


def root_is_volume(block_device_info: dict | None) -> bool:
    """Booted from volume: a volume BDM is the root device."""
    bdi = block_device_info or {}
    root = bdi.get('root_device_name')
    for bdm in bdi.get('block_device_mapping') or []:
        if bdm.get('boot_index') == 0 or (
                root and bdm.get('mount_device') == root):
            return True
    return False


def swap_mb(instance, block_device_info: dict | None = None) -> int:
    """The swap size in MiB: a swap BDM wins over the flavor's."""
    swap = (block_device_info or {}).get('swap')
    if swap and swap.get('swap_size', 0) > 0:
        return int(swap['swap_size'])
    return int(instance.flavor.swap or 0)
