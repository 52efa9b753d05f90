"""``cache audit`` on a real host layout (issue 11, point 1).

Hostile entries are planted in ``_base`` the way an attacker with write
access to it would (OSSA-2024-002): real images made with qemu-img, with
sidecars forged to match, under instances whose records name them. The
CLI runs as a subprocess (``python -m driver.cli --config-file nova.conf``)
on a nova.conf naming the host's folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import uuid as uuid_mod

import pytest

from imagebackend import cache as cache_mod
from imagebackend import cache_audit
from imagebackend import fileutils
from imagebackend import names
from imagebackend import records as records_mod

from driver import host as host_mod
from driver import host_cache
from tests.functional.conftest import run, tree
from tests.hosts import Instance, MiB


def sha1(image_id: str) -> str:
    return hashlib.sha1(image_id.encode()).hexdigest()


@pytest.fixture
def site(tmp_path):
    """A host's folders and the nova.conf that names them."""
    inst = tmp_path / 'instances'
    images = tmp_path / 'images'
    inst.mkdir()
    images.mkdir()
    conf = tmp_path / 'nova.conf'
    conf.write_text(f'[DEFAULT]\ninstances_path = {inst}\n'
                    'force_raw_images = false\n'
                    '[libvirt]\nimages_type = qcow2\n'
                    f'[imagebackend]\nimages_dir = {images}\n')
    return tmp_path


def cli(repo_root, site, *args):
    """The real CLI in a subprocess: (exit code, parsed JSON output)."""
    env = dict(os.environ, PYTHONPATH=str(repo_root))
    done = subprocess.run(
        [sys.executable, '-m', 'driver.cli', '--config-file',
         str(site / 'nova.conf'), '--json', *args],
        capture_output=True, text=True, env=env, cwd=str(repo_root))
    return done.returncode, json.loads(done.stdout)


def image(site, image_id, fmt='raw', size=16 * MiB):
    path = str(site / 'images' / f'{image_id}.{fmt}')
    run('qemu-img', 'create', '-q', '-f', fmt, path, str(size))
    run('qemu-io', '-f', fmt, '-c', 'write -P 0xab 0 1M', path)
    return path


def spawn(backend, image_id, images_type='qcow2', size=32 * MiB):
    """A root disk made by the library: its uuid."""
    inst = Instance()
    backend.by_name(inst, 'disk', images_type).create_from_image(
        None, image_id, size)
    return inst.uuid


def forge(backend, name, data_from):
    """Replace entry ``name``'s bytes with ``data_from``'s and forge its
    sidecar's digest and stat to match them: what someone who can write
    _base can do."""
    path = backend.image_cache.path(name)
    shutil.copyfile(data_from, path + '.new')
    os.replace(path + '.new', path)
    with open(path + names.META_SUFFIX) as f:
        meta = json.load(f)
    meta.update(sha256=fileutils.file_digest(path),
                data_stat=cache_mod.data_stat(os.stat(path)))
    fileutils.atomic_write_json(path + names.META_SUFFIX, meta)


# -- cache audit --------------------------------------------------------------

