"""``plan spawn`` on Lvm (issue 11, point 1), on real lvm2 (a volume group
on a loop device, tests/functional/lvm_env.py): what spawn would run per
disk, with nothing on disk or in LVM changed -- then the real spawn, whose
commands must be exactly the ones the plan said, in order."""

from __future__ import annotations

import dataclasses
import os
import uuid as uuid_mod

import pytest

import imagebackend
from imagebackend import dmcrypt
from imagebackend import processes
from imagebackend.backends import lvm as lvm_mod

from driver import flows
from driver import host as host_mod
from driver import instance as instance_mod
from driver import spawn_plan
from tests import fake_cryptsetup
from tests.functional import lvm_env as lvm_env_mod
from tests.functional.conftest import host_site, run, tree
from tests.functional.test_host_plan_cli import cli, commands, spawn
from tests.functional.test_lvm_encryption import KEY_UUID, KeyManager
from tests.hosts import GiB, MiB


@pytest.fixture(scope='module')
def lvm_env(tmp_path_factory):
    env = lvm_env_mod.LvmEnv(str(tmp_path_factory.mktemp('lvm-plan'))).start()
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.environ().items():
            mp.setenv(key, value)
        try:
            env.vg = env.add_vg(4 * GiB, prefix='ibplan')
            yield env
        finally:
            left = env.close()
    assert left == []


@pytest.fixture
def vg(lvm_env):
    yield lvm_env.vg
    lvm_env.reset(lvm_env.vg)


@pytest.fixture
def site(tmp_path, vg):
    return host_site(tmp_path, True, 'lvm',
                     f'images_volume_group = {vg}\n')


def lvm_state(site, vg):
    """Files under the site, LVs of the VG, device nodes: to compare."""
    return (tree(site), run('lvs', '--noheadings', '-o',
                            'lv_name,lv_size,lv_attr', vg),
            sorted(os.listdir(os.path.join('/dev', vg)))
            if os.path.isdir(os.path.join('/dev', vg)) else None)


def flow_order(disks) -> list[tuple[str, ...]]:
    """The commands of per-disk plan steps (``disks``: a list of lists of
    (what, command)) in the order the spawn flow runs them: it asks
    whether each disk with no record is there (``plan_exists``, a disk's
    first step) before it creates any, as their ``creating`` records are
    written in one batch (``Backend.batch``)."""
    def is_check(what):
        return what.startswith('is ') and what.endswith(' there?')
    checks = [tuple(c) for d in disks for what, c in d[:1]
              if c and is_check(what)]
    rest = [tuple(c) for d in disks
            for i, (what, c) in enumerate(d)
            if c and not (i == 0 and is_check(what))]
    return checks + rest


def ext_image(site, name='ext', size='32M'):
    image = site / 'images' / f'{name}.raw'
    run('truncate', '-s', size, str(image))
    run('mkfs', '-t', 'ext4', '-F', '-q', str(image))
    return image


def test_plan_lvm_spawn_then_the_spawn_runs_what_it_said(site, vg,
                                                         repo_root):
    image = ext_image(site)
    uuid = str(uuid_mod.uuid4())
    args = ('--image', 'ext', '--root-gb', '1', '--ephemeral-gb', '1',
            '--swap-mb', '64', '--uuid', uuid)
    before = lvm_state(site, vg)
    code, plan = cli(repo_root, site, *args)
    assert lvm_state(site, vg) == before  # nothing made, in LVM or on disk
    assert code == 0, plan
    disks = {d['disk']: d for d in plan['disks']}
    assert list(disks) == ['disk', 'disk.local', 'disk.swap']
    assert all(d['backend'] == 'lvm' and d['planned'] for d in disks.values())
    assert disks['disk']['location'] == f'{vg}/{uuid}_disk'
    root = disks['disk']
    assert root['fetch_bytes'] == os.path.getsize(image)
    # Downloaded into the cache, then its guest bytes into the LV.
    assert root['write_bytes'] == 2 * os.path.getsize(image)
    lvcreate = [s['command'] for s in root['steps']
                if s['command'] and s['command'][0] == 'lvcreate']
    assert lvcreate == [['lvcreate', '-y', '-L', f'{GiB}b', '-n',
                         f'{uuid}_disk', vg]]
    # Not fetched yet: whether its filesystem is grown is a condition.
    assert [s['when'] for s in root['steps'] if s['command'] and
            s['command'][0] in ('e2fsck', 'resize2fs')] == [
        'if the image is one bare ext filesystem'] * 2
    assert disks['disk.swap']['write_bytes'] == 64 * MiB

    ran = spawn(site, uuid, None, 'ext', 1, 1, 64)
    assert ran == flow_order([[(s['what'], s['command']) for s in d['steps']]
                              for d in plan['disks']])

    # Every disk is there now: nothing would run.
    code, again = cli(repo_root, site, *args)
    assert code == 0
    assert [d['action'] for d in again['disks']] == ['keep'] * 3
    assert commands(again) == []
    # Another instance: the image is cached, and its bytes say the
    # filesystem is grown.
    code, other = cli(repo_root, site, *args[:-1], str(uuid_mod.uuid4()))
    root = other['disks'][0]
    assert root['fetch_bytes'] == 0
    assert [s['when'] for s in root['steps'] if s['command'] and
            s['command'][0] in ('e2fsck', 'resize2fs')] == [None] * 2


