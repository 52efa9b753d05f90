"""imagebackend.adopt on instance directories laid out as Nova's module
lays them out (real files and qemu-img; the same, made by real Nova and
driven through the CLI: test_host_cli_nova.py)."""

import errno
import json
import os
import uuid as uuid_mod
from unittest import mock

import pytest

import imagebackend
from imagebackend import adopt
from imagebackend import exception
from imagebackend import locks
from imagebackend import names
from tests.functional.conftest import run
from tests.hosts import MiB

BASE = 'b' * 40


def nova_instance(host, disks: dict[str, str]) -> str:
    """An instance directory with disk.info listing ``disks`` (name ->
    format), as Nova's module leaves it."""
    uuid = str(uuid_mod.uuid4())
    d = os.path.join(host.instances_path, uuid)
    os.makedirs(d)
    with open(os.path.join(d, 'disk.info'), 'w') as f:
        f.write(json.dumps({os.path.join(d, n): fmt
                            for n, fmt in disks.items()}))
    return uuid


def test_adopt_decides_checks_and_writes(host, tmp_path):
    backend = imagebackend.Backend(conf=host)
    base_dir = backend.image_cache.base_dir
    os.makedirs(base_dir)
    base = os.path.join(base_dir, BASE)
    run('qemu-img', 'create', '-q', '-f', 'raw', base, str(8 * MiB))
    uuid = nova_instance(host, {'disk': 'qcow2', 'disk.local': 'raw',
                                'disk.swap': 'raw'})
    d = os.path.join(host.instances_path, uuid)
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b', base,
        os.path.join(d, 'disk'), str(16 * MiB))
    run('qemu-img', 'create', '-q', '-f', 'raw', os.path.join(
        d, 'disk.local'), str(MiB))
    # disk.info says raw; the bytes say qcow2: not adoption's to decide.
    run('qemu-img', 'create', '-q', '-f', 'qcow2', os.path.join(
        d, 'disk.swap'), str(MiB))

    dry = {a.disk: a for a in adopt.adopt_instance(backend, uuid,
                                                   dry_run=True)}
    assert {n: a.outcome for n, a in dry.items()} == {
        'disk': 'would-adopt', 'disk.local': 'would-adopt',
        'disk.swap': 'undecided'}
    assert dry['disk'].base_described == BASE
    assert not os.path.exists(os.path.join(d, names.RECORDS_FILE))
    assert not os.path.exists(base + names.META_SUFFIX)

    done = {a.disk: a for a in adopt.adopt_instance(backend, uuid)}
    assert {n: a.outcome for n, a in done.items()} == {
        'disk': 'adopted', 'disk.local': 'adopted', 'disk.swap': 'undecided'}
    assert 'disk.info says raw' in done['disk.swap'].reason
    entry = backend.image_cache.get(BASE)
    assert entry.provenance == 'adopted'
    rec = backend.records.get(uuid, 'disk')
    assert (rec.backend, rec.format, rec.virtual_size, rec.backing,
            rec.backing_format, rec.backing_sha256) == (
        'qcow2', 'qcow2', 16 * MiB, BASE, 'raw', entry.sha256)
    assert backend.records.get(uuid, 'disk.local').backend == 'flat'
    assert backend.records.get(uuid, 'disk.swap') is None

    again = {a.disk: a.outcome for a in adopt.adopt_instance(backend, uuid)}
    assert again == {'disk': 'recorded', 'disk.local': 'recorded',
                     'disk.swap': 'undecided'}


def test_a_failed_write_fails_that_disk_only(host):
    backend = imagebackend.Backend(conf=host)
    uuid = nova_instance(host, {'disk': 'raw', 'disk.local': 'raw'})
    d = os.path.join(host.instances_path, uuid)
    for name in ('disk', 'disk.local'):
        run('qemu-img', 'create', '-q', '-f', 'raw', os.path.join(d, name),
            str(MiB))
    real = backend.save_adopted

    def save(instance, record):
        if record.name == 'disk':
            raise OSError(errno.ENOSPC, 'No space left on device')
        real(instance, record)
    with mock.patch.object(backend, 'save_adopted', side_effect=save):
        done = {a.disk: a for a in adopt.adopt_instance(backend, uuid)}
    assert done['disk'].outcome == 'failed'
    assert 'No space left' in done['disk'].reason
    assert done['disk.local'].outcome == 'adopted'
    assert backend.records.get(uuid, 'disk') is None


def test_records_are_written_under_the_instance_lock(host):
    backend = imagebackend.Backend(conf=host)
    uuid = nova_instance(host, {'disk': 'raw'})
    run('qemu-img', 'create', '-q', '-f', 'raw',
        os.path.join(host.instances_path, uuid, 'disk'), str(MiB))
    held = []
    real = backend.save_adopted

    def save(instance, record):
        held.append(locks.held(backend.conf, instance.uuid))
        real(instance, record)
    with mock.patch.object(backend, 'save_adopted', side_effect=save):
        assert [a.outcome for a in adopt.adopt_instance(
            backend, uuid, dry_run=True)] == ['would-adopt']
        assert held == []
        assert [a.outcome for a in adopt.adopt_instance(backend, uuid)] == \
            ['adopted']
    assert held == [True]
    with pytest.raises(exception.InvalidDiskName):
        adopt.adopt_instance(backend, '../' + uuid)
