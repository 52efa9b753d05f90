"""imagebackend.verify and observe: how a record and what is there are
compared (pure logic on records and states; bases are real files in a
tmp image cache, digested for real; no tools run)."""

import dataclasses
import os
import uuid as uuid_mod
from unittest import mock

import pytest

import imagebackend
from imagebackend import cache as cache_mod
from imagebackend import fileutils
from imagebackend import names
from imagebackend import observe
from imagebackend import records
from imagebackend import verify
from tests.hosts import GiB

UUID = str(uuid_mod.uuid4())
BASE = 'a' * 40


def record(**kw):
    fields = dict(instance=UUID, name='disk', backend='flat', format='raw',
                  location='/x/disk', source_type='none', source_id=None,
                  virtual_size=GiB, state=records.CREATED)
    fields.update(kw)
    return records.DiskRecord(**fields)


def state(**kw):
    fields = dict(name='disk', backend='flat', location='/x/disk',
                  exists=True, content_checked=True, content_format='raw',
                  virtual_size=GiB)
    fields.update(kw)
    return observe.DiskState(**fields)


def compare(rec, st, backend=None):
    return [kind for kind, _msg in verify._compare(
        backend, rec, st, verify.BaseDigests())]


@pytest.mark.parametrize('declared,seen,agree', [
    ('raw', 'raw', True), ('raw', 'gpt', True), ('raw', 'iso', True),
    ('raw', 'qcow2', False), ('raw', 'luks', False), ('raw', None, False),
    ('qcow2', 'qcow2', True), ('qcow2', 'raw', False), ('qcow2', None, False),
    ('ploop', 'ploop', True), ('parallels', 'ploop', True),
])
def test_formats_agree(declared, seen, agree):
    assert observe.formats_agree(declared, seen) is agree


def test_clean_disk_has_no_findings():
    assert compare(record(), state()) == []


def test_missing_unreadable_and_drift():
    assert compare(record(), state(exists=False)) == ['disk-missing']
    assert compare(record(), state(problem='cannot be read as raw')) == \
        ['unreadable']
    assert compare(record(), state(content_format='qcow2')) == \
        ['format-drift']
    assert compare(record(format='qcow2', backend='qcow2'), state()) == \
        ['format-drift']
    # Nothing looked at the bytes (a block device): no format finding.
    assert compare(record(), state(content_checked=False,
                                   content_format=None)) == []
    assert compare(record(), state(virtual_size=2 * GiB)) == ['size-drift']


def test_a_backing_file_the_record_does_not_name():
    backing = observe.Backing(path='/elsewhere', format='raw', exists=True,
                              entry=None)
    assert compare(record(format='qcow2'), state(
        content_format='qcow2', backing=backing)) == ['backing-drift']
    other = dataclasses.replace(backing, entry='b' * 40)
    assert compare(record(format='qcow2', backing=BASE,
                          backing_format='raw'),
                   state(content_format='qcow2', backing=other)) == \
        ['backing-drift']


@pytest.fixture
def backend(host):
    return imagebackend.Backend(conf=host)


def base(backend, data=b'base' * 1000, sidecar=True):
    cache = backend.image_cache
    cache.ensure_dirs()
    path = cache.path(BASE)
    with open(path, 'wb') as f:
        f.write(data)
    digest = fileutils.file_digest(path)
    if sidecar:
        entry = cache_mod.CacheEntry(
            name=BASE, path=path, format='raw', virtual_size=len(data),
            sha256=digest, kind='image', source='img')
        fileutils.atomic_write_json(path + names.META_SUFFIX,
                                    entry.to_dict())
    return path, digest


def overlay(backend, sha=None):
    rec = record(format='qcow2', backend='qcow2', backing=BASE,
                 backing_format='raw', backing_sha256=sha)
    st = state(content_format='qcow2', backing=observe.Backing(
        path=backend.image_cache.path(BASE), format='raw', exists=True,
        entry=BASE))
    return rec, st


def test_base_checks(backend):
    rec, st = overlay(backend)
    assert compare(rec, st, backend) == ['backing-missing']
    path, digest = base(backend, sidecar=False)
    assert compare(rec, st, backend) == ['backing-unverified']
    rec, st = overlay(backend, sha=digest)
    assert compare(rec, st, backend) == []      # the record's sha256
    base(backend)
    assert compare(rec, st, backend) == []      # and the sidecar's
    rec_other, _ = overlay(backend, sha=fileutils.file_digest(__file__))
    assert compare(rec_other, st, backend) == ['backing-changed']
    with open(path, 'r+b') as f:
        f.write(b'changed')
    assert compare(rec, st, backend) == ['backing-changed']


def test_a_base_is_digested_once_for_all_its_disks(backend):
    path, digest = base(backend)
    digests = verify.BaseDigests()
    with mock.patch.object(fileutils, 'digest_matches',
                           wraps=fileutils.digest_matches) as matches:
        for _ in range(3):
            assert digests.matches(path, digest) is True
    assert matches.call_count == 1


def test_unreadable_metadata_is_a_finding(backend, host):
    d = os.path.join(host.instances_path, UUID)
    os.makedirs(d)
    with open(os.path.join(d, 'disk'), 'wb'):
        pass
    with open(os.path.join(d, 'disk.info'), 'w') as f:
        f.write('{garbled')
    report = verify.check_instance(backend, UUID)
    assert [(f.disk, f.kind) for f in report.findings] == [
        (None, 'disk-info-unreadable'), ('disk', 'unrecorded-disk')]
    with open(os.path.join(d, names.RECORDS_FILE), 'w') as f:
        f.write('{garbled')
    report = verify.check_instance(backend, UUID)
    assert [(f.disk, f.kind) for f in report.findings] == [
        (None, 'records-unreadable')]
    assert not report.clean
