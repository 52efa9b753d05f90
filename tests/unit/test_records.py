"""Tests for imagebackend.records: DiskRecord and the record stores."""

import json
import os
import subprocess
import sys
import threading
import uuid as uuid_mod

import pytest

from imagebackend import exception
from imagebackend import records

GiB = 1024 ** 3


def new_uuid():
    return str(uuid_mod.uuid4())


def make_record(instance=None, name='disk', **overrides):
    fields = dict(
        instance=instance or new_uuid(), name=name, backend='qcow2',
        format='qcow2', location=f'/instances/x/{name}',
        source_type='image', source_id='image-1', virtual_size=GiB,
        state=records.CREATED, backing='abc', backing_format='raw',
        provenance={'path': 'native'})
    fields.update(overrides)
    return records.DiskRecord(**fields)


# -- DiskRecord validation ----------------------------------------------------

def test_valid_record_defaults():
    r = records.DiskRecord(instance=new_uuid(), name='disk.local',
                           backend='flat', format='raw', location='/x',
                           source_type='func',
                           source_id='ephemeral_1_ext4_ephemeral0')
    assert r.state == records.CREATING
    assert not r.created
    assert r.virtual_size is None
    assert r.provenance == {}
    assert r.schema_version == records.SCHEMA_VERSION
    assert isinstance(r.updated_at, float)


def test_created_record():
    r = make_record()
    assert r.created


@pytest.mark.parametrize('state', ['', 'done', 'CREATED', None, 'deleting'])
def test_bad_state(state):
    with pytest.raises(exception.CorruptRecord) as e:
        make_record(state=state)
    assert 'state' in str(e.value)


@pytest.mark.parametrize('name', ['../x', '', 'a/b', '.disk', None, 'disk\n'])
def test_bad_name(name):
    with pytest.raises(exception.InvalidDiskName):
        make_record(name=name)


@pytest.mark.parametrize('instance', ['../x', '', 'a/b', None])
def test_bad_instance(instance):
    with pytest.raises(exception.InvalidDiskName):
        records.DiskRecord(instance=instance, name='disk', backend='flat',
                           format='raw', location='/x', source_type='none',
                           source_id=None)


@pytest.mark.parametrize('source_type', ['', 'volume', 'IMAGE', None])
def test_bad_source_type(source_type):
    with pytest.raises(exception.CorruptRecord) as e:
        make_record(source_type=source_type)
    assert 'source type' in str(e.value)


@pytest.mark.parametrize('source_type', records.SOURCE_TYPES)
def test_every_source_type_is_accepted(source_type):
    assert make_record(source_type=source_type).source_type == source_type


def test_created_without_size():
    with pytest.raises(exception.CorruptRecord) as e:
        make_record(state=records.CREATED, virtual_size=None)
    assert 'virtual size' in str(e.value)


def test_creating_without_size_is_fine():
    assert make_record(state=records.CREATING,
                       virtual_size=None).virtual_size is None


@pytest.mark.parametrize('size', [-1, '1024', 1.5])
def test_bad_virtual_size(size):
    with pytest.raises(exception.CorruptRecord):
        make_record(virtual_size=size)


@pytest.mark.parametrize('version', [0, 2, '1', None])
def test_unknown_schema_version(version):
    with pytest.raises(exception.CorruptRecord) as e:
        make_record(schema_version=version)
    assert 'schema version' in str(e.value)


@pytest.mark.parametrize('field', ['backend', 'format', 'location'])
@pytest.mark.parametrize('value', ['', None, 3])
def test_empty_required_strings(field, value):
    with pytest.raises(exception.CorruptRecord):
        make_record(**{field: value})


def test_record_is_immutable_and_replace_bumps_updated_at():
    r = make_record(updated_at=1.0)
    with pytest.raises(Exception):
        r.state = records.CREATING
    r2 = r.replace(virtual_size=2 * GiB)
    assert r2.virtual_size == 2 * GiB
    assert r.virtual_size == GiB
    assert r2.updated_at > 1.0
    # replace validates, too
    with pytest.raises(exception.CorruptRecord):
        r.replace(state='bogus')


# -- to_dict / from_dict ------------------------------------------------------

def test_round_trip():
    r = make_record(provenance={'path': 'native', 'copy': 'sparse'})
    d = r.to_dict()
    assert d['name'] == 'disk'
    assert d['schema_version'] == records.SCHEMA_VERSION
    assert records.DiskRecord.from_dict(d) == r
    # through JSON too, as the store does
    assert records.DiskRecord.from_dict(json.loads(json.dumps(d))) == r


def test_unknown_fields():
    d = make_record().to_dict()
    d['colour'] = 'blue'
    with pytest.raises(exception.CorruptRecord) as e:
        records.DiskRecord.from_dict(d, location='somewhere')
    assert 'colour' in str(e.value)
    assert 'somewhere' in str(e.value)


