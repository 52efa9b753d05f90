"""``cache audit`` and ``cache clean`` on a real host layout (issue 11, 1).

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
import time
import uuid as uuid_mod

import pytest

from imagebackend import cache as cache_mod
from imagebackend import cache_audit
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import records as records_mod

from driver import host as host_mod
from driver import host_cache
from driver import templates
from tests.functional.conftest import (host_cli, host_site, qemu_info, run,
                                       tree)
from tests.hosts import Instance, MiB

OLD = 10_000  # seconds: older than any grace the tests use


def sha1(image_id: str) -> str:
    return hashlib.sha1(image_id.encode()).hexdigest()


@pytest.fixture
def site(tmp_path):
    """A host's folders and the nova.conf that names them."""
    return host_site(tmp_path, False, 'qcow2')


def cli(repo_root, site, *args):
    """The real CLI in a subprocess: (exit code, parsed JSON output)."""
    return host_cli(repo_root, site / 'nova.conf', *args)


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


def age(path, seconds=OLD):
    then = time.time() - seconds
    os.utime(path, (then, then))


def assert_instance_whole(backend, uuid):
    """The library's own checks of every disk an instance has: its record
    is created, the disk is there, its base is in the cache with the
    digest the record keeps, the overlay's header names it, qemu-img check
    passes."""
    records = backend.records.list(uuid)
    assert records
    for r in records:
        assert r.created and os.path.exists(r.location)
        if r.backing is None:
            continue
        entry = backend.image_cache.check(r.backing)
        assert entry is not None and entry.sha256 == r.backing_sha256
        info = qemu_info(r.location, r.format)
        assert info['backing-filename'] == entry.path
        run('qemu-img', 'check', '-q', '-f', r.format, r.location)


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


# -- cache clean --------------------------------------------------------------

def test_clean_removes_only_what_no_record_uses(site, repo_root):
    host = host_mod.Host([str(site / 'nova.conf')])
    b = host.backend()
    cache = b.image_cache
    for image_id in ('used', 'unused', 'recent'):
        image(site, image_id)
    uuids = [spawn(b, 'used'), spawn(b, 'used', images_type='flat')]
    inst = Instance()
    tpl = templates.Swap(8 * MiB)
    b.by_name(inst, 'disk.swap', 'qcow2').create_from_func(
        None, tpl, tpl.cache_name, 8 * MiB)
    uuids.append(inst.uuid)
    for image_id in ('unused', 'recent'):
        cache.fetch_image(None, image_id)
    # A base Nova cached before sidecars, that no record uses.
    nova_base = cache.path(sha1('nova-era'))
    run('qemu-img', 'create', '-q', '-f', 'raw', nova_base, '1M')
    # Everything unused for long but 'recent'; a partial file too.
    part = cache.path(sha1('killed')) + names.PART_SUFFIX
    with open(part, 'wb') as f:
        f.write(b'x')
    for name in os.listdir(cache.base_dir):
        if name != sha1('recent'):
            age(os.path.join(cache.base_dir, name))

    # An audit reads every entry in full: that is no use of them.
    def atimes():
        return {n: os.stat(os.path.join(cache.base_dir, n)).st_atime_ns
                for n in os.listdir(cache.base_dir)
                if not n.endswith(names.META_SUFFIX)}
    unused_since = atimes()
    assert cache_audit.audit(b)[0]
    assert atimes() == unused_since
    before = tree(site)
    code, out = cli(repo_root, site, 'cache', 'clean', '--dry-run',
                    '--grace', '3600')
    assert code == 0 and out['dry_run'] is True
    assert tree(site) == before
    want = sorted([sha1('unused'), sha1('nova-era'),
                   os.path.basename(part)])
    assert sorted(out['removed']) == want

    code, out = cli(repo_root, site, 'cache', 'clean', '--grace', '3600')
    assert code == 0 and sorted(out['removed']) == want
    assert out['kept'][sha1('used')] == 'used by 1 disk(s)'
    assert out['kept'][tpl.cache_name] == 'used by 1 disk(s)'
    assert out['kept'][sha1('recent')].startswith('used ')
    assert sorted(os.listdir(cache.base_dir)) == sorted(
        n + s for n in (sha1('used'), sha1('recent'), tpl.cache_name)
        for s in ('', names.META_SUFFIX))
    for uuid in uuids:
        assert_instance_whole(b, uuid)
    assert not any(e.flagged for e in cache_audit.audit(b)[0])


