"""The config drive on shared storage (Rbd), on a real one-node Ceph.

On a host whose backend is shared storage the config drive is made in that
backend, as Nova imports it into Ceph: a live migration with shared storage
copies nothing, so a drive left in the source's instance directory would be
lost. It is per-instance content: generated locally, imported as the disk's
own RBD image, and kept nowhere else (no pool base, no ``_base`` entry), so
a rescue config drive is always made afresh.

Uses the session's Ceph cluster (test_rbd's ``ceph`` fixture empties the
pools after each test); run under ``flock /tmp/ib-heavy.lock``.
"""

from __future__ import annotations

import os
import shutil

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import names

from driver import flows
from driver import instance as instance_mod
from driver import instance_disks
from driver import templates
from tests.functional.conftest import define_and_read
from tests.functional.test_flows import Hosts, new_instance
from tests.functional.test_rbd import (ceph, killing_rbd,  # noqa: F401
                                       rbd_ls, rbd_sha256, rbd_read,
                                       rbd_size, use_rbd)

NO_EXTRA = {}   # root and config drive only: the pool's content is exact


@pytest.fixture
def two_hosts(tmp_path, ceph):  # noqa: F811
    hosts = Hosts(tmp_path)
    for conf in hosts.confs.values():
        use_rbd(conf, ceph)
    hosts.add_image('img')
    return hosts


@pytest.fixture
def generated(tmp_path, monkeypatch):
    """Every config drive the template writes, copied aside in order."""
    made = []
    real = templates.ConfigDrive.__call__

    def keep_copy(self, target):
        real(self, target)
        copy = str(tmp_path / f'generated-{len(made)}.iso')
        shutil.copyfile(target, copy)
        made.append(copy)

    monkeypatch.setattr(templates.ConfigDrive, '__call__', keep_copy)
    return made


def _instance(**metadata):
    instance = new_instance(ephemeral_gb=0, swap=0)
    instance.config_drive = True
    instance.metadata = dict(metadata)
    return instance


def _spawn(hosts, instance):
    a = hosts.backend('a')
    mapping = instance_mod.disk_mapping(instance, NO_EXTRA)
    created = flows.spawn(a, None, instance, mapping, NO_EXTRA)
    return a, mapping, created


def _pool_bytes(ceph, name) -> bytes:
    return rbd_read(ceph, name, 0, rbd_size(ceph, name))


def _file_bytes(path) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


def _no_template_kept(hosts, ceph, instance):
    """Nothing but the instance's disks and the root image's pool base in
    the pool; no config drive in any host's image cache."""
    assert not [n for n in rbd_ls(ceph) if 'configdrive' in n]
    for path in hosts.paths.values():
        base = os.path.join(path, '_base')
        if os.path.isdir(base):
            assert not [n for n in os.listdir(base) if 'configdrive' in n]
    assert [n for n in rbd_ls(ceph) if not n.startswith(instance.uuid)] \
        == [names.image_cache_name('img')]


def test_spawn_puts_the_config_drive_in_the_pool(two_hosts, ceph, generated):
    instance = _instance(role='db')
    a, mapping, created = _spawn(two_hosts, instance)
    assert created == ['disk', 'disk.config']
    rec = a.records.get(instance.uuid, 'disk.config')
    config = f'{instance.uuid}_disk.config'
    assert (rec.backend, rec.location, rec.state) == (
        'rbd', f'{ceph.pool}/{config}', 'created')
    assert rec.provenance['how'] == 'import-own'
    # The pool holds exactly what the template wrote, as its own image.
    (iso,) = generated
    assert _pool_bytes(ceph, config) == _file_bytes(iso)
    assert rec.virtual_size == os.path.getsize(iso)
    assert b'"role": "db"' in _file_bytes(iso)
    # Nothing in the instance directory but the records (no drive, no
    # temporary copy); no template anywhere.
    assert os.listdir(os.path.join(two_hosts.paths['a'], instance.uuid)) \
        == ['disks.json']
    sorted_pool = sorted(rbd_ls(ceph))
    assert f'{instance.uuid}_disk' in sorted_pool and config in sorted_pool
    _no_template_kept(two_hosts, ceph, instance)
    # The domain's <disk> is a network rbd cdrom, accepted by libvirt.
    disk = a.from_metadata(instance, 'disk.config', mapping['disk.config'])
    (back,) = define_and_read([disk.libvirt_info('none', {}).to_xml()],
                              f'vm-{instance.uuid}')
    assert (back.get('type'), back.get('device')) == ('network', 'cdrom')
    src = back.find('source')
    assert (src.get('protocol'), src.get('name')) == ('rbd',
                                                      rec.location)
    assert back.find('target').get('dev') == mapping['disk.config']['dev']
    assert flows.spawn(a, None, instance, mapping, NO_EXTRA) == []