def test_missing_fields():
    d = make_record().to_dict()
    del d['backend']
    with pytest.raises(exception.CorruptRecord):
        records.DiskRecord.from_dict(d)


@pytest.mark.parametrize('data', [None, [], 'disk', 3])
def test_from_dict_not_an_object(data):
    with pytest.raises(exception.CorruptRecord):
        records.DiskRecord.from_dict(data)


def test_from_dict_validates():
    d = make_record().to_dict()
    d['state'] = 'half'
    with pytest.raises(exception.CorruptRecord):
        records.DiskRecord.from_dict(d)


# -- stores (store-agnostic behaviour, both implementations) -----------------

@pytest.fixture
def instances_path(tmp_path):
    path = tmp_path / 'instances'
    path.mkdir()
    return path


@pytest.fixture(params=['memory', 'instance-dir'])
def store(request, instances_path):
    if request.param == 'memory':
        return records.MemoryStore()
    return records.InstanceDirStore(str(instances_path),
                                    str(instances_path / 'locks'))


@pytest.fixture
def dir_store(instances_path):
    return records.InstanceDirStore(str(instances_path),
                                    str(instances_path / 'locks'))


def test_stores_implement_the_protocol(store):
    assert isinstance(store, records.RecordStore)


def test_get_missing(store):
    assert store.get(new_uuid(), 'disk') is None
    assert store.list(new_uuid()) == []


def test_put_get(store):
    r = make_record()
    store.put(r)
    assert store.get(r.instance, 'disk') == r
    assert store.get(r.instance, 'disk.local') is None
    assert store.get(new_uuid(), 'disk') is None


def test_put_replaces(store):
    r = make_record(state=records.CREATING, virtual_size=None)
    store.put(r)
    r2 = r.replace(state=records.CREATED, virtual_size=GiB)
    store.put(r2)
    assert store.get(r.instance, 'disk') == r2
    assert store.list(r.instance) == [r2]


def test_list_is_sorted_and_per_instance(store):
    uuid, other = new_uuid(), new_uuid()
    for name in ['disk.swap', 'disk', 'disk.local']:
        store.put(make_record(uuid, name))
    store.put(make_record(other, 'disk'))
    assert [r.name for r in store.list(uuid)] == ['disk', 'disk.local',
                                                  'disk.swap']
    assert [r.name for r in store.list(other)] == ['disk']


def test_delete(store):
    uuid = new_uuid()
    store.put(make_record(uuid, 'disk'))
    store.put(make_record(uuid, 'disk.local'))
    store.delete(uuid, 'disk')
    assert store.get(uuid, 'disk') is None
    assert [r.name for r in store.list(uuid)] == ['disk.local']
    # deleting something absent is not an error
    store.delete(uuid, 'disk')
    store.delete(new_uuid(), 'disk')
    store.delete(uuid, 'disk.local')
    assert store.list(uuid) == []


def test_put_many_and_delete_many(store):
    uuid, other = new_uuid(), new_uuid()
    store.put(make_record(uuid, 'disk'))
    many = [make_record(uuid, n, state=records.CREATING, virtual_size=None)
            for n in ('disk', 'disk.local', 'disk.swap')]
    store.put_many(many + [make_record(other, 'disk')])
    assert store.list(uuid) == many  # 'disk' replaced
    assert [r.name for r in store.list(other)] == ['disk']
    store.delete_many(uuid, ['disk', 'disk.swap', 'disk.eph9'])
    assert store.list(uuid) == [many[1]]
    store.put_many([])
    store.delete_many(uuid, [])
    store.delete_many(new_uuid(), ['disk'])
    assert store.list(uuid) == [many[1]]


class PlainStore:
    """A store with only the protocol's four methods (a driver's own)."""

    def __init__(self):
        self.inner = records.MemoryStore()
        self.calls = []

    def get(self, instance, disk_name):
        return self.inner.get(instance, disk_name)

    def put(self, record):
        self.calls.append(('put', record.name))
        self.inner.put(record)

    def delete(self, instance, disk_name):
        self.calls.append(('delete', disk_name))
        self.inner.delete(instance, disk_name)

    def list(self, instance):
        return self.inner.list(instance)


def test_many_helpers_fall_back_to_one_write_per_record():
    store = PlainStore()
    assert isinstance(store, records.RecordStore)
    uuid = new_uuid()
    records.put_many(store, [make_record(uuid, 'disk'),
                             make_record(uuid, 'disk.local')])
    records.delete_many(store, uuid, ['disk', 'disk.swap'])
    assert store.calls == [('put', 'disk'), ('put', 'disk.local'),
                           ('delete', 'disk'), ('delete', 'disk.swap')]
    assert [r.name for r in store.list(uuid)] == ['disk.local']


