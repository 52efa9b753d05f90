"""Driver flows end to end on real files: two hosts on one machine.

Host "a" and host "b" each have an instances_path; a LocalTransport maps
their names to those directories. Disks are made by real qemu-img, mkfs and
mkswap; a marker written into the root before migrating must be there after.
"""

from __future__ import annotations

import json
import os

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import transport as transport_mod

from driver import flows
from driver import instance as instance_mod
from driver import migration
from tests.functional.conftest import define_and_read, blkid, qemu_info, run
from tests.hosts import GiB, MiB, make_conf

MARK_AT = 10 * MiB


class Hosts:
    """Two hosts sharing an image folder, reachable by name."""

    def __init__(self, tmp_path):
        self.images = str(tmp_path / 'images')
        os.makedirs(self.images)
        self.paths = {h: str(tmp_path / h / 'instances') for h in 'ab'}
        for p in self.paths.values():
            os.makedirs(p)
        self.transport = transport_mod.LocalTransport(self.paths)
        self.confs = {h: make_conf(p, self.images)
                      for h, p in self.paths.items()}

    def backend(self, host: str) -> imagebackend.Backend:
        return imagebackend.Backend(conf=self.confs[host],
                                    transport=self.transport)

    def add_image(self, image_id: str, pattern: int = 0xab) -> str:
        path = os.path.join(self.images, f'{image_id}.qcow2')
        run('qemu-img', 'create', '-q', '-f', 'qcow2', path, str(256 * MiB))
        run('qemu-io', '-f', 'qcow2', '-c', f'write -P {pattern} 0 1M', path)
        return path


@pytest.fixture
def hosts(tmp_path):
    return Hosts(tmp_path)


@pytest.fixture(params=['qcow2', 'flat'])
def image_type(request):
    return request.param


def new_instance(**flavor) -> instance_mod.Instance:
    flavor = {'root_gb': 1, 'ephemeral_gb': 1, 'swap': 64, **flavor}
    return instance_mod.Instance(image_ref='img', name='vm',
                                 flavor=instance_mod.Flavor(**flavor))


BDI = {'ephemerals': [{'size': 1, 'guest_format': 'ext3'}]}


def spawn_on_a(hosts, image_type, instance, bdi=BDI):
    hosts.confs['a'].set_override('images_type', image_type,
                                  group='libvirt')
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance, bdi)
    created = flows.spawn(a, None, instance, mapping, bdi)
    return a, mapping, created


def write_marker(disk, pattern=0x77):
    run('qemu-io', '-f', disk.driver_format, '-c',
        f'write -P {pattern} {MARK_AT} 64k', disk.path)


def read_marker(path, fmt, pattern=0x77):
    out = run('qemu-io', '-f', fmt, '-c',
              f'read -P {pattern} {MARK_AT} 64k', path)
    return 'Pattern verification failed' not in out


def test_spawn_creates_every_disk(hosts, image_type):
    hosts.add_image('img')
    instance = new_instance()
    a, mapping, created = spawn_on_a(hosts, image_type, instance)
    assert created == ['disk', 'disk.local', 'disk.eph0', 'disk.swap']
    sizes = {r.name: r.virtual_size for r in a.records.list(instance.uuid)}
    assert sizes == {'disk': GiB, 'disk.local': GiB, 'disk.eph0': GiB,
                     'disk.swap': 64 * MiB}
    eph0 = a.from_metadata(instance, 'disk.eph0')
    local = a.from_metadata(instance, 'disk.local')
    assert _fs(local) == ('ext4', 'ephemeral0')
    assert _fs(eph0) == ('ext3', 'ephemeral0')
    assert _fs(a.from_metadata(instance, 'disk.swap'))[0] == 'swap'
    # Running spawn again creates nothing.
    assert flows.spawn(a, None, instance, mapping, BDI) == []


def _fs(disk) -> tuple[str, str | None]:
    """(filesystem type, label) the guest sees on a disk."""
    path = disk.path
    if disk.driver_format == 'qcow2':
        path = qemu_info(path, 'qcow2')['full-backing-filename']
    info = blkid(path)
    return info.get('TYPE'), info.get('LABEL')


def test_spawn_failure_removes_only_what_it_created(hosts, image_type):
    hosts.add_image('img')
    hosts.confs['a'].set_override('virt_mkfs', ['default=false'])
    instance = new_instance()
    a = hosts.backend('a')
    hosts.confs['a'].set_override('images_type', image_type,
                                  group='libvirt')
    mapping = instance_mod.disk_mapping(instance, {})
    with pytest.raises(exception.ProcessError):
        flows.spawn(a, None, instance, mapping, {})
    assert a.records.list(instance.uuid) == []
    assert not os.path.exists(os.path.join(hosts.paths['a'], instance.uuid))


