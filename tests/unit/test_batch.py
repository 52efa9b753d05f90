"""Backend.batch: several disks' records in two writes (issue 12, point 3).

Real Flat disks made by plain Python template functions in tmp_path, the
real InstanceDirStore and disk.info: no qemu-img, nothing heavy. What a
SIGKILL leaves is in tests/functional/test_record_batch.py.
"""

from __future__ import annotations

import json
import os
import threading

import pytest

import imagebackend
from imagebackend import batch as batch_mod
from imagebackend import disks
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import locks
from imagebackend import records
from tests.hosts import Instance, MiB

NAMES = ('disk', 'disk.local', 'disk.swap')


@pytest.fixture
def flat(host):
    host.set_override('images_type', 'flat', group='libvirt')
    return imagebackend.Backend(conf=host)


@pytest.fixture
def writes(monkeypatch, host):
    """Every atomic JSON write, by file name (disks.json, disk.info)."""
    done: list[str] = []
    real = fileutils.atomic_write_json

    def spy(path, data, **kwargs):
        done.append(os.path.basename(path))
        real(path, data, **kwargs)

    monkeypatch.setattr(fileutils, 'atomic_write_json', spy)
    return done


def stored(host, uuid) -> dict[str, str]:
    """name -> state, as the records file on disk says (a fresh read, as
    another process would see it)."""
    path = os.path.join(host.instances_path, uuid, 'disks.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {n: r['state'] for n, r in json.load(f)['disks'].items()}


def listed(host, uuid) -> dict[str, str]:
    path = os.path.join(host.instances_path, uuid, 'disk.info')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {os.path.basename(p): fmt for p, fmt in json.load(f).items()}


def writer(data: bytes = b'x' * 4096, seen=None, host=None, uuid=None):
    """A template function writing ``data``; with ``seen``, it first notes
    what the records file and the instance directory hold."""
    def func(target: str) -> None:
        if seen is not None:
            seen.append((stored(host, uuid), sorted(
                n for n in os.listdir(os.path.dirname(target))
                if n in NAMES)))
        with open(target, 'wb') as f:
            f.write(data)
    return func


def failing(target: str) -> None:
    with open(target, 'wb') as f:
        f.write(b'partial')
    raise RuntimeError('template died')


def todo(backend, instance, funcs=None, names=NAMES):
    funcs = funcs or {}
    return [disks.DiskFromFunc(
        image=backend.by_name(instance, n, 'flat'), size=MiB,
        func=funcs.get(n) or writer(), cache_name=f'tpl_{i}')
        for i, n in enumerate(names)]


def assert_all_created(host, uuid, writes, record_writes: int) -> None:
    assert writes.count('disks.json') == record_writes
    assert stored(host, uuid) == dict.fromkeys(NAMES, 'created')


def create_all(backend, instance, wanted):
    with backend.batch(instance, wanted):
        for disk in wanted:
            disk.create(None)


def test_three_disks_two_record_writes_one_disk_info(flat, host, writes):
    inst = Instance()
    wanted = todo(flat, inst)
    create_all(flat, inst, wanted)
    assert_all_created(host, inst.uuid, writes, 2)
    assert writes.count('disk.info') == 1
    assert listed(host, inst.uuid) == dict.fromkeys(NAMES, 'raw')
    for disk in wanted:
        record = flat.records.get(inst.uuid, disk.name)
        assert record.virtual_size == MiB
        assert record.provenance == {'path': 'native'}
        assert record.source_id == disk.cache_name
        assert disk.image.record == record
        assert os.path.getsize(disk.image.path) == MiB


def test_alone_each_disk_writes_its_records_twice(flat, host, writes):
    # What a batch saves: the same three disks, no batch.
    inst = Instance()
    for disk in todo(flat, inst):
        disk.create(None)
    assert_all_created(host, inst.uuid, writes, 6)
    assert writes.count('disk.info') == 3


def test_creating_records_are_written_before_any_disk(flat, host):
    inst = Instance()
    seen: list = []
    funcs = {n: writer(seen=seen, host=host, uuid=inst.uuid)
             for n in NAMES}
    create_all(flat, inst, todo(flat, inst, funcs))
    creating = dict.fromkeys(NAMES, 'creating')
    # Every disk there, whole or being made, has a creating record; none
    # says created until all are made.
    assert seen == [(creating, []), (creating, ['disk']),
                    (creating, ['disk', 'disk.local'])]
    assert stored(host, inst.uuid) == dict.fromkeys(NAMES, 'created')


def test_a_failure_lands_the_finished_disks_records(flat, host):
    # Disk 2 fails: disk 1 is whole and recorded created (the caller may
    # undo it, or keep it); disk 2 is gone with its record; disk 3, never
    # started, leaves no record.
    inst = Instance()
    wanted = todo(flat, inst, {'disk.local': failing})
    with pytest.raises(RuntimeError):
        create_all(flat, inst, wanted)
    assert stored(host, inst.uuid) == {'disk': 'created'}
    assert listed(host, inst.uuid) == {'disk': 'raw'}
    assert [n for n in NAMES if os.path.exists(
        os.path.join(host.instances_path, inst.uuid, n))] == ['disk']


def test_a_failed_first_disk_leaves_no_instance_directory(flat, host):
    inst = Instance()
    with pytest.raises(RuntimeError):
        create_all(flat, inst, todo(flat, inst, {'disk': failing}))
    assert not os.path.exists(os.path.join(host.instances_path, inst.uuid))


def test_a_disk_deleted_in_the_batch_is_not_recorded(flat, host, writes):
    inst = Instance()
    wanted = todo(flat, inst)
    with flat.batch(inst, wanted):
        for disk in wanted:
            disk.create(None)
        wanted[1].image.delete()
    assert stored(host, inst.uuid) == {'disk': 'created',
                                       'disk.swap': 'created'}
    assert listed(host, inst.uuid) == {'disk': 'raw', 'disk.swap': 'raw'}
    assert not wanted[1].image.exists()


def test_declared_but_not_created_leaves_no_record(flat, host):
    inst = Instance()
    wanted = todo(flat, inst)
    with flat.batch(inst, wanted):
        wanted[0].create(None)
    assert stored(host, inst.uuid) == {'disk': 'created'}


def test_names_with_a_record_are_left_to_their_creation(flat, host, writes):
    inst = Instance()
    kept = todo(flat, inst, names=['disk'])[0]
    kept.create(None)
    # A dead creation: its record says creating, its disk is half made.
    dead = flat.by_name(inst, 'disk.swap', 'flat')
    flat.records.put(dead.planned_record('func', 'tpl_2'))
    writes.clear()
    wanted = todo(flat, inst)
    with flat.batch(inst, wanted) as batch:
        # Only disk.local was declared: a created record is not shadowed,
        # a dead creation's record not taken over.
        assert stored(host, inst.uuid) == {'disk': 'created',
                                           'disk.local': 'creating',
                                           'disk.swap': 'creating'}
        assert batch.declared('disk') is None
        assert batch.declared('disk.swap') is None
        with pytest.raises(exception.DiskExists):
            wanted[0].create(None)
        wanted[1].create(None)
    assert writes.count('disks.json') == 2
    assert stored(host, inst.uuid) == {'disk': 'created',
                                       'disk.local': 'created',
                                       'disk.swap': 'creating'}


def test_a_creation_not_declared_writes_its_creating_record(flat, host,
                                                             writes):
    inst = Instance()
    wanted = todo(flat, inst)
    with flat.batch(inst, wanted[:2]):
        for disk in wanted:
            disk.create(None)
        # The undeclared one wrote its creating record itself; the created
        # ones all wait for the end.
        assert stored(host, inst.uuid) == dict.fromkeys(NAMES, 'creating')
    assert_all_created(host, inst.uuid, writes, 3)


def test_a_creation_unlike_its_declaration_writes_its_own(flat, host):
    # Declared from one source, made from another: the record on disk
    # while it is made is the one its creation would write alone.
    inst = Instance()
    wanted = todo(flat, inst, names=['disk'])
    made = disks.DiskFromFunc(image=wanted[0].image, size=MiB,
                              func=writer(), cache_name='other')
    with flat.batch(inst, wanted):
        made.create(None)
        assert flat.records.get(inst.uuid, 'disk').source_id == 'other'
    record = flat.records.get(inst.uuid, 'disk')
    assert (record.state, record.source_id) == ('created', 'other')


def test_batches_nest_and_write_at_the_outermost_end(flat, host, writes):
    inst = Instance()
    wanted = todo(flat, inst)
    with flat.batch(inst, wanted[:1]) as outer:
        with flat.batch(inst, wanted[1:]) as inner:
            assert inner is outer
            for disk in wanted:
                disk.create(None)
        assert stored(host, inst.uuid) == dict.fromkeys(NAMES, 'creating')
    assert_all_created(host, inst.uuid, writes, 3)


def test_a_batch_holds_the_instance_lock(flat, host):
    inst = Instance()
    got = []

    def other():
        with locks.instance_lock(host, inst.uuid):
            got.append(stored(host, inst.uuid))

    wanted = todo(flat, inst)
    with flat.batch(inst, wanted):
        assert locks.held(host, inst.uuid)
        thread = threading.Thread(target=other)
        thread.start()
        for disk in wanted:
            disk.create(None)
        thread.join(0.2)
        # Another caller waits: it never sees the batch's creating
        # records (they are creations in progress, not dead ones).
        assert got == []
    thread.join(60)
    assert got == [dict.fromkeys(NAMES, 'created')]


def test_a_batch_joins_only_its_own_thread(flat, host):
    inst = Instance()
    with flat.batch(inst, todo(flat, inst)):
        assert batch_mod.active(flat.records, inst.uuid) is not None
        other = []
        thread = threading.Thread(target=lambda: other.append(
            batch_mod.active(flat.records, inst.uuid)))
        thread.start()
        thread.join()
        assert other == [None]
    assert batch_mod.active(flat.records, inst.uuid) is None


class PlainStore:
    """A driver's store with only the protocol's four methods."""

    def __init__(self):
        self.inner = records.MemoryStore()
        self.puts = 0

    def get(self, instance, name):
        return self.inner.get(instance, name)

    def put(self, record):
        self.puts += 1
        self.inner.put(record)

    def delete(self, instance, name):
        self.inner.delete(instance, name)

    def list(self, instance):
        return self.inner.list(instance)


def test_a_store_without_put_many_gets_one_put_per_record(host):
    host.set_override('images_type', 'flat', group='libvirt')
    store = PlainStore()
    backend = imagebackend.Backend(conf=host, records=store)
    inst = Instance()
    create_all(backend, inst, todo(backend, inst))
    assert store.puts == 6
    assert [r.state for r in store.list(inst.uuid)] == ['created'] * 3


def test_declare_refuses_what_is_no_creating_record_of_the_instance(flat):
    inst = Instance()
    image = flat.by_name(inst, 'disk', 'flat')
    record = image.planned_record('func', 'tpl')
    with flat.batch(inst) as batch:
        with pytest.raises(ValueError):
            batch.declare([record.replace(state='created', virtual_size=1)])
        with pytest.raises(ValueError):
            batch.declare([record.replace(instance=Instance().uuid)])
