"""Mixed hosts (issue 10, point 4c, the part that needs no Nova driver):
an instance directory made by Nova's OWN module (real Nova 34.0.0, run in
its own virtualenv by tests/nova_disk_helper.py) is opened and grown by
the library; one the library made is opened by Nova's module, which must
read the right formats and recreate nothing.

The link between them is Nova's disk.info: Nova wrote it, the library
reads it on first touch and keeps it in step with its records.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid as uuid_mod

import pytest

import imagebackend
from imagebackend import names

from driver import flows
from driver import instance as instance_mod
from driver import migration
from tests.functional.conftest import qemu_info, run
from tests.functional.test_flows import Hosts
from tests.functional.test_records_truth import guest_writes_qcow2_header
from tests.hosts import GiB, MiB, make_conf

MAPPING = {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}
IMAGE = 'img'

# name -> (Nova's class, the library's type, force_raw_images, format)
CASES = {
    'flat-raw': ('Flat', 'flat', True, 'raw'),
    # Nova's Flat with force_raw_images off keeps the qcow2 image.
    'flat-qcow2': ('Flat', 'flat', False, 'qcow2'),
    'qcow2-overlay': ('Qcow2', 'qcow2', True, 'qcow2'),
}


def nova(repo_root, jobs: list[dict]) -> list[dict]:
    """Run Nova's own module on ``jobs`` (see tests/nova_disk_helper.py)."""
    python = repo_root / '.venv-nova' / 'bin' / 'python'
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
    done = subprocess.run(
        [str(python), str(repo_root / 'tests' / 'nova_disk_helper.py'),
         json.dumps(jobs)], capture_output=True, text=True, env=env,
        cwd='/')
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def make_image(images_dir: str) -> str:
    path = os.path.join(images_dir, f'{IMAGE}.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', path, str(64 * MiB))
    run('qemu-io', '-f', 'qcow2', '-c', f'write -P 0xab 0 1M', path)
    return path


def job(op, instances_path, images_dir, uuid, case) -> dict:
    cls, _type, force_raw, _fmt = CASES[case]
    return {'op': op, 'instances_path': instances_path,
            'images_dir': images_dir, 'uuid': uuid,
            'conf': {'force_raw_images': force_raw},
            'disks': [{'cls': cls, 'name': 'disk', 'image_id': IMAGE,
                       'size': GiB}]}


def library(instances_path, images_dir, case) -> imagebackend.Backend:
    _cls, image_type, force_raw, _fmt = CASES[case]
    conf = make_conf(instances_path, images_dir)
    conf.set_override('force_raw_images', force_raw)
    conf.set_override('images_type', image_type, group='libvirt')
    return imagebackend.Backend(conf=conf)


def read_disk_info(instances_path, uuid) -> dict:
    with open(os.path.join(instances_path, uuid, 'disk.info')) as f:
        return json.loads(f.read().rstrip())


def assert_guest_data(path, fmt):
    # The image's first MiB, read through the disk's own format.
    run('qemu-io', '-f', fmt, '-c', 'read -P 0xab 0 1M', path)


# -- made by Nova's module, opened and grown by the library -------------------

@pytest.fixture(scope='module')
def nova_made(tmp_path_factory, repo_root):
    """One host per case, each with an instance Nova's module made."""
    root = tmp_path_factory.mktemp('nova-made')
    images_dir = str(root / 'images')
    os.makedirs(images_dir)
    make_image(images_dir)
    made = {}
    for case in CASES:
        made[case] = (str(root / case / 'instances'), str(uuid_mod.uuid4()))
        os.makedirs(made[case][0])
    results = nova(repo_root, [job('make', path, images_dir, uuid, case)
                               for case, (path, uuid) in made.items()])
    return images_dir, {case: (path, uuid, result) for (case, (path, uuid)),
                        result in zip(made.items(), results)}


@pytest.mark.parametrize('case', CASES)
def test_nova_made_disk_opened_and_grown_by_library(nova_made, case):
    images_dir, made = nova_made
    instances_path, uuid, result = made[case]
    _cls, image_type, _force_raw, fmt = CASES[case]
    path = os.path.join(instances_path, uuid, 'disk')
    # What Nova's module made: no records, only its disk.info.
    assert result['disk_info'] == {path: fmt}
    assert result['disks']['disk']['driver_format_after'] == fmt
    assert not os.path.exists(os.path.join(instances_path, uuid,
                                           names.RECORDS_FILE))
    assert qemu_info(path, fmt)['virtual-size'] == GiB

    b = library(instances_path, images_dir, case)
    instance = instance_mod.Instance(uuid=uuid)
    disk = b.from_metadata(instance, 'disk', MAPPING)
    assert disk.driver_format == fmt
    assert disk.resolve_driver_format() == fmt
    assert disk.libvirt_info(None, {}).driver_format == fmt
    record = disk.record
    assert (record.format, record.virtual_size) == (fmt, GiB)
    assert record.provenance == {'path': 'adopted', 'from': 'disk.info'}
    if case == 'qcow2-overlay':
        # Its base, in the image cache, Nova-named; raw (force_raw_images).
        assert record.backing == names.image_cache_name(IMAGE)
        assert record.backing_format == 'raw'
    else:
        assert record.backing is None

    disk.resize_image(2 * GiB)
    info = qemu_info(path, fmt)
    assert (info['format'], info['virtual-size']) == (fmt, 2 * GiB)
    if fmt == 'qcow2':
        run('qemu-img', 'check', '-q', '-f', 'qcow2', path)
    assert_guest_data(path, fmt)
    record = b.records.get(uuid, 'disk')
    assert (record.format, record.virtual_size) == (fmt, 2 * GiB)
    assert read_disk_info(instances_path, uuid) == {path: fmt}


