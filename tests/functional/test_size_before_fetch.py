"""The declared virtual size is checked before the data is fetched
(issue 9, point 9).

A small qcow2 declaring 4 PiB is refused (over ``[imagebackend]
max_image_virtual_size_gb``, or smaller than the disk asked for) once its
header has arrived; a 16 GiB sparse raw for a 1 GiB root is refused from
the size its source declares, before its stream is opened. The image
source is wrapped to count the chunks it hands out.
"""

from __future__ import annotations

import os

import pytest

import imagebackend
from imagebackend import exception
from imagebackend import formats
from imagebackend import names
from imagebackend import shim
from imagebackend import sources

from tests.functional.conftest import GiB, MiB, run

PiB = 1024 ** 5
CHUNK = 64 * 1024
PATHS = ('native', 'shim')


class CountingSource:
    """An image source that counts the chunks it yields; ``hide_size``
    makes it declare no size, ``virtual_size`` declares one."""

    def __init__(self, directory: str, hide_size: bool = False,
                 virtual_size: int | None = None):
        self.inner = sources.DirectoryImageSource(directory)
        self.inner.chunk_size = CHUNK
        self.hide_size = hide_size
        self.virtual_size = virtual_size
        self.chunks = 0
        self.opened = 0

    def get_meta(self, context, image_id):
        meta = self.inner.get_meta(context, image_id)
        return sources.ImageMeta(
            id=meta.id, disk_format=meta.disk_format,
            size=None if self.hide_size else meta.size, name=meta.name,
            virtual_size=self.virtual_size)

    def open(self, context, image_id):
        self.opened += 1
        for chunk in self.inner.open(context, image_id):
            self.chunks += 1
            yield chunk


def _backend(host, **kwargs):
    source = CountingSource(host.imagebackend.images_dir, **kwargs)
    return imagebackend.Backend(conf=host, source=source), source


def _create(disk, path, image_id, size):
    if path == 'native':
        disk.create_from_image(None, image_id, size)
    else:
        shim.create_from_image(disk, None, image_id, size)


def _nothing_made(backend, instance, disk, image_id):
    assert backend.records.get(instance.uuid, 'disk') is None
    assert not disk.exists()
    assert backend.image_cache.get(names.image_cache_name(image_id)) is None
    base = backend.image_cache.base_dir
    assert not os.path.isdir(base) or [
        n for n in os.listdir(base) if n.endswith(names.PART_SUFFIX)] == []


@pytest.fixture
def petabyte_qcow2(host):
    """A few MiB of qcow2 declaring 4 PiB (2 MiB clusters keep its L1
    table small), with data at its start and near its end."""
    path = os.path.join(host.imagebackend.images_dir, 'huge.qcow2')
    run('qemu-img', 'create', '-q', '-f', 'qcow2', '-o', 'cluster_size=2M',
        path, str(4 * PiB))
    run('qemu-io', '-f', 'qcow2', '-c', 'write -P 0xab 0 1M',
        '-c', f'write -P 0x11 {3 * PiB} 64k', path)
    assert os.path.getsize(path) > 64 * CHUNK
    return path


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', ('flat', 'qcow2'))
def test_petabyte_qcow2_over_the_ceiling_stops_at_its_header(
        host, instance, petabyte_qcow2, image_type, path):
    host.set_override('force_raw_images', False)
    backend, source = _backend(host)
    disk = backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.ImageTooLarge) as caught:
        _create(disk, path, 'huge', None)
    assert isinstance(caught.value, exception.ImageUnacceptable)
    assert caught.value.kwargs['virtual_size'] == 4 * PiB
    assert caught.value.kwargs['limit'] == \
        host.imagebackend.max_image_virtual_size_gb * GiB
    assert source.chunks == 1   # the header's chunk, nothing after it
    _nothing_made(backend, instance, disk, 'huge')