def test_plan_lvm_refusals_change_nothing(site, vg, repo_root):
    run('truncate', '-s', f'{2 * GiB}', str(site / 'images' / 'big.raw'))
    ext_image(site)
    before = lvm_state(site, vg)
    # More than the volume group has free.
    code, plan = cli(repo_root, site, '--image', 'ext', '--root-gb', '8')
    assert code == 1 and plan['would_fail'] == ['disk']
    root = plan['disks'][0]
    assert root['error'].startswith('InsufficientSpace')
    # The steps up to the refusal: the last is the lvcreate that refuses.
    assert root['steps'][-1]['command'][0] == 'lvcreate'
    code, plan = cli(repo_root, site, '--image', 'big', '--root-gb', '1')
    assert code == 1
    assert plan['disks'][0]['error'].startswith('DiskTooSmall')
    assert lvm_state(site, vg) == before
    # The real spawn refuses where the plan said, making nothing.
    with pytest.raises(lvm_mod.InsufficientSpace):
        spawn(site, str(uuid_mod.uuid4()), None, 'ext', 8)
    assert run('lvs', '--noheadings', '-o', 'lv_name', vg).strip() == ''


def test_plan_on_a_missing_volume_group_refuses_each_disk(site, vg,
                                                         repo_root):
    conf = site / 'nova.conf'
    conf.write_text(conf.read_text().replace(
        f'images_volume_group = {vg}', 'images_volume_group = ibplan-gone'))
    ext_image(site)
    before = lvm_state(site, vg)
    code, plan = cli(repo_root, site, '--image', 'ext', '--root-gb', '1',
                     '--swap-mb', '64')
    assert code == 1, plan
    assert plan['would_fail'] == ['disk', 'disk.swap']
    for disk in plan['disks']:
        # The flow's own question (is the disk there?) is where it stops.
        assert disk['error'].startswith('BackendUnavailable'), disk
        assert [s['command'][0] for s in disk['steps']] == ['lvs']
    assert lvm_state(site, vg) == before


@dataclasses.dataclass
class KeyedInstance(instance_mod.Instance):
    ephemeral_key_uuid: str | None = KEY_UUID


def test_plan_encrypted_lvm_spawn_matches_the_spawn(site, vg, tmp_path,
                                                    monkeypatch):
    """dm-crypt steps (fake cryptsetup, as test_lvm_encryption.py): the
    mapping after each lvcreate, the key never on a command line."""
    fake_bin = str(tmp_path / 'fake-bin')
    fake_cryptsetup.install(fake_bin)
    monkeypatch.setenv('PATH', fake_bin + os.pathsep + os.environ['PATH'])
    monkeypatch.setenv('FAKE_CRYPTSETUP_MAPPER', dmcrypt.MAPPER_ROOT)
    mapper_existed = os.path.isdir(dmcrypt.MAPPER_ROOT)
    ext_image(site)
    host = host_mod.Host([str(site / 'nova.conf')])
    backend = imagebackend.Backend(conf=host.conf, key_manager=KeyManager())
    instance = KeyedInstance(image_ref='ext', flavor=instance_mod.Flavor(
        root_gb=1, ephemeral_gb=1))
    mapping = instance_mod.disk_mapping(instance)
    planned = spawn_plan.plan_spawn(backend, instance, mapping)
    assert [p.error for p in planned] == [None, None]
    planned = flow_order([[(s.what, s.command) for s in p.steps]
                          for p in planned])
    crypt = [c for c in planned if c[0] == 'cryptsetup']
    assert [c[:2] for c in crypt] == [('cryptsetup', 'create')] * 2
    assert all(c[-1] == '--key-file=-' for c in crypt)
    try:
        with processes.recording() as ran:
            flows.spawn(backend, object(), instance, mapping)
        assert ran == planned
    finally:
        for name in dmcrypt.list_volumes():
            os.unlink(dmcrypt.volume_path(name))
        if not mapper_existed:
            os.rmdir(dmcrypt.MAPPER_ROOT)