# -- made by the library, opened by Nova's module -----------------------------

@pytest.fixture(scope='module')
def library_made(tmp_path_factory, repo_root):
    """One host per case, an instance the library made, then opened by
    Nova's module. The flat-raw disk's guest has written a qcow2 header
    naming a host file as its backing file."""
    root = tmp_path_factory.mktemp('library-made')
    images_dir = str(root / 'images')
    os.makedirs(images_dir)
    make_image(images_dir)
    secret = root / 'host-secret'
    secret.write_bytes(b'secret')
    made, before = {}, {}
    for case in CASES:
        instances_path = str(root / case / 'instances')
        os.makedirs(instances_path)
        uuid = str(uuid_mod.uuid4())
        b = library(instances_path, images_dir, case)
        instance = instance_mod.Instance(uuid=uuid)
        disk = b.by_name(instance, 'disk')
        disk.create_from_image(None, IMAGE, GiB)
        if case == 'flat-raw':
            guest_writes_qcow2_header(disk.path, str(secret), root)
        made[case] = (instances_path, uuid)
        before[case] = read_disk_info(instances_path, uuid)
    results = nova(repo_root, [job('open', path, images_dir, uuid, case)
                               for case, (path, uuid) in made.items()])
    return {case: (path, uuid, before[case], result)
            for (case, (path, uuid)), result in zip(made.items(), results)}


@pytest.mark.parametrize('case', CASES)
def test_library_made_disk_opened_by_nova(library_made, case):
    instances_path, uuid, listed_before, result = library_made[case]
    fmt = CASES[case][3]
    path = os.path.join(instances_path, uuid, 'disk')
    assert listed_before == {path: fmt}
    opened = result['disks']['disk']
    assert opened['exists']
    # Nova's module reads the format the library listed: for flat-raw,
    # raw, although the guest's bytes now look like qcow2 to a probe.
    assert opened['driver_format'] == fmt
    assert opened['resolved'] == fmt
    assert opened['driver_format_after'] == fmt
    # Its cache() found everything there: nothing fetched or recreated.
    assert opened['fetched'] == [] and result['downloads'] == []
    assert not opened['changed']
    assert result['disk_info'] == {path: fmt}
    assert qemu_info(path, fmt)['virtual-size'] == GiB


# -- made by the library, moved by it to a host whose paths differ ------------

def test_library_migrated_disk_opened_by_nova_on_the_new_host(tmp_path,
                                                              repo_root):
    hosts = Hosts(tmp_path)
    make_image(hosts.images)
    for conf in hosts.confs.values():
        conf.set_override('force_raw_images', False)
        conf.set_override('images_type', 'flat', group='libvirt')
    instance = instance_mod.Instance(image_ref=IMAGE, name='vm',
                                     flavor=instance_mod.Flavor(root_gb=1))
    mapping = instance_mod.disk_mapping(instance, {})
    flows.spawn(hosts.backend('a'), None, instance, mapping, {})
    migration.migrate_disks(hosts.backend('a'), instance, mapping, 'b',
                            hosts.transport, {})
    flows.finish_migration(hosts.backend('b'), None, instance, mapping, {},
                           source_host='a')
    path = os.path.join(hosts.paths['b'], instance.uuid, 'disk')
    assert read_disk_info(hosts.paths['b'], instance.uuid) == {path: 'qcow2'}
    [result] = nova(repo_root, [
        job('open', hosts.paths['b'], hosts.images, instance.uuid,
            'flat-qcow2')])
    opened = result['disks']['disk']
    assert (opened['driver_format'], opened['resolved']) == ('qcow2',
                                                             'qcow2')
    assert opened['driver_format_after'] == 'qcow2'
    # A Flat disk needs no base, so b's cache has none; Nova's cache()
    # fetches one into _base whenever it is missing (its own way), but
    # the disk itself is not recreated.
    assert opened['fetched'] == [os.path.join(
        hosts.paths['b'], '_base', names.image_cache_name(IMAGE))]
    assert not opened['changed']
    assert read_disk_info(hosts.paths['b'], instance.uuid) == {path: 'qcow2'}