def test_clean_refuses_while_a_disk_has_no_record(site, repo_root):
    """A qcow2 overlay nothing describes is on a base no record uses: the
    clean must not take the base from under it."""
    host = host_mod.Host([str(site / 'nova.conf')])
    b = host.backend()
    image(site, 'img')
    entry = b.image_cache.fetch_image(None, 'img')
    age(entry.path)
    stray = os.path.join(b.conf.instances_path, str(uuid_mod.uuid4()))
    os.mkdir(stray)
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        entry.path, os.path.join(stray, 'disk'))
    before = tree(site)
    for dry in ([], ['--dry-run']):
        code, out = cli(repo_root, site, 'cache', 'clean', '--grace', '0',
                        *dry)
        assert code == 2 and out['error'] == 'CacheCleanRefused', out
        assert 'adopt' in out['message']
        assert f'{os.path.basename(stray)}/disk' in out['message']
    assert tree(site) == before
    with pytest.raises(exception.CacheCleanRefused):
        cache_audit.clean(b, 0)


# -- a host made by Nova's own module -----------------------------------------

def test_nova_made_host_refused_until_adopted(site, repo_root, tmp_path):
    """Instances made by Nova 34.0.0's own imagebackend (no records, bases
    without sidecars): clean refuses, audit names every entry and, from
    the qcow2 headers disk.info vouches for, the disks on each; once the
    disks are adopted, clean removes only the base nothing uses."""
    from tests.functional.test_nova_mixed_hosts import nova
    inst = str(site / 'instances')
    images = str(site / 'images')
    image(site, 'nova-a', 'qcow2')
    image(site, 'nova-b', 'qcow2')
    overlay, flat = str(uuid_mod.uuid4()), str(uuid_mod.uuid4())
    nova(repo_root, [
        {'op': 'make', 'instances_path': inst, 'images_dir': images,
         'uuid': overlay, 'conf': {'force_raw_images': True},
         'disks': [{'cls': 'Qcow2', 'name': 'disk', 'image_id': 'nova-a',
                    'size': 32 * MiB}]},
        {'op': 'make', 'instances_path': inst, 'images_dir': images,
         'uuid': flat, 'conf': {'force_raw_images': False},
         'disks': [{'cls': 'Flat', 'name': 'disk', 'image_id': 'nova-b',
                    'size': 32 * MiB}]}])
    base_a = os.path.join(inst, '_base', sha1('nova-a'))
    base_b = os.path.join(inst, '_base', sha1('nova-b'))
    assert not os.path.exists(base_a + names.META_SUFFIX)
    # Planted over Nova's base of the Flat instance: a qcow2 naming a host
    # file as its backing file.
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        '/etc/passwd', str(tmp_path / 'evil.qcow2'), str(16 * MiB))
    shutil.copyfile(tmp_path / 'evil.qcow2', base_b)
    for path in (base_a, base_b):
        age(path)

    before = tree(site)
    code, out = cli(repo_root, site, 'cache', 'clean', '--grace', '0')
    assert code == 2 and out['error'] == 'CacheCleanRefused', out
    assert f'{overlay}/disk' in out['message']
    assert f'{flat}/disk' in out['message']
    code, out = cli(repo_root, site, 'cache', 'audit')
    assert code == 1
    assert tree(site) == before
    entries = {e['name']: e for e in out['entries']}
    assert set(entries) == {sha1('nova-a'), sha1('nova-b')}
    a, b_ = entries[sha1('nova-a')], entries[sha1('nova-b')]
    assert a['status'] == 'unverified' and a['users'] == []
    assert a['detected']['format'] == 'raw'
    assert a['unrecorded_users'] == [{'instance': overlay, 'disk': 'disk'}]
    assert b_['status'] == 'hostile'
    assert 'backing_file' in [p['detail'] for p in b_['problems']
                              if p['kind'] == 'unsafe'][0]
    assert out['unrecorded'] == {overlay: ['disk'], flat: ['disk']}

    # Adopted by the library (from Nova's disk.info), then cleaned.
    backend = host_mod.Host([str(site / 'nova.conf')]).backend()
    for uuid in (overlay, flat):
        backend.from_metadata(Instance(uuid=uuid), 'disk')
    code, out = cli(repo_root, site, 'cache', 'clean', '--grace', '0')
    assert code == 0 and out['removed'] == [sha1('nova-b')], out
    assert os.path.exists(base_a)
    record = backend.records.get(overlay, 'disk')
    assert record.backing == sha1('nova-a')
    assert qemu_info(record.location, 'qcow2')['backing-filename'] == base_a
    run('qemu-img', 'check', '-q', '-f', 'qcow2', record.location)
    assert os.path.exists(backend.records.get(flat, 'disk').location)
