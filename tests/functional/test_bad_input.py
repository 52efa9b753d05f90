"""Bad input fails with its specific typed error and changes nothing.

Every test here starts from a *seeded* host: another instance already has a
disk made from a good image, so ``_base`` holds a complete entry (data and
sidecar), ``locks/`` exists and an instance directory exists. The state of
``instances_path`` is snapshotted before the bad call and compared after it.

Hostile images are made with the real qemu-img into the image folder, whose
:class:`DirectoryImageSource` declares an image's format by the file's
extension (``<id>.<declared format>``).
"""

from __future__ import annotations

import hashlib
import os
import shutil

import pytest

from imagebackend import exception
from imagebackend import names
from imagebackend import shim

from tests.functional.conftest import (MiB, Instance, make_ephemeral, run,
                                       tree)

BACKENDS = ('flat', 'qcow2')
PATHS = ('native', 'shim')


# -- helpers -------------------------------------------------------------------

def _state(host) -> dict:
    """``tree(instances_path)`` as far as "unchanged" is meaningful.

    * ``locks/`` is left out: oslo.concurrency's external locks create a
      lock file per lock name the first time it is taken and never remove
      it, so a failed attempt may legitimately add files there.
    * Directories are kept (a created or removed directory is a change) but
      without their mtime: a directory's mtime moves whenever an entry comes
      and goes in it, e.g. the ``.part`` file a download lands in before it
      is inspected and removed. Every entry in them, with its size and mtime,
      is still compared, so a leftover ``.part``, sidecar, disk or record
      file is caught.
    """
    found = {}
    for rel, (size, mtime) in tree(host.instances_path).items():
        if rel == 'locks' or rel.startswith('locks' + os.sep):
            continue
        full = os.path.join(host.instances_path, rel)
        if os.path.isdir(full) and not os.path.islink(full):
            found[rel] = 'dir'
        else:
            found[rel] = (size, mtime)
    return found


def _assert_unchanged(before: dict, after: dict, touched=()) -> None:
    """``after`` is ``before``; entries in ``touched`` may only have had
    their mtime moved (the cache marks an entry used by touching it)."""
    assert sorted(after) == sorted(before)
    for rel, was in before.items():
        now = after[rel]
        if rel in touched:
            assert now[0] == was[0], rel
        else:
            assert now == was, rel


def _base(host) -> str:
    return os.path.join(host.instances_path, '_base')


def _part_files(host) -> list[str]:
    found = []
    for root, _dirs, files in os.walk(host.instances_path):
        found += [os.path.join(root, f) for f in files
                  if f.endswith(names.PART_SUFFIX)]
    return found


def _images_dir(host) -> str:
    return host.imagebackend.images_dir


def _create_from_image(disk, path: str, image_id: str, size=None) -> None:
    if path == 'native':
        disk.create_from_image(None, image_id, size)
    else:
        shim.create_from_image(disk, None, image_id, size)


def _create_from_func(disk, path: str, func, cache_name: str,
                      size=None) -> None:
    if path == 'native':
        disk.create_from_func(None, func, cache_name, size)
    else:
        shim.create_from_func(disk, None, func, cache_name, size)


def _made_something(recorded) -> list:
    """Commands that would have made a disk or a cache entry."""
    return [c for c in recorded
            if c[:2] in (('qemu-img', 'create'), ('qemu-img', 'convert'))
            or c[:1] == ('cp',)]


def _sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def seeded(host, backend, make_image):
    """A host already in use: ``good`` is cached, another instance has a
    Qcow2 disk on it, a Flat disk and an ephemeral disk."""
    make_image('good', 'qcow2', 16 * MiB)
    other = Instance()
    backend.by_name(other, 'disk', 'qcow2').create_from_image(
        None, 'good', 32 * MiB)
    backend.by_name(other, 'disk.flat', 'flat').create_from_image(
        None, 'good', 32 * MiB)
    backend.by_name(other, 'disk.local', 'qcow2').create_from_func(
        None, make_ephemeral('ephemeral0', 'ext4', 16 * MiB),
        'ephemeral_16M_ext4', 16 * MiB)
    assert backend.image_cache.get(names.image_cache_name('good'))
    assert os.path.isdir(os.path.join(host.instances_path, 'locks'))
    return other