def test_many_helpers_use_the_store_s_own(store):
    uuid = new_uuid()
    records.put_many(store, [make_record(uuid, 'disk'),
                             make_record(uuid, 'disk.local')])
    records.delete_many(store, uuid, ['disk'])
    assert [r.name for r in store.list(uuid)] == ['disk.local']


def test_put_many_is_one_write_per_instance(dir_store, instances_path,
                                            monkeypatch):
    writes = []
    real = records.fileutils.atomic_write_json

    def spy(path, data, **kwargs):
        writes.append(os.path.relpath(path, instances_path))
        real(path, data, **kwargs)

    monkeypatch.setattr(records.fileutils, 'atomic_write_json', spy)
    uuid, other = new_uuid(), new_uuid()
    dir_store.put_many([make_record(uuid, n) for n in
                        ('disk', 'disk.local', 'disk.swap')] +
                       [make_record(other, 'disk')])
    assert sorted(writes) == sorted([f'{uuid}/disks.json',
                                     f'{other}/disks.json'])
    writes.clear()
    dir_store.delete_many(uuid, ['disk', 'disk.swap'])
    assert writes == [f'{uuid}/disks.json']
    writes.clear()
    dir_store.delete_many(uuid, ['disk', 'disk.eph0'])  # none there
    assert writes == []


def test_put_many_is_seen_whole_or_not_at_all(dir_store):
    # A reader (another process, no lock) sees each batch whole: one
    # atomic write, never a record of it without the others.
    uuid = new_uuid()
    stop = threading.Event()
    torn = []

    def read():
        while not stop.is_set():
            found = {r.name for r in dir_store.list(uuid)}
            for i in range(40):
                batch = {f'disk.b{i}-{j}' for j in range(3)}
                if found & batch and not batch <= found:
                    torn.append(sorted(found & batch))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(40):
            dir_store.put_many([make_record(uuid, f'disk.b{i}-{j}')
                                for j in range(3)])
    finally:
        stop.set()
        reader.join()
    assert torn == []
    assert len(dir_store.list(uuid)) == 120


def test_concurrent_puts_all_survive(store):
    # 8 threads, each putting its own disks once: a lost update (a
    # read-modify-write overtaken by another) would lose a disk for good.
    uuid = new_uuid()
    expected = [f'disk.t{t}-{i}' for t in range(8) for i in range(10)]
    barrier = threading.Barrier(8)
    errors = []

    def put(t):
        try:
            barrier.wait()
            for i in range(10):
                store.put(make_record(uuid, f'disk.t{t}-{i}'))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=put, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(r.name for r in store.list(uuid)) == sorted(expected)


_PUT_SCRIPT = '''
import sys
from imagebackend import records
instances_path, uuid, prefix = sys.argv[1:4]
store = records.InstanceDirStore(instances_path, instances_path + '/locks')
sys.stdin.readline()  # start together
for i in range(20):
    store.put(records.DiskRecord(
        instance=uuid, name=f'{prefix}{i}', backend='flat', format='raw',
        location='/x', source_type='none', source_id=None,
        virtual_size=1, state='created'))
'''


def test_concurrent_puts_from_processes_all_survive(dir_store,
                                                    instances_path):
    # The lock is external: other processes (other nova-compute workers,
    # another host on a shared instances_path) serialise with us.
    uuid = new_uuid()
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    procs = [subprocess.Popen(
        [sys.executable, '-c', _PUT_SCRIPT, str(instances_path), uuid,
         f'disk.p{p}-'],
        stdin=subprocess.PIPE, cwd=root, env=dict(os.environ,
                                                  PYTHONPATH=root))
        for p in range(4)]
    for proc in procs:
        proc.stdin.write(b'go\n')
        proc.stdin.flush()
    for proc in procs:
        proc.stdin.close()
        assert proc.wait() == 0
    assert sorted(r.name for r in dir_store.list(uuid)) == sorted(
        f'disk.p{p}-{i}' for p in range(4) for i in range(20))


# -- InstanceDirStore specifics -----------------------------------------------

def test_file_location_and_format(dir_store, instances_path):
    r = make_record()
    dir_store.put(r)
    path = instances_path / r.instance / 'disks.json'
    assert dir_store.path(r.instance) == str(path)
    data = json.loads(path.read_text())
    assert data['schema_version'] == records.SCHEMA_VERSION
    assert data['disks'] == {'disk': r.to_dict()}
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_path_refuses_bad_uuid(dir_store):
    with pytest.raises(exception.InvalidDiskName):
        dir_store.path('../etc')


def test_write_leaves_no_temp_files(dir_store, instances_path):
    uuid = new_uuid()
    for name in ['disk', 'disk.local', 'disk.swap']:
        dir_store.put(make_record(uuid, name))
    dir_store.delete(uuid, 'disk.swap')
    assert os.listdir(instances_path / uuid) == ['disks.json']


