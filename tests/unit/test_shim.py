"""Tests for imagebackend.shim: the new interface on Nova's legacy cache().

The shim must call ``cache()`` exactly as Nova's driver does (nova-behaviour
1.3, 3.1): for an image ``filename=sha1(image id)`` with ``context`` and
``image_id``; for a template function ``safe=True`` plus ``ephemeral_size``
(GiB) or ``swap_mb`` by the cache name's prefix. A backend that implements
only Nova's ``create_image()`` gets the new interface, and a metadata
record, for free.

Pure logic: the process boundary is faked (``imagebackend.qemu.virtual_size``
reports a file's apparent size, the image cache's fetch is a mock).
"""

import hashlib
import os
from unittest import mock

import pytest

import imagebackend
from imagebackend import exception, fileutils, processes, records, shim
from tests.hosts import GiB, MiB

IMAGE_NAME = hashlib.sha1(b'image-1').hexdigest()
EPH = 'ephemeral_1_ext4_ephemeral0'


@pytest.fixture
def ctx():
    return mock.sentinel.context


@pytest.fixture
def disk(backend, instance):
    return backend.by_name(instance, 'disk', 'qcow2')


@pytest.fixture
def cache(disk):
    """disk.cache() replaced by a mock with cache()'s signature."""
    with mock.patch.object(disk, 'cache', autospec=True) as m:
        yield m


def make_disk_file(disk):
    os.makedirs(os.path.dirname(disk.path), exist_ok=True)
    with open(disk.path, 'wb') as f:
        f.write(b'disk')


# -- create_from_image -> cache() ---------------------------------------------

def test_create_from_image_calls_cache_like_nova(disk, cache, ctx):
    seen = []
    cache.side_effect = lambda *a, **kw: seen.append(
        disk._current_creation_path())
    shim.create_from_image(disk, ctx, 'image-1', 10 * GiB)
    assert cache.call_count == 1
    assert cache.call_args == mock.call(
        fetch_func=mock.ANY, filename=hashlib.sha1(b'image-1').hexdigest(),
        size=10 * GiB, context=ctx, image_id='image-1')
    assert callable(cache.call_args.kwargs['fetch_func'])
    # Records written inside are labelled as made through the shim...
    assert seen == ['shim']
    # ...and only inside.
    assert disk._current_creation_path() == 'legacy-cache'


def test_create_from_image_without_size(disk, cache, ctx):
    shim.create_from_image(disk, ctx, 'image-1')
    assert cache.call_args == mock.call(
        fetch_func=mock.ANY, filename=IMAGE_NAME, size=None, context=ctx,
        image_id='image-1')


@pytest.mark.parametrize('fallback', [None, 'host-2'])
def test_image_fetch_func_fetches_into_target(disk, cache, ctx, fallback):
    shim.create_from_image(disk, ctx, 'image-1', GiB, fallback=fallback)
    fetch_func = cache.call_args.kwargs['fetch_func']
    target = disk.image_cache.path(IMAGE_NAME)
    with mock.patch.object(disk.image_cache, 'fetch_into') as fetch_into:
        # Called as Nova's create_image calls prepare_template.
        fetch_func(target=target, context=ctx, image_id='image-1',
                   safe=False)
    # The disk's size travels to the fetch (refused early if too small).
    fetch_into.assert_called_once_with(ctx, 'image-1', target,
                                       fallback=fallback, size=GiB)


def test_create_from_image_refuses_existing_disk(disk, cache, ctx):
    make_disk_file(disk)
    with pytest.raises(exception.DiskExists) as e:
        shim.create_from_image(disk, ctx, 'image-1', GiB)
    assert disk.path in str(e.value)
    cache.assert_not_called()
    with open(disk.path, 'rb') as f:
        assert f.read() == b'disk'


# -- create_from_func -> cache() ----------------------------------------------

def test_create_from_func_ephemeral(disk, cache, ctx):
    func = mock.Mock()
    shim.create_from_func(disk, ctx, func, EPH, 1 * GiB)
    assert cache.call_count == 1
    assert cache.call_args == mock.call(
        fetch_func=mock.ANY, filename=EPH, size=GiB, safe=True,
        context=ctx, ephemeral_size=1)
    assert callable(cache.call_args.kwargs['fetch_func'])
    func.assert_not_called()  # cache() is a mock: nothing ran it


