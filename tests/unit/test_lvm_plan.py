"""Lvm.plan_create for what cannot run here for real (thin pools, sparse
LVs: no device-mapper): the plan's commands against the ones creation
runs, at the process boundary (tests/unit/test_lvm.py's FakeLvm). The
thick path runs on real lvm2 in tests/functional/test_host_plan_lvm.py."""

from __future__ import annotations

import os
from unittest import mock

import pytest

from imagebackend import plans
from imagebackend.backends import lvm

try:
    from .. import hosts
    from .test_lvm import GiB, MiB, VG, backend, conf, fake, thin  # noqa
except ImportError:
    import hosts
    from test_lvm import GiB, MiB, VG, backend, conf, fake, thin  # noqa


def planned(disk, source_type, source_id, size, func=None):
    """The plan's commands, without the conditional ones: the image here
    is zeroes, so never the bare ext filesystem whose growth is conditional
    until it is cached."""
    steps = disk.plan_create(source_type, source_id, func, size)
    assert {s.when for s in steps} <= {
        None, 'if the image is one bare ext filesystem'}
    return [s.command for s in steps if s.command and s.when is None]


@pytest.fixture(autouse=True)
def no_device_flush():
    # No block device exists here; fsync is in-process, no command.
    with mock.patch.object(lvm, 'flush_device'):
        yield


@pytest.fixture
def image(conf):
    path = os.path.join(conf.imagebackend.images_dir, 'img.raw')
    with open(path, 'wb') as f:
        f.truncate(64 * MiB)
    return path


def test_thin_plan_is_what_creation_runs(fake, thin, image):
    fake.volumes['pool0'] = (30 * GiB, 'thin-pool')
    first = thin.by_name(hosts.Instance(), 'disk')
    plan = planned(first, 'image', 'img', GiB)
    assert ('lvcreate', '-y', '-T', f'{VG}/pool0', '-V', f'{64 * MiB}b',
            '-n', mock.ANY) in plan
    fake.calls.clear()
    first.create_from_image(None, 'img', GiB)
    assert fake.calls == plan
    # The base LV is there now: a snapshot of it, nothing copied.
    second = thin.by_name(hosts.Instance(), 'disk')
    plan = planned(second, 'image', 'img', None)
    fake.calls.clear()
    second.create_from_image(None, 'img')
    assert fake.calls == plan
    # The extent size known, no record: is the base there, snapshot it.
    assert [c[0] for c in plan] == ['lvs', 'lvcreate']
    # A generated disk is a thin LV of the pool.
    local = thin.by_name(hosts.Instance(), 'disk.local')
    written = []
    plan = planned(local, 'func', 'ephemeral_x', 20 * GiB, written.append)
    assert plan[-1][:2] == ('lvcreate', '-y') and written == []
    fake.calls.clear()
    local.create_from_func(None, written.append, 'ephemeral_x', 20 * GiB)
    assert fake.calls == plan and written == [local.path]


def test_thin_plan_refuses_without_the_pool(fake, thin, image):
    disk = thin.by_name(hosts.Instance(), 'disk')
    with pytest.raises(plans.Refused) as e:
        disk.plan_create('image', 'img', None, GiB)
    assert type(e.value.error).__name__ == 'BackendUnavailable'
    assert 'pool0' in str(e.value)


def test_sparse_plan_is_what_creation_runs(fake, conf, backend, image):
    conf.set_override('sparse_logical_volumes', True, group='libvirt')
    disk = backend.by_name(hosts.Instance(), 'disk')
    plan = planned(disk, 'image', 'img', 2 * GiB)
    assert ('lvcreate', '-y', '-L', f'{64 * MiB}b', '--virtualsize',
            f'{2 * GiB}b', '-n', disk.lv, VG) in plan
    fake.calls.clear()
    disk.create_from_image(None, 'img', 2 * GiB)
    assert fake.calls == plan


def test_plan_refuses_where_creation_would(fake, backend, image):
    fake.free = 32 * MiB
    disk = backend.by_name(hosts.Instance(), 'disk')
    with pytest.raises(plans.Refused) as e:
        disk.plan_create('image', 'img', None, GiB)
    assert type(e.value.error).__name__ == 'InsufficientSpace'
    with pytest.raises(plans.Refused) as e:
        disk.plan_create('image', 'img', None, MiB)
    assert type(e.value.error).__name__ == 'DiskTooSmall'
    with pytest.raises(plans.Refused) as e:
        disk.plan_create('func', 'ephemeral_x', print, None)
    assert type(e.value.error).__name__ == 'InvalidInput'
