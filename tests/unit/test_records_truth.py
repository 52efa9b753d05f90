"""Records as the only truth (issue 9): the record's base sha256 field and
its schema compatibility; which backing file an adopted qcow2 disk may
have; the image folder's symlink rule. Pure logic (qemu-img info faked)."""

import json
import os
from unittest import mock

import pytest

import imagebackend
from imagebackend import exception, records, sources
from tests.hosts import GiB

SHA = 'ab' * 32


def record(**overrides):
    fields = dict(instance='6a78f2ad-a9b2-44f5-938b-a58ba548a6d1',
                  name='disk', backend='qcow2', format='qcow2',
                  location='/i/disk', source_type='image', source_id='img',
                  virtual_size=GiB, state=records.CREATED, backing='abc',
                  backing_format='raw')
    fields.update(overrides)
    return records.DiskRecord(**fields)


# -- backing_sha256 ------------------------------------------------------------

def test_backing_sha256_round_trips():
    r = record(backing_sha256=SHA)
    assert r.to_dict()['backing_sha256'] == SHA
    assert records.DiskRecord.from_dict(r.to_dict()) == r


def test_record_without_it_is_written_as_before():
    # Unset, the field is not written: an older release reads the record.
    data = record().to_dict()
    assert 'backing_sha256' not in data
    assert data['schema_version'] == 1
    assert records.DiskRecord.from_dict(data).backing_sha256 is None


def test_old_record_loads(tmp_path):
    # disks.json as the release before wrote it (every field, no sha256).
    uuid = '6a78f2ad-a9b2-44f5-938b-a58ba548a6d1'
    old = {'instance': uuid, 'name': 'disk', 'backend': 'qcow2',
           'format': 'qcow2', 'location': '/i/disk', 'source_type': 'image',
           'source_id': 'img', 'virtual_size': GiB, 'state': 'created',
           'backing': 'abc', 'backing_format': None, 'provenance': {},
           'updated_at': 1.0, 'schema_version': 1}
    os.makedirs(tmp_path / uuid)
    (tmp_path / uuid / 'disks.json').write_text(json.dumps(
        {'schema_version': 1, 'disks': {'disk': old}}))
    store = records.InstanceDirStore(str(tmp_path), str(tmp_path / 'locks'))
    got = store.get(uuid, 'disk')
    assert (got.backing, got.backing_format, got.backing_sha256) == (
        'abc', None, None)


@pytest.mark.parametrize('value', ['', 'AB' * 32, 'ab' * 31, 'zz' * 32, 5,
                                   ['ab' * 32]])
def test_bad_backing_sha256(value):
    with pytest.raises(exception.CorruptRecord):
        record(backing_sha256=value)


def test_backing_sha256_needs_a_backing():
    with pytest.raises(exception.CorruptRecord):
        record(backing=None, backing_format=None, backing_sha256=SHA)


@pytest.mark.parametrize('field, value', [('backing', ''), ('backing', 3),
                                          ('backing_format', ''),
                                          ('backing_format', 7)])
def test_bad_backing_fields(field, value):
    with pytest.raises(exception.CorruptRecord):
        record(**{field: value})


# -- adopting a qcow2 disk disk.info names -------------------------------------

@pytest.fixture
def qcow2_disk(host, instance):
    d = os.path.join(host.instances_path, instance.uuid)
    os.makedirs(d)
    path = os.path.join(d, 'disk')
    with open(path, 'wb') as f:
        f.write(b'\0' * 512)
    with open(os.path.join(d, 'disk.info'), 'w') as f:
        json.dump({path: 'qcow2'}, f)
    return path


def adopt(backend, instance, backing, fmt='raw'):
    info = {'virtual-size': GiB, 'full-backing-filename': backing}
    if fmt:
        info['backing-filename-format'] = fmt
    with mock.patch.object(imagebackend.qemu, 'info', return_value=info):
        return backend.from_metadata(instance, 'disk')


@pytest.mark.parametrize('where', ['/etc/shadow', '{base}/../secret',
                                   '{base}/sub/x', '{inst}/elsewhere'])
def test_adopted_backing_outside_the_cache_is_refused(backend, host,
                                                      instance, qcow2_disk,
                                                      where):
    base = os.path.join(host.instances_path, '_base')
    backing = where.format(base=base, inst=host.instances_path)
    with pytest.raises(exception.ImageUnacceptable):
        adopt(backend, instance, backing)
    assert backend.records.list(instance.uuid) == []


def test_adopted_backing_symlink_out_of_the_cache_is_refused(
        backend, host, instance, qcow2_disk, tmp_path):
    base = os.path.join(host.instances_path, '_base')
    os.makedirs(base)
    os.symlink(str(tmp_path / 'secret'), os.path.join(base, 'link'))
    with pytest.raises(exception.ImageUnacceptable):
        adopt(backend, instance, os.path.join(base, 'link'))


def test_adopted_backing_takes_the_sidecar(backend, host, instance,
                                           qcow2_disk):
    cache = backend.image_cache
    cache.ensure_dirs()
    with open(cache.path('abc'), 'wb') as f:
        f.write(b'x')
    with open(cache.path('abc') + '.meta.json', 'w') as f:
        json.dump({'name': 'abc', 'format': 'qcow2', 'virtual_size': GiB,
                   'sha256': SHA, 'kind': 'image', 'source': 'img'}, f)
    disk = adopt(backend, instance, cache.path('abc'), fmt=None)
    r = disk.record
    assert (r.backing, r.backing_format, r.backing_sha256) == (
        'abc', 'qcow2', SHA)
    # The header contradicting the sidecar is refused.
    backend.records.delete(instance.uuid, 'disk')
    with pytest.raises(exception.ImageUnacceptable):
        adopt(backend, instance, cache.path('abc'), fmt='raw')


def test_adopted_backing_of_unknown_format_is_refused(backend, host,
                                                      instance, qcow2_disk):
    base = os.path.join(host.instances_path, '_base', 'abc')
    with pytest.raises(exception.ImageUnacceptable):
        adopt(backend, instance, base, fmt=None)


# -- the images folder -----------------------------------------------------------

def test_directory_source_refuses_links_out(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    (tmp_path / 'secret').write_bytes(b'secret')
    os.symlink(str(tmp_path / 'secret'), str(folder / 'a.raw'))
    os.symlink('../images/../secret', str(folder / 'b.raw'))
    os.mkdir(folder / 'c.raw')
    src = sources.DirectoryImageSource(str(folder))
    for image_id in ('a', 'b', 'c'):
        with pytest.raises(exception.ImageUnacceptable):
            src.get_meta(None, image_id)
        with pytest.raises(exception.ImageUnacceptable):
            list(src.open(None, image_id))
    with pytest.raises(exception.ImageNotFound):
        src.get_meta(None, 'd')


def test_directory_source_follows_links_inside(tmp_path):
    folder = tmp_path / 'images'
    folder.mkdir()
    (folder / 'real.raw').write_bytes(b'data')
    os.symlink('real.raw', str(folder / 'alias.qcow2'))
    src = sources.DirectoryImageSource(str(folder))
    meta = src.get_meta(None, 'alias')
    assert (meta.disk_format, meta.size) == ('qcow2', 4)
    assert b''.join(src.open(None, 'alias')) == b'data'