def test_live_migration_with_shared_storage_keeps_the_config_drive(
        two_hosts, ceph, generated):
    """Fails on integ: the drive was a Flat file in the source's instance
    directory, so the destination made an empty one for a block migration
    that shared storage never runs."""
    instance = _instance()
    a, mapping, _ = _spawn(two_hosts, instance)
    (iso,) = generated
    before = rbd_ls(ceph)
    records = a.records.list(instance.uuid)
    b = two_hosts.backend('b')
    created = flows.pre_live_migration(b, None, instance, mapping, records,
                                       NO_EXTRA, source_host='a')
    assert created == []   # shared storage: the destination makes nothing
    assert rbd_ls(ceph) == before
    assert not os.path.exists(os.path.join(two_hosts.paths['b'],
                                           instance.uuid))
    # The records travel with the instance; the destination then sees the
    # very drive the source made, in the pool.
    for record in records:
        b.records.put(record)
    disk = b.from_metadata(instance, 'disk.config', mapping['disk.config'])
    assert disk.image_type == 'rbd' and disk.exists()
    assert _pool_bytes(ceph, disk.rbd_name) == _file_bytes(iso)
    info = disk.libvirt_info('none', {})
    assert (info.source_type, info.source_device, info.source_name) == (
        'network', 'cdrom', f'{ceph.pool}/{instance.uuid}_disk.config')
    # And the source's cleanup after the move leaves it in place.
    flows.cleanup_migration_source(a, instance)
    assert disk.exists()


def test_rescue_makes_a_fresh_config_drive(two_hosts, ceph, generated):
    instance = _instance(stage='first')
    a, _mapping, _ = _spawn(two_hosts, instance)
    config = f'{instance.uuid}_disk.config'
    original = rbd_sha256(ceph, config)
    for stage in ('rescue-1', 'rescue-2'):
        instance.metadata = {'stage': stage}
        created = flows.rescue(a, None, instance, 'img')
        assert sorted(created) == ['disk.config.rescue', 'disk.rescue']
        rescue = f'{instance.uuid}_disk.config.rescue'
        data = _pool_bytes(ceph, rescue)
        # Made from the instance as it is now, not from any earlier drive.
        assert data == _file_bytes(generated[-1])
        assert f'"stage": "{stage}"'.encode() in data
        assert a.records.get(instance.uuid,
                             'disk.config.rescue').backend == 'rbd'
        _no_template_kept(two_hosts, ceph, instance)
        assert sorted(flows.unrescue(a, instance)) == [
            'disk.config.rescue', 'disk.rescue']
        assert rescue not in rbd_ls(ceph)
    assert rbd_sha256(ceph, config) == original


def test_delete_removes_the_config_drive(two_hosts, ceph, generated):
    instance = _instance()
    a, _mapping, _ = _spawn(two_hosts, instance)
    assert sorted(flows.destroy_disks(a, instance)) == ['disk', 'disk.config']
    assert not [n for n in rbd_ls(ceph) if n.startswith(instance.uuid)]
    assert a.records.list(instance.uuid) == []


def _config_drive_only(backend, instance):
    mapping = {'disk.config': instance_mod.disk_mapping(instance)[
        'disk.config']}
    (disk,) = instance_disks.instance_disks(backend, instance, mapping)
    return disk


def _nothing_left(backend, ceph, instance):
    assert not [n for n in rbd_ls(ceph) if n.startswith(instance.uuid)]
    assert backend.records.get(instance.uuid, 'disk.config') is None
    assert not os.path.exists(os.path.join(backend.conf.instances_path,
                                           instance.uuid))


def test_failed_import_leaves_no_image_and_no_record(host, ceph,  # noqa
                                                     killing_rbd):  # noqa
    use_rbd(host, ceph)
    backend = imagebackend.Backend(conf=host)
    instance = _instance()
    disk = _config_drive_only(backend, instance)
    with pytest.raises(exception.ProcessError) as e:
        disk.create(None)
    assert e.value.exit_code in (137, -9)
    assert f'{instance.uuid}_disk.config ' in killing_rbd.read_text()
    _nothing_left(backend, ceph, instance)


def test_failed_generation_leaves_nothing(host, ceph, monkeypatch):  # noqa
    use_rbd(host, ceph)
    monkeypatch.setenv('PATH', '/nonexistent')   # no genisoimage, no rbd
    backend = imagebackend.Backend(conf=host)
    instance = _instance()
    disk = _config_drive_only(backend, instance)
    with pytest.raises(exception.ProcessError):
        disk.create(None)
    _nothing_left(backend, ceph, instance)


@pytest.mark.parametrize('image_type', ['flat', 'qcow2'])
def test_local_hosts_keep_a_file_made_afresh(tmp_path, generated,
                                             image_type):
    """Where storage is not shared, the drive stays a file in the instance
    directory (cold migration copies it), written in place: no template,
    and a rescue drive from the instance as it is then."""
    hosts = Hosts(tmp_path)
    hosts.confs['a'].set_override('images_type', image_type,
                                  group='libvirt')
    hosts.add_image('img')
    instance = _instance(stage='first')
    a, _mapping, _ = _spawn(hosts, instance)
    config = a.from_metadata(instance, 'disk.config')
    assert config.image_type == 'flat'
    assert _file_bytes(config.path) == _file_bytes(generated[0])
    instance.metadata = {'stage': 'rescue'}
    flows.rescue(a, None, instance, 'img')
    rescue = a.from_metadata(instance, 'disk.config.rescue')
    assert _file_bytes(rescue.path) == _file_bytes(generated[1])
    assert b'"stage": "rescue"' in _file_bytes(rescue.path)
    base = os.path.join(hosts.paths['a'], '_base')
    assert not [n for n in os.listdir(base) if 'configdrive' in n]
