"""``plan spawn`` on a Ploop host (issue 11, point 1): the plan the Ploop
backend gives (``Ploop.plan_create``), with nothing on disk changed, is
what the real spawn then runs on the real ``ploop`` tool and qemu-img."""

from __future__ import annotations

import os
import uuid as uuid_mod

import pytest

from tests.functional.conftest import host_site, run, tree
from tests.functional.test_host_plan_cli import cli, commands, spawn
from tests.hosts import GiB, MiB


@pytest.fixture
def site(tmp_path):
    return host_site(tmp_path, False, 'ploop')


def test_plan_ploop_spawn_then_the_spawn_runs_what_it_said(site, repo_root):
    # A qcow2 image kept as is (force_raw_images off): the root disk is
    # converted straight into an expanded image of the flavor's size.
    image = site / 'images' / 'img.qcow2'
    run('qemu-img', 'create', '-q', '-f', 'qcow2', str(image), '64M')
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M', str(image))
    uuid = str(uuid_mod.uuid4())
    args = ('--image', 'img', '--root-gb', '1', '--ephemeral-gb', '1',
            '--swap-mb', '64', '--uuid', uuid)
    before = tree(site)
    code, plan = cli(repo_root, site, *args)
    assert tree(site) == before  # nothing on disk changed
    assert code == 0, plan
    disks = {d['disk']: d for d in plan['disks']}
    assert list(disks) == ['disk', 'disk.local', 'disk.swap']
    assert all(d['backend'] == 'ploop' and d['planned'] and not d['error']
               for d in disks.values())
    root = disks['disk']
    data = os.path.join(site, 'instances', uuid, 'disk', 'root.hds')
    assert root['fetch_bytes'] == os.path.getsize(image)
    # Its virtual size is known once fetched: both ways are planned, each
    # with its condition; the image is smaller, so the first is taken.
    small = f'if the image is smaller than {GiB} bytes'
    conditional = [(s['when'], s['command'][:2]) for s in root['steps']
                   if s['command']]
    assert conditional == [(small, ['qemu-img', 'create']),
                           (small, ['qemu-img', 'convert']),
                           ('otherwise', ['qemu-img', 'convert'])]
    create, convert = [tuple(s['command']) for s in root['steps']
                       if s['command'] and s['when'] == small]
    base = convert[-2]
    assert os.path.dirname(base) == os.path.join(site, 'instances', '_base')
    assert create == ('qemu-img', 'create', '-q', '-f', 'parallels', '-o',
                      f'cluster_size={MiB}', data, str(GiB))
    assert convert == ('qemu-img', 'convert', '-q', '-n', '--target-is-zero',
                       '-f', 'qcow2', '-O', 'parallels', base, data)
    # Ephemeral and swap: the template into root.hds, then the real tool
    # writes the descriptor (as root).
    for name in ('disk.local', 'disk.swap'):
        directory = os.path.join(site, 'instances', uuid, name)
        assert [s['command'] for s in disks[name]['steps']
                if s['command']][-1] == [
            'ploop', 'restore-descriptor', '-f', 'raw', directory,
            os.path.join(directory, 'root.hds')]
    assert disks['disk.swap']['write_bytes'] == 64 * MiB

    ran = spawn(site, uuid, None, 'img', 1, 1, 64)
    assert ran == [tuple(s['command']) for d in plan['disks']
                   for s in d['steps']
                   if s['command'] and s['when'] != 'otherwise']

    # Another instance from the cached image, at the image's size: one
    # conversion, the descriptor written in-process.
    other = str(uuid_mod.uuid4())
    code, again = cli(repo_root, site, '--image', 'img', '--root-gb', '0',
                      '--uuid', other)
    assert code == 0, again
    root = again['disks'][0]
    assert root['fetch_bytes'] == 0
    assert root['steps'][0]['what'].startswith('use cache entry')
    assert commands(again) == [
        ('qemu-img', 'convert', '-q', '-f', 'qcow2', '-O', 'parallels', base,
         os.path.join(site, 'instances', other, 'disk', 'root.hds'))]
    assert spawn(site, other, None, 'img', 0) == commands(again)


def test_plan_ploop_raw_image_and_refusal(site, repo_root):
    run('truncate', '-s', f'{3 * MiB + 5}', str(site / 'images' / 'odd.raw'))
    run('truncate', '-s', f'{2 * GiB}', str(site / 'images' / 'big.raw'))
    uuid = str(uuid_mod.uuid4())
    before = tree(site)
    # Refused as the creation would be, having done nothing.
    code, plan = cli(repo_root, site, '--image', 'big', '--root-gb', '1')
    assert code == 1 and plan['would_fail'] == ['disk']
    assert plan['disks'][0]['error'].startswith('DiskTooSmall')
    # A raw image of odd size: copied, padded to whole MiB, described by
    # the real tool.
    code, plan = cli(repo_root, site, '--image', 'odd', '--root-gb', '0',
                     '--uuid', uuid)
    assert tree(site) == before
    assert code == 0, plan
    steps = plan['disks'][0]['steps']
    assert any(s['what'].endswith(f'to {4 * MiB} bytes (truncate)')
               for s in steps)
    directory = os.path.join(site, 'instances', uuid, 'disk')
    assert commands(plan) == [
        ('ploop', 'restore-descriptor', '-f', 'raw', directory,
         os.path.join(directory, 'root.hds'))]
    assert spawn(site, uuid, None, 'odd', 0) == commands(plan)


def test_plan_ploop_parallels_image_keeps_its_cluster_size(site, repo_root):
    # An image declared ploop, made by qemu with 256 KiB clusters: fetched
    # by the first spawn (copied as is), then planned from the cache at a
    # larger size (an image of that size with the image's cluster size).
    image = site / 'images' / 'pl.ploop'
    run('qemu-img', 'create', '-q', '-f', 'parallels', '-o',
        f'cluster_size={256 * 1024}', str(image), '8M')
    run('qemu-io', '-f', 'parallels', '-c', 'write -P 0xcd 0 1M', str(image))
    first, second = str(uuid_mod.uuid4()), str(uuid_mod.uuid4())
    code, plan = cli(repo_root, site, '--image', 'pl', '--root-gb', '0',
                     '--uuid', first)
    assert code == 0, plan
    assert commands(plan) == []
    assert spawn(site, first, None, 'pl', 0) == []
    before = tree(site)
    code, plan = cli(repo_root, site, '--image', 'pl', '--uuid', second)
    assert tree(site) == before
    assert code == 0, plan
    planned = commands(plan)
    assert [c[:2] for c in planned] == [('qemu-img', 'create'),
                                        ('qemu-img', 'convert')]
    assert planned[0][6] == f'cluster_size={256 * 1024}'
    assert spawn(site, second, None, 'pl', 1) == planned