def test_create_from_func_swap(disk, cache, ctx):
    shim.create_from_func(disk, ctx, mock.Mock(), 'swap_512', 512 * MiB)
    assert cache.call_args == mock.call(
        fetch_func=mock.ANY, filename='swap_512', size=512 * MiB, safe=True,
        context=ctx, swap_mb=512)


@pytest.mark.parametrize('cache_name', ['config-template', 'disk.config',
                                        'rescue_1'])
def test_create_from_func_other_names(disk, cache, ctx, cache_name):
    shim.create_from_func(disk, ctx, mock.Mock(), cache_name, 64 * MiB)
    assert cache.call_args == mock.call(
        fetch_func=mock.ANY, filename=cache_name, size=64 * MiB, safe=True,
        context=ctx)
    kwargs = cache.call_args.kwargs
    assert 'ephemeral_size' not in kwargs and 'swap_mb' not in kwargs


@pytest.mark.parametrize('cache_name', ['../x', 'a/b', 'x.part',
                                        'x.meta.json', ''])
def test_create_from_func_refuses_bad_cache_name(disk, cache, ctx,
                                                 cache_name):
    with pytest.raises(exception.InvalidDiskName):
        shim.create_from_func(disk, ctx, mock.Mock(), cache_name, GiB)
    cache.assert_not_called()


def test_create_from_func_refuses_existing_disk(disk, cache, ctx):
    make_disk_file(disk)
    func = mock.Mock()
    with pytest.raises(exception.DiskExists):
        shim.create_from_func(disk, ctx, func, EPH, GiB)
    cache.assert_not_called()
    func.assert_not_called()


def _template_fetch_func(disk, cache, ctx, func, fallback=None):
    shim.create_from_func(disk, ctx, func, EPH, GiB, fallback=fallback)
    return cache.call_args.kwargs['fetch_func']


def test_template_fetch_func_writes_straight_to_other_targets(
        disk, cache, ctx, tmp_path):
    func = mock.Mock()
    fetch_func = _template_fetch_func(disk, cache, ctx, func)
    target = str(tmp_path / 'instance-disk')  # e.g. Flat's own disk path
    with mock.patch.object(disk.image_cache, 'write_template') as wt:
        fetch_func(target=target, context=ctx, ephemeral_size=1, safe=True)
    func.assert_called_once_with(target)
    wt.assert_not_called()


def test_template_fetch_func_writes_cache_through_write_template(
        disk, cache, ctx):
    func = mock.Mock()
    fetch_func = _template_fetch_func(disk, cache, ctx, func)
    target = disk.image_cache.path(EPH)
    with mock.patch.object(disk.image_cache, 'write_template') as wt:
        fetch_func(target=target, context=ctx, ephemeral_size=1, safe=True)
    wt.assert_called_once_with(EPH, func, target)
    func.assert_not_called()


def test_template_fetch_func_side_loads_from_fallback(disk, cache, ctx):
    func = mock.Mock()
    fetch_func = _template_fetch_func(disk, cache, ctx, func,
                                      fallback='host-2')
    target = disk.image_cache.path(EPH)
    with mock.patch.object(disk.image_cache, 'transport', mock.Mock()), \
            mock.patch.object(disk.image_cache, 'side_load') as side_load, \
            mock.patch.object(disk.image_cache, 'write_template') as wt:
        fetch_func(target=target)
    side_load.assert_called_once_with('host-2', EPH, 'template', EPH, target)
    wt.assert_not_called()
    func.assert_not_called()


def test_template_fetch_func_regenerates_when_side_load_fails(disk, cache,
                                                              ctx):
    func = mock.Mock()
    fetch_func = _template_fetch_func(disk, cache, ctx, func,
                                      fallback='host-2')
    target = disk.image_cache.path(EPH)
    error = exception.TransportError(what=EPH, host='host-2', reason='gone')
    with mock.patch.object(disk.image_cache, 'transport', mock.Mock()), \
            mock.patch.object(disk.image_cache, 'side_load',
                              side_effect=error), \
            mock.patch.object(disk.image_cache, 'write_template') as wt:
        fetch_func(target=target)
    wt.assert_called_once_with(EPH, func, target)