def test_delete_of_last_record_removes_the_file(dir_store, instances_path):
    r = make_record()
    dir_store.put(r)
    path = instances_path / r.instance / 'disks.json'
    assert path.exists()
    dir_store.delete(r.instance, 'disk')
    assert not path.exists()
    # the instance directory itself is not the store's to remove
    assert (instances_path / r.instance).is_dir()
    assert dir_store.list(r.instance) == []


def test_records_are_read_from_disk(dir_store, instances_path):
    # A second store on the same directory (another process) sees them.
    r = make_record()
    dir_store.put(r)
    other = records.InstanceDirStore(str(instances_path),
                                     str(instances_path / 'locks'))
    assert other.get(r.instance, 'disk') == r


def _valid_file(records_list):
    return json.dumps({'schema_version': records.SCHEMA_VERSION,
                       'disks': {r.name: r.to_dict() for r in records_list}})


CORRUPT = {
    'garbage': 'this is not json {',
    'binary': '\udcff\udcfe',
    'empty': '',
    'list': '[1, 2, 3]',
    'no-disks': json.dumps({'schema_version': records.SCHEMA_VERSION}),
    'disks-list': json.dumps({'schema_version': records.SCHEMA_VERSION,
                              'disks': []}),
    'wrong-schema': json.dumps({'schema_version': 99, 'disks': {}}),
    'no-schema': json.dumps({'disks': {}}),
    'bad-record': json.dumps({'schema_version': records.SCHEMA_VERSION,
                              'disks': {'disk': {'state': 'bogus'}}}),
}


@pytest.mark.parametrize('kind', sorted(CORRUPT))
def test_corrupted_file(dir_store, instances_path, kind):
    uuid = new_uuid()
    (instances_path / uuid).mkdir()
    path = instances_path / uuid / 'disks.json'
    path.write_bytes(CORRUPT[kind].encode('utf-8', 'surrogateescape'))
    before = path.read_bytes()

    with pytest.raises(exception.CorruptRecord) as e:
        dir_store.get(uuid, 'disk')
    assert str(path) in str(e.value)
    with pytest.raises(exception.CorruptRecord):
        dir_store.list(uuid)
    # Writes refuse too, rather than overwrite what they cannot read.
    with pytest.raises(exception.CorruptRecord):
        dir_store.put(make_record(uuid, 'disk.local'))
    with pytest.raises(exception.CorruptRecord):
        dir_store.delete(uuid, 'disk')

    assert path.read_bytes() == before
    assert os.listdir(instances_path / uuid) == ['disks.json']


def test_corrupted_record_among_good_ones(dir_store, instances_path):
    r = make_record()
    (instances_path / r.instance).mkdir()
    path = instances_path / r.instance / 'disks.json'
    data = json.loads(_valid_file([r]))
    data['disks']['disk.local'] = dict(r.to_dict(), name='disk.local',
                                       extra=1)
    path.write_text(json.dumps(data))
    with pytest.raises(exception.CorruptRecord):
        dir_store.get(r.instance, 'disk')
    assert json.loads(path.read_text()) == data


def test_from_dict_bad_name_is_corrupt():
    # Stored data with an unsafe name is a corrupt record, like any other
    # invalid field (callers handle CorruptRecord for what they read).
    d = make_record().to_dict()
    d['name'] = '../x'
    with pytest.raises(exception.CorruptRecord):
        records.DiskRecord.from_dict(d)


def _write_disks(instances_path, uuid, disks):
    (instances_path / uuid).mkdir(exist_ok=True)
    path = instances_path / uuid / 'disks.json'
    path.write_text(json.dumps({'schema_version': records.SCHEMA_VERSION,
                                'disks': disks}))
    return path


@pytest.mark.parametrize('case', ['bad-name', 'key-mismatch',
                                  'other-instance'])
def test_file_with_misfiled_record_is_corrupt(dir_store, instances_path,
                                              case):
    uuid = new_uuid()
    good = make_record(uuid, 'disk').to_dict()
    if case == 'bad-name':
        disks = {'../x': dict(good, name='../x')}
    elif case == 'key-mismatch':
        # The record kept under 'disk' describes 'disk.local'.
        disks = {'disk': dict(good, name='disk.local')}
    else:
        # A record of another instance in this instance's file.
        disks = {'disk': dict(good, instance=new_uuid())}
    path = _write_disks(instances_path, uuid, disks)
    before = path.read_bytes()
    with pytest.raises(exception.CorruptRecord):
        dir_store.get(uuid, 'disk')
    with pytest.raises(exception.CorruptRecord):
        dir_store.list(uuid)
    with pytest.raises(exception.CorruptRecord):
        dir_store.put(make_record(uuid, 'disk.swap'))
    assert path.read_bytes() == before
