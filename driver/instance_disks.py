"""Turn (instance, disk mapping, block device info) into creatable disks.

The iterators say what each local disk is made from; they create nothing.
Flows decide, per disk, whether to create it or check what it depends on.
"""

from __future__ import annotations

from typing import Iterator

from oslo_utils import units

from imagebackend import disks
from imagebackend import exception

from driver import instance as instance_mod
from driver import templates

# A config drive is per-instance content, never a shared template. It is a
# plain file in the instance directory, whatever images_type says, unless
# the host's backend is shared storage (Rbd): a live migration with shared
# storage copies nothing, so there it lives in the backend (as Nova imports
# it into Ceph), where every host sees it.
CONFIG_DRIVE_TYPE = 'flat'


def instance_disks(backend, instance, mapping: dict,
                   block_device_info: dict | None = None, *,
                   suffix: str = '', image_id: str | None = None
                   ) -> Iterator[disks.CreatableDisk]:
    """Yield the instance's local disks named in ``mapping``.

    ``suffix='.rescue'`` describes rescue disks (root from ``image_id`` at
    the image's own size). Sizes come from the instance's current flavor
    (and BDMs): on a resize destination, the new ones.
    """
    bdi = block_device_info or {}
    _check_names(mapping, bdi)
    conf = backend.conf
    flavor = instance.flavor

    def image(name, image_type=None):
        return backend.by_name(instance, name + suffix, image_type=image_type,
                               disk_info_mapping=mapping.get(name + suffix))

    def wanted(name):
        return name + suffix in mapping

    if wanted('disk') and (suffix or not instance_mod.root_is_volume(bdi)):
        size = flavor.root_gb * units.Gi if flavor.root_gb and not suffix \
            else None
        yield disks.DiskFromImage(image=image('disk'), size=size,
                                  image_id=image_id or instance.image_ref)

    if wanted('disk.local') and flavor.ephemeral_gb:
        size = flavor.ephemeral_gb * units.Gi
        tpl = templates.ephemeral(conf, size, 'ephemeral0', instance.os_type)
        yield disks.DiskFromFunc(image=image('disk.local'), size=size,
                                 func=tpl, cache_name=tpl.cache_name)

    for idx, eph in enumerate(bdi.get('ephemerals') or []):
        name = f'disk.eph{idx}'
        if not wanted(name):
            continue
        size = int(eph['size']) * units.Gi
        tpl = templates.ephemeral(conf, size, f'ephemeral{idx}',
                                  instance.os_type,
                                  specified_fs=eph.get('guest_format'))
        yield disks.DiskFromFunc(image=image(name), size=size, func=tpl,
                                 cache_name=tpl.cache_name)

    swap_mb = instance_mod.swap_mb(instance, bdi)
    if wanted('disk.swap') and swap_mb:
        size = swap_mb * units.Mi
        tpl = templates.Swap(size)
        yield disks.DiskFromFunc(image=image('disk.swap'), size=size,
                                 func=tpl, cache_name=tpl.cache_name,
                                 disposable=True)

    if wanted('disk.config'):
        tpl = templates.ConfigDrive(instance)
        config = image('disk.config')
        if not config.capabilities.shared_storage:
            config = image('disk.config', CONFIG_DRIVE_TYPE)
        # Made afresh from the instance each time, kept nowhere else.
        yield disks.DiskFromFunc(image=config, size=None, func=tpl,
                                 cache_name=tpl.cache_name,
                                 keep_template=False)


def disposable_as_recorded(backend, instance, record,
                           disk_info_mapping=None) -> disks.CreatableDisk:
    """A disposable disk (swap) as ``record`` says it was: on its recorded
    backend, of its recorded size, from the template for that size. Its
    contents carry nothing, so this is the disk the record describes; a
    flow that replaced it makes it again with this when it must undo."""
    if not record.name.startswith('disk.swap'):
        raise exception.InvalidInput(
            reason=f'disk {record.name} is not disposable: it cannot be '
                   'made again from its record')
    tpl = templates.Swap(record.virtual_size)
    image = backend.by_name(instance, record.name, image_type=record.backend,
                            disk_info_mapping=disk_info_mapping)
    cache_name = record.source_id if record.source_type == 'func' \
        else tpl.cache_name
    return disks.DiskFromFunc(image=image, size=record.virtual_size,
                              func=tpl, cache_name=cache_name,
                              disposable=True)


KNOWN = ('disk', 'disk.local', 'disk.swap', 'disk.config')


def _check_names(mapping: dict, bdi: dict) -> None:
    """Every disk name in the mapping must be one the driver knows, and
    every BDM guest format one the driver can make."""
    names = KNOWN + tuple(f'disk.eph{i}'
                          for i in range(len(bdi.get('ephemerals') or [])))
    allowed = {n for name in names for n in (name, name + '.rescue')}
    unknown = set(mapping) - allowed
    if unknown:
        raise exception.InvalidInput(
            reason=f'unknown disk names in the mapping: {sorted(unknown)}')
    # Bad guest formats too, before any disk is made.
    for eph in bdi.get('ephemerals') or []:
        if eph.get('guest_format'):
            templates.check_guest_format(eph['guest_format'])
