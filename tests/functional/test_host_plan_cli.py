"""``plan spawn`` on a real host layout (issue 11, point 1): what spawn
would do, per disk, with nothing on disk changed -- and then the real
spawn, whose commands must be the ones the plan said."""

from __future__ import annotations

import os
import uuid as uuid_mod

import pytest

from imagebackend import plans
from imagebackend import processes

from driver import flows
from driver import host as host_mod
from driver import instance as instance_mod
from tests.functional.conftest import host_cli, host_site, run, tree
from tests.hosts import GiB, MiB


@pytest.fixture
def site(tmp_path):
    return host_site(tmp_path, True, 'qcow2')


def cli(repo_root, site, *args):
    return host_cli(repo_root, site / 'nova.conf', 'plan', 'spawn', *args)


def commands(plan) -> list[tuple[str, ...]]:
    return [tuple(s['command']) for d in plan['disks'] for s in d['steps']
            if s['command']]


def spawn(site, uuid, images_type, image_id, root_gb, ephemeral_gb=0,
          swap_mb=0, config_drive=False):
    """The real spawn flow, on the same host: the commands it ran (the
    config drive's temporary directory named as the plan names it)."""
    host = host_mod.Host([str(site / 'nova.conf')])
    backend = host.backend(images_type)
    instance = instance_mod.Instance(
        uuid=uuid, image_ref=image_id, config_drive=config_drive,
        flavor=instance_mod.Flavor(root_gb=root_gb,
                                   ephemeral_gb=ephemeral_gb, swap=swap_mb))
    with processes.recording() as ran:
        flows.spawn(backend, None, instance,
                    instance_mod.disk_mapping(instance))
    return [tuple(plans.TEMPORARY if os.path.basename(arg).startswith(
        'configdrive-') else arg for arg in cmd) for cmd in ran]


def test_plan_qcow2_spawn_then_the_spawn_runs_what_it_said(site,
                                                           repo_root):
    image = site / 'images' / 'img.qcow2'
    run('qemu-img', 'create', '-q', '-f', 'qcow2', str(image), '64M')
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M', str(image))
    uuid = str(uuid_mod.uuid4())
    before = tree(site)
    code, plan = cli(repo_root, site, '--image', 'img', '--root-gb', '1',
                     '--ephemeral-gb', '1', '--swap-mb', '64',
                     '--config-drive', '--uuid', uuid)
    assert tree(site) == before  # nothing on disk changed
    assert code == 0, plan
    disks = {d['disk']: d for d in plan['disks']}
    assert list(disks) == ['disk', 'disk.local', 'disk.swap', 'disk.config']
    # The config drive is a plain file whatever images_type says.
    assert [d['backend'] for d in disks.values()] == ['qcow2'] * 3 + ['flat']
    assert {d['action'] for d in disks.values()} == {'create'}
    root = disks['disk']
    assert root['size'] == GiB
    assert root['fetch_bytes'] == os.path.getsize(image)
    assert plan['fetch_bytes'] == os.path.getsize(image)
    assert disks['disk.swap']['write_bytes'] == 64 * MiB
    assert disks['disk.local']['fetch_bytes'] == 0

    ran = spawn(site, uuid, None, 'img', 1, 1, 64, config_drive=True)
    assert ran == commands(plan)
    # Planned again: every disk is there, nothing would run.
    code, again = cli(repo_root, site, '--image', 'img', '--root-gb', '1',
                      '--ephemeral-gb', '1', '--swap-mb', '64',
                      '--config-drive', '--uuid', uuid)
    assert code == 0
    assert [d['action'] for d in again['disks']] == ['keep'] * 4
    assert commands(again) == []


def test_plan_flat_spawn_grows_a_bare_filesystem(site, repo_root):
    image = site / 'images' / 'ext.raw'
    run('truncate', '-s', '32M', str(image))
    run('mkfs', '-t', 'ext4', '-F', '-q', str(image))
    uuid = str(uuid_mod.uuid4())
    args = ('--image', 'ext', '--root-gb', '1', '--swap-mb', '16',
            '--images-type', 'flat', '--uuid', uuid)
    before = tree(site)
    code, plan = cli(repo_root, site, *args)
    assert tree(site) == before
    assert code == 0, plan
    root = plan['disks'][0]
    path = os.path.join(site, 'instances', uuid, 'disk')
    assert (root['backend'], root['location']) == ('flat', path)
    # Not fetched yet: whether it is a bare ext filesystem is a condition.
    grow = [s for s in root['steps'] if s['command'] and
            s['command'][0] in ('e2fsck', 'resize2fs')]
    assert [s['when'] for s in grow] == [
        'if the image is one bare ext filesystem'] * 2
    ran = spawn(site, uuid, 'flat', 'ext', 1, swap_mb=16)
    assert ran == commands(plan)

    # Another instance: the image is cached now, nothing to fetch, and
    # its bytes say the filesystem is grown.
    code, plan = cli(repo_root, site, *args[:-1], str(uuid_mod.uuid4()))
    root = plan['disks'][0]
    assert root['fetch_bytes'] == 0
    assert root['steps'][0]['what'].startswith('use cache entry')
    assert [s['when'] for s in root['steps'] if s['command']] == [None] * 2


def test_plan_refusals_say_why_and_change_nothing(site, repo_root):
    run('truncate', '-s', f'{2 * GiB}', str(site / 'images' / 'big.raw'))
    before = tree(site)
    code, plan = cli(repo_root, site, '--image', 'absent')
    assert code == 1 and plan['would_fail'] == ['disk']
    assert plan['disks'][0]['error'].startswith('ImageNotFound')
    code, plan = cli(repo_root, site, '--image', 'big', '--root-gb', '1')
    assert code == 1
    assert plan['disks'][0]['error'].startswith('DiskTooSmall')
    assert tree(site) == before
