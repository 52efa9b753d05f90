"""The cache manager on real cache entries: use counts, verify, clean."""

import os

from imagebackend import cache_manager

from tests.functional.conftest import make_swap
from tests.hosts import MiB, Instance


def test_scan_verify_clean(backend, make_image):
    make_image('used', 'raw')
    make_image('unused', 'raw')
    for _ in range(2):
        backend.by_name(Instance(), 'disk', 'qcow2').create_from_image(
            None, 'used', 128 * MiB)
    backend.by_name(Instance(), 'disk.swap', 'qcow2').create_from_func(
        None, make_swap(32 * MiB), 'swap_32M', 32 * MiB)
    # Fetched into the cache, but no disk uses it.
    backend.image_cache.fetch_image(None, 'unused')
    cache = backend.image_cache
    used = {u.entry.source: u.users for u in cache_manager.scan(backend)}
    assert used == {'used': 2, 'unused': 0, 'swap_32M': 1}

    assert set(cache_manager.verify(backend).values()) == {True}
    # Corrupt one entry: verify says so.
    unused = [e for e in cache.entries() if e.source == 'unused'][0]
    with open(unused.path, 'r+b') as f:
        f.write(b'\x00\x01')
    assert cache_manager.verify(backend)[unused.name] is False

    # Recently used: kept at the default age; at age 0 only it goes.
    assert cache_manager.clean(backend) == []
    assert cache_manager.clean(backend, min_age=0, dry_run=True) == [
        unused.name]
    assert cache_manager.clean(backend, min_age=0) == [unused.name]
    assert not os.path.exists(unused.path)
    assert not os.path.exists(unused.path + '.meta.json')
    assert sorted(e.source for e in cache.entries()) == ['swap_32M', 'used']


def test_a_creation_under_way_keeps_its_source(backend, make_image):
    make_image('img', 'raw')
    entry = backend.image_cache.fetch_image(None, 'img')
    instance = Instance()
    disks = [backend.by_name(instance, 'disk', 'qcow2'),
             backend.by_name(instance, 'disk.swap', 'qcow2')]
    # Records saying creating, as a batch of creations (or one that died)
    # leaves them: no backing yet, though an overlay may name the base.
    backend.records.put_many([disks[0].planned_record('image', 'img'),
                              disks[1].planned_record('func', 'swap_1M')])
    assert {u.entry.name: u.users for u in cache_manager.scan(backend)} == \
        {entry.name: 1}
    assert cache_manager.users(backend) == {entry.name: 1, 'swap_1M': 1}
    assert cache_manager.clean(backend, min_age=0) == []
    assert os.path.exists(entry.path)
