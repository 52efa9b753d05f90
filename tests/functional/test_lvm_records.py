"""An Lvm disk is where its record says (issue 9, point 6), on real lvm2.

Two small volume groups on loop devices (tests/functional/lvm_env.py stands
in for device-mapper, as in test_lvm.py). A disk made while
``images_volume_group`` named VG A must still be found, grown and deleted
in A after the option names VG B. Run under ``flock /tmp/ib-heavy.lock``.
"""

from __future__ import annotations

import json
import os

import pytest

import imagebackend
from imagebackend import exception

from driver import flows
from tests.functional import lvm_env as lvm_env_mod
from tests.functional.test_lvm import read_device
from tests.hosts import Instance, MiB

MARK = b'lvm-record-truth' * 4096  # 64 KiB


@pytest.fixture(scope='module')
def two_vgs(tmp_path_factory):
    env = lvm_env_mod.LvmEnv(str(tmp_path_factory.mktemp('lvm2'))).start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.environ().items():
            mp.setenv(key, value)
        try:
            env.vg_a = env.add_vg(512 * MiB, prefix='ibrec')
            env.vg_b = env.add_vg(512 * MiB, prefix='ibrec')
            yield env
        finally:
            left = env.close()
    assert left == []


@pytest.fixture
def vgs(two_vgs):
    yield two_vgs
    for vg in two_vgs.vgs:
        two_vgs.reset(vg)


def write_mark(target: str) -> None:
    with open(target, 'r+b') as f:
        f.write(MARK)
        os.fsync(f.fileno())


def lvm_backend(host, vg):
    host.set_override('images_type', 'lvm', group='libvirt')
    host.set_override('images_volume_group', vg, group='libvirt')
    host.set_override('volume_clear', 'none', group='libvirt')
    return imagebackend.Backend(conf=host)


def test_disk_stays_in_recorded_vg_after_option_changes(host, vgs):
    instance = Instance()
    a = lvm_backend(host, vgs.vg_a)
    a.by_name(instance, 'disk').create_from_func(None, write_mark,
                                                  'mark_64M', 64 * MiB)
    lv = f'{instance.uuid}_disk'
    assert set(vgs.lvs(vgs.vg_a)) == {lv}

    # The host's option now names VG B: the existing disk is still in A.
    b = lvm_backend(host, vgs.vg_b)
    disk = b.from_metadata(instance, 'disk')
    assert (disk.vg, disk.location, disk.path) == (
        vgs.vg_a, f'{vgs.vg_a}/{lv}', f'/dev/{vgs.vg_a}/{lv}')
    assert disk.moved_from is None and disk.exists()
    assert read_device(disk.path, 0, len(MARK)) == MARK

    disk.resize_image(128 * MiB)
    assert vgs.lvs(vgs.vg_a)[lv]['size'] == 128 * MiB
    assert vgs.lvs(vgs.vg_b) == {}
    record = b.records.get(instance.uuid, 'disk')
    assert (record.location, record.virtual_size) == (f'{vgs.vg_a}/{lv}',
                                                      128 * MiB)
    assert read_device(disk.path, 0, len(MARK)) == MARK

    # Deleting removes the LV in A, and nothing is made in B.
    assert flows.destroy_disks(b, instance) == ['disk']
    assert vgs.lvs(vgs.vg_a) == {} and vgs.lvs(vgs.vg_b) == {}
    assert b.records.list(instance.uuid) == []


def test_record_naming_another_lv_is_refused(host, vgs):
    # A record (disks.json travels with an instance) must not hand this
    # disk's resize or delete to another instance's volume.
    victim, instance = Instance(), Instance()
    a = lvm_backend(host, vgs.vg_a)
    a.by_name(victim, 'disk').create_from_func(None, write_mark, 'mark_64M',
                                                64 * MiB)
    a.by_name(instance, 'disk').create_from_func(None, write_mark,
                                                  'mark_64M', 64 * MiB)
    path = a.records.path(instance.uuid)
    with open(path) as f:
        doc = json.load(f)
    doc['disks']['disk']['location'] = f'{vgs.vg_a}/{victim.uuid}_disk'
    with open(path, 'w') as f:
        json.dump(doc, f)
    with pytest.raises(exception.CorruptRecord):
        a.from_metadata(instance, 'disk').delete()
    assert f'{victim.uuid}_disk' in vgs.lvs(vgs.vg_a)