def test_template_fetch_func_without_transport_ignores_fallback(disk, cache,
                                                                ctx):
    assert disk.image_cache.transport is None
    func = mock.Mock()
    fetch_func = _template_fetch_func(disk, cache, ctx, func,
                                      fallback='host-2')
    target = disk.image_cache.path(EPH)
    with mock.patch.object(disk.image_cache, 'side_load') as side_load, \
            mock.patch.object(disk.image_cache, 'write_template') as wt:
        fetch_func(target=target)
    side_load.assert_not_called()
    wt.assert_called_once_with(EPH, func, target)


# -- check_backing_* -> cache() -----------------------------------------------

def test_check_backing_from_image_on_missing_disk(disk, cache, ctx):
    with pytest.raises(exception.DiskNotFound) as e:
        shim.check_backing_from_image(disk, ctx, 'image-1')
    assert disk.path in str(e.value)
    cache.assert_not_called()


def test_check_backing_from_func_on_missing_disk(disk, cache, ctx):
    with pytest.raises(exception.DiskNotFound):
        shim.check_backing_from_func(disk, ctx, mock.Mock(), EPH)
    cache.assert_not_called()


def test_check_backing_from_image_calls_cache_without_size(disk, cache, ctx):
    make_disk_file(disk)
    shim.check_backing_from_image(disk, ctx, 'image-1', fallback='host-2')
    assert cache.call_args == mock.call(
        fetch_func=mock.ANY, filename=IMAGE_NAME, context=ctx,
        image_id='image-1')
    # Not a creation: nothing is labelled.
    assert disk._current_creation_path() == 'legacy-cache'


def test_check_backing_from_func_calls_cache_safe(disk, cache, ctx):
    make_disk_file(disk)
    shim.check_backing_from_func(disk, ctx, mock.Mock(), 'swap_512')
    assert cache.call_args == mock.call(
        fetch_func=mock.ANY, filename='swap_512', safe=True, context=ctx,
        swap_mb=None)


def test_check_backing_from_func_refuses_bad_cache_name(disk, cache, ctx):
    make_disk_file(disk)
    with pytest.raises(exception.InvalidDiskName):
        shim.check_backing_from_func(disk, ctx, mock.Mock(), '../x')
    cache.assert_not_called()


# -- template_kwargs ----------------------------------------------------------

@pytest.mark.parametrize('cache_name, size, expected', [
    ('ephemeral_1_ext4_ephemeral0', GiB, {'ephemeral_size': 1}),
    ('ephemeral_20_40d1d2c', 20 * GiB, {'ephemeral_size': 20}),
    ('ephemeral_1_ext4', None, {'ephemeral_size': None}),
    ('swap_512', 512 * MiB, {'swap_mb': 512}),
    ('swap_1', MiB, {'swap_mb': 1}),
    ('swap_2048', 2 * GiB, {'swap_mb': 2048}),
    ('swap_512', None, {'swap_mb': None}),
    # names.template_name's names keep the prefixes.
    ('ephemeral_1G_ext4_eph0', GiB, {'ephemeral_size': 1}),
    ('swap_512M', 512 * MiB, {'swap_mb': 512}),
    ('disk.config', 64 * MiB, {}),
    ('config_swap_1', MiB, {}),
    (IMAGE_NAME, GiB, {}),
    ('other', None, {}),
])
def test_template_kwargs(cache_name, size, expected):
    assert shim.template_kwargs(cache_name, size) == expected


# -- a legacy out-of-tree backend gets the new interface ----------------------

class LegacyImage(imagebackend.Image):
    """Like an out-of-tree Nova backend: only Nova's abstract methods."""

    image_type = 'legacy'

    def create_image(self, prepare_template, base, size, *args, **kwargs):
        if not os.path.exists(base):
            prepare_template(target=base, *args, **kwargs)
        if not self.exists():
            with open(base, 'rb') as src, open(self.path, 'wb') as dst:
                dst.write(src.read())

    def remove_disk(self):
        fileutils.remove_path(self.path)

    def _grow(self, size):
        os.truncate(self.path, size)


