"""An operator's whole pass over a host made by Nova's OWN module.

Issue 11's "done when", in one story: real Nova 34.0.0 (its own
imagebackend, tests/nova_disk_helper.py) fills a host; the real CLI, with
that host's nova.conf, refuses to clean before adoption, adopts every
instance, verifies them clean, audits the cache after hostile entries are
planted in ``_base`` (one under a live overlay) and names each one's
users, then cleans; verify says exactly what it said before the clean, so
nothing any disk reads was deleted.
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from imagebackend import names
from tests.functional.conftest import run
from tests.functional.test_host_cli_nova import NovaHost, cli, disk, kinds
from tests.functional.test_nova_mixed_hosts import make_image, nova
from tests.hosts import MiB

EPHEMERAL = 'ephemeral_1_0706d66'


def entry(host: NovaHost, image_id: str) -> str:
    return names.image_cache_name(image_id)


def sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


@pytest.fixture(scope='module')
def host(tmp_path_factory, repo_root):
    root = tmp_path_factory.mktemp('nova-host-lifecycle')
    images_dir = str(root / 'images')
    os.makedirs(images_dir)
    make_image(images_dir)
    for image_id in ('victim-img', 'gone-img'):
        run('qemu-img', 'create', '-q', '-f', 'qcow2',
            os.path.join(images_dir, f'{image_id}.qcow2'), str(64 * MiB))
    h = NovaHost(root, 'host', images_dir)
    h.make('overlay', [disk('Qcow2', 'disk'),
                       disk('Qcow2', 'disk.local', template=EPHEMERAL)])
    h.make('flat', [disk('Flat', 'disk')])
    h.make('victim', [disk('Qcow2', 'disk', 'victim-img')])
    h.make('deleted', [disk('Qcow2', 'disk', 'gone-img')])
    nova(repo_root, h.jobs)
    # Nova deleted this instance; its base stays, used by nothing.
    shutil.rmtree(os.path.join(h.instances_path, h.instances.pop('deleted')))
    return h


def test_adopt_verify_audit_clean_on_a_nova_made_host(host, repo_root,
                                                      tmp_path):
    u = host.instances
    base_dir = os.path.join(host.instances_path, '_base')
    bases = sorted(os.listdir(base_dir))
    assert entry(host, 'gone-img') in bases

    # Before adoption nothing says which disks read which base.
    code, refused = cli(repo_root, host, 'cache', 'clean', '--grace', '0',
                        expect=(2,))
    assert refused['error'] == 'CacheCleanRefused', refused
    assert 'adopt' in refused['message']
    assert sorted(os.listdir(base_dir)) == bases

    code, adopted = cli(repo_root, host, 'adopt', '--all')
    assert code == 0, adopted
    code, checked = cli(repo_root, host, 'verify', '--all')
    assert (code, checked['clean']) == (0, True), checked

    # Hostile entries: one planted beside the others, one put in place of
    # the base a live overlay reads; both read a host file through their
    # own backing file.
    secret = tmp_path / 'host-secret'
    secret.write_bytes(b'secret')
    planted = os.path.join(base_dir, names.image_cache_name('planted'))
    victim_base = os.path.join(base_dir, entry(host, 'victim-img'))
    os.unlink(victim_base)
    for path in (planted, victim_base):
        run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
            str(secret), path, str(64 * MiB))

    code, audit = cli(repo_root, host, 'cache', 'audit')
    assert code == 1
    by_name = {e['name']: e for e in audit['entries']}
    assert by_name[os.path.basename(planted)]['status'] == 'hostile'
    assert by_name[os.path.basename(planted)]['users'] == []
    victim = by_name[entry(host, 'victim-img')]
    assert victim['status'] == 'hostile', victim
    assert [(w['instance'], w['disk']) for w in victim['users']] == [
        (u['victim'], 'disk')]
    image_base = by_name[entry(host, 'img')]
    assert image_base['status'] == 'ok', image_base
    assert {(w['instance'], w['disk']) for w in image_base['users']} == {
        (u['overlay'], 'disk')}
    flagged = {e['name'] for e in audit['entries'] if e['status'] != 'ok'}
    assert flagged == {os.path.basename(planted), entry(host, 'victim-img'),
                       # Nova's base of a deleted instance: no sidecar, no
                       # user, so nothing says what its bytes were.
                       entry(host, 'gone-img')}

    code, before = cli(repo_root, host, 'verify', '--all')
    assert code == 1
    assert kinds(before) == {(u['victim'], 'disk', 'backing-changed')}

    in_use = {n: sha256(os.path.join(base_dir, n))
              for n in (entry(host, 'img'), entry(host, 'victim-img'),
                        EPHEMERAL)}
    code, dry = cli(repo_root, host, 'cache', 'clean', '--grace', '0',
                    '--dry-run')
    assert code == 0, dry
    code, cleaned = cli(repo_root, host, 'cache', 'clean', '--grace', '0')
    assert code == 0, cleaned
    assert sorted(cleaned['removed']) == sorted(dry['removed'])
    assert {os.path.basename(planted),
            entry(host, 'gone-img')} <= set(cleaned['removed'])
    assert not set(in_use) & set(cleaned['removed'])
    assert {n: sha256(os.path.join(base_dir, n)) for n in in_use} == in_use

    code, after = cli(repo_root, host, 'verify', '--all')
    assert (code, kinds(after)) == (1, kinds(before)), after