# -- hostile images --------------------------------------------------------------

def _qcow2_backed_by_host_file(host, tmp_path, image_id):
    secret = tmp_path / 'host-secret.raw'
    secret.write_bytes(b'host secret\n' * 4096)
    path = os.path.join(_images_dir(host), f'{image_id}.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
        '-b', str(secret), path, str(64 * MiB))
    return path


def _qcow2_backed_by_etc(host, tmp_path, image_id):
    # A backing file anywhere on the host, by absolute path: /etc/hostname
    # is not guaranteed in a container, /etc/passwd is.
    path = os.path.join(_images_dir(host), f'{image_id}.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', 'raw',
        '-b', '/etc/passwd', path, str(64 * MiB))
    return path


def _qcow2_with_data_file(host, tmp_path, image_id):
    data = tmp_path / 'external-data.raw'
    path = os.path.join(_images_dir(host), f'{image_id}.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2',
        '-o', f'data_file={data}', path, str(64 * MiB))
    assert data.exists()
    return path


def _qcow2_declared_raw(host, tmp_path, image_id):
    src = tmp_path / 'really.qcow2'
    run('qemu-img', 'create', '-q', '-f', 'qcow2', str(src), str(64 * MiB))
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M', str(src))
    path = os.path.join(_images_dir(host), f'{image_id}.raw')
    shutil.copyfile(src, path)
    return path


def _truncated_qcow2(nbytes):
    def make(host, tmp_path, image_id):
        src = tmp_path / 'whole.qcow2'
        run('qemu-img', 'create', '-q', '-f', 'qcow2', str(src),
            str(64 * MiB))
        run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M', str(src))
        path = os.path.join(_images_dir(host), f'{image_id}.qcow2')
        with open(src, 'rb') as f, open(path, 'wb') as out:
            out.write(f.read(nbytes))
        assert os.path.getsize(path) == nbytes
        return path
    return make


def _vmdk_monolithic_flat(host, tmp_path, image_id):
    # Descriptor <id>.vmdk plus its extent <id>-flat.vmdk beside it: the
    # descriptor names a file outside itself, and monolithicFlat is not in
    # [compute] vmdk_allowed_types.
    path = os.path.join(_images_dir(host), f'{image_id}.vmdk')
    run('qemu-img', 'create', '-q', '-f', 'vmdk',
        '-o', 'subformat=monolithicFlat', path, str(64 * MiB))
    with open(path, 'rb') as f:
        assert b'monolithicFlat' in f.read()
    return path


HOSTILE = {
    'qcow2-backing-tmp-file': _qcow2_backed_by_host_file,
    'qcow2-backing-etc-passwd': _qcow2_backed_by_etc,
    'qcow2-data-file': _qcow2_with_data_file,
    'qcow2-declared-raw': _qcow2_declared_raw,
    'qcow2-truncated-100': _truncated_qcow2(100),
    'qcow2-truncated-1000': _truncated_qcow2(1000),
    'vmdk-monolithicFlat': _vmdk_monolithic_flat,
}


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
@pytest.mark.parametrize('kind', sorted(HOSTILE))
def test_hostile_image_is_refused_before_anything_is_made(
        host, backend, seeded, instance, tmp_path, recorded, kind,
        image_type, path):
    HOSTILE[kind](host, tmp_path, 'evil')
    disk = backend.by_name(instance, 'disk', image_type)
    before = _state(host)
    del recorded[:]

    with pytest.raises(exception.ImageUnacceptable) as caught:
        _create_from_image(disk, path, 'evil', 128 * MiB)

    assert caught.value.kwargs['image_id'] == 'evil'
    _assert_unchanged(before, _state(host))
    assert backend.records.get(instance.uuid, 'disk') is None
    assert not disk.exists()
    assert not os.path.exists(disk.instance_dir)
    assert backend.image_cache.get(names.image_cache_name('evil')) is None
    assert _part_files(host) == []
    # Refused by inspection: nothing was created or converted from it.
    assert _made_something(recorded) == []


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
def test_hostile_image_is_refused_again_next_time(
        host, backend, seeded, instance, tmp_path, image_type, path):
    """A refused image is not remembered as good (nor cached half-way):
    asking again inspects it again and refuses it again."""
    _qcow2_backed_by_host_file(host, tmp_path, 'evil')
    before = _state(host)
    for _ in range(2):
        disk = backend.by_name(instance, 'disk', image_type)
        with pytest.raises(exception.ImageUnacceptable):
            _create_from_image(disk, path, 'evil')
    _assert_unchanged(before, _state(host))
    assert backend.records.get(instance.uuid, 'disk') is None


