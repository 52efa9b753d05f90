"""Qcow2 disks old Nova put on a resized copy of their base,
``_base/<base>_<N>`` (N GiB), get that copy made again on a host that
lacks it (Nova's ``legacy_backing_size``; its
test_generate_resized_backing_files): from ``_base/<base>``, copied then
grown, whole or absent, with a sidecar like any cache entry. On the legacy
``cache()`` path and on ``check_backing_from_image``.

Real qemu-img images: the old disk is a qcow2 overlay made by qemu-img on
a resized raw base, with guest writes of its own; the base is then removed
(the instance came from the host that had it).
"""

from __future__ import annotations

import json
import os

import pytest

from imagebackend import exception
from imagebackend import names
from imagebackend.backends import qcow2 as qcow2_mod

from tests.functional.conftest import GiB, MiB, run

NAME = names.image_cache_name('img')
LEGACY = f'{NAME}_1'


def _fetcher(src: str):
    def fetch_image(target, context=None, image_id=None, **kwargs):
        run('cp', '--sparse=always', src, target)
    return fetch_image


def old_nova_disk(host, instance, src: str, src_fmt: str = 'raw',
                  disk_info: bool = True) -> tuple[str, str]:
    """A disk old Nova made: an overlay on ``_base/<NAME>_1`` (the image
    grown to 1 GiB), with guest writes, whose base is then gone. Returns
    (disk path, a raw file of what the guest must read)."""
    base_dir = os.path.join(host.instances_path, '_base')
    os.makedirs(base_dir, exist_ok=True)
    legacy = os.path.join(base_dir, LEGACY)
    run('cp', '--sparse=always', src, legacy)
    run('qemu-img', 'resize', '-q', '-f', src_fmt, legacy, str(GiB))
    inst_dir = os.path.join(host.instances_path, instance.uuid)
    os.makedirs(inst_dir)
    disk = os.path.join(inst_dir, 'disk')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-F', src_fmt, '-b',
        legacy, disk)
    run('qemu-io', '-f', 'qcow2', '-c', f'write -P 0x11 {2 * MiB} 64k', disk)
    expected = disk + '.expected'
    run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', disk, expected)
    os.unlink(legacy)
    if disk_info:
        with open(os.path.join(inst_dir, 'disk.info'), 'w') as f:
            json.dump({disk: 'qcow2'}, f)
    return disk, expected


def assert_reads(disk: str, expected: str) -> None:
    """The guest reads through the disk exactly what it read before."""
    run('qemu-img', 'compare', '-q', '-f', 'qcow2', '-F', 'raw', disk,
        expected)


def assert_regenerated(backend, fmt: str = 'raw') -> None:
    entry = backend.image_cache.check(LEGACY)
    assert entry is not None
    assert (entry.format, entry.virtual_size, entry.provenance) == (
        fmt, GiB, 'generated')
    assert leftovers(backend) == []


def leftovers(backend) -> list[str]:
    return [n for n in os.listdir(backend.image_cache.base_dir)
            if n.endswith(names.PART_SUFFIX) or n.startswith('.')]


def assert_no_probing(recorded) -> None:
    for cmd in recorded:
        if cmd[0] == 'qemu-img' and cmd[1] in ('info', 'resize', 'convert',
                                               'create', 'rebase'):
            assert '-f' in cmd, cmd


def test_legacy_cache_regenerates_the_resized_base(
        host, backend, instance, make_image, recorded):
    src = make_image('img', 'raw')
    path, expected = old_nova_disk(host, instance, src)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    disk.cache(fetch_func=_fetcher(src), context=None, filename=NAME,
               image_id='img', size=GiB)
    assert_regenerated(backend)
    assert os.path.getsize(backend.image_cache.path(LEGACY)) == GiB
    # Nova's fetch left the base without a sidecar: described as the image.
    for name in (NAME, LEGACY):
        entry = backend.image_cache.get(name)
        assert (entry.kind, entry.source) == ('image', 'img')
    assert_reads(path, expected)
    assert_no_probing(recorded)


def test_check_backing_regenerates_the_resized_base(
        host, backend, instance, make_image, recorded):
    src = make_image('img', 'raw')
    path, expected = old_nova_disk(host, instance, src)
    disk = backend.from_metadata(instance, 'disk')
    assert (disk.record.backing, disk.record.backing_format) == (LEGACY,
                                                                 'raw')
    disk.check_backing_from_image(None, 'img')
    assert_regenerated(backend)
    disk.settle()
    assert_reads(path, expected)
    assert_no_probing(recorded)
    # Present now: a second check makes nothing.
    before = os.stat(backend.image_cache.path(LEGACY)).st_ino
    backend.from_metadata(instance, 'disk').check_backing_from_image(
        None, 'img')
    assert os.stat(backend.image_cache.path(LEGACY)).st_ino == before