@pytest.mark.parametrize('dest_config', ['same', 'other'])
def test_cold_migration_with_bigger_flavor(hosts, image_type, dest_config):
    hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, image_type, instance)
    write_marker(a.from_metadata(instance, 'disk'))
    formats = {r.name: r.format for r in a.records.list(instance.uuid)}
    if dest_config == 'other':
        # The seed's bug: a destination configured differently must not
        # reinterpret or convert the migrated disks.
        other = 'flat' if image_type == 'qcow2' else 'qcow2'
        hosts.confs['b'].set_override('images_type', other, group='libvirt')
        hosts.confs['b'].set_override('use_cow_images', other == 'qcow2')

    copied = migration.migrate_disks(a, instance, mapping, 'b',
                                     hosts.transport, BDI)
    assert 'disk.swap' not in copied  # swap is recreated, never copied

    instance.flavor = instance_mod.Flavor(root_gb=2, ephemeral_gb=2, swap=128)
    bdi = {'ephemerals': [{'size': 2, 'guest_format': 'ext3'}]}
    new_mapping = instance_mod.disk_mapping(instance, bdi)
    b = hosts.backend('b')
    done = flows.finish_migration(b, None, instance, new_mapping, bdi,
                                  source_host='a')
    assert sorted(done['grown']) == ['disk', 'disk.eph0', 'disk.local']
    assert done['created'] == ['disk.swap']

    records = {r.name: r for r in b.records.list(instance.uuid)}
    assert {n: r.virtual_size for n, r in records.items()} == {
        'disk': 2 * GiB, 'disk.local': 2 * GiB, 'disk.eph0': 2 * GiB,
        'disk.swap': 128 * MiB}
    for name in ('disk', 'disk.local', 'disk.eph0'):
        assert records[name].format == formats[name]
        assert records[name].backend == image_type
        info = qemu_info(records[name].location, records[name].format)
        assert info['virtual-size'] == records[name].virtual_size
        if records[name].backing:
            # The backing file was recreated in b's cache.
            assert info['full-backing-filename'] == os.path.join(
                hosts.paths['b'], '_base', records[name].backing)
            run('qemu-img', 'check', '-f', 'qcow2', records[name].location)
    assert read_marker(records['disk'].location, records['disk'].format)


def test_finish_migration_refuses_shrink_and_changes_nothing(hosts,
                                                             image_type):
    hosts.add_image('img')
    instance = new_instance(root_gb=2)
    a, mapping, _ = spawn_on_a(hosts, image_type, instance)
    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, BDI)
    dest_dir = os.path.join(hosts.paths['b'], instance.uuid)
    before = {n: fileutils.sha256_file(os.path.join(dest_dir, n))
              for n in os.listdir(dest_dir)}
    instance.flavor = instance_mod.Flavor(root_gb=1, ephemeral_gb=1, swap=64)
    with pytest.raises(exception.CannotShrink):
        flows.finish_migration(hosts.backend('b'), None, instance, mapping,
                               BDI, source_host='a')
    after = {n: fileutils.sha256_file(os.path.join(dest_dir, n))
             for n in os.listdir(dest_dir)}
    assert after == before


def test_finish_migration_image_gone_upstream(hosts):
    image = hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, 'qcow2', instance)
    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, BDI)
    os.unlink(image)
    b = hosts.backend('b')
    flows.finish_migration(b, None, instance, mapping, BDI, source_host='a')
    root = b.records.get(instance.uuid, 'disk')
    entry = b.image_cache.get(root.backing)
    assert entry.provenance == 'side-loaded'


def test_revert_and_confirm_on_source(hosts, image_type):
    hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, image_type, instance)
    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, BDI)
    b = hosts.backend('b')
    flows.finish_migration(b, None, instance, mapping, BDI, source_host='a')
    # Revert: the destination's disks go, the source's are as they were.
    assert sorted(flows.destroy_disks(b, instance)) == [
        'disk', 'disk.eph0', 'disk.local', 'disk.swap']
    flows.finish_revert_migration(a, instance)
    assert len(a.records.list(instance.uuid)) == 4
    flows.confirm_migration(a, instance)


def test_pre_live_migration_recreates_disks_as_recorded(hosts, image_type):
    image = hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, image_type, instance)
    source = {r.name: r for r in a.records.list(instance.uuid)}
    os.unlink(image)  # deleted upstream: bases come from the source host
    # The destination is configured differently; the records decide.
    hosts.confs['b'].set_override('images_type', 'flat' if image_type ==
                                  'qcow2' else 'qcow2', group='libvirt')
    b = hosts.backend('b')
    created = flows.pre_live_migration(b, None, instance, mapping,
                                       list(source.values()), BDI,
                                       source_host='a')
    assert sorted(created) == sorted(source)
    for name, rec in source.items():
        mine = b.records.get(instance.uuid, name)
        assert (mine.backend, mine.format, mine.virtual_size, mine.backing,
                mine.source_id) == (rec.backend, rec.format,
                                    rec.virtual_size, rec.backing,
                                    rec.source_id)
        info = qemu_info(mine.location, mine.format)
        assert info['virtual-size'] == rec.virtual_size
        if rec.backing:
            # Same base bytes as on the source: side-loaded, not remade.
            assert b.image_cache.get(rec.backing).sha256 == \
                a.image_cache.get(rec.backing).sha256
            assert b.image_cache.get(rec.backing).provenance == \
                'side-loaded'
        else:
            assert fileutils.allocated_bytes(mine.location) < MiB  # empty