# -- size ------------------------------------------------------------------------

@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
def test_size_smaller_than_image_uncached(host, backend, seeded, instance,
                                          make_image, recorded, image_type,
                                          path):
    """The image's header tells its virtual size as its first bytes
    arrive: the fetch stops there, nothing is cached, no disk is made."""
    make_image('img', 'qcow2', 64 * MiB)
    name = names.image_cache_name('img')
    disk = backend.by_name(instance, 'disk', image_type)
    before = _state(host)
    del recorded[:]

    with pytest.raises(exception.DiskTooSmall) as caught:
        _create_from_image(disk, path, 'img', 32 * MiB)

    assert caught.value.kwargs == {'size': 32 * MiB, 'image_size': 64 * MiB}
    _assert_unchanged(before, _state(host))
    assert backend.image_cache.get(name) is None
    assert backend.records.get(instance.uuid, 'disk') is None
    assert not disk.exists()
    assert not os.path.exists(disk.instance_dir)
    assert not [c for c in recorded if c[:2] == ('qemu-img', 'create')]
    assert _part_files(host) == []


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
def test_size_smaller_than_image_cached(host, backend, seeded, instance,
                                        image_type, path):
    """``good`` is 16 MiB and cached already: nothing changes but the
    entry's mtime (the cache marks it used)."""
    name = names.image_cache_name('good')
    disk = backend.by_name(instance, 'disk', image_type)
    before = _state(host)

    with pytest.raises(exception.DiskTooSmall) as caught:
        _create_from_image(disk, path, 'good', 8 * MiB)

    assert caught.value.kwargs == {'size': 8 * MiB, 'image_size': 16 * MiB}
    _assert_unchanged(before, _state(host),
                      touched={os.path.join('_base', name)})
    assert backend.records.get(instance.uuid, 'disk') is None
    assert not disk.exists()
    assert not os.path.exists(disk.instance_dir)


# -- names -----------------------------------------------------------------------

BAD_NAMES = ('../x', '..', '/', '', 'a/b', '/etc/passwd', 'x/../../y',
             '.hidden', 'disk\0x')


@pytest.mark.parametrize('image_type', BACKENDS + (None,))
@pytest.mark.parametrize('name', BAD_NAMES)
def test_bad_disk_name(host, backend, seeded, instance, name, image_type):
    before = _state(host)
    with pytest.raises(exception.InvalidDiskName):
        backend.by_name(instance, name, image_type)
    with pytest.raises(exception.InvalidDiskName):
        backend.from_metadata(instance, name)
    _assert_unchanged(before, _state(host))


@pytest.mark.parametrize('image_type', BACKENDS)
@pytest.mark.parametrize('uuid', ('../x', '..', '/', '', '/etc'))
def test_bad_instance_uuid(host, backend, seeded, uuid, image_type):
    before = _state(host)
    with pytest.raises(exception.InvalidDiskName):
        backend.by_name(Instance(uuid=uuid), 'disk', image_type)
    _assert_unchanged(before, _state(host))


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
@pytest.mark.parametrize('cache_name', ('../evil', '..', '/', '',
                                        '/tmp/evil', 'a/b',
                                        'x' + names.PART_SUFFIX,
                                        'x' + names.META_SUFFIX))
def test_bad_cache_name(host, backend, seeded, instance, cache_name,
                        image_type, path):
    calls = []

    def func(target):
        calls.append(target)
        make_ephemeral('ephemeral0', 'ext4', 16 * MiB)(target)

    disk = backend.by_name(instance, 'disk.local', image_type)
    before = _state(host)
    with pytest.raises(exception.InvalidDiskName):
        _create_from_func(disk, path, func, cache_name, 16 * MiB)
    assert calls == []
    _assert_unchanged(before, _state(host))
    assert backend.records.get(instance.uuid, 'disk.local') is None
    assert not disk.exists()


