"""Growing a raw disk that is one bare ext filesystem grows the filesystem
too, as Nova's ``disk.api.extend`` does (``e2fsck -fp``, ``resize2fs``);
nothing else is ever touched: a partitioned disk, a disk that has both a
partition table and an ext superblock, xfs, a qcow2 disk.

Real images throughout: mkfs.ext4 / mkfs.xfs / parted on sparse files,
real e2fsck and resize2fs. A failing resize2fs is a stub on PATH (a real
process exiting 1): no real image makes resize2fs fail after a clean
e2fsck.
"""

from __future__ import annotations

import os

import pytest

from imagebackend import fileutils
from imagebackend import filesystems
from imagebackend import names

from tests.functional.conftest import MiB, guest_bytes, run

FS_TOOLS = ('e2fsck', 'resize2fs')


def ext_size(path: str) -> int:
    """The ext filesystem's size in bytes, as its superblock says."""
    out = run('dumpe2fs', '-h', path)
    fields = dict(line.split(':', 1) for line in out.splitlines()
                  if ':' in line)
    return int(fields['Block count']) * int(fields['Block size'])


def prefix_sha(path: str, length: int) -> str:
    """The block digest of the first ``length`` bytes, reading only
    allocated extents (zero blocks count the same as holes)."""
    digest = fileutils.BlockDigest()
    block = fileutils.DIGEST_BLOCK
    done = -1
    with open(path, 'rb') as f:
        extents = (fileutils._data_extents(f.fileno(), length)
                   if os.path.isfile(path) else [(0, length)])
        for offset, size in extents:
            first = max(offset // block, done + 1)
            last = (min(offset + size, length) - 1) // block
            for index in range(first, last + 1):
                start = index * block
                digest.add(index, os.pread(f.fileno(),
                                           min(block, length - start), start))
                done = index
    return digest.hexdigest(length)


def fs_commands(recorded) -> list[str]:
    return [c[0] for c in recorded if c[0] in FS_TOOLS]


def ext4_image(path: str, size: int = 64 * MiB) -> str:
    run('truncate', '-s', str(size), path)
    run('mkfs.ext4', '-q', '-F', '-L', 'root', path)
    return path


def partitioned_image(path: str, size: int = 64 * MiB) -> str:
    """A GPT disk whose one partition (at 1 MiB) holds an ext4 fs."""
    run('truncate', '-s', str(size), path)
    run('parted', '-s', path, 'mklabel', 'gpt', 'mkpart', 'p', 'ext4',
        '1MiB', '100%')
    run('mkfs.ext4', '-q', '-F', '-E', f'offset={MiB}', path,
        str((size - 2 * MiB) // 1024) + 'k')
    return path


def ambiguous_image(path: str, tmp_path) -> str:
    """An ext4 fs from byte 0 *and* a DOS partition table: Nova's e2label
    check takes it for a filesystem; which one the guest uses is unknown."""
    ext4_image(path)
    mbr = str(tmp_path / 'mbr')
    run('truncate', '-s', str(4 * MiB), mbr)
    run('parted', '-s', mbr, 'mklabel', 'msdos', 'mkpart', 'primary',
        'ext4', '1MiB', '100%')
    with open(mbr, 'rb') as f:
        sector = f.read(512)
    with open(path, 'r+b') as f:
        f.write(sector)
    assert sector[510:] == b'\x55\xaa'
    return path


def xfs_image(path: str) -> str:
    run('truncate', '-s', str(320 * MiB), path)   # mkfs.xfs's minimum
    run('mkfs.xfs', '-q', '-f', path)
    return path


def in_images(host, image_id: str) -> str:
    return os.path.join(host.imagebackend.images_dir, f'{image_id}.raw')


def _fetcher(src: str):
    def fetch_image(target, context=None, image_id=None, **kwargs):
        run('cp', '--sparse=always', src, target)
    return fetch_image


# -- the detection -------------------------------------------------------------

def test_only_a_bare_ext_filesystem_is_extendable(tmp_path):
    assert filesystems.bare_ext_filesystem(ext4_image(str(tmp_path / 'e')))
    for make in (partitioned_image, xfs_image):
        assert not filesystems.bare_ext_filesystem(make(str(tmp_path / 'x')))
        os.unlink(str(tmp_path / 'x'))
    assert not filesystems.bare_ext_filesystem(
        ambiguous_image(str(tmp_path / 'a'), tmp_path))
    short = tmp_path / 'short'
    short.write_bytes(b'\x00' * 1082)
    assert not filesystems.bare_ext_filesystem(str(short))
    assert not filesystems.bare_ext_filesystem(str(tmp_path / 'absent'))


# -- Flat: grown at creation (native and legacy) and on resize ------------------

def test_flat_native_grows_the_filesystem(host, backend, instance, recorded):
    ext4_image(in_images(host, 'img'))
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', size=128 * MiB)
    assert ext_size(disk.path) == 128 * MiB
    assert fs_commands(recorded) == ['e2fsck', 'resize2fs']
    run('e2fsck', '-fn', disk.path)   # consistent
    # The cached base is the image's: not grown.
    assert ext_size(backend.image_cache.path(
        names.image_cache_name('img'))) == 64 * MiB

    disk.resize_image(192 * MiB)
    assert ext_size(disk.path) == 192 * MiB
    assert backend.records.get(instance.uuid, 'disk').virtual_size == \
        192 * MiB


def test_flat_legacy_cache_grows_the_filesystem(backend, instance, tmp_path):
    src = ext4_image(str(tmp_path / 'src'))
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.cache(fetch_func=_fetcher(src), context=None,
               filename=names.image_cache_name('img'), image_id='img',
               size=96 * MiB)
    assert ext_size(disk.path) == 96 * MiB
    assert backend.records.get(instance.uuid, 'disk').virtual_size == \
        96 * MiB


def test_flat_same_size_runs_no_tool(host, backend, instance, recorded):
    ext4_image(in_images(host, 'img'))
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', size=64 * MiB)
    disk.resize_image(64 * MiB)
    assert fs_commands(recorded) == []


@pytest.mark.parametrize('kind', ('partitioned', 'ambiguous', 'xfs'))
def test_flat_other_content_is_not_touched(host, backend, instance, tmp_path,
                                           recorded, kind):
    path = in_images(host, 'img')
    if kind == 'partitioned':
        partitioned_image(path)
    elif kind == 'ambiguous':
        ambiguous_image(path, tmp_path)
    else:
        xfs_image(path)
    size = os.path.getsize(path)
    before = prefix_sha(path, size)
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', size=size + 64 * MiB)
    disk.resize_image(size + 128 * MiB)
    assert fs_commands(recorded) == []
    assert prefix_sha(disk.path, size) == before
    assert os.path.getsize(disk.path) == size + 128 * MiB


def test_flat_qcow2_file_is_not_touched(host, backend, instance, tmp_path,
                                        recorded):
    """force_raw_images off: a qcow2 image stays qcow2 in a Flat disk, and
    its filesystem is not grown (Nova: only with
    resize_fs_using_block_device, which the library does not read)."""
    host.set_override('force_raw_images', False)
    raw = ext4_image(str(tmp_path / 'src.raw'))
    run('qemu-img', 'convert', '-f', 'raw', '-O', 'qcow2', raw,
        os.path.join(host.imagebackend.images_dir, 'img.qcow2'))
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', size=128 * MiB)
    disk.resize_image(192 * MiB)
    assert disk.driver_format == 'qcow2'
    assert fs_commands(recorded) == []
    out = str(tmp_path / 'guest.raw')
    run('qemu-img', 'convert', '-f', 'qcow2', '-O', 'raw', disk.path, out)
    assert ext_size(out) == 64 * MiB


def test_qcow2_disk_is_not_touched(host, backend, instance, tmp_path,
                                   recorded):
    ext4_image(in_images(host, 'img'))
    disk = backend.by_name(instance, 'disk', 'qcow2')
    disk.create_from_image(None, 'img', size=128 * MiB)
    disk.resize_image(192 * MiB)
    assert fs_commands(recorded) == []
    assert guest_bytes(disk.path, 'qcow2', tmp_path)[:64 * MiB] == \
        guest_bytes(in_images(host, 'img'), 'raw', tmp_path)


# -- failures: the disk keeps its size, the record says it ---------------------

def test_failing_e2fsck_leaves_the_filesystem_and_a_true_record(
        host, backend, instance, recorded):
    ext4_image(in_images(host, 'img'))
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', size=64 * MiB)
    # Break the superblock (its block count; magic intact): e2fsck -p
    # refuses (exit 8) and nothing may run resize2fs on it.
    with open(disk.path, 'r+b') as f:
        f.seek(1024 + 4)
        f.write(b'\xff\xff\xff\x7f')
    before = prefix_sha(disk.path, 64 * MiB)
    disk.resize_image(128 * MiB)
    assert fs_commands(recorded) == ['e2fsck']
    assert prefix_sha(disk.path, 64 * MiB) == before
    assert os.path.getsize(disk.path) == 128 * MiB
    record = backend.records.get(instance.uuid, 'disk')
    assert (record.state, record.virtual_size) == ('created', 128 * MiB)


def test_failing_resize2fs_leaves_a_true_record(
        host, backend, instance, tmp_path, monkeypatch, recorded):
    ext4_image(in_images(host, 'img'))
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.create_from_image(None, 'img', size=64 * MiB)
    stubs = tmp_path / 'stubs'
    stubs.mkdir()
    stub = stubs / 'resize2fs'
    stub.write_text('#!/bin/sh\necho "resize2fs: injected failure" >&2\n'
                    'exit 1\n')
    stub.chmod(0o755)
    monkeypatch.setenv('PATH', f'{stubs}:{os.environ["PATH"]}')
    disk.resize_image(128 * MiB)
    assert fs_commands(recorded) == ['e2fsck', 'resize2fs']
    assert ext_size(disk.path) == 64 * MiB
    assert os.path.getsize(disk.path) == 128 * MiB
    assert backend.records.get(instance.uuid, 'disk').virtual_size == \
        128 * MiB