def test_copy_unlike_the_recorded_one_is_refused(
        host, backend, instance, make_image):
    src = make_image('img', 'raw')
    old_nova_disk(host, instance, src)
    record = backend.from_metadata(instance, 'disk').record
    backend.records.put(record.replace(
        backing_sha256='sha256-blocks-1MiB:' + '0' * 64))
    disk = backend.from_metadata(instance, 'disk')
    with pytest.raises(exception.ImageUnacceptable) as e:
        disk.check_backing_from_image(None, 'img')
    assert LEGACY in str(e.value)
    assert not os.path.exists(backend.image_cache.path(LEGACY))
    assert not os.path.exists(backend.image_cache.path(LEGACY) +
                              names.META_SUFFIX)
    assert leftovers(backend) == []


def test_failed_regeneration_leaves_nothing(
        host, backend, instance, make_image, tmp_path, monkeypatch):
    """A qcow2 base is grown by qemu-img resize; that failing (a stub on
    PATH: a real process exiting 1) leaves no copy, part or sidecar."""
    host.set_override('force_raw_images', False)
    src = make_image('img', 'qcow2')
    old_nova_disk(host, instance, src, 'qcow2')
    stubs = tmp_path / 'stubs'
    stubs.mkdir()
    real = run('sh', '-c', 'command -v qemu-img').strip()
    stub = stubs / 'qemu-img'
    stub.write_text(f'#!/bin/sh\n[ "$1" = resize ] && exit 1\n'
                    f'exec {real} "$@"\n')
    stub.chmod(0o755)
    monkeypatch.setenv('PATH', f'{stubs}:{os.environ["PATH"]}')
    disk = backend.from_metadata(instance, 'disk')
    with pytest.raises(exception.ProcessError):
        disk.check_backing_from_image(None, 'img')
    assert not os.path.exists(backend.image_cache.path(LEGACY))
    assert not os.path.exists(backend.image_cache.path(LEGACY) +
                              names.META_SUFFIX)
    assert leftovers(backend) == []
    monkeypatch.undo()
    backend.from_metadata(instance, 'disk').check_backing_from_image(
        None, 'img')
    assert_regenerated(backend, 'qcow2')


@pytest.mark.parametrize('gib,error', [
    (0, exception.ImageUnacceptable),    # smaller than the base: no copy
    (2, exception.ImageTooLarge)])       # over max_image_virtual_size_gb
def test_impossible_copy_is_refused(host, backend, make_image, gib, error):
    host.set_override('max_image_virtual_size_gb', 1, group='imagebackend')
    make_image('img', 'raw')
    entry = backend.image_cache.fetch_image(None, 'img')
    with pytest.raises(error):
        backend.image_cache.ensure_resized(entry, f'{NAME}_{gib}', gib * GiB)
    assert sorted(os.listdir(backend.image_cache.base_dir)) == [
        NAME, NAME + names.META_SUFFIX]


def test_undescribed_disk_header_is_not_followed(
        host, backend, instance, make_image):
    """No record and no disk.info: the file may be a raw disk whose guest
    wrote a qcow2 header; the base it names is not made."""
    src = make_image('img', 'raw')
    old_nova_disk(host, instance, src, disk_info=False)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    disk.cache(fetch_func=_fetcher(src), context=None, filename=NAME,
               image_id='img', size=GiB)
    assert not os.path.exists(backend.image_cache.path(LEGACY))
    assert leftovers(backend) == []


@pytest.mark.parametrize('backing,base,size', [
    (f'{NAME}_10', NAME, 10 * GiB),
    (f'{NAME}_1', NAME, GiB),
    (NAME, NAME, None),                  # the base itself
    (f'{NAME}_1x', NAME, None),
    (f'{NAME}_', NAME, None),
    (f'{NAME}_\u0661', NAME, None),      # a digit, but not 0-9
    ('other_10', NAME, None),           # another base's copy
    ('swap_512', 'swap_512', None),      # Nova would make swap_512_512
], ids=['10GiB', '1GiB', 'base', 'not-digits', 'empty', 'arabic-digit',
        'other-base', 'swap'])
def test_legacy_resized_size(backing, base, size):
    assert qcow2_mod.legacy_resized_size(backing, base) == size