def test_pre_live_migration_needs_records(hosts):
    hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, 'qcow2', instance)
    records = [r for r in a.records.list(instance.uuid) if r.name != 'disk']
    with pytest.raises(exception.RecordNotFound):
        flows.pre_live_migration(hosts.backend('b'), None, instance, mapping,
                                 records, BDI, source_host='a')
    assert not os.path.exists(os.path.join(hosts.paths['b'], instance.uuid))


def test_rescue_and_unrescue(hosts, image_type):
    hosts.add_image('img')
    hosts.add_image('rescue-img', pattern=0xcd)
    instance = new_instance()
    instance.config_drive = True
    a, mapping, _ = spawn_on_a(hosts, image_type, instance, bdi={})
    root_before = fileutils.sha256_file(a.from_metadata(instance,
                                                        'disk').path)
    created = flows.rescue(a, None, instance, 'rescue-img')
    assert sorted(created) == ['disk.config.rescue', 'disk.rescue']
    rescue = a.from_metadata(instance, 'disk.rescue')
    assert rescue.virtual_size() == 256 * MiB  # the image's size
    assert a.records.get(instance.uuid, 'disk.rescue').source_id == \
        'rescue-img'
    assert sorted(flows.unrescue(a, instance)) == ['disk.config.rescue',
                                                   'disk.rescue']
    assert not os.path.exists(rescue.path)
    assert fileutils.sha256_file(a.from_metadata(instance, 'disk').path) == \
        root_before


def test_domain_xml_from_libvirt_info(hosts, image_type):
    hosts.add_image('img')
    instance = new_instance()
    instance.config_drive = True
    a, mapping, _ = spawn_on_a(hosts, image_type, instance)
    elements = []
    for name, info in mapping.items():
        disk = a.from_metadata(instance, name, info)
        elements.append(disk.libvirt_info('none', {}).to_xml())
    back = define_and_read(elements, f'vm-{instance.uuid}')
    got = {d.find('target').get('dev'): (d.find('source').get('file'),
                                         d.find('driver').get('type'))
           for d in back}
    for name, info in mapping.items():
        rec = a.records.get(instance.uuid, name)
        assert got[info['dev']] == (rec.location, rec.format)


def test_bad_input_is_typed_and_deletes_nothing(hosts, image_type):
    hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, image_type, instance)
    inst_dir = os.path.join(hosts.paths['a'], instance.uuid)
    listing = sorted(os.listdir(inst_dir))

    with pytest.raises(exception.InvalidInput):
        flows.spawn(a, None, instance, dict(mapping, **{'disk.bogus': {}}),
                    BDI)
    # A record naming a backend its location does not fit (an Lvm disk is
    # found in the VG its record names, and a file path names none).
    records_file = os.path.join(inst_dir, 'disks.json')
    with open(records_file) as f:
        doc = json.load(f)
    doc['disks']['disk']['backend'] = 'lvm'
    with open(records_file, 'w') as f:
        json.dump(doc, f)
    with pytest.raises(exception.CorruptRecord):
        flows.finish_migration(a, None, instance, mapping, BDI)
    # A corrupted records file.
    with open(records_file, 'w') as f:
        f.write('{not json')
    with pytest.raises(exception.CorruptRecord):
        flows.finish_migration(a, None, instance, mapping, BDI)
    with pytest.raises(exception.CorruptRecord):
        flows.destroy_disks(a, instance)
    assert sorted(os.listdir(inst_dir)) == listing


def test_destination_without_record_is_refused(hosts):
    hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, 'qcow2', instance)
    migration.migrate_disks(a, instance, mapping, 'b', hosts.transport, BDI)
    # The records file did not arrive: b must not guess from its config.
    os.unlink(os.path.join(hosts.paths['b'], instance.uuid, 'disks.json'))
    with pytest.raises(exception.RecordNotFound):
        flows.finish_migration(hosts.backend('b'), None, instance, mapping,
                               BDI, source_host='a')


def test_spawn_again_after_images_type_changed(hosts):
    # Nova's bug: with a new images_type, re-running _create_image made NEW
    # empty disks for an existing instance. The records say what exists.
    hosts.add_image('img')
    instance = new_instance()
    a, mapping, _ = spawn_on_a(hosts, 'qcow2', instance)
    before = {r.name: (r.backend, r.location)
              for r in a.records.list(instance.uuid)}
    hosts.confs['a'].set_override('images_type', 'flat', group='libvirt')
    b = hosts.backend('a')
    assert flows.spawn(b, None, instance, mapping, BDI) == []
    assert {r.name: (r.backend, r.location)
            for r in b.records.list(instance.uuid)} == before