def test_audit_flags_hostile_entries_with_their_users(site, repo_root,
                                                      tmp_path):
    host = host_mod.Host([str(site / 'nova.conf')])
    b = host.backend()
    cache = b.image_cache
    for image_id in ('backing', 'datafile'):
        image(site, image_id, 'qcow2')
    for image_id in ('modified', 'confused', 'gone', 'good', 'unused',
                     'replaced'):
        image(site, image_id)
    users = {i: spawn(b, i) for i in ('backing', 'datafile', 'modified',
                                      'confused', 'gone', 'good',
                                      'replaced')}
    copied = spawn(b, 'good', images_type='flat')
    cache.fetch_image(None, 'unused')

    evil = str(tmp_path / 'evil')
    os.mkdir(evil)
    # A qcow2 whose backing file is a host file, and one with a data-file.
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        '/etc/passwd', f'{evil}/backing.qcow2', str(16 * MiB))
    forge(b, sha1('backing'), f'{evil}/backing.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'raw', f'{evil}/data', '16M')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-o',
        f'data_file={evil}/data', f'{evil}/datafile.qcow2', str(16 * MiB))
    forge(b, sha1('datafile'), f'{evil}/datafile.qcow2')
    # A raw entry changed in place: its sidecar's digest no longer matches.
    with open(cache.path(sha1('modified')), 'r+b') as f:
        f.write(b'\x00' * 512)
    # A sidecar that says raw over what is a qcow2 file.
    run('qemu-img', 'create', '-q', '-f', 'qcow2', f'{evil}/plain.qcow2',
        str(16 * MiB))
    forge(b, sha1('confused'), f'{evil}/plain.qcow2')
    # A VMDK whose extent is a host file, planted without a sidecar, and a
    # disk whose record names it as its base.
    run('qemu-img', 'create', '-q', '-f', 'vmdk', '-o',
        'subformat=monolithicFlat', f'{evil}/x.vmdk', '1M')
    with open(f'{evil}/x.vmdk') as f:
        descriptor = f.read().replace('"x-flat.vmdk"', '"/etc/passwd"')
    vmdk = sha1('vmdk')
    with open(cache.path(vmdk), 'w') as f:
        f.write(descriptor)
    on_vmdk = str(uuid_mod.uuid4())
    b.records.put(records_mod.DiskRecord(
        instance=on_vmdk, name='disk', backend='qcow2', format='qcow2',
        location=f'{b.conf.instances_path}/{on_vmdk}/disk',
        source_type='image', source_id='vmdk', virtual_size=MiB,
        state=records_mod.CREATED, backing=vmdk, backing_format='vmdk'))
    # A base removed under a live overlay.
    cache.remove(sha1('gone'))
    # A base removed and fetched again after its image changed upstream:
    # whole, but not the bytes the disk on it was made on.
    cache.remove(sha1('replaced'))
    run('qemu-io', '-f', 'raw', '-c', 'write -P 0xcd 0 1M',
        str(site / 'images' / 'replaced.raw'))
    cache.fetch_image(None, 'replaced')

    before = tree(site)
    code, out = cli(repo_root, site, 'cache', 'audit')
    assert tree(site) == before  # read-only
    assert code == 1
    entries = {e['name']: e for e in out['entries']}

    def check(image_id, status, kind, uuid):
        e = entries[sha1(image_id)]
        assert e['status'] == status, e
        assert kind in [p['kind'] for p in e['problems']], e
        assert [(u['instance'], u['disk']) for u in e['users']] == [
            (uuid, 'disk')], e
    check('backing', 'hostile', 'unsafe', users['backing'])
    assert 'backing_file' in entries[sha1('backing')]['problems'][0]['detail']
    check('datafile', 'hostile', 'unsafe', users['datafile'])
    assert 'data_file' in entries[sha1('datafile')]['problems'][0]['detail']
    check('modified', 'modified', 'digest-mismatch', users['modified'])
    check('confused', 'hostile', 'format-mismatch', users['confused'])
    check('vmdk', 'hostile', 'unsafe', on_vmdk)
    assert 'no-sidecar' in [p['kind'] for p in entries[vmdk]['problems']]
    assert entries[vmdk]['detected']['format'] == 'vmdk'
    check('gone', 'missing', 'missing', users['gone'])
    check('replaced', 'modified', 'not-their-base', users['replaced'])
    good = entries[sha1('good')]
    assert good['status'] == 'ok' and good['problems'] == []
    assert [u['instance'] for u in good['users']] == [users['good']]
    assert [u['instance'] for u in good['made_from']] == [copied]
    assert entries[sha1('unused')]['status'] == 'ok'
    assert entries[sha1('unused')]['users'] == []
    assert sorted(out['flagged']) == sorted(
        sha1(i) for i in ('backing', 'datafile', 'modified', 'confused',
                          'vmdk', 'gone', 'replaced'))
    assert out['unrecorded'] == {}


def test_audit_of_a_clean_cache_exits_0(site):
    host = host_mod.Host([str(site / 'nova.conf')])
    b = host.backend()
    image(site, 'img')
    spawn(b, 'img')
    entries, recs = cache_audit.audit(b)
    assert [(e.name, e.status) for e in entries] == [(sha1('img'), 'ok')]
    _data, text, code = host_cache.cmd_audit(host, None)
    assert code == 0 and '0 flagged' in text
