"""One record write per instance (issue 12, point 3), on real disks.

A spawn of three disks (root from an image, ephemeral ext4, swap) writes
the instance's ``disks.json`` twice -- every ``creating`` record, then every
``created`` one -- and Nova's disk.info once. A spawn process killed with
SIGKILL at a named step (after the ``creating`` write; while the last disk
is being made; after the ``created`` write, before disk.info) leaves every
disk it touched findable: a record says ``creating`` for each disk that is
not known whole, ``created`` only for whole ones; and spawning again
clears the dead creations and makes the instance whole.

The spawn runs in a forked child whose step hooks report the step on a pipe
and wait; the test then kills it with SIGKILL, as in test_cli_safety.py.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import traceback

import pytest

import imagebackend
from imagebackend import batch as batch_mod
from imagebackend import fileutils
from imagebackend import image as image_mod

from driver import flows
from driver import instance as instance_mod
from tests.functional.conftest import blkid, qemu_info, run
from tests.hosts import GiB, MiB

NAMES = ['disk', 'disk.local', 'disk.swap']
SIZES = {'disk': GiB, 'disk.local': GiB, 'disk.swap': 64 * MiB}
GUARD = 120  # a hung child must fail the test, never hang it


@pytest.fixture(params=['qcow2', 'flat'])
def image_type(request, host, make_image):
    make_image('img', 'qcow2', 256 * MiB)
    host.set_override('images_type', request.param, group='libvirt')
    return request.param


def new_instance() -> instance_mod.Instance:
    return instance_mod.Instance(
        image_ref='img', name='vm',
        flavor=instance_mod.Flavor(root_gb=1, ephemeral_gb=1, swap=64))


def spawn(host, instance):
    mapping = instance_mod.disk_mapping(instance)
    return flows.spawn(imagebackend.Backend(conf=host), None, instance,
                       mapping)


def assert_whole(host, instance, image_type):
    """Every disk recorded created, whole, of its size and contents."""
    backend = imagebackend.Backend(conf=host)
    records = {r.name: r for r in backend.records.list(instance.uuid)}
    assert sorted(records) == NAMES
    for name, record in records.items():
        assert record.created, record
        assert record.virtual_size == SIZES[name]
        info = qemu_info(record.location, record.format)
        assert info['virtual-size'] == SIZES[name]
        if record.format == 'qcow2':
            run('qemu-img', 'check', '-q', '-f', 'qcow2', record.location)
    if image_type == 'flat':
        inst_dir = os.path.join(host.instances_path, instance.uuid)
        assert blkid(os.path.join(inst_dir, 'disk.local'))['TYPE'] == 'ext4'
        assert blkid(os.path.join(inst_dir, 'disk.swap'))['TYPE'] == 'swap'


def listed(host, instance) -> dict[str, str]:
    path = os.path.join(host.instances_path, instance.uuid, 'disk.info')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {os.path.basename(p): v for p, v in json.load(f).items()}


# -- two writes ----------------------------------------------------------------

def test_spawn_writes_the_records_twice(host, image_type, monkeypatch):
    writes = []
    real = fileutils.atomic_write_json

    def spy(path, data, **kwargs):
        writes.append(os.path.basename(path))
        real(path, data, **kwargs)

    monkeypatch.setattr(fileutils, 'atomic_write_json', spy)
    instance = new_instance()
    assert spawn(host, instance) == NAMES
    assert writes.count('disks.json') == 2
    assert writes.count('disk.info') == 1
    assert_whole(host, instance, image_type)
    assert listed(host, instance) == dict.fromkeys(
        NAMES, 'qcow2' if image_type == 'qcow2' else 'raw')


# -- SIGKILL at a named step ----------------------------------------------------

def _hold(conn, step: str) -> None:
    """Report ``step`` to the test and wait to be killed."""
    conn.send(step)
    conn.recv()  # never answered: the test kills this process


def _child(host, instance, step: str, conn) -> None:
    """The spawn, with a hook stopping it at ``step``."""
    try:
        if step == 'creating written':
            real_declare = batch_mod.CreationBatch.declare

            def declare(self, planned):
                real_declare(self, planned)
                _hold(conn, step)
            batch_mod.CreationBatch.declare = declare
        elif step == 'last disk made':
            # The swap disk's data written, not yet flushed or recorded.
            real_durable = image_mod.Image._make_durable

            def durable(self):
                if self.disk_name == 'disk.swap':
                    _hold(conn, step)
                real_durable(self)
            image_mod.Image._make_durable = durable
        else:  # 'created written'
            real_sync = batch_mod.sync_disk_info

            def sync(images, **kwargs):
                _hold(conn, step)
                real_sync(images, **kwargs)
            batch_mod.sync_disk_info = sync
        spawn(host, instance)
        conn.send('finished')
    except BaseException:
        conn.send(traceback.format_exc())


def _killed_at(host, instance, step: str) -> None:
    ctx = multiprocessing.get_context('fork')
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_child, args=(host, instance, step, there))
    proc.start()
    try:
        assert here.poll(GUARD), 'the spawn never reached the step'
        assert here.recv() == step
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(GUARD)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
            proc.join()


STEPS = {
    # step: (records' states after it, disks on storage)
    'creating written': ('creating', []),
    'last disk made': ('creating', NAMES),
    'created written': ('created', NAMES),
}


@pytest.mark.parametrize('step', sorted(STEPS))
def test_spawn_killed_at_a_step_is_found_and_made_whole(host, image_type,
                                                        step):
    instance = new_instance()
    _killed_at(host, instance, step)

    backend = imagebackend.Backend(conf=host)
    state, there = STEPS[step]
    inst_dir = os.path.join(host.instances_path, instance.uuid)
    on_storage = sorted(n for n in os.listdir(inst_dir) if n in NAMES)
    assert on_storage == there
    records = {r.name: r for r in backend.records.list(instance.uuid)}
    # Every disk the spawn touched is findable: all have records, and none
    # says created unless all were whole.
    assert sorted(records) == NAMES
    assert {r.state for r in records.values()} == {state}
    if state == 'created':
        assert_whole(host, instance, image_type)

    # Spawning again clears the dead creations and makes them again.
    made = spawn(host, instance)
    assert made == ([] if state == 'created' else NAMES)
    assert_whole(host, instance, image_type)
    # disk.info: written by the new spawn, or (killed before it) by the
    # next look at the disk's format, as after any crash between the two.
    for name in NAMES:
        backend.from_metadata(instance, name).resolve_driver_format()
    assert listed(host, instance) == dict.fromkeys(
        NAMES, 'qcow2' if image_type == 'qcow2' else 'raw')