@pytest.mark.parametrize('path', PATHS)
def test_petabyte_qcow2_for_a_small_root_is_too_big_at_its_header(
        host, instance, petabyte_qcow2, path):
    host.set_override('force_raw_images', False)
    backend, source = _backend(host)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    with pytest.raises(exception.DiskTooSmall) as caught:
        _create(disk, path, 'huge', GiB)
    assert caught.value.kwargs == {'size': GiB, 'image_size': 4 * PiB}
    assert source.chunks == 1
    _nothing_made(backend, instance, disk, 'huge')


def test_ceiling_is_configurable(host, instance, make_image):
    # A 2 GiB image under a 1 GiB ceiling; 0 means no limit.
    make_image('two', 'qcow2', 2 * GiB)
    host.set_override('max_image_virtual_size_gb', 1, group='imagebackend')
    backend, source = _backend(host)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    with pytest.raises(exception.ImageTooLarge):
        disk.create_from_image(None, 'two')
    assert source.chunks == 1
    host.set_override('max_image_virtual_size_gb', 0, group='imagebackend')
    disk.create_from_image(None, 'two')
    assert backend.records.get(instance.uuid, 'disk').virtual_size == 2 * GiB


@pytest.fixture
def sparse_raw_16g(host):
    path = os.path.join(host.imagebackend.images_dir, 'big.raw')
    with open(path, 'wb') as f:
        f.write(b'\xab' * MiB)
        f.truncate(16 * GiB)
    return path


@pytest.mark.parametrize('path', PATHS)
@pytest.mark.parametrize('image_type', ('flat', 'qcow2'))
def test_sparse_raw_bigger_than_root_is_refused_before_fetching(
        host, instance, sparse_raw_16g, image_type, path):
    backend, source = _backend(host)
    disk = backend.by_name(instance, 'disk', image_type)
    with pytest.raises(exception.DiskTooSmall) as caught:
        _create(disk, path, 'big', GiB)
    assert caught.value.kwargs == {'size': GiB, 'image_size': 16 * GiB}
    assert source.opened == 0 and source.chunks == 0
    _nothing_made(backend, instance, disk, 'big')


def test_raw_with_no_declared_size_stops_once_past_the_root(
        host, instance, sparse_raw_16g):
    # Without a declared size the stream's length is the bound: the fetch
    # stops one chunk past the disk's size, not after 16 GiB.
    backend, source = _backend(host, hide_size=True)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    with pytest.raises(exception.DiskTooSmall):
        disk.create_from_image(None, 'big', 4 * MiB)
    assert source.chunks == 4 * MiB // CHUNK + 1
    _nothing_made(backend, instance, disk, 'big')


def test_source_declared_virtual_size_is_checked_before_opening(
        host, instance, make_image):
    make_image('img', 'qcow2', 64 * MiB)
    backend, source = _backend(host, virtual_size=64 * MiB)
    disk = backend.by_name(instance, 'disk', 'qcow2')
    with pytest.raises(exception.DiskTooSmall):
        disk.create_from_image(None, 'img', 32 * MiB)
    assert source.opened == 0
    disk.create_from_image(None, 'img', 64 * MiB)
    assert source.opened == 1


@pytest.mark.parametrize('qemu_fmt, declared', [
    ('qcow2', 'qcow2'), ('vpc', 'vhd'), ('vdi', 'vdi'), ('vhdx', 'vhdx'),
    ('vmdk', 'vmdk'), ('parallels', 'ploop'), ('qed', 'qed'),
    ('raw', 'raw')])
def test_size_probe_never_claims_more_than_the_image_is(tmp_path, qemu_fmt,
                                                        declared):
    # The bound stops downloads, so it must never exceed what inspecting
    # the whole file finds (qed's inspector has no size of its own: 0).
    path = str(tmp_path / f'img.{qemu_fmt}')
    run('qemu-img', 'create', '-q', '-f', qemu_fmt, path, str(100 * MiB))
    probe = formats.SizeProbe(declared)
    with open(path, 'rb') as f:
        while chunk := f.read(CHUNK):
            bound = probe.feed(chunk)
    whole = formats.detect(path, check_safety=False).virtual_size
    assert bound <= whole
    if declared != 'qed':
        assert bound == whole
