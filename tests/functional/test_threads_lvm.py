"""One Lvm Backend shared by native threads, on real lvm2 (loop devices).

The smaller sibling of test_threads.py for the Lvm backend: 8 threads on
6 instances from one image (2 instances with two threads each), in one
volume group of the project's loop LVM environment (see test_lvm.py).
Each thread spawns through driver.flows (root from the image, swap),
resizes with finish_migration (swap made again at another size) and
deletes every third instance. Roots are not grown: the environment's
stand-in for device-mapper can only map an LV whose extents are
contiguous, and an LV grown after others were made is not. Afterwards the volume group holds
exactly the LVs the records name, at the sizes they say, every record
created, the image fetched once. Runs lvm2: under flock /tmp/ib-heavy.lock.
Nothing here asserts on time.
"""

from __future__ import annotations

import os
import threading
import traceback

import pytest

import imagebackend
from imagebackend import records as records_mod
from imagebackend.backends import lvm as lvm_mod

from driver import flows
from driver import instance as instance_mod
from tests.functional import lvm_env as lvm_env_mod
from tests.functional.test_lvm import read_device
from tests.functional.test_threads import CountingSource
from tests.hosts import GiB, MiB

GUARD = 300          # seconds: a deadlock guard, never an assertion
SPAWN = instance_mod.Flavor(root_gb=1, ephemeral_gb=0, swap=32)
GROW = instance_mod.Flavor(root_gb=1, ephemeral_gb=0, swap=48)
IMAGE_SIZE = 64 * MiB


@pytest.fixture
def lvm_vg(tmp_path):
    """A volume group of 16 GiB (sparse) in an environment of its own,
    torn down afterwards with nothing left attached. Its LVs are
    allocated contiguously (see the module docstring)."""
    env = lvm_env_mod.LvmEnv(str(tmp_path / 'lvm')).start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.environ().items():
            mp.setenv(key, value)
        try:
            vg = env.add_vg(16 * GiB)
            env.lvm('vgchange', '--alloc', 'contiguous', vg)
            yield env, vg
        finally:
            left = env.close()
    assert left == []


def _work(backend, uuid, delete, barrier, errors) -> None:
    try:
        barrier.wait(GUARD)
        for flavor, flow in ((SPAWN, flows.spawn),
                             (GROW, flows.finish_migration)):
            inst = instance_mod.Instance(uuid=uuid, image_ref='img',
                                         name='vm', flavor=flavor)
            flow(backend, None, inst, instance_mod.disk_mapping(inst))
        if delete:
            flows.destroy_disks(backend, inst)
    except BaseException:
        errors.append(traceback.format_exc())


def test_eight_threads_share_one_lvm_backend(host, make_image, lvm_vg):
    env, vg = lvm_vg
    make_image('img', 'raw', IMAGE_SIZE, pattern=0xc3)
    host.set_override('images_type', 'lvm', group='libvirt')
    host.set_override('images_volume_group', vg, group='libvirt')
    # Deleted LVs are not wiped: zeroing 1 GiB each is not the subject.
    host.set_override('volume_clear', 'none', group='libvirt')
    source = CountingSource(host.imagebackend.images_dir)
    backend = imagebackend.Backend(conf=host, source=source)
    uuids = [f'7f000000-0000-4000-8000-1{i:011d}' for i in range(6)]
    deleted = {u for i, u in enumerate(uuids) if i % 3 == 2}
    # Instances 4 and 5 have two threads each.
    work = uuids + uuids[4:]
    errors: list = []
    barrier = threading.Barrier(len(work))
    threads = [threading.Thread(target=_work,
                                args=(backend, u, u in deleted, barrier,
                                      errors)) for u in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(GUARD)
        assert not t.is_alive(), 'a thread hung (deadlock?)'

    assert errors == [], '\n'.join(errors)
    assert dict(source.fetches) == {'img': 1}
    lvs = {name: info['size'] for name, info in env.lvs(vg).items()}
    expected = {}
    for uuid in uuids:
        records = {r.name: r for r in backend.records.list(uuid)}
        if uuid in deleted:
            assert records == {}
            continue
        assert sorted(records) == ['disk', 'disk.swap']
        for name, size in (('disk', GiB), ('disk.swap', 48 * MiB)):
            record = records[name]
            lv = lvm_mod.lv_name(uuid, name)
            assert record.state == records_mod.CREATED, record
            assert (record.backend, record.format, record.location) == (
                'lvm', 'raw', f'{vg}/{lv}')
            assert record.virtual_size == size == lvs.get(lv), (record, lvs)
            expected[lv] = size
        root = os.path.join('/dev', vg, lvm_mod.lv_name(uuid, 'disk'))
        assert read_device(root, 0, MiB) == b'\xc3' * MiB
    # No LV without a record (nothing half-made or left over).
    assert lvs == expected
