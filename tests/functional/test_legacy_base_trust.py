"""The legacy ``cache()`` path trusts a cached base no more than the new
interface does (issue 9, points 4 and 10).

Nova's driver calls ``cache()`` with its own fetch function; a base it
finds in ``_base`` may have been cached long ago. Its sidecar's digest says
what its bytes must be, and a base Nova's fetch wrote without a sidecar is
described once, from its bytes, so the disk's record holds its real format.
"""

from __future__ import annotations

import os

import pytest

from imagebackend import exception
from imagebackend import names

from tests.functional.conftest import MiB, guest_bytes, run

NAME = names.image_cache_name('img')


def _fetcher(src: str):
    def fetch_image(target, context=None, image_id=None, **kwargs):
        run('cp', '--sparse=always', src, target)
    return fetch_image


def _image(tmp_path, fmt: str) -> str:
    src = str(tmp_path / f'src.{fmt}')
    run('qemu-img', 'create', '-q', '-f', fmt, src, str(32 * MiB))
    run('qemu-io', '-f', fmt, '-c', 'write -P 0xab 0 1M', src)
    return src


@pytest.mark.parametrize('image_type', ('flat', 'qcow2'))
def test_legacy_cache_refuses_a_base_whose_bytes_changed(
        backend, instance, tmp_path, image_type):
    src = _image(tmp_path, 'raw')
    first = backend.by_name(instance, 'disk', image_type)
    first.cache(fetch_func=_fetcher(src), context=None, filename=NAME,
                image_id='img', size=64 * MiB)
    base = backend.image_cache.path(NAME)
    assert os.path.exists(base + names.META_SUFFIX)
    # Someone rewrites the cached base in place (same size).
    with open(base, 'r+b') as f:
        f.write(b'\x5a' * 4096)

    second = backend.by_name(instance, 'disk.local', image_type)
    with pytest.raises(exception.CorruptCacheEntry) as e:
        second.cache(fetch_func=_fetcher(src), context=None, filename=NAME,
                     image_id='img', size=64 * MiB)
    assert NAME in str(e.value)
    assert not second.exists()
    assert backend.records.get(instance.uuid, 'disk.local') is None


def test_legacy_flat_over_a_sidecarless_qcow2_base_records_qcow2(
        host, backend, instance, tmp_path):
    host.set_override('force_raw_images', False)
    src = _image(tmp_path, 'qcow2')
    disk = backend.by_name(instance, 'disk', 'flat')
    disk.cache(fetch_func=_fetcher(src), context=None, filename=NAME,
               image_id='img', size=64 * MiB)
    record = backend.records.get(instance.uuid, 'disk')
    # The disk is a copy of the qcow2 base: read as raw, the guest would
    # see qcow2 metadata instead of its data.
    assert (record.state, record.format) == ('created', 'qcow2')
    assert disk.driver_format == 'qcow2'
    assert guest_bytes(disk.path, 'qcow2', tmp_path)[:MiB] == b'\xab' * MiB
    entry = backend.image_cache.get(NAME)
    assert entry is not None and entry.format == 'qcow2'