def _fake_virtual_size(path, fmt=None, **limits):
    """qemu-img info's virtual size of a raw file: its apparent size."""
    return os.path.getsize(path)


@pytest.fixture
def no_qemu():
    """No qemu-img runs; any other command fails the test."""
    with mock.patch.object(imagebackend.qemu, 'virtual_size',
                           side_effect=_fake_virtual_size) as vs, \
            processes.recording() as commands:
        yield vs
    assert commands == []


def legacy_disk(backend, instance, name='disk'):
    path = os.path.join(backend.conf.instances_path, instance.uuid, name)
    return LegacyImage(instance=instance, disk_name=name, path=path,
                       backend=backend)


def _fetch_into(image_bytes):
    def fetch_into(context, image_id, target, fallback=None, size=None):
        with open(target, 'wb') as f:
            f.write(image_bytes)
    return fetch_into


def test_legacy_backend_has_the_new_interface():
    assert LegacyImage.create_from_image is imagebackend.Image \
        .create_from_image
    assert LegacyImage.create_from_func is imagebackend.Image \
        .create_from_func
    assert not LegacyImage.capabilities.native_create


def test_legacy_backend_create_from_image(backend, instance, ctx, no_qemu):
    disk = legacy_disk(backend, instance)
    with mock.patch.object(disk.image_cache, 'fetch_into',
                           side_effect=_fetch_into(b'\xab' * MiB)) as fetch:
        disk.create_from_image(ctx, 'image-1', 10 * GiB)
    base = disk.image_cache.path(IMAGE_NAME)
    fetch.assert_called_once_with(ctx, 'image-1', base, fallback=None,
                                  size=10 * GiB)
    assert os.path.getsize(disk.path) == 10 * GiB  # grown by cache()

    record = backend.records.get(instance.uuid, 'disk')
    assert record is not None
    assert record.state == records.CREATED
    assert record.backend == 'legacy'
    assert record.format == 'raw'
    assert record.location == disk.path
    assert record.source_type == 'image'
    assert record.source_id == 'image-1'
    assert record.virtual_size == 10 * GiB
    assert record.backing is None
    assert record.provenance == {'path': 'shim'}
    assert disk.record == record
    assert disk.virtual_size() == 10 * GiB


def test_legacy_backend_create_from_func(backend, instance, ctx, no_qemu):
    def func(target):
        with open(target, 'wb') as f:
            f.write(b'EPH0')
            f.truncate(MiB)

    func = mock.Mock(side_effect=func)
    disk = legacy_disk(backend, instance, 'disk.local')
    disk.create_from_func(ctx, func, EPH, GiB)
    base = disk.image_cache.path(EPH)
    # The template was written once, through the cache (atomically).
    func.assert_called_once_with(base + '.part')
    entry = disk.image_cache.get(EPH)
    assert (entry.kind, entry.format, entry.virtual_size) == (
        'template', 'raw', MiB)
    with open(disk.path, 'rb') as f:
        assert f.read(4) == b'EPH0'
    assert os.path.getsize(disk.path) == GiB

    record = backend.records.get(instance.uuid, 'disk.local')
    assert record.state == records.CREATED
    assert record.source_type == 'func'
    assert record.source_id == EPH
    assert record.virtual_size == GiB
    assert record.provenance == {'path': 'shim'}

    # A second disk from the same template does not run the function.
    disk2 = legacy_disk(backend, instance, 'disk.eph0')
    disk2.create_from_func(ctx, func, EPH, 2 * GiB)
    func.assert_called_once()
    assert backend.records.get(instance.uuid,
                               'disk.eph0').virtual_size == 2 * GiB