# -- image types -----------------------------------------------------------------

@pytest.mark.parametrize('image_type', ('bogus', 'QCOW2', 'qcow', 'file'))
def test_unknown_image_type(host, backend, seeded, instance, image_type):
    before = _state(host)
    with pytest.raises(exception.UnknownBackend):
        backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.UnknownBackend):
        backend.backend(image_type)
    _assert_unchanged(before, _state(host))


def test_unconfigured_image_type(host, backend, seeded, instance):
    # lvm without [libvirt] images_volume_group: a typed error, no change.
    before = _state(host)
    with pytest.raises(exception.BackendUnavailable):
        backend.by_name(instance, 'disk', 'lvm')
    _assert_unchanged(before, _state(host))


# -- images the source does not have --------------------------------------------

@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
@pytest.mark.parametrize('image_id', ('missing', '../images/good',
                                      'good.qcow2'))
def test_image_not_found(host, backend, seeded, instance, image_id,
                         image_type, path):
    disk = backend.by_name(instance, 'disk', image_type)
    before = _state(host)
    with pytest.raises(exception.ImageNotFound):
        _create_from_image(disk, path, image_id, 64 * MiB)
    _assert_unchanged(before, _state(host))
    assert backend.records.get(instance.uuid, 'disk') is None
    assert not os.path.exists(disk.instance_dir)


# -- template functions that fail -------------------------------------------------

class TemplateBroke(Exception):
    pass


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
def test_template_function_fails_midway(host, backend, seeded, instance,
                                        image_type, path):
    error = TemplateBroke('mkfs died half way')
    targets = []

    def func(target):
        targets.append(target)
        with open(target, 'wb') as f:
            f.truncate(16 * MiB)
            f.write(b'half a filesystem')
        raise error

    disk = backend.by_name(instance, 'disk.local', image_type)
    before = _state(host)
    with pytest.raises(TemplateBroke) as caught:
        _create_from_func(disk, path, func, 'ephemeral_16M_vfat', 16 * MiB)

    assert caught.value is error
    assert len(targets) == 1  # it did run, and wrote something
    assert not os.path.exists(targets[0])
    assert not disk.exists()
    assert backend.records.get(instance.uuid, 'disk.local') is None
    assert backend.image_cache.get('ephemeral_16M_vfat') is None
    assert [n for n in os.listdir(_base(host))
            if n.endswith(names.PART_SUFFIX)] == []
    assert _part_files(host) == []
    _assert_unchanged(before, _state(host))


# -- existing disks ----------------------------------------------------------------

@pytest.mark.parametrize('again', ('image', 'func'))
@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', BACKENDS)
def test_existing_disk_is_not_recreated(host, backend, seeded, instance,
                                        make_image, image_type, path, again):
    make_image('img', 'qcow2', 64 * MiB)
    disk = backend.by_name(instance, 'disk', image_type)
    _create_from_image(disk, path, 'img', 128 * MiB)
    record = backend.records.get(instance.uuid, 'disk')
    assert record is not None and record.created
    digest = _sha256(disk.path)
    inst_before = tree(disk.instance_dir)
    before = _state(host)
    calls = []

    def func(target):
        calls.append(target)

    # A fresh object, as a second spawn attempt would have.
    disk = backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.DiskExists):
        if again == 'image':
            _create_from_image(disk, path, 'img', 256 * MiB)
        else:
            _create_from_func(disk, path, func, 'ephemeral_16M_ext4',
                              16 * MiB)

    assert calls == []
    assert tree(disk.instance_dir) == inst_before
    assert _sha256(disk.path) == digest
    assert backend.records.get(instance.uuid, 'disk') == record
    # The cache marks what it was asked for used (Qcow2 native ensures the
    # base first): the image's entry, or the seeded ephemeral template.
    _assert_unchanged(before, _state(host), touched={
        os.path.join('_base', names.image_cache_name('img')),
        os.path.join('_base', 'ephemeral_16M_ext4')})
