"""Untrusted cache state (issue 9, point 10; digest cost, point 9).

A base whose bytes changed after it was cached is not used for a new disk;
a missing, unreadable or malformed sidecar is a typed error and is never
rebuilt from the current bytes; ``cache verify`` exits non-zero for every
problem; a huge sparse base is digested without hashing its holes.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from driver import cli
from imagebackend import exception
from imagebackend import fileutils
from imagebackend import names
from imagebackend import shim

from tests.functional.conftest import GiB, MiB, Instance, guest_bytes, run

BACKENDS = ('flat', 'qcow2')
PATHS = ('native', 'shim')
NAME = names.image_cache_name('img')


def _create(disk, path, image_id='img', size=128 * MiB):
    if path == 'native':
        disk.create_from_image(None, image_id, size)
    else:
        shim.create_from_image(disk, None, image_id, size)


@pytest.fixture
def cached(backend, make_image):
    """Image ``img`` (raw) cached by a first disk; returns its entry."""
    make_image('img', 'raw')
    backend.by_name(Instance(), 'disk', 'qcow2').create_from_image(
        None, 'img', 128 * MiB)
    entry = backend.image_cache.get(NAME)
    assert entry is not None
    return entry


def _sidecar(entry) -> str:
    return entry.path + names.META_SUFFIX


def _read(path) -> bytes:
    with open(path, 'rb') as f:
        return f.read()


# -- a modified base ----------------------------------------------------------

@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
def test_modified_base_is_not_used_for_new_disks(backend, cached, instance,
                                                 image_type, path):
    with open(cached.path, 'r+b') as f:
        f.seek(4096)
        f.write(b'tampered')
    sidecar_before = _read(_sidecar(cached))
    disk = backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.CorruptCacheEntry) as caught:
        _create(disk, path)
    assert caught.value.kwargs['name'] == NAME
    assert NAME in caught.value.message
    assert not disk.exists()
    assert backend.records.get(instance.uuid, 'disk') is None
    # Refused, not re-described: the sidecar still has the old digest.
    assert _read(_sidecar(cached)) == sidecar_before


def test_touched_but_unchanged_base_is_verified_once_and_used(
        backend, cached, instance, tmp_path):
    # A new mtime (e.g. an operator's `touch`) forces a full re-hash; the
    # bytes match, so the base is used and its new stat recorded.
    os.utime(cached.path, ns=(1, 10 ** 18))
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', 128 * MiB)
    entry = backend.image_cache.get(NAME)
    assert entry.data_stat['mtime_ns'] == 10 ** 18
    assert entry.sha256 == cached.sha256
    assert guest_bytes(disk.path, 'raw', tmp_path)[:MiB] == b'\xab' * MiB


def test_using_an_entry_does_not_move_its_mtime(backend, cached, instance):
    before = os.stat(cached.path).st_mtime_ns
    backend.by_name(instance, 'disk', 'qcow2').create_from_image(
        None, 'img', 128 * MiB)
    assert os.stat(cached.path).st_mtime_ns == before
    assert backend.image_cache.get(NAME).data_stat == cached.data_stat


# -- broken sidecars ----------------------------------------------------------

def _garble(entry):
    with open(_sidecar(entry), 'w') as f:
        f.write('{"name": "trunc')


def _wrong_type(field, value):
    def spoil(entry):
        with open(_sidecar(entry)) as f:
            doc = json.load(f)
        doc[field] = value
        with open(_sidecar(entry), 'w') as f:
            json.dump(doc, f)
    return spoil


def _not_an_object(entry):
    with open(_sidecar(entry), 'w') as f:
        json.dump(['not', 'a', 'sidecar'], f)


def _missing(entry):
    os.unlink(_sidecar(entry))


def _binary(entry):
    with open(_sidecar(entry), 'wb') as f:
        f.write(b'\xff\xfe\x00garbage')


BROKEN = {
    'garbled-json': _garble,
    'binary': _binary,
    'not-an-object': _not_an_object,
    'virtual-size-string': _wrong_type('virtual_size', '128M'),
    'sha256-number': _wrong_type('sha256', 12345),
    'sha256-unknown-algorithm': _wrong_type('sha256', 'md5:abcdef'),
    'format-list': _wrong_type('format', ['raw']),
    'data-stat-string': _wrong_type('data_stat', 'yesterday'),
    'missing': _missing,
}


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('kind', sorted(BROKEN))
def test_broken_sidecar_is_a_typed_error_never_rebuilt(
        backend, cached, instance, kind, path):
    BROKEN[kind](cached)
    sidecar = _sidecar(cached)
    before = _read(sidecar) if os.path.exists(sidecar) else None
    disk = backend.by_name(instance, 'disk', 'qcow2')
    with pytest.raises(exception.CorruptCacheEntry) as caught:
        _create(disk, path)
    assert caught.value.kwargs['name'] == NAME
    assert not disk.exists()
    assert backend.records.get(instance.uuid, 'disk') is None
    after = _read(sidecar) if os.path.exists(sidecar) else None
    assert after == before


def test_sidecarless_base_is_used_only_once_adopted_explicitly(
        backend, cached, instance):
    _missing(cached)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    with pytest.raises(exception.CorruptCacheEntry):
        disk.create_from_image(None, 'img', 128 * MiB)
    entry = backend.image_cache.adopt(NAME, 'image', 'img')
    assert (entry.provenance, entry.format) == ('adopted', 'raw')
    assert entry.sha256 == cached.sha256
    disk.create_from_image(None, 'img', 128 * MiB)
    assert backend.records.get(instance.uuid, 'disk').state == 'created'
    with pytest.raises(exception.CorruptCacheEntry):
        backend.image_cache.adopt(NAME, 'image', 'img')


def test_legacy_plain_sha256_sidecar_still_verifies(backend, cached,
                                                   instance):
    # A sidecar written before the block-list digest: a plain sha256 and
    # no data_stat. It is verified in full once, and kept as it is.
    with open(_sidecar(cached)) as f:
        doc = json.load(f)
    plain = hashlib.sha256(_read(cached.path)).hexdigest()
    doc['sha256'] = plain
    del doc['data_stat']
    with open(_sidecar(cached), 'w') as f:
        json.dump(doc, f)
    backend.by_name(instance, 'disk', 'qcow2').create_from_image(
        None, 'img', 128 * MiB)
    entry = backend.image_cache.get(NAME)
    assert entry.sha256 == plain
    assert entry.data_stat is not None


def test_legacy_plain_sha256_sidecar_with_changed_data_is_refused(
        backend, cached, instance):
    with open(_sidecar(cached)) as f:
        doc = json.load(f)
    doc['sha256'] = hashlib.sha256(_read(cached.path)).hexdigest()
    del doc['data_stat']
    with open(_sidecar(cached), 'w') as f:
        json.dump(doc, f)
    with open(cached.path, 'r+b') as f:
        f.write(b'changed')
    with pytest.raises(exception.CorruptCacheEntry):
        backend.by_name(instance, 'disk', 'qcow2').create_from_image(
            None, 'img', 128 * MiB)


# -- cache verify -------------------------------------------------------------

def _cli(state, capsys, *args):
    code = cli.main(['--state-dir', state, '--json', *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def _delete_data(entry):
    os.unlink(entry['path'])


def _tamper_data(entry):
    with open(entry['path'], 'r+b') as f:
        f.write(b'tampered')


def _delete_both(entry):
    # The base a disk's record names is gone altogether.
    os.unlink(entry['path'])
    os.unlink(entry['path'] + names.META_SUFFIX)


PROBLEMS = {
    'base-missing': _delete_data,
    'base-and-sidecar-missing': _delete_both,
    'sidecar-missing': lambda e: os.unlink(e['path'] + names.META_SUFFIX),
    'sidecar-garbled': lambda e: open(e['path'] + names.META_SUFFIX,
                                      'w').write('{'),
    'sidecar-wrong-type': lambda e: open(e['path'] + names.META_SUFFIX,
                                         'w').write('"a string"'),
    'digest-mismatch': _tamper_data,
}


@pytest.mark.parametrize('problem', sorted(PROBLEMS))
def test_cache_verify_exits_non_zero_for_every_problem(tmp_path, capsys,
                                                      problem):
    state = str(tmp_path / 'state')
    assert _cli(state, capsys, 'image', 'create-sample', 'img', '--size',
                '16M')[0] == 0
    code, view = _cli(state, capsys, 'spawn', '--image', 'img', '--name',
                      'vm', '--root-gb', '1')
    assert code == 0, view
    code, verified = _cli(state, capsys, 'cache', 'verify')
    assert code == 0 and verified['bad'] == []
    base = os.path.join(state, 'hosts')
    host = os.listdir(base)[0]
    base = os.path.join(base, host, 'instances', '_base')
    entry = {'name': NAME, 'path': os.path.join(base, NAME)}
    assert os.path.exists(entry['path'])

    PROBLEMS[problem](entry)
    code, verified = _cli(state, capsys, 'cache', 'verify')
    assert code == 1
    assert verified['bad'] == [NAME]
    assert verified['status'][NAME] != 'ok'


# -- huge sparse bases --------------------------------------------------------

def test_one_tib_sparse_base_is_digested_without_its_holes(
        backend, host, instance, tmp_path):
    # A small qcow2 declaring 1 TiB; force_raw_images converts it to a
    # 1 TiB sparse raw base whose digest the sidecar records. Hashing its
    # holes as zeros would take hours: the digest reads only its data.
    host.set_override('force_raw_images', True)
    path = os.path.join(host.imagebackend.images_dir, 'huge.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', path, str(1024 * GiB))
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M',
        '-c', f'write -P 0x5a {700 * GiB} 64k', path)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    disk.create_from_image(None, 'huge')
    entry = backend.image_cache.get(names.image_cache_name('huge'))
    assert (entry.format, entry.virtual_size) == ('raw', 1024 * GiB)
    assert os.path.getsize(entry.path) == 1024 * GiB
    assert entry.sha256 == fileutils.file_digest(entry.path)
    assert entry.sha256.startswith(fileutils.DIGEST_PREFIX)


# -- a base Nova's create_image hands over ------------------------------------

@pytest.mark.parametrize('trust', ['safe', 'workaround', None])
def test_legacy_base_safety_check_as_nova_asks(host, backend, tmp_path,
                                               trust):
    """A base without a sidecar is inspected with the safety check unless
    the caller made it (safe) or the operator turned deep inspection off:
    one rule for every backend's create_image (Rbd's ignored both)."""
    other = tmp_path / 'host-file'
    other.write_bytes(b'x' * 4096)
    cache = backend.image_cache
    cache.ensure_dirs()
    base = cache.path(names.image_cache_name('nova-fetched'))
    # A qcow2 naming a file on the host: refused by the safety check.
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw', '-b',
        str(other), base, str(MiB))
    if trust == 'workaround':
        host.set_override('disable_deep_image_inspection', True,
                          group='workarounds')
    if trust is None:
        with pytest.raises(exception.ImageUnacceptable):
            cache.legacy_base(base)
        return
    assert cache.legacy_base(base, safe=trust == 'safe') == ('qcow2', MiB)