def test_legacy_cache_called_directly_writes_record(backend, instance, ctx,
                                                    no_qemu):
    # Nova's driver calling cache() itself, as it does today.
    calls = []

    def fetch_image(target, context=None, image_id=None, **kwargs):
        calls.append((target, context, image_id, kwargs))
        with open(target, 'wb') as f:
            f.write(b'\x01' * MiB)

    disk = legacy_disk(backend, instance)
    name = hashlib.sha1(b'image-9').hexdigest()
    disk.cache(fetch_func=fetch_image, context=ctx, filename=name,
               size=2 * GiB, image_id='image-9', trusted_certs=None)
    base = disk.image_cache.path(name)
    assert calls == [(base, ctx, 'image-9',
                      {'safe': False, 'trusted_certs': None})]
    record = backend.records.get(instance.uuid, 'disk')
    assert record.state == records.CREATED
    assert record.source_type == 'image'
    assert record.source_id == 'image-9'
    assert record.virtual_size == 2 * GiB
    assert record.provenance == {'path': 'legacy-cache'}


def test_legacy_cache_called_directly_for_a_template(backend, instance, ctx,
                                                     no_qemu):
    calls = []

    def create_ephemeral(target, ephemeral_size, fs_label, os_type,
                         is_block_dev=False, context=None, **kwargs):
        calls.append((target, ephemeral_size, fs_label, os_type))
        with open(target, 'wb') as f:
            f.truncate(ephemeral_size * MiB)

    disk = legacy_disk(backend, instance, 'disk.local')
    disk.cache(fetch_func=create_ephemeral, context=ctx, filename=EPH,
               size=GiB, ephemeral_size=1, fs_label='ephemeral0',
               os_type='linux')
    base = disk.image_cache.path(EPH)
    assert calls == [(base, 1, 'ephemeral0', 'linux')]
    record = backend.records.get(instance.uuid, 'disk.local')
    assert record.source_type == 'func'
    assert record.source_id == EPH
    assert record.virtual_size == GiB
    assert record.provenance == {'path': 'legacy-cache'}


def test_legacy_create_from_image_refuses_existing_disk(backend, instance,
                                                        ctx, no_qemu):
    disk = legacy_disk(backend, instance)
    make_disk_file(disk)
    with mock.patch.object(disk.image_cache, 'fetch_into') as fetch:
        with pytest.raises(exception.DiskExists):
            disk.create_from_image(ctx, 'image-1', GiB)
    fetch.assert_not_called()
    assert backend.records.get(instance.uuid, 'disk') is None
    with open(disk.path, 'rb') as f:
        assert f.read() == b'disk'


def test_legacy_create_failure_leaves_nothing(backend, instance, ctx,
                                              no_qemu):
    disk = legacy_disk(backend, instance)
    error = exception.ImageNotFound(image_id='image-1')
    with mock.patch.object(disk.image_cache, 'fetch_into',
                           side_effect=error):
        with pytest.raises(exception.ImageNotFound):
            disk.create_from_image(ctx, 'image-1', GiB)
    assert backend.records.get(instance.uuid, 'disk') is None
    assert disk.record is None
    assert not disk.exists()
    # The instance directory did not exist before: it is gone again.
    assert not os.path.exists(os.path.dirname(disk.path))


def test_legacy_check_backing_recreates_base_without_a_record(
        backend, instance, ctx, no_qemu):
    disk = legacy_disk(backend, instance)
    make_disk_file(disk)
    with mock.patch.object(disk.image_cache, 'fetch_into',
                           side_effect=_fetch_into(b'\x02' * 4096)) as fetch:
        disk.check_backing_from_image(ctx, 'image-1')
    base = disk.image_cache.path(IMAGE_NAME)
    fetch.assert_called_once_with(ctx, 'image-1', base, fallback=None)
    assert os.path.exists(base)
    with open(disk.path, 'rb') as f:
        assert f.read() == b'disk'  # never touched
    assert backend.records.get(instance.uuid, 'disk') is None


def test_legacy_check_backing_on_missing_disk(backend, instance, ctx,
                                              no_qemu):
    disk = legacy_disk(backend, instance)
    with mock.patch.object(disk.image_cache, 'fetch_into') as fetch:
        with pytest.raises(exception.DiskNotFound):
            disk.check_backing_from_image(ctx, 'image-1')
        with pytest.raises(exception.DiskNotFound):
            disk.check_backing_from_func(ctx, mock.Mock(), EPH)
    fetch.assert_not_called()
