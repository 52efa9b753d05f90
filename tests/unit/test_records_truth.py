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


